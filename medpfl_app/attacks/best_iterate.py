"""The best iterate of every restart, kept in preallocated buffers while the optimiser runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class BestIterate:
    """Per restart: the best finite matching loss so far with its images (and soft labels), and the last loss."""

    loss: torch.Tensor
    images: torch.Tensor
    soft: torch.Tensor | None
    last: torch.Tensor

    @classmethod
    def start(cls, images: torch.Tensor, soft: torch.Tensor | None) -> BestIterate:
        restarts = images.shape[0]
        return cls(
            loss=torch.full((restarts,), math.inf),
            images=images.detach().clone(),
            soft=None if soft is None else soft.detach().clone(),
            last=torch.full((restarts,), math.inf),
        )

    def record(self, match: torch.Tensor, images: torch.Tensor, soft: torch.Tensor | None) -> None:
        match = match.detach()
        improved = torch.isfinite(match) & (match < self.loss)
        if improved.any():
            self.loss.copy_(torch.where(improved, match, self.loss))
            mask = improved.reshape(-1, *([1] * (images.ndim - 1)))
            self.images.copy_(torch.where(mask, images.detach(), self.images))
            if self.soft is not None and soft is not None:
                self.soft.copy_(torch.where(improved[:, None, None], soft.detach(), self.soft))
        self.last.copy_(match)

    def restart(self) -> int:
        """The restart with the lowest finite loss (restart 0 when none is finite)."""
        finite = torch.where(torch.isfinite(self.loss), self.loss, torch.full_like(self.loss, math.inf))
        return int(torch.argmin(finite))
