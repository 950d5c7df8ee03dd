"""A site round with sample-level DP-SGD (Opacus, through `medpfl_app.defenses.dp_sgd.make_private`).

The site trains the DP-compatible network (GroupNorm for BatchNorm, as `build_seeded_network(dp_sgd=True)` builds
it for the job) with Poisson-sampled batches of expected size B, per-sample clipping to the run's clip norm and
Gaussian noise, for S optimiser steps (empty Poisson batches still step: the noise is added either way, as the
accountant assumes). The update carries the ``dp_sgd`` facts the Lightning client declares. The images the
Poisson sampler actually drew are recorded for the site's scorer only; the server is told B and S, not which
images, so its simulation of the local steps is approximate — as for a real DP-SGD site.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medpfl_app.experiments.study.config import CellConfig, RunConfig


class _quiet:
    """Raise a logger's level to ERROR inside a ``with`` block."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.level = logger, logger.level

    def __enter__(self) -> None:
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def sample_rate(run: RunConfig, cell: CellConfig) -> float:
    """Poisson sampling rate q = B / N of one step."""
    return min(1.0, cell.batch_size / run.train_per_site)


def dp_sgd_round(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    run: RunConfig,
    cell: CellConfig,
    seed: tuple[int, int, int],
) -> tuple[dict[str, torch.Tensor], tuple[int, ...], dict[str, Any]]:
    """Train S DP-SGD steps on the site's pool; return (weight difference, drawn positions, meta facts)."""
    from medpfl_app.defenses.dp_sgd import DPSGDConfig, make_private

    assert cell.defense.strength is not None  # DefenseSetting guarantees a noise multiplier
    config = DPSGDConfig(noise_multiplier=float(cell.defense.strength), max_grad_norm=run.clip_norm, delta=run.delta)
    site = copy.deepcopy(net).train()
    before = {k: v.detach().clone() for k, v in site.state_dict().items()}
    # Opacus' hook warning (inputs need no grad) and its empty-batch log line fire on every round: expected here.
    with torch.random.fork_rng(), warnings.catch_warnings(), _quiet(logging.getLogger("opacus")):
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        torch.manual_seed(int(np.random.default_rng(list(seed)).integers(2**31)))
        session = make_private(
            site,
            lambda params: torch.optim.SGD(params, lr=run.learning_rate),
            DataLoader(TensorDataset(images, labels), batch_size=cell.batch_size),
            config,
        )
        # Opacus' Poisson batch sampler, read directly so the drawn positions are known exactly (the scorer needs
        # them; Opacus' loader also reads item 0 to shape an empty batch).
        sampler = session.data_loader.batch_sampler
        assert sampler is not None  # Opacus' DPDataLoader always has its Poisson batch sampler
        batches = iter(sampler)
        drawn: list[int] = []
        for _ in range(cell.local_steps):
            index = [int(i) for i in next(batches)]
            drawn += index
            x, y = images[index], labels[index]
            session.optimizer.zero_grad()
            out = session.module(x)
            # An empty Poisson batch still takes its noisy step (the accountant counts it).
            loss = nn.functional.cross_entropy(out, y) if len(y) else out.sum() * 0
            loss.backward()
            session.optimizer.step()
    after = session.module.state_dict()
    update = {k: (after[k] - before[k]).detach().clone() for k in after}
    used = tuple(dict.fromkeys(drawn))
    facts = {
        "noise_multiplier": config.noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "delta": config.delta,
        "sample_rate": sample_rate(run, cell),
        "accountant": config.accountant,
    }
    meta = {
        "batch_size": cell.batch_size,
        "local_steps": cell.local_steps,
        "learning_rate": run.learning_rate,
        "optimizer": "sgd",
        "num_train_images": max(1, len(used)),
        "bn_buffers_included": False,
        "dp_sgd": facts,
    }
    return update, used, meta
