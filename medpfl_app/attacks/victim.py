"""A functional copy of the attacked model that simulates the site's update for R restarts at once.

Each restart gets its own view of the pre-update parameters (``θ.expand(R, …)``, no copy) and its own dummy
images; the forward pass is vectorised over restarts with ``torch.func.vmap`` (convolutions become grouped
convolutions), and the client's gradient is taken with ordinary ``autograd.grad(create_graph=True)`` with respect
to those views: because restart r only touches view r, slice r of that gradient is restart r's own gradient.
This keeps the double backward on native kernels instead of nesting functorch transforms.

BatchNorm layers in train mode are swapped for `BatchStatisticsNorm`, the same normalisation written as
``var_mean`` plus an affine map: identical values, no in-place running-statistics writes (which vmap cannot
batch), and a double backward about a sixth cheaper than the fused kernel's (see `BatchStatisticsNorm`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from medpfl_app.attacks.batch_statistics_norm import BatchStatisticsNorm
from medpfl_app.attacks.functional_adam import adam_step
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.update_modes import Params, UpdateMode, resolve_mode, target_update, update_as_gradient
from medpfl_app.errors import MedPFLError

__all__ = [
    "BatchStatisticsNorm",
    "Params",
    "SimulatedUpdate",
    "UpdateMode",
    "Victim",
    "resolve_mode",
    "target_update",
    "update_as_gradient",
]


@dataclass(frozen=True)
class SimulatedUpdate:
    """What the simulated clients produced, per restart: updates ``(R, …)`` and normalised BN statistics ``(R, C)``."""

    update: Params
    bn_stats: dict[str, torch.Tensor]


class Victim:
    """The model at the weights before the update, evaluated for R restarts in one vectorised call.

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
                # Optional in torch's typing (None with track_running_stats=False, which fails here as before).
                self.bn_initial[prefix + "running_mean"] = cast(torch.Tensor, bn.running_mean).detach().clone()
                self.bn_initial[prefix + "running_var"] = cast(torch.Tensor, bn.running_var).detach().clone()
                batch_norm = BatchStatisticsNorm(bn)
                batch_norm.register_forward_pre_hook(self._capture)
                parent, _, child = name.rpartition(".")
                module.get_submodule(parent)._modules[child] = batch_norm
        self.module = module
        # Leaves that require grad only so that autograd can differentiate with respect to their per-restart views.
        self.params: Params = {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}
        for param in module.parameters():
            param.requires_grad_(False)
        self.buffers: Params = {n: b.detach().clone() for n, b in module.named_buffers()}
        self._sink: list[torch.Tensor] | None = None

    def _capture(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self._sink is not None:
            self._sink.append(inputs[0])

    def _single(
        self, params: Params, images: torch.Tensor, with_stats: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sink: list[torch.Tensor] = []
        self._sink = sink if with_stats else None
        try:
            logits = functional_call(self.module, (params, self.buffers), (images,))
        finally:
            self._sink = None
        stats: list[torch.Tensor] = []
        for features in sink:  # BN inputs, reduced inside vmap so nothing batched escapes it
            dims = [d for d in range(features.ndim) if d != 1]
            stats += [features.mean(dim=dims), features.var(dim=dims, unbiased=True)]
        return logits, stats

    def forward(
        self, params: Params, images: torch.Tensor, *, with_stats: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(R, B, K)`` and BN batch statistics ``[mean, var]`` per layer, each ``(R, C)``.

        Args:
            params: Per-restart parameters ``(R, …)``.
            images: ``(R, B, C, H, W)``.
            with_stats: Compute the BN statistics (False returns an empty list; they cost a full-resolution
                variance per BN layer and are only needed by the BN prior).
        """
        return vmap(partial(self._single, with_stats=with_stats), in_dims=(0, 0), randomness="error")(params, images)

    def expanded(self, restarts: int) -> Params:
        """Per-restart views of the pre-update parameters (no copy)."""
        return {n: p.expand(restarts, *p.shape) for n, p in self.params.items()}

    def logits(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        """Logits of one parameter set on a plain batch ``(B, C, H, W)`` (used for label estimates)."""
        return self._single(params, images)[0]

    def _loss_grad(
        self, params: Params, images: torch.Tensor, targets: torch.Tensor, with_stats: bool = True
    ) -> tuple[Params, list[torch.Tensor]]:
        logits, stats = self.forward(params, images, with_stats=with_stats)
        restarts, batch, classes = logits.shape
        flat_targets = targets.reshape(restarts * batch, classes) if targets.ndim == 3 else targets.repeat(restarts)
        per_image = F.cross_entropy(logits.reshape(restarts * batch, classes), flat_targets, reduction="none")
        loss = per_image.reshape(restarts, batch).mean(dim=1).sum()  # each restart's mean loss, as the site computes
        names = list(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        return dict(zip(names, grads)), stats

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
        bn_stats: bool = True,
    ) -> SimulatedUpdate:
        """Simulate the site on each restart's ``images`` ``(R, N, C, H, W)``.

        Args:
            images: Dummy images per restart.
            targets: Labels ``(N,)`` shared by all restarts, or soft labels ``(R, N, K)``.
            mode: ``gradient``/``approximate`` (one gradient at the pre-update weights) or ``unrolled`` (``steps``
                local steps on consecutive mini-batches of ``batch_size``, returning the weight difference).
            steps: Local steps (unrolled mode).
            learning_rate: Local learning rate (unrolled mode).
            batch_size: Local batch size (unrolled mode).
            optimizer: ``sgd`` or ``adam`` (unrolled mode).
            bn_stats: Also return the BN statistics; False skips them (``bn_stats`` is then empty) and leaves
                the update unchanged.

        BN statistics are returned normalised as the batch statistics a single step would have recorded,
        ``(r_S − (1−m)^S·r_0) / (1 − (1−m)^S)``, so that they compare directly with `observed_bn_stats`.
        """
        restarts = images.shape[0]
        params0 = self.expanded(restarts)
        if mode in ("gradient", "approximate"):
            gradient, stats = self._loss_grad(params0, images, targets, bn_stats)
            return SimulatedUpdate(gradient, self._stats_dict(stats) if bn_stats else {})
        if learning_rate is None:
            raise MedPFLError(
                "unrolled FedAvg inversion needs the site's learning rate",
                fix="send 'learning_rate' in the update meta, or use update_mode='approximate'",
            )
        batch = batch_size or images.shape[1]
        params = dict(params0)
        adam_m = {n: torch.zeros_like(p) for n, p in params.items()}
        adam_v = {n: torch.zeros_like(p) for n, p in params.items()}
        running = {k: v.expand(restarts, *v.shape) for k, v in self.bn_initial.items()}
        count = images.shape[1]
        for step in range(steps):
            start = (step * batch) % count
            index = [(start + i) % count for i in range(min(batch, count))]
            step_targets = targets[:, index] if targets.ndim == 3 else targets[index]
            gradient, stats = self._loss_grad(params, images[:, index], step_targets, bn_stats)
            if bn_stats:
                self._advance_running(running, stats)
            if optimizer == "adam":
                params = adam_step(params, gradient, adam_m, adam_v, step + 1, learning_rate)
            else:
                params = {n: params[n] - learning_rate * gradient[n] for n in params}
        delta = {n: params[n] - params0[n] for n in params}
        return SimulatedUpdate(delta, self._normalise_running(running, steps) if bn_stats else {})

    def _stats_dict(self, stats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, prefix in enumerate(self.bn_layers):
            out[prefix + "running_mean"] = stats[2 * i]
            out[prefix + "running_var"] = stats[2 * i + 1]
        return out

    def _advance_running(self, running: dict[str, torch.Tensor], stats: list[torch.Tensor]) -> None:
        for i, (prefix, momentum) in enumerate(self.bn_layers.items()):
            for j, suffix in enumerate(("running_mean", "running_var")):
                key = prefix + suffix
                running[key] = (1 - momentum) * running[key] + momentum * stats[2 * i + j]

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
