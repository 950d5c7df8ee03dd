"""MedPFL result filters through ``filter.process(dxo.to_shareable(), FLContext())``, as NVFlare runs them."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.filters import ExcludeVars
from opacus.accountants import RDPAccountant

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.batchnorm import DropBatchNormStatsFilter
from medpfl_app.nvflare.filters.client_dp import ClientDPFilter
from medpfl_app.nvflare.filters.compression import SignQuantizationFilter, TopKFilter, UniformQuantizationFilter
from medpfl_app.nvflare.filters.defense_filter import META_KEY, DefenseFilter
from medpfl_app.nvflare.filters.noise import GaussianNoiseFilter, LaplaceNoiseFilter
from medpfl_app.nvflare.filters.reference import GlobalModelRecorder


def _update(kind: str = "numpy", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = {
        "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "bn.weight": rng.normal(size=4).astype(np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "bn.num_batches_tracked": np.array(5, dtype=np.int64),
    }
    return {k: torch.from_numpy(v) for k, v in data.items()} if kind == "torch" else data


def _np(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _run(f, data, kind=DataKind.WEIGHT_DIFF, fl_ctx=None, meta=None, round_=None) -> DXO:
    shareable = DXO(data_kind=kind, data=data, meta=meta or {}).to_shareable()
    if round_ is not None:
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
    return from_shareable(f.process(shareable, fl_ctx or FLContext()))


def _ctx(job="job-1", site="site-1", task="task-1", root=None) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, job, private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_ID, task, private=True, sticky=False)
    if root is not None:
        for folder in ("startup", "local"):  # NVFlare's Workspace insists on both
            (root / folder).mkdir(parents=True, exist_ok=True)

        class _Engine:
            def get_workspace(self) -> Workspace:
                return Workspace(root_dir=str(root), site_name=site)

            def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
                del event_type, fl_ctx

        ctx.set_prop(ReservedKey.ENGINE, _Engine(), private=True, sticky=True)
    return ctx


FILTERS = [
    pytest.param(lambda tmp: LaplaceNoiseFilter(scale=0.01, seed=1), id="laplace"),
    pytest.param(lambda tmp: GaussianNoiseFilter(sigma=0.5, percentile=95, seed=1), id="gaussian"),
    pytest.param(lambda tmp: ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, seed=1), id="client_dp"),
    pytest.param(lambda tmp: TopKFilter(fraction=0.2), id="top_k"),
    pytest.param(lambda tmp: UniformQuantizationFilter(bits=4, seed=1), id="uniform_q"),
    pytest.param(lambda tmp: SignQuantizationFilter(seed=1), id="sign_q"),
    pytest.param(lambda tmp: DropBatchNormStatsFilter(), id="drop_bn"),
]


@pytest.mark.parametrize("array", ["numpy", "torch"])
@pytest.mark.parametrize("kind", [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS])
@pytest.mark.parametrize("make_filter", FILTERS)
def test_every_filter_defends_numpy_and_torch_weights_and_diffs(make_filter, kind, array, tmp_path) -> None:
    """Same types/dtypes out, integers untouched, input not mutated, a JSON meta entry with an honest guarantee."""
    ctx = _ctx(root=tmp_path / "site-1")  # client DP charges the site's ledger in the site workspace
    global_model = _update(array, seed=1)
    GlobalModelRecorder().process(DXO(DataKind.WEIGHTS, global_model).to_shareable(), ctx)
    data = _update(array)
    before = {k: _np(v).copy() for k, v in data.items()}
    f = make_filter(tmp_path)
    out = _run(f, data, kind, fl_ctx=ctx, round_=3)
    for key, value in data.items():
        np.testing.assert_array_equal(_np(value), before[key])
    for key, value in out.data.items():
        assert type(value) is type(data[key]) and value.dtype == data[key].dtype
    np.testing.assert_array_equal(_np(out.data["bn.num_batches_tracked"]), before["bn.num_batches_tracked"])
    assert not np.array_equal(_np(out.data["conv.weight"]), before["conv.weight"]) or isinstance(
        f, DropBatchNormStatsFilter
    )
    (entry,) = out.meta[META_KEY]
    json.dumps(entry)  # plain JSON values only
    assert entry["round"] == 3 and entry["data_kind"] == str(kind.value)
    assert entry["guarantee"] == (
        "(ε, δ)-DP at client level" if isinstance(f, ClientDPFilter) else "heuristic (no formal guarantee)"
    )
    assert out.meta["filter_history"] == [type(f).__name__]
    if kind == DataKind.WEIGHTS and f._defense.needs_difference:
        assert entry["applied_to"] == "difference to recorded global model"


def test_laplace_filter_noise_statistics_over_many_draws() -> None:
    """Through the filter, Laplace noise has mean ≈ 0 and std ≈ b√2 (5-sigma bounds), torch as well as NumPy."""
    b, n = 0.05, 20_000
    for zeros in ({"w": np.zeros(n, np.float32)}, {"w": torch.zeros(n)}):
        noise = _np(_run(LaplaceNoiseFilter(scale=b, seed=4), zeros).data["w"]).astype(np.float64)
        std = b * math.sqrt(2)
        assert abs(noise.mean()) < 5 * std / math.sqrt(n)
        assert abs(noise.var() - std**2) < 5 * std**2 * math.sqrt(5 / n)


def test_gaussian_filter_absolute_sigma_statistics() -> None:
    """Absolute σ: noise std ≈ σ; the effective σ is recorded in the meta."""
    n = 20_000
    out = _run(GaussianNoiseFilter(sigma=0.1, seed=2), {"w": np.zeros(n, np.float32)})
    assert abs(out.data["w"].astype(np.float64).std() - 0.1) < 5 * 0.1 / math.sqrt(2 * n)
    assert out.meta[META_KEY][0]["record"]["effective_sigma"] == pytest.approx(0.1)


def test_seeded_filters_are_reproducible_but_fresh_every_round() -> None:
    """Two filters with one seed agree; one filter draws new noise on its next round (no repeated noise)."""
    data = _update()
    first, twin = LaplaceNoiseFilter(scale=0.1, seed=7), LaplaceNoiseFilter(scale=0.1, seed=7)
    a, b = _run(first, data).data["conv.weight"], _run(twin, data).data["conv.weight"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_run(first, data).data["conv.weight"], a)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # z ≈ 0 has a huge ε; irrelevant here
@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_client_dp_filter_clips_to_c(array, tmp_path) -> None:
    """With negligible noise, the released update's norm over float entries is ≤ C (and ≈ C for a big update)."""
    f = ClientDPFilter(clip_norm=0.5, noise_multiplier=1e-9, seed=0)
    out = _run(f, _update(array), fl_ctx=_ctx(root=tmp_path))
    norm = math.sqrt(
        sum(float((_np(v).astype(np.float64) ** 2).sum()) for v in out.data.values() if _np(v).dtype.kind == "f")
    )
    assert norm == pytest.approx(0.5, rel=1e-5) and norm <= 0.5 * (1 + 1e-5)


