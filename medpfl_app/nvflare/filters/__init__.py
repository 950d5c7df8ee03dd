"""NVFlare client result filters over `medpfl_app.defenses` (thin `DXOFilter` adapters that fail closed).

Job config paths::

    medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter          scale, seed            heuristic
    medpfl_app.nvflare.filters.noise.GaussianNoiseFilter         sigma, percentile, seed heuristic
    medpfl_app.nvflare.filters.client_dp.ClientDPFilter          clip_norm, noise_multiplier, delta, epsilon_max,
                                                         ledger_path, seed      (ε, δ)-DP at client level
    medpfl_app.nvflare.filters.compression.TopKFilter            fraction, scope        heuristic
    medpfl_app.nvflare.filters.compression.UniformQuantizationFilter  bits, stochastic, seed  heuristic
    medpfl_app.nvflare.filters.compression.SignQuantizationFilter     stochastic, seed        heuristic
    medpfl_app.nvflare.filters.batchnorm.DropBatchNormStatsFilter     include_num_batches_tracked  heuristic
    medpfl_app.nvflare.filters.reference.GlobalModelRecorder     max_entries  (task_data_filters, direction "in")

How NVFlare's built-ins relate (all heuristics; none is calibrated DP on the update, all NumPy-only):
``PercentilePrivacy`` zeroes small entries and clips the rest to ±gamma (no noise); ``SVTPrivacy`` releases a
noisy sparse subset, and its ``svt_privacy_accountant`` meta is a per-filter pure-DP sum with unclipped
sensitivity, not an end-to-end guarantee; ``ExcludeVars`` drops named variables (like `DropBatchNormStatsFilter`).
They can share a chain with MedPFL filters (chain order = list order; each MedPFL filter appends its entry to the
``medpfl_defenses`` meta list). Order does not weaken `ClientDPFilter`: filters before it only change what is
clipped, filters after it are post-processing. Drop BN statistics first so that noise never lands on them.
"""

from medpfl_app.registry import Registry

#: Defense key (as in `medpfl_app.defenses.DEFENSES`) → the class path to put in a job config or privacy.json.
FILTER_PATHS: Registry[str] = Registry("defense filter")
for _key, _path in (
    ("laplace_noise", "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter"),
    ("gaussian_noise", "medpfl_app.nvflare.filters.noise.GaussianNoiseFilter"),
    ("client_dp", "medpfl_app.nvflare.filters.client_dp.ClientDPFilter"),
    ("top_k", "medpfl_app.nvflare.filters.compression.TopKFilter"),
    ("uniform_quantization", "medpfl_app.nvflare.filters.compression.UniformQuantizationFilter"),
    ("sign_quantization", "medpfl_app.nvflare.filters.compression.SignQuantizationFilter"),
    ("drop_bn_stats", "medpfl_app.nvflare.filters.batchnorm.DropBatchNormStatsFilter"),
):
    FILTER_PATHS.register(_key)(_path)


def filter_config(key: str, **args: object) -> dict[str, object]:
    """A ``{"path": ..., "args": {...}}`` entry for the filter of defense ``key`` (args are not validated here)."""
    return {"path": FILTER_PATHS.get(key), "args": dict(args)}
