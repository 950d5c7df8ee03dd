"""Simulate a site's update with plain PyTorch training, for experiments, benchmarks and tests.

Deliberately independent of the attack's functional simulation (`medpfl_app.attacks.victim`): it trains a real
``nn.Module`` with ``torch.optim`` and returns what an NVFlare server would receive (weights, update, meta).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medpfl_app.attacks.knowledge import UpdateKind


@dataclass(frozen=True, eq=False)
class SiteUpdate:
    """A simulated site round: global weights in, update out, with the meta a site executor would send."""

    global_weights: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    meta: dict[str, Any]
    kind: UpdateKind


def init_uniform_(model: nn.Module, bound: float = 0.5, *, seed: int = 0) -> nn.Module:
    """Initialise every parameter U(−bound, bound), the DLG/iDLG/seed-paper init for the sigmoid LeNet."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.rand(param.shape, generator=generator) * 2 * bound - bound)
    return model


def simulate_site_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    kind: UpdateKind = UpdateKind.GRADIENT,
    local_steps: int = 1,
    learning_rate: float = 0.01,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    bn_train_mode: bool = True,
    include_buffers: bool = True,
) -> SiteUpdate:
    """Train a copy of ``model`` on ``images`` as a site would and return the update it shares.

    A gradient update is ``∇`` of the mean cross-entropy on the whole batch; a weight difference is the result of
    ``local_steps`` optimiser steps on consecutive mini-batches of ``batch_size`` (cycling through the images).
    """
    site_model = copy.deepcopy(model)
    site_model.eval()
    if bn_train_mode:
        for module in site_model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
    before = {k: v.detach().clone() for k, v in site_model.state_dict().items()}
    batch = batch_size or images.shape[0]
    meta: dict[str, Any] = {"batch_size": batch, "num_train_images": int(images.shape[0])}
    if kind is UpdateKind.GRADIENT:
        loss = F.cross_entropy(site_model(images), labels)
        grads = torch.autograd.grad(loss, list(site_model.parameters()))
        update = {n: g.detach().clone() for (n, _), g in zip(site_model.named_parameters(), grads)}
        meta.update(local_steps=1)
        if include_buffers:
            after = site_model.state_dict()
            update.update({k: after[k].detach().clone() for k in after if k not in update and "running" in k})
        return SiteUpdate(before, update, meta, kind)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(site_model.parameters(), lr=learning_rate)
        if optimizer == "adam"
        else torch.optim.SGD(site_model.parameters(), lr=learning_rate)
    )
    count = images.shape[0]
    for step in range(local_steps):
        start = (step * batch) % count
        index = [(start + i) % count for i in range(min(batch, count))]
        opt.zero_grad()
        F.cross_entropy(site_model(images[index]), labels[index]).backward()
        opt.step()
    after = site_model.state_dict()
    params = {n for n, _ in site_model.named_parameters()}
    update = {
        k: (after[k] - before[k]).detach().clone()
        for k in after
        if k in params or (include_buffers and ("running" in k or "num_batches_tracked" in k))
    }
    meta.update(
        local_steps=local_steps, learning_rate=learning_rate, optimizer=optimizer, bn_buffers_included=include_buffers
    )
    return SiteUpdate(before, update, meta, kind)