def test_top_k_filter_keeps_exactly_k_and_weights_are_global_plus_pruned_diff() -> None:
    """WEIGHT_DIFF: exactly ⌈f·n⌉ non-zeros per tensor; WEIGHTS: the result is global + top-k(local − global)."""
    out = _run(TopKFilter(fraction=0.25), _update())
    assert np.count_nonzero(out.data["conv.weight"]) == math.ceil(0.25 * 72)
    ctx = _ctx()
    global_model = _update(seed=1)
    GlobalModelRecorder().process(DXO(DataKind.WEIGHTS, global_model).to_shareable(), ctx)
    local = _update()
    released = _run(TopKFilter(fraction=0.25), local, DataKind.WEIGHTS, fl_ctx=ctx).data
    moved = released["conv.weight"] != global_model["conv.weight"]
    assert moved.sum() == math.ceil(0.25 * 72)
    np.testing.assert_allclose(released["conv.weight"][moved], local["conv.weight"][moved], rtol=1e-6)


def test_uniform_quantization_filter_error_bound() -> None:
    """Every entry moves by less than one quantization step Δ = (max − min)/(2^bits − 1)."""
    data = _update()
    out = _run(UniformQuantizationFilter(bits=3, seed=0), data)
    x = data["conv.weight"].astype(np.float64)
    step = (x.max() - x.min()) / 7
    assert np.abs(out.data["conv.weight"] - x).max() < step * (1 + 1e-6)
    assert len(np.unique(out.data["conv.weight"])) <= 8


def test_drop_bn_filter_removes_running_stats_and_records_them() -> None:
    """running_mean/var are gone from the released update; the meta lists them."""
    out = _run(DropBatchNormStatsFilter(), _update("torch"))
    assert set(out.data) == {"conv.weight", "bn.weight", "bn.num_batches_tracked"}
    assert out.meta[META_KEY][0]["record"]["dropped"] == ["bn.running_mean", "bn.running_var"]


def _opacus_epsilon(z: float, rounds: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=1.0)
    return accountant.get_epsilon(delta=delta)


