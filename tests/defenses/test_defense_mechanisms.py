"""Pure update defenses: statistics, exact counts, error bounds, type/dtype round trips, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medpfl_app.defenses import (
    DEFENSES,
    Guarantee,
    build_defense,
    client_dp,
    clip_update,
    drop_bn_stats,
    gaussian_noise,
    laplace_noise,
    sign_quantization,
    top_k,
    uniform_quantization,
)
from medpfl_app.errors import MedPFLError


def _numpy_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(4, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=4).astype(np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2.0, size=4).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
    }


def _torch_update(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in _numpy_update(seed).items()}


UPDATES = [pytest.param(_numpy_update, id="numpy"), pytest.param(_torch_update, id="torch")]


def _np(value: object) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


ALL_DEFENSES = [
    lambda u: laplace_noise(u, 0.1, seed=1),
    lambda u: gaussian_noise(u, 0.1, seed=1),
    lambda u: gaussian_noise(u, 0.5, percentile=95, seed=1),
    lambda u: client_dp(u, 1.0, 1.0, seed=1),
    lambda u: top_k(u, 0.3),
    lambda u: top_k(u, 0.3, scope="global"),
    lambda u: uniform_quantization(u, 4, seed=1),
    lambda u: sign_quantization(u, seed=1),
    lambda u: drop_bn_stats(u),
]


@pytest.mark.parametrize("make", UPDATES)
@pytest.mark.parametrize("defend", ALL_DEFENSES)
def test_defense_returns_new_dict_same_types_and_leaves_input_and_integers_alone(make, defend) -> None:
    """Every defense: input unchanged, same array type and dtype out, integer/bool entries bit-identical."""
    update = make()
    before = {k: _np(v).copy() for k, v in update.items()}
    out, record = defend(update)
    assert out is not update
    for key, value in update.items():
        np.testing.assert_array_equal(_np(value), before[key])
    assert isinstance(record, dict)
    for key, value in out.items():
        assert type(value) is type(update[key])
        assert value.dtype == update[key].dtype
        assert value.shape == update[key].shape
    np.testing.assert_array_equal(_np(out["bn.num_batches_tracked"]), before["bn.num_batches_tracked"])
    np.testing.assert_array_equal(_np(out["mask"]), before["mask"])
    assert out["conv.weight"] is not update["conv.weight"]


def test_laplace_noise_mean_and_std_within_statistical_bounds() -> None:
    """Laplace(0, b) noise: mean ≈ 0 and std ≈ b·√2 over 40,000 draws (5-sigma bounds on the estimators)."""
    b, n = 0.3, 40_000
    out, _ = laplace_noise({"w": np.zeros(n, dtype=np.float64)}, b, seed=11)
    noise = out["w"]
    std = b * math.sqrt(2)
    assert abs(noise.mean()) < 5 * std / math.sqrt(n)
    # Var of the sample variance for Laplace: (kurtosis 6 + 2) σ⁴ / n
    assert abs(noise.var() - std**2) < 5 * std**2 * math.sqrt(5 / n)


@pytest.mark.parametrize("make", UPDATES)
def test_gaussian_noise_absolute_and_relative_sigma(make) -> None:
    """Absolute σ gives noise of std σ; relative σ scales with the chosen percentile of |update|."""
    n = 20_000
    zeros = {"w": np.zeros(n, dtype=np.float32)}
    out, record = gaussian_noise(zeros, 0.2, seed=3)
    assert record["effective_sigma"] == pytest.approx(0.2)
    assert abs(out["w"].std() - 0.2) < 5 * 0.2 / math.sqrt(2 * n)

    update = make()
    magnitudes = np.concatenate([np.abs(_np(v)).ravel() for k, v in update.items() if _np(v).dtype.kind == "f"])
    _, record = gaussian_noise(update, 0.5, percentile=95, seed=3)
    assert record["effective_sigma"] == pytest.approx(0.5 * np.percentile(magnitudes, 95), rel=1e-6)


@pytest.mark.parametrize("make", UPDATES)
def test_seeded_defenses_are_deterministic_and_seeds_differ(make) -> None:
    """The same seed reproduces the same noise for NumPy and torch; another seed does not."""
    first, _ = laplace_noise(make(), 0.1, seed=5)
    second, _ = laplace_noise(make(), 0.1, seed=5)
    third, _ = laplace_noise(make(), 0.1, seed=6)
    np.testing.assert_array_equal(_np(first["conv.weight"]), _np(second["conv.weight"]))
    assert not np.array_equal(_np(first["conv.weight"]), _np(third["conv.weight"]))
    numpy_out, _ = laplace_noise(_numpy_update(), 0.1, seed=5)
    np.testing.assert_allclose(_np(first["conv.weight"]), numpy_out["conv.weight"], rtol=1e-6)


@pytest.mark.parametrize("make", UPDATES)
def test_clipping_bounds_the_global_norm(make) -> None:
    """After clipping, the L2 norm over all float entries is ≤ C; a small update is left unscaled."""
    update = make()
    clipped, record = clip_update(update, 0.5)
    norm = math.sqrt(
        sum(float((_np(v).astype(np.float64) ** 2).sum()) for v in clipped.values() if _np(v).dtype.kind == "f")
    )
    assert norm <= 0.5 * (1 + 1e-6)
    assert record == {"clip_norm": 0.5}
    unclipped, _ = clip_update(update, 1e6)
    np.testing.assert_array_equal(_np(unclipped["conv.weight"]), _np(update["conv.weight"]))


def test_client_dp_noise_has_std_z_times_c_around_the_clipped_update() -> None:
    """Client DP = clip then N(0, (zC)²): residual std matches z·C over many entries."""
    n = 20_000
    update = {"w": np.full(n, 1.0, dtype=np.float64)}
    out, record = client_dp(update, 2.0, 0.5, seed=9)
    clipped = np.full(n, 2.0 / math.sqrt(n))
    residual = out["w"] - clipped
    assert record["sigma"] == pytest.approx(1.0)
    assert abs(residual.mean()) < 5 / math.sqrt(n)
    assert abs(residual.std() - 1.0) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("make", UPDATES)
def test_top_k_keeps_exactly_k_entries(make) -> None:
    """Per tensor: ⌈f·n⌉ non-zeros per float tensor, the largest ones; global: ⌈f·N⌉ over all float entries."""
    update = make()
    out, record = top_k(update, 0.25)
    for key in ("conv.weight", "conv.bias", "bn.running_mean"):
        x, y = _np(update[key]).ravel(), _np(out[key]).ravel()
        k = math.ceil(0.25 * x.size)
        assert np.count_nonzero(y) == k
        kept = np.flatnonzero(y)
        np.testing.assert_array_equal(y[kept], x[kept])
        assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-k]
    out, record = top_k(update, 0.1, scope="global")
    total = sum(_np(v).size for v in update.values() if _np(v).dtype.kind == "f")
    assert record == {"kept": math.ceil(0.1 * total), "total": total}
    assert sum(np.count_nonzero(_np(v)) for k, v in out.items() if _np(v).dtype.kind == "f") == record["kept"]


def test_uniform_quantization_error_bounds_levels_and_unbiasedness() -> None:
    """|q − x| < Δ (stochastic) or ≤ Δ/2 (nearest); at most 2^bits levels; stochastic rounding is unbiased."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=5_000)
    bits = 3
    step = (x.max() - x.min()) / (2**bits - 1)
    stochastic, _ = uniform_quantization({"w": x}, bits, seed=2)
    nearest, _ = uniform_quantization({"w": x}, bits, stochastic=False)
    assert np.abs(stochastic["w"] - x).max() < step * (1 + 1e-9)
    assert np.abs(nearest["w"] - x).max() <= step / 2 * (1 + 1e-9)
    assert len(np.unique(stochastic["w"])) <= 2**bits
    draws = np.mean([uniform_quantization({"w": x[:200]}, bits, seed=s)[0]["w"] for s in range(400)], axis=0)
    assert np.abs(draws - x[:200]).max() < 5 * step / 2 / math.sqrt(400)


