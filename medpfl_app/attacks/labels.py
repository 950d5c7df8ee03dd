"""Label recovery from the last linear layer's gradient, a reusable first step of every attack.

For cross-entropy with mean reduction, the bias gradient of class k is ``(1/B)·Σ_i (p_ik − y_ik)``: negative for
classes present in the batch (their one-hot term dominates) and positive otherwise. The weight gradient row k is
``(1/B)·Σ_i (p_ik − y_ik)·a_i`` with features ``a_i ≥ 0`` after sigmoid/ReLU, so the same sign argument applies to
row sums and row minima when the layer has no bias. Label order within a batch is never recoverable.

The sign rule fails when the model already gives a present class a mean probability above its share
``n_k/B`` (common for untrained, saturated networks). The ``whitebox`` method (after Wainakh et al.) removes that
bias by estimating ``p̄`` from the model's own outputs on random inputs: ``n_k ≈ B·(p̄_k − b_k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn

from medpfl_app.errors import MedPFLError

LabelMethod = Literal["auto", "idlg", "analytic", "yin", "bias-corrected", "whitebox"]


def last_linear_names(model: nn.Module) -> tuple[str, str | None]:
    """Names of the last linear layer's weight and bias (bias None when absent)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise MedPFLError(
            f"{type(model).__name__} has no nn.Linear classifier layer to recover labels from",
            fix="pass the known labels (labels=...) or use a model with a linear head",
        )
    name, module = last
    prefix = f"{name}." if name else ""
    return f"{prefix}weight", (f"{prefix}bias" if module.bias is not None else None)


def recover_labels(
    weight_grad: torch.Tensor,
    bias_grad: torch.Tensor | None,
    num_images: int,
    *,
    method: LabelMethod = "auto",
    mean_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Recover ``num_images`` labels (sorted) from the last linear layer's gradient.

    Args:
        weight_grad: ``(K, F)`` gradient (or negated weight difference) of the last linear weight.
        bias_grad: ``(K,)`` gradient of its bias, or None.
        num_images: Labels to return.
        method: ``idlg`` (one image: the row with the most negative sum), ``analytic`` (the ``num_images`` most
            negative bias entries; exact for distinct labels), ``yin`` (per-class minimum of the weight gradient;
            distinct labels), ``bias-corrected`` (estimates repeated labels from the bias magnitudes),
            ``whitebox`` (counts ``B·(p̄ − b)`` with ``mean_probs`` as p̄), or ``auto`` (iDLG for one image, then
            whitebox, bias-corrected or yin, whichever the inputs allow).
        mean_probs: ``(K,)`` the model's mean softmax output, estimated on random inputs (see
            `expected_probabilities`); only for ``whitebox``. Valid only when ``bias_grad`` is on gradient scale.

    Returns:
        Long tensor of ``num_images`` class indices, ascending.
    """
    if weight_grad.ndim != 2:
        raise MedPFLError(
            f"last-layer gradient must be 2-D (K, F), got {tuple(weight_grad.shape)}", fix="pass a linear layer"
        )
    if num_images < 1:
        raise MedPFLError(f"num_images must be positive, got {num_images}", fix="declare the batch size")
    num_classes = weight_grad.shape[0]
    if method == "auto":
        if num_images == 1:
            method = "idlg"
        elif bias_grad is None:
            method = "yin"
        else:
            method = "whitebox" if mean_probs is not None else "bias-corrected"
    if method == "idlg":
        if num_images != 1:
            raise MedPFLError("iDLG label recovery handles one image only", fix="use method 'bias-corrected' or 'yin'")
        return weight_grad.sum(dim=1).argmin().reshape(1)
    if method in ("analytic", "bias-corrected") and bias_grad is None:
        raise MedPFLError(f"label method {method!r} needs the last layer's bias gradient", fix="use method 'yin'")
    if method == "analytic":
        return _take_most_negative(bias_grad, num_images, num_classes)  # type: ignore[arg-type]
    if method == "yin":
        return _take_most_negative(weight_grad.min(dim=1).values, num_images, num_classes)
    if method == "bias-corrected":
        return _bias_corrected(bias_grad, num_images)  # type: ignore[arg-type]
    if method == "whitebox":
        if mean_probs is None:
            raise MedPFLError("label method 'whitebox' needs the model's mean probabilities", fix="pass mean_probs")
        return _counts_to_labels(num_images * (mean_probs.double() - bias_grad.double()), num_images)  # type: ignore[union-attr]
    raise MedPFLError(f"unknown label method {method!r}", fix="use auto, idlg, analytic, yin or bias-corrected")


def _take_most_negative(scores: torch.Tensor, num_images: int, num_classes: int) -> torch.Tensor:
    if num_images <= num_classes:
        return scores.argsort()[:num_images].sort().values
    # More images than classes: every class with a negative score appears; fill the rest with the strongest.
    present = scores.argsort()
    repeats = present[torch.arange(num_images) % num_classes]
    return repeats.sort().values


def _bias_corrected(bias_grad: torch.Tensor, num_images: int) -> torch.Tensor:
    """Estimate label counts from ``b_k = p̄_k − n_k/B``.

    Every class with a negative entry is present at least once; the remaining slots go, one at a time, to the
    class with the largest estimated surplus ``B·(p̄ − b_k) − n_k``, with ``p̄`` estimated from the absent
    (positive) classes. This handles repeated labels; for distinct labels it falls back to the sign rule.
    """
    bias = bias_grad.double()
    negative = torch.nonzero(bias < 0).flatten()
    if negative.numel() >= num_images:
        return _take_most_negative(bias, num_images, bias.numel())
    positive = bias[bias > 0]
    mean_prob = float(positive.mean()) if positive.numel() else 1.0 / bias.numel()
    counts = torch.zeros(bias.numel(), dtype=torch.long)
    counts[negative] = 1
    surplus = num_images * (mean_prob - bias) - counts.double()
    for _ in range(num_images - int(counts.sum())):
        index = int(surplus.argmax())
        counts[index] += 1
        surplus[index] -= 1.0
    return torch.repeat_interleave(torch.arange(bias.numel()), counts)


def _counts_to_labels(estimated: torch.Tensor, num_images: int) -> torch.Tensor:
    """Round estimated per-class counts to whole counts summing to ``num_images`` (largest surplus first)."""
    counts = torch.zeros(estimated.numel(), dtype=torch.long)
    surplus = estimated.clone()
    for _ in range(num_images):
        index = int(surplus.argmax())
        counts[index] += 1
        surplus[index] -= 1.0
    return torch.repeat_interleave(torch.arange(estimated.numel()), counts)


def expected_probabilities(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], image_shape: tuple[int, ...], *, samples: int = 32, seed: int = 0
) -> torch.Tensor:
    """The model's mean softmax output on ``samples`` uniform-noise images: the attacker's estimate of ``p̄``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = logits_fn(torch.rand((samples, *image_shape), generator=generator))
    return torch.softmax(logits.double(), dim=-1).mean(dim=0)


def recover_labels_from_update(
    model: nn.Module,
    update: Mapping[str, torch.Tensor],
    num_images: int,
    *,
    method: LabelMethod = "auto",
    mean_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """`recover_labels` on an update dict (a gradient, or the negated weight difference of a local update)."""
    weight_name, bias_name = last_linear_names(model)
    if weight_name not in update:
        raise MedPFLError(
            f"the update lacks the last linear layer {weight_name!r} needed for label recovery",
            fix="share the classifier layer in the update or pass the known labels",
        )
    bias = update.get(bias_name) if bias_name else None
    return recover_labels(update[weight_name], bias, num_images, method=method, mean_probs=mean_probs)
