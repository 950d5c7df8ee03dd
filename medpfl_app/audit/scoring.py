"""Site-side scoring of reconstructions against the images the site really used: scalars only, nothing else.

Pure functions; `medpfl_app.nvflare.site.scorer` is the NVFlare adapter. What leaves the site is exactly
`score_reconstructions`' return value: named floats and counts, never an image, a sample index or a path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medpfl_app.contracts.score import SCORE_KEYS, ScoreReply, ScoreStatus, check_scalars_only
from medpfl_app.errors import MedPFLError

__all__ = ["SCORE_KEYS", "check_scalars_only", "pair_reconstructions", "score_reconstructions"]


def score_reconstructions(
    reconstructions: torch.Tensor | np.ndarray,
    used_images: torch.Tensor,
    *,
    used_positions: Sequence[int],
    pool: torch.Tensor,
    recovered_labels: Sequence[int] | None = None,
    true_labels: Sequence[int] | None = None,
    ssim_threshold: float = 0.9,
) -> dict[str, Any]:
    """Compare the server's reconstructions with the images behind the update; return scalar scores only.

    When the attack reconstructed fewer images than the update used (a bounded audit), each reconstruction is
    paired with a distinct used image by Hungarian matching on MSE, which favours the attacker (worst case for the
    site); with more reconstructions than images, the best-matching ones are scored. Identifiability is measured
    without that pairing (it would favour hits even for noise): the share of the used images that are, for some
    reconstruction, the most similar of all the site's training images (SSIM), with the share noise and other
    uninformative images reach (chance), the excess over chance and the p-value
    (`medpfl_app.metrics.leakage.identifiability`). It is reported only when the attack returned at least one
    reconstruction per used image.

    Args:
        reconstructions: ``(N, C, H, W)`` from the server, in [0, 1].
        used_images: ``(M, C, H, W)`` the distinct images the site trained on in that round.
        used_positions: For each used image, its position in ``pool``.
        pool: ``(P, C, H, W)`` all of the site's training images (identifiability is measured among them).
        recovered_labels: The server's labels per reconstruction.
        true_labels: The true label of each used image.
        ssim_threshold: SSIM from which an image counts as reconstructed.

    Returns:
        ``{"status": "scored", "psnr_mean", "psnr_max", "ssim_mean", "ssim_max", "attack_success_rate",
        "label_accuracy", "identifiability", "identifiability_chance", "identifiability_excess",
        "identifiability_p_value", "relative_leakage", ...}`` — floats or None, plus counts. Identification is
        significantly above chance when ``identifiability_p_value`` is below
        `medpfl_app.metrics.leakage.IDENTIFIABILITY_ALPHA` (0.01).
    """
    from medpfl_app.metrics import evaluate_reconstruction

    recon = torch.as_tensor(np.asarray(reconstructions, dtype=np.float32)).clamp(0, 1)
    rows, cols = pair_reconstructions(recon, used_images)
    labels_hat = None if recovered_labels is None else [int(recovered_labels[r]) for r in rows]
    labels_true = None if true_labels is None else [int(true_labels[c]) for c in cols]
    report = evaluate_reconstruction(
        recon[rows],
        used_images[cols].float(),
        recovered_labels=labels_hat,
        true_labels=labels_true,
        prior=pool.float().mean(dim=0),  # uninformed about which patient: the site's mean image
        ssim_threshold=ssim_threshold,
    )
    ident = _identifiability(recon, used_images, used_positions, pool)
    scores = _score_reply(
        report,
        ident,
        ssim_threshold=ssim_threshold,
        images_used=int(used_images.shape[0]),
        reconstructions_scored=len(rows),
    )
    check_scalars_only(scores)
    return scores


def _identifiability(
    recon: torch.Tensor, used_images: torch.Tensor, used_positions: Sequence[int], pool: torch.Tensor
) -> Any:
    """`medpfl_app.metrics.identifiability` of the used images among the pool, or None with too few reconstructions.

    Identifiability needs a reconstruction for every used image. With fewer (the attack solved a smaller problem
    than the update), at most N of the M used images can be identified, so the share is capped at N/M by
    construction: a low value would describe the reduced attack, not what the update leaks. Not reported then.
    It never uses the Hungarian pairing, which looks at the originals and so turns noise into hits.
    """
    from medpfl_app.metrics import identifiability

    if recon.shape[0] < used_images.shape[0]:
        return None
    return identifiability(recon, [int(p) for p in used_positions], pool.float())


def _score_reply(
    report: Any, ident: Any, *, ssim_threshold: float, images_used: int, reconstructions_scored: int
) -> dict[str, Any]:
    """The scalar reply (`ScoreReply.to_json`) from the paired report and the identifiability (None: not measured)."""
    relative = report.relative_leakage
    return ScoreReply(
        status=ScoreStatus.SCORED,
        psnr_mean=_finite(np.mean(report.psnr)),
        psnr_max=_finite(np.max(report.psnr)),
        ssim_mean=_finite(np.mean(report.ssim)),
        ssim_max=_finite(np.max(report.ssim)),
        attack_success_rate=_finite(report.asr),
        label_accuracy=_finite(report.label_accuracy),
        identifiability=_finite(ident.share) if ident is not None else None,
        identifiability_chance=_finite(ident.chance_mean) if ident is not None else None,
        identifiability_excess=_finite(ident.excess) if ident is not None else None,
        identifiability_p_value=_finite(ident.p_value) if ident is not None else None,
        relative_leakage=_finite(max(relative)) if relative else None,
        ssim_threshold=float(ssim_threshold),
        images_used=images_used,
        reconstructions_scored=reconstructions_scored,
    ).to_json()


def pair_reconstructions(
    reconstructions: torch.Tensor | np.ndarray, used_images: torch.Tensor
) -> tuple[list[int], list[int]]:
    """Pair reconstructions with distinct used images by Hungarian matching on pixel distance.

    The pairing `score_reconstructions` scores, and the one the site uses to match demo originals to
    reconstructions (`medpfl_app.audit.demo_originals`), so a thumbnail shows the original that was scored.

    Args:
        reconstructions: ``(N, C, H, W)`` in [0, 1].
        used_images: ``(M, C, H, W)`` the images behind the update.

    Returns:
        ``(rows, cols)``: reconstruction ``rows[k]`` is paired with used image ``cols[k]`` (``min(N, M)`` pairs).

    Raises:
        MedPFLError: The shapes differ, or either side is empty.
    """
    from scipy.optimize import linear_sum_assignment

    recon = torch.as_tensor(np.asarray(reconstructions, dtype=np.float32)).clamp(0, 1)
    if recon.ndim != used_images.ndim or tuple(recon.shape[1:]) != tuple(used_images.shape[1:]):
        raise MedPFLError(
            f"reconstructions {tuple(recon.shape)} do not match the site's images {tuple(used_images.shape)}",
            fix="the server attacked another architecture or image size than the site trained",
        )
    if used_images.shape[0] == 0 or recon.shape[0] == 0:
        raise MedPFLError("nothing to score: no reconstruction or no recorded image", fix="train before scoring")
    cost = torch.cdist(recon.flatten(1).double(), used_images.flatten(1).double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return rows.tolist(), cols.tolist()


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isinf(value):  # identical images give infinite PSNR: report a capped, JSON-safe number
        return 100.0 if value > 0 else -100.0
    return None if math.isnan(value) else value
