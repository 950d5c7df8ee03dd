"""A functional copy of the attacked model that simulates the site's update on dummy images.

Everything is a pure function of ``(params, images, labels)`` so it composes with ``torch.func.grad`` (the
client's gradient) inside ``torch.func.vmap`` (attack restarts batched in one tensor), and the attack
differentiates through it with ordinary autograd.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_
from torch.nn.modules.batchnorm import _BatchNorm

from medpfl_app.attacks.knowledge import AttackerKnowledge, UpdateKind
from medpfl_app.errors import MedPFLError

UpdateMode = Literal["gradient", "approximate", "unrolled"]
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SimulatedUpdate:
    """What the simulated client produced: its update and, per BN layer, its (normalised) running statistics."""

    update: Params
    bn_stats: dict[str, torch.Tensor]


class Victim:
    """The model at the weights before the update, as pure functions of its parameters.

    Args:
        knowledge: What the attacker knows; its model is copied, never modified.
    """

    def __init__(self, knowledge: AttackerKnowledge) -> None:
        module = copy.deepcopy(knowledge.model).cpu().float()
        state = {k: v for k, v in knowledge.weights.items() if k in module.state_dict()}
        module.load_state_dict(state, strict=False)
        module.eval()  # dropout off: the attack cannot know the site's dropout masks
        self.bn_layers: dict[str, float] = {}
        self.bn_initial: dict[str, torch.Tensor] = {}
        bn_modules = [(n, m) for n, m in module.named_modules() if isinstance(m, _BatchNorm)]
        self.train_bn = bool(bn_modules) and knowledge.bn_train_mode
        if self.train_bn:
            for name, bn in bn_modules:
                if bn.momentum is None:
                    raise MedPFLError(
                        f"BatchNorm layer {name!r} uses a cumulative average (momentum=None)",
                        fix="attack models whose BatchNorm layers use an exponential momentum",
                    )
                prefix = f"{name}." if name else ""
                self.bn_layers[prefix] = float(bn.momentum)
                self.bn_initial[prefix + "running_mean"] = bn.running_mean.detach().clone()
                self.bn_initial[prefix + "running_var"] = bn.running_var.detach().clone()
                bn.train()
                bn.register_forward_pre_hook(self._capture)
            # Batch statistics without in-place running-stat writes, which vmap cannot batch.
            replace_all_batch_norm_modules_(module)
        self.module = module
        self.params: Params = {n: p.detach().clone() for n, p in module.named_parameters()}
        self.buffers: Params = {n: b.detach().clone() for n, b in module.named_buffers()}
        self._sink: list[torch.Tensor] | None = None

    def _capture(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self._sink is not None:
            self._sink.append(inputs[0])

    def logits(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        """Forward pass at ``params``."""
        return functional_call(self.module, (params, self.buffers), (images,))

    def loss_and_stats(
        self, params: Params, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Mean cross-entropy (hard or soft targets) and each BN layer's batch mean and unbiased variance."""
        sink: list[torch.Tensor] = []
        self._sink = sink
        try:
            logits = self.logits(params, images)
        finally:
            self._sink = None
        loss = F.cross_entropy(logits, targets)
        stats = []
        for features in sink:
            dims = [d for d in range(features.ndim) if d != 1]
            stats.append((features.mean(dim=dims), features.var(dim=dims, unbiased=True)))
        return loss, stats

    def simulate(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        mode: UpdateMode,
        steps: int = 1,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        optimizer: str = "sgd",
    ) -> SimulatedUpdate:
        """Simulate the site on ``images``: one gradient, or ``steps`` local steps returning the weight difference.

        BN statistics are returned normalised as the batch statistics a single step would have recorded:
        ``(r_S − (1−m)^S·r_0) / (1 − (1−m)^S)``, so that they compare directly with `observed_bn_stats`.
        """
        get_grad = grad(self.loss_and_stats, has_aux=True)
        if mode in ("gradient", "approximate"):
            gradient, stats = get_grad(self.params, images, targets)
            running = self._running_from_constant(stats, steps if mode == "approximate" else 1)
            return SimulatedUpdate(gradient, running)
        if learning_rate is None:
            raise MedPFLError(
                "unrolled FedAvg inversion needs the site's learning rate",
                fix="send 'learning_rate' in the update meta, or use update_mode='approximate'",
            )
        batch = batch_size or images.shape[0]
        params = dict(self.params)
        adam_m = {n: torch.zeros_like(p) for n, p in params.items()}
        adam_v = {n: torch.zeros_like(p) for n, p in params.items()}
        running = {k: v.clone() for k, v in self.bn_initial.items()}
        count = images.shape[0]
        for step in range(steps):
            start = (step * batch) % count
            index = [(start + i) % count for i in range(min(batch, count))]
            gradient, stats = get_grad(params, images[index], targets[index])
            self._advance_running(running, stats)
            if optimizer == "adam":
                params = _adam_step(params, gradient, adam_m, adam_v, step + 1, learning_rate)
            else:
                params = {n: params[n] - learning_rate * gradient[n] for n in params}
        delta = {n: params[n] - self.params[n] for n in params}
        return SimulatedUpdate(delta, self._normalise_running(running, steps))

    def _running_from_constant(
        self, stats: list[tuple[torch.Tensor, torch.Tensor]], steps: int
    ) -> dict[str, torch.Tensor]:
        del steps  # a constant batch statistic over S steps normalises to itself
        out: dict[str, torch.Tensor] = {}
        for prefix, (mean, var) in zip(self.bn_layers, stats):
            out[prefix + "running_mean"] = mean
            out[prefix + "running_var"] = var
        return out

    def _advance_running(self, running: dict[str, torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for (prefix, momentum), (mean, var) in zip(self.bn_layers.items(), stats):
            running[prefix + "running_mean"] = (1 - momentum) * running[prefix + "running_mean"] + momentum * mean
            running[prefix + "running_var"] = (1 - momentum) * running[prefix + "running_var"] + momentum * var

    def _normalise_running(self, running: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, momentum in self.bn_layers.items():
            decay = (1 - momentum) ** steps
            for suffix in ("running_mean", "running_var"):
                key = prefix + suffix
                out[key] = (running[key] - decay * self.bn_initial[key]) / (1 - decay)
        return out

    def observed_bn_stats(self, knowledge: AttackerKnowledge, steps: int) -> dict[str, torch.Tensor]:
        """The batch statistics implied by the shared running buffers (Hatamizadeh et al.'s momentum inversion).

        Exact for one BN update, ``x = (r_new − (1−m)·r_old)/m``; over S steps it is the momentum-weighted mixture
        of the steps' batch statistics, which the simulation reproduces in the same normalisation.
        """
        if not knowledge.bn_running_stats:
            return {}
        out = {}
        for prefix, momentum in self.bn_layers.items():
            decay = (1 - momentum) ** steps
            for suffix in ("running_mean", "running_var"):
                key = prefix + suffix
                if key in knowledge.bn_running_stats:
                    out[key] = (knowledge.bn_running_stats[key] - decay * self.bn_initial[key]) / (1 - decay)
        return out


def _adam_step(
    params: Params, gradient: Params, m: Params, v: Params, step: int, lr: float, betas: tuple[float, float] = (0.9, 0.999)
) -> Params:
    out = {}
    for n in params:
        m[n] = betas[0] * m[n] + (1 - betas[0]) * gradient[n]
        v[n] = betas[1] * v[n] + (1 - betas[1]) * gradient[n] ** 2
        m_hat = m[n] / (1 - betas[0] ** step)
        v_hat = v[n] / (1 - betas[1] ** step)
        # The tiny offset keeps sqrt differentiable where a gradient entry is exactly zero.
        out[n] = params[n] - lr * m_hat / (torch.sqrt(v_hat + 1e-30) + 1e-8)
    return out


def resolve_mode(knowledge: AttackerKnowledge, requested: str) -> UpdateMode:
    """Pick how to simulate the update: a gradient is matched directly; a weight difference approximately or unrolled."""
    if knowledge.kind is UpdateKind.GRADIENT:
        return "gradient"
    if requested == "approximate":
        return "approximate"
    if requested == "unrolled":
        if knowledge.learning_rate is None:
            raise MedPFLError(
                "unrolled FedAvg inversion needs the site's learning rate, and the update's meta lacks it",
                fix="send 'learning_rate' in the update meta, or use update_mode='approximate'",
            )
        return "unrolled"
    if requested != "auto":
        raise MedPFLError(f"unknown update_mode {requested!r}", fix="use auto, approximate or unrolled")
    return "unrolled" if knowledge.learning_rate is not None and knowledge.local_steps > 1 else "approximate"


def target_update(knowledge: AttackerKnowledge, mode: UpdateMode) -> Params:
    """The tensors the simulation must match: the gradient, ``−Δ/(η·S)`` (approximate) or ``Δ`` (unrolled)."""
    if mode == "gradient" or mode == "unrolled":
        return {n: v.float() for n, v in knowledge.update.items()}
    scale = knowledge.local_steps * (knowledge.learning_rate or 1.0)
    return {n: -v.float() / scale for n, v in knowledge.update.items()}


def update_as_gradient(knowledge: AttackerKnowledge) -> Mapping[str, torch.Tensor]:
    """A gradient-like view of the update (for label recovery): the gradient itself or ``−Δ``."""
    if knowledge.kind is UpdateKind.GRADIENT:
        return knowledge.update
    return {n: -v for n, v in knowledge.update.items()}