def test_client_dp_filter_accounts_per_round_survives_restart_and_refuses_over_budget(tmp_path) -> None:
    """ε in the meta equals Opacus' value each round; a new filter on the same ledger continues; round 4 refused."""
    budget = _opacus_epsilon(1.5, 3, 1e-5)
    ctx = _ctx(root=tmp_path / "site")
    ledger = tmp_path / "site" / "medpfl" / "client_dp_ledger.json"
    args = {"clip_norm": 1.0, "noise_multiplier": 1.5, "delta": 1e-5, "epsilon_max": budget}
    totals = []
    for rnd in range(3):
        f = ClientDPFilter(**args) if rnd != 1 else ClientDPFilter(**args, seed=rnd)  # new object = restart
        entry = _run(f, _update(seed=rnd), fl_ctx=ctx, round_=rnd).meta[META_KEY][0]
        assert entry["epsilon_total"] == pytest.approx(_opacus_epsilon(1.5, rnd + 1, 1e-5), rel=1e-12)
        assert entry["epsilon_round"] == pytest.approx(_opacus_epsilon(1.5, 1, 1e-5), rel=1e-12)
        assert entry["delta"] == 1e-5 and entry["releases"] == rnd + 1
        totals.append(entry["epsilon_total"])
    assert totals == sorted(totals) and len(set(totals)) == 3
    shareable = DXO(DataKind.WEIGHT_DIFF, _update(seed=9)).to_shareable()
    with pytest.raises(MedPFLError, match="budget exhausted"):
        ClientDPFilter(**args).process(shareable, ctx)
    assert json.loads(ledger.read_text())["history"] == [[1.5, 1.0, 3]]


def test_client_dp_default_ledger_lives_in_the_site_workspace(tmp_path) -> None:
    """Without ledger_path the ledger is <workspace root>/medpfl/client_dp_ledger.json; no workspace = refusal."""
    f = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0)
    _run(f, _update(), fl_ctx=_ctx(root=tmp_path))
    state = json.loads((tmp_path / "medpfl" / "client_dp_ledger.json").read_text())
    assert state["releases"][0]["site"] == "site-1" and state["releases"][0]["job_id"] == "job-1"
    with pytest.raises(MedPFLError, match="workspace is unknown"):
        _run(f, _update(), fl_ctx=FLContext())


@pytest.mark.parametrize(
    ("shareable_factory", "match"),
    [
        (lambda: DXO(DataKind.WEIGHT_DIFF, {"w": np.array([1.0, np.nan], np.float32)}).to_shareable(), "NaN"),
        (lambda: DXO(DataKind.WEIGHTS, {"w": torch.tensor([np.inf])}).to_shareable(), "NaN"),
        (lambda: DXO(DataKind.APP_DEFINED, {"w": np.ones(2, np.float32)}).to_shareable(), "data kind"),
        (lambda: DXO(DataKind.WEIGHT_DIFF, {"w": np.array(["x"])}).to_shareable(), "non-numeric"),
        (lambda: DXO(DataKind.WEIGHT_DIFF, {"w": "secret"}).to_shareable(), "not a NumPy array"),
        (lambda: Shareable({"weights": np.ones(3)}), "not a DXO"),
    ],
    ids=["nan", "inf-torch", "unknown-kind", "strings", "str-value", "non-dxo"],
)
@pytest.mark.parametrize("make_filter", FILTERS)
def test_bad_updates_fail_closed(make_filter, shareable_factory, match, tmp_path) -> None:
    """Unsafe input raises (NVFlare then sends TASK_RESULT_FILTER_ERROR), it is never returned raw."""
    with pytest.raises(MedPFLError, match=match):
        make_filter(tmp_path).process(shareable_factory(), FLContext())


def test_full_weights_without_a_recorded_global_model_fail_closed() -> None:
    """Clipping/pruning/quantizing full weights is refused unless the global model was recorded for the task."""
    with pytest.raises(MedPFLError, match="GlobalModelRecorder"):
        _run(TopKFilter(fraction=0.5), _update(), DataKind.WEIGHTS, fl_ctx=_ctx(task="other"))


def test_metrics_error_replies_and_empty_replies_pass_untouched() -> None:
    """METRICS DXOs, non-OK replies and payload-free replies carry no parameters: returned unchanged."""
    f = LaplaceNoiseFilter(scale=0.1, seed=0)
    metrics = _run(f, {"accuracy": 0.9}, DataKind.METRICS)
    assert metrics.data == {"accuracy": 0.9} and META_KEY not in metrics.meta
    error = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert f.process(error, FLContext()) is error
    empty = make_reply(ReturnCode.OK)
    assert f.process(empty, FLContext()) is empty


