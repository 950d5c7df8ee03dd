"""One call that scores an attack's output against the truth: matching, image metrics, labels, extras."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from medpfl_app.metrics.image import check_image_pair, match_reconstructions, mse, psnr, ssim
from medpfl_app.metrics.leakage import (
    DEFAULT_SUCCESS_SSIM,
    LPIPS_SKIPPED_REASON,
    attack_success_rate,
    identifiability,
    label_accuracy,
    lpips,
    relative_leakage,
)


@dataclass(frozen=True)
class LeakageReport:
    """Per-image scores (in ground-truth order) and their summaries; JSON-ready through `to_dict`.

    ``order[i]`` is the reconstruction matched to original ``i``. Worst-case values are the most-leaked image.
    ``identifiability`` is the share of the originals identified among the pool, with its chance baseline, excess
    over chance and p-value (`medpfl_app.metrics.leakage.identifiability`); None without a pool.
    """

    order: tuple[int, ...]
    mse: tuple[float, ...]
    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    asr: float
    ssim_threshold: float
    label_accuracy: float | None = None
    relative_leakage: tuple[float, ...] | None = None
    identifiability: float | None = None
    identifiability_chance: float | None = None
    identifiability_excess: float | None = None
    identifiability_p_value: float | None = None
    lpips: tuple[float, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def summary(self) -> dict[str, float]:
        """Means plus worst cases (max PSNR/SSIM, min MSE)."""
        out = {
            "mse_mean": _mean(self.mse),
            "mse_min": min(self.mse),
            "psnr_mean": _mean(self.psnr),
            "psnr_max": max(self.psnr),
            "ssim_mean": _mean(self.ssim),
            "ssim_max": max(self.ssim),
            "asr": self.asr,
        }
        if self.label_accuracy is not None:
            out["label_accuracy"] = self.label_accuracy
        if self.relative_leakage is not None:
            out["relative_leakage_max"] = max(self.relative_leakage)
        for key in ("identifiability", "identifiability_chance", "identifiability_excess", "identifiability_p_value"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.lpips is not None:
            out["lpips_mean"] = _mean(self.lpips)
        return out

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "summary": self.summary}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _floats(values: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _optional_label_accuracy(
    recovered: Sequence[int] | torch.Tensor | None, true: Sequence[int] | torch.Tensor | None
) -> float | None:
    """Label accuracy when both the recovered and the true labels are known, else None."""
    return label_accuracy(recovered, true) if recovered is not None and true is not None else None


def _optional_lpips(recon: torch.Tensor, truth: torch.Tensor) -> tuple[tuple[float, ...] | None, tuple[str, ...]]:
    """LPIPS per image, or None with the note saying why it was skipped (no local backbone weights)."""
    values = lpips(recon, truth)
    if values is None:
        return None, (LPIPS_SKIPPED_REASON,)
    return _floats(values), ()


def evaluate_reconstruction(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    *,
    recovered_labels: Sequence[int] | torch.Tensor | None = None,
    true_labels: Sequence[int] | torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    pool: torch.Tensor | None = None,
    pool_indices: Sequence[int] | None = None,
    ssim_threshold: float = DEFAULT_SUCCESS_SSIM,
    with_lpips: bool = False,
) -> LeakageReport:
    """Clip reconstructions to [0, 1], match them to ``originals`` (Hungarian on MSE) and score them.

    Args:
        reconstructions: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` attack output.
        originals: The true images in [0, 1], same shape.
        recovered_labels: Labels the attack recovered (scored as a multiset).
        true_labels: The true labels.
        prior: An uninformed guess image for the relative-leakage score.
        pool: The site's images for identifiability; ``pool_indices[i]`` is original ``i``'s index in it. All
            reconstructions are identified against the originals as a set (no pairing: see
            `medpfl_app.metrics.leakage.identifiability`).
        pool_indices: See ``pool``.
        ssim_threshold: SSIM at which an image counts as successfully attacked.
        with_lpips: Also compute LPIPS where its backbone weights are present locally.
    """
    check_image_pair(reconstructions, originals)
    recon = reconstructions.detach().double().clamp(0.0, 1.0)
    truth = originals.detach().double()
    order = match_reconstructions(recon, truth)
    recon = recon[order]
    ssim_values = ssim(recon, truth)
    ident = (
        identifiability(recon, pool_indices, pool.detach().double())
        if pool is not None and pool_indices is not None
        else None
    )
    lpips_values, notes = _optional_lpips(recon, truth) if with_lpips else (None, ())
    return LeakageReport(
        order=tuple(int(i) for i in order),
        mse=_floats(mse(recon, truth)),
        psnr=_floats(psnr(recon, truth)),
        ssim=_floats(ssim_values),
        asr=attack_success_rate(ssim_values, threshold=ssim_threshold),
        ssim_threshold=ssim_threshold,
        label_accuracy=_optional_label_accuracy(recovered_labels, true_labels),
        relative_leakage=_floats(relative_leakage(recon, truth, prior.double())) if prior is not None else None,
        identifiability=ident.share if ident is not None else None,
        identifiability_chance=ident.chance_mean if ident is not None else None,
        identifiability_excess=ident.excess if ident is not None else None,
        identifiability_p_value=ident.p_value if ident is not None else None,
        lpips=lpips_values,
        notes=notes,
    )