def test_sign_quantization_is_two_valued_and_unbiased() -> None:
    """Stochastic sign: values ±max|x|, mean over draws ≈ x; deterministic: sign(x)·mean|x|."""
    x = np.array([0.5, -0.25, 1.0, 0.0, -1.0])
    out, _ = sign_quantization({"w": x}, seed=0)
    assert set(np.abs(out["w"]).tolist()) == {1.0}
    draws = np.mean([sign_quantization({"w": x}, seed=s)[0]["w"] for s in range(2000)], axis=0)
    assert np.abs(draws - x).max() < 5 / math.sqrt(2000)
    det, _ = sign_quantization({"w": x}, stochastic=False)
    np.testing.assert_allclose(det["w"], np.sign(x) * np.abs(x).mean())


@pytest.mark.parametrize("make", UPDATES)
def test_drop_bn_stats_removes_running_buffers_only(make) -> None:
    """running_mean/var go; num_batches_tracked stays unless asked; weights are copied unchanged."""
    update = make()
    out, record = drop_bn_stats(update)
    assert record == {"dropped": ["bn.running_mean", "bn.running_var"]}
    assert set(out) == {"conv.weight", "conv.bias", "bn.num_batches_tracked", "mask"}
    np.testing.assert_array_equal(_np(out["conv.weight"]), _np(update["conv.weight"]))
    out, _ = drop_bn_stats(update, include_num_batches_tracked=True)
    assert "bn.num_batches_tracked" not in out