def test_collections_are_walked() -> None:
    """A COLLECTION of DXOs has each inner WEIGHT_DIFF defended."""
    inner = DXO(DataKind.WEIGHT_DIFF, _update())
    outer = DXO(DataKind.COLLECTION, {"model": inner})
    result = from_shareable(DropBatchNormStatsFilter().process(outer.to_shareable(), FLContext()))
    assert "bn.running_mean" not in result.data["model"].data


def test_medpfl_filter_chains_with_nvflare_exclude_vars() -> None:
    """Laplace noise, then NVFlare's ExcludeVars on the same DXO: both apply, in order, meta kept."""
    shareable = DXO(DataKind.WEIGHT_DIFF, _update()).to_shareable()
    shareable = LaplaceNoiseFilter(scale=0.01, seed=0).process(shareable, FLContext())
    shareable = ExcludeVars(exclude_vars=["bn.running_mean", "bn.running_var"]).process(shareable, FLContext())
    out = from_shareable(shareable)
    assert "bn.running_mean" not in out.data and "conv.weight" in out.data
    assert out.meta[META_KEY][0]["defense"] == "laplace_noise"
    assert out.meta["filter_history"] == ["LaplaceNoiseFilter", "ExcludeVars"]


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LaplaceNoiseFilter, {"scale": 0.0}),
        (LaplaceNoiseFilter, {"scale": 0.1, "seed": -1}),
        (GaussianNoiseFilter, {"sigma": -1.0}),
        (GaussianNoiseFilter, {"sigma": 1.0, "percentile": 150}),
        (ClientDPFilter, {"clip_norm": 0.0, "noise_multiplier": 1.0}),
        (ClientDPFilter, {"clip_norm": 1.0, "noise_multiplier": 0.0}),
        (ClientDPFilter, {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.5}),
        (ClientDPFilter, {"clip_norm": 1.0, "noise_multiplier": 1.0, "epsilon_max": -1}),
        (TopKFilter, {"fraction": 0.0}),
        (TopKFilter, {"fraction": 0.5, "scope": "everything"}),
        (UniformQuantizationFilter, {"bits": 0}),
        (GlobalModelRecorder, {"max_entries": 0}),
    ],
)
def test_bad_parameters_fail_at_construction(cls, kwargs) -> None:
    """Bad σ, C, b, δ, budget, percentile, fraction, bits or seed are refused when the filter is built."""
    with pytest.raises(MedPFLError, match="fix:"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls",
    [
        LaplaceNoiseFilter,
        GaussianNoiseFilter,
        ClientDPFilter,
        TopKFilter,
        UniformQuantizationFilter,
        SignQuantizationFilter,
        DropBatchNormStatsFilter,
        GlobalModelRecorder,
    ],
)
def test_constructor_args_are_stored_unchanged_for_nvflare_export(cls, tmp_path) -> None:
    """NVFlare's job exporter reads each constructor arg back from the attribute of the same name."""
    samples = {
        "scale": 0.2,
        "sigma": 0.3,
        "percentile": 90.0,
        "seed": 3,
        "clip_norm": 1.5,
        "noise_multiplier": 0.8,
        "delta": 1e-6,
        "epsilon_max": 8.0,
        "ledger_path": str(tmp_path / "x.json"),
        "fraction": 0.4,
        "scope": "global",
        "bits": 6,
        "stochastic": False,
        "include_num_batches_tracked": True,
        "max_entries": 2,
        "empirical_trials": 2000,
    }
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert "name" not in params
    kwargs = {p: samples[p] for p in params}
    f = cls(**kwargs)
    for key, value in kwargs.items():
        assert getattr(f, key) == value and type(getattr(f, key)) is type(value)
    if issubclass(cls, DefenseFilter):
        assert f._defense.params()  # derived state lives elsewhere


def test_every_registered_defense_has_an_importable_filter() -> None:
    """FILTER_PATHS covers the defense registry; each path builds a filter wrapping that very defense."""
    import importlib

    from medpfl_app.defenses import DEFENSES
    from medpfl_app.nvflare.filters import FILTER_PATHS, filter_config

    assert FILTER_PATHS.names() == DEFENSES.names()
    samples = {
        "laplace_noise": {"scale": 0.1},
        "gaussian_noise": {"sigma": 0.1},
        "client_dp": {"clip_norm": 1.0, "noise_multiplier": 1.0},
        "top_k": {"fraction": 0.5},
        "uniform_quantization": {"bits": 8},
        "sign_quantization": {},
        "drop_bn_stats": {},
    }
    for key in DEFENSES:
        entry = filter_config(key, **samples[key])
        module, _, cls = entry["path"].rpartition(".")
        f = getattr(importlib.import_module(module), cls)(**entry["args"])
        assert f._defense.key == key
