"""Leakage metrics agree with scikit-image to 1e-4 and behave as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from medpfl_app.errors import MedPFLError
from medpfl_app.metrics import (
    METRICS,
    attack_success_rate,
    evaluate_reconstruction,
    identifiability,
    label_accuracy,
    lpips,
    match_reconstructions,
    mse,
    psnr,
    relative_leakage,
    ssim,
)
from medpfl_app.metrics.leakage import LPIPS_SKIPPED_REASON, lpips_backbone_path
from medpfl_app.metrics.torchmetric import image_leakage


def _pair(shape: tuple[int, ...], seed: int = 0, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    truth = torch.rand(shape, generator=generator, dtype=torch.float64)
    recon = (truth + noise * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return recon, truth


def _skimage_ssim(recon: np.ndarray, truth: np.ndarray) -> float:
    channel_axis = 0 if recon.shape[0] > 1 else None
    if channel_axis is None:
        recon, truth = recon[0], truth[0]
    return structural_similarity(
        recon,
        truth,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=channel_axis,
    )


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (2, 3, 16, 16), (2, 1, 12, 12, 12), (1, 1, 32, 24)])
def test_ssim_psnr_mse_match_scikit_image(shape: tuple[int, ...]) -> None:
    """Per-image SSIM (2-D, RGB, 3-D), PSNR and MSE equal scikit-image on the same arrays."""
    recon, truth = _pair(shape)

    ours = {"ssim": ssim(recon, truth), "psnr": psnr(recon, truth), "mse": mse(recon, truth)}

    for i in range(shape[0]):
        r, t = recon[i].numpy(), truth[i].numpy()
        assert abs(float(ours["ssim"][i]) - _skimage_ssim(r, t)) < 1e-4
        assert abs(float(ours["psnr"][i]) - peak_signal_noise_ratio(t, r, data_range=1.0)) < 1e-4
        assert abs(float(ours["mse"][i]) - mean_squared_error(t, r)) < 1e-4


def test_metric_directions_are_declared() -> None:
    """Each registered metric says which way means more leakage; a closer image scores better in that direction."""
    far, truth = _pair((2, 1, 16, 16), noise=0.3)
    near = (truth + 0.01 * (far - truth)).clamp(0, 1)
    for name in ("mse", "psnr", "ssim"):
        spec = METRICS.get(name)
        better = spec.fn(near, truth) > spec.fn(far, truth)
        assert bool(better.all()) == spec.higher_is_better, name


def test_image_leakage_metric_accumulates_worst_case() -> None:
    """The torchmetrics wrapper keeps every image and reports the most-leaked one by the declared direction."""
    _, truth = _pair((2, 1, 16, 16))
    close, far = (truth + 0.01).clamp(0, 1), (truth + 0.1).clamp(0, 1)
    for name, direction in (("psnr", True), ("mse", False), ("ssim", True)):
        metric = image_leakage(name)
        metric.update(far, truth)
        metric.update(close, truth)
        out = metric.compute()
        assert metric.higher_is_better is direction
        expected = METRICS.get(name).fn(close, truth)
        assert float(out["worst"]) == pytest.approx(float(expected.max() if direction else expected.min()))


def test_hungarian_matching_undoes_a_permutation() -> None:
    """Reconstructions returned in a shuffled order are paired back to their originals."""
    recon, truth = _pair((4, 1, 16, 16), noise=0.02)
    shuffled = recon[torch.tensor([2, 0, 3, 1])]

    order = match_reconstructions(shuffled, truth)

    assert torch.equal(shuffled[order], recon)


def test_evaluate_reconstruction_reports_matched_scores() -> None:
    """The report matches before scoring, so a shuffled perfect reconstruction is a perfect score."""
    _, truth = _pair((3, 1, 16, 16))
    report = evaluate_reconstruction(
        truth[torch.tensor([1, 2, 0])],
        truth,
        recovered_labels=[2, 1, 0],
        true_labels=[0, 1, 1],
        prior=truth.mean(dim=0),
        pool=torch.cat([truth, truth.flip(-1)]),
        pool_indices=[0, 1, 2],
    )
    assert report.order == (2, 0, 1)
    assert report.asr == 1.0 and min(report.ssim) == pytest.approx(1.0)
    assert report.label_accuracy == pytest.approx(2 / 3)
    assert report.identifiability == 1.0
    assert 0.0 < report.identifiability_chance < 1.0
    assert report.identifiability_excess == 1.0
    assert 0.01 <= report.identifiability_p_value <= 1.0  # among six pool images, three hits are weak evidence
    assert min(report.relative_leakage) > 0
    assert set(report.to_dict()["summary"]) >= {"psnr_mean", "ssim_max", "asr", "identifiability_p_value"}


def test_attack_success_rate_threshold() -> None:
    assert attack_success_rate(torch.tensor([0.95, 0.9, 0.2, 0.89])) == 0.5
    assert attack_success_rate(torch.tensor([0.5]), threshold=0.4) == 1.0


def test_label_accuracy_is_order_free_multiset() -> None:
    assert label_accuracy([1, 0, 0], [0, 0, 1]) == 1.0
    assert label_accuracy([0, 0, 0], [0, 1, 1]) == pytest.approx(1 / 3)


def test_relative_leakage_is_zero_for_the_prior_itself() -> None:
    """Reconstructing exactly the prior gains nothing over it."""
    recon, truth = _pair((2, 1, 16, 16))
    prior = recon[0]
    value = relative_leakage(prior.expand_as(truth), truth, prior)
    assert torch.allclose(value, torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_identifiability_misses_when_nearest_is_another_image() -> None:
    """A round image counts as identified only when some reconstruction's most similar pool image is that one."""
    _, pool = _pair((3, 1, 16, 16))
    result = identifiability(pool[torch.tensor([0, 2])], [0, 1], pool)
    assert result.identified == (True, False)  # image 2's reconstruction lands on 2, which the round did not use
    assert result.best_matches == (0, 2)
    assert result.share == 0.5


def test_lpips_is_skipped_without_local_weights() -> None:
    """Without the backbone weights on disk LPIPS returns None and the report says why (nothing is downloaded)."""
    recon, truth = _pair((1, 1, 16, 16))
    if lpips_backbone_path() is not None:
        pytest.skip("LPIPS backbone weights are present on this machine")
    assert lpips(recon, truth) is None
    assert LPIPS_SKIPPED_REASON in evaluate_reconstruction(recon, truth, with_lpips=True).notes


@pytest.mark.parametrize(
    ("recon", "truth", "message"),
    [
        (torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16), "differ in shape"),
        (torch.rand(16, 16), torch.rand(16, 16), r"\(N, C, H, W\)"),
        (torch.full((1, 1, 16, 16), float("nan")), torch.rand(1, 1, 16, 16), "NaN or Inf"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), "at least 11 px"),
    ],
)
def test_bad_metric_input_raises_one_clear_error(recon: torch.Tensor, truth: torch.Tensor, message: str) -> None:
    with pytest.raises(MedPFLError, match=message):
        ssim(recon, truth)