@pytest.mark.parametrize(
    "bad",
    [
        {"w": np.array([1.0, np.nan], dtype=np.float32)},
        {"w": torch.tensor([1.0, float("inf")])},
        {"w": np.array(["a", "b"])},
        {"w": [1.0, 2.0]},
        {"w": np.array([1 + 2j])},
        [np.zeros(2)],
    ],
    ids=["nan", "inf-torch", "strings", "list", "complex", "not-a-dict"],
)
def test_bad_updates_raise_one_clear_error(bad) -> None:
    """NaN/Inf and non-numeric payloads are refused with a MedPFLError carrying a fix."""
    with pytest.raises(MedPFLError, match="fix:"):
        laplace_noise(bad, 0.1, seed=0)


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("laplace_noise", {"scale": 0}),
        ("laplace_noise", {"scale": -1.0}),
        ("gaussian_noise", {"sigma": 0.0}),
        ("gaussian_noise", {"sigma": 1.0, "percentile": 101}),
        ("gaussian_noise", {"sigma": 1.0, "percentile": -1}),
        ("client_dp", {"clip_norm": 0.0, "noise_multiplier": 1.0}),
        ("client_dp", {"clip_norm": 1.0, "noise_multiplier": -1.0}),
        ("top_k", {"fraction": 0.0}),
        ("top_k", {"fraction": 1.5}),
        ("top_k", {"fraction": 0.5, "scope": "layer"}),
        ("uniform_quantization", {"bits": 0}),
        ("uniform_quantization", {"bits": 2.5}),
        ("laplace_noise", {"scale": float("nan")}),
        ("laplace_noise", {"b": 1.0}),
    ],
)
def test_bad_parameters_fail_at_construction(key, params) -> None:
    """Invalid σ, C, b, percentile, fraction or bits are refused when the defense is configured."""
    with pytest.raises(MedPFLError):
        build_defense(key, **params)


def test_registry_lists_every_defense_with_an_honest_guarantee() -> None:
    """Only client DP claims a formal guarantee; every other defense is labelled heuristic."""
    assert set(DEFENSES.names()) >= {
        "laplace_noise",
        "gaussian_noise",
        "client_dp",
        "top_k",
        "uniform_quantization",
        "sign_quantization",
        "drop_bn_stats",
    }
    for key in DEFENSES:
        expected = Guarantee.CLIENT_DP if key == "client_dp" else Guarantee.HEURISTIC
        assert DEFENSES.get(key).guarantee is expected
