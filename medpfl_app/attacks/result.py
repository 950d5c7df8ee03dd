"""The outcome of one attack run; it saves itself as JSON (numbers, config, threat model) and a PNG grid."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpfl_app.attacks.convergence import ConvergenceEvidence, json_number


@dataclass(frozen=True, eq=False)
class AttackResult:
    """Reconstructions and how they were obtained.

    Attributes:
        attack: Registry name of the attack.
        reconstructions: ``(N, C, H, W)`` best restart's images, clipped to [0, 1].
        labels: ``(N,)`` recovered (or given) labels.
        matching_loss: Final matching loss of the best restart (lower = closer match to the update).
        restart_losses: Best matching loss reached by each restart.
        iterations: Optimiser steps run (see `MatchingConfig.iterations`).
        evaluations: Evaluations of the matching loss (forward + double backward), the honest unit of cost.
        wall_time_s: Wall-clock seconds of the optimisation, label recovery included.
        config: The attack's configuration as a plain dict.
        threat_model: What the attacker knew or assumed (`AttackerKnowledge.threat_model`).
        labels_source: "known", "recovered" or "optimised".
        stopped_early: Whether the matching loss reached the stopping tolerance.
        stop_reason: Why the optimisation ended: ``budget`` (all iterations run), ``stop_loss`` (tolerance
            reached), ``time_limit`` (``time_limit_s`` used up) or ``diverged`` (non-finite loss).
        extras: Attack-specific numbers (e.g. the BN-statistics match).
        initial_loss: Matching loss of the best restart at its initialisation (NaN when not recorded).
        loss_trace: Best-so-far matching loss of the best restart: the initialisation, then after each iteration,
            downsampled evenly to at most 256 values (the first and the last always kept).
        moved_from_init: Relative L2 change ``‖x − x₀‖ / ‖x₀‖`` of the best restart's images (before clipping to
            [0, 1]) from their initialisation; 0 means the attack returned its starting point (NaN when not
            recorded).
        convergence: How the optimisation ended (`medpfl_app.attacks.convergence.assess_convergence` on the full
            trace); None when not assessed. ``no_progress`` means the attack never moved: not evidence of safety.
    """

    attack: str
    reconstructions: torch.Tensor
    labels: torch.Tensor
    matching_loss: float
    restart_losses: tuple[float, ...]
    iterations: int
    wall_time_s: float
    config: Mapping[str, Any]
    threat_model: Mapping[str, Any]
    evaluations: int = 0
    labels_source: str = "recovered"
    stopped_early: bool = False
    stop_reason: str = "budget"
    extras: Mapping[str, Any] = field(default_factory=dict)
    initial_loss: float = math.nan
    loss_trace: tuple[float, ...] = ()
    moved_from_init: float = math.nan
    convergence: ConvergenceEvidence | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (images are saved separately as PNG)."""
        return {
            "attack": self.attack,
            "labels": [int(v) for v in self.labels],
            "labels_source": self.labels_source,
            "matching_loss": self.matching_loss,
            "restart_losses": list(self.restart_losses),
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "wall_time_s": self.wall_time_s,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "image_shape": list(self.reconstructions.shape),
            "config": dict(self.config),
            "threat_model": dict(self.threat_model),
            "extras": dict(self.extras),
            "initial_loss": json_number(self.initial_loss),
            "loss_trace": [json_number(v) for v in self.loss_trace],
            "moved_from_init": json_number(self.moved_from_init),
            "convergence": None if self.convergence is None else self.convergence.to_json(),
        }

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        originals: torch.Tensor | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> tuple[Path, Path]:
        """Write ``result.json`` and ``reconstructions.png`` (originals above reconstructions) atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = self.to_dict()
        if metrics is not None:
            payload["metrics"] = dict(metrics)
        json_path = out / "result.json"
        write_atomic(json_path, json.dumps(payload, indent=2).encode())
        png_path = out / "reconstructions.png"
        rows = [self.reconstructions] if originals is None else [originals, self.reconstructions]
        write_atomic(png_path, image_grid_png(rows))
        return json_path, png_path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def image_grid_png(rows: list[torch.Tensor], *, pad: int = 2, min_side: int = 64) -> bytes:
    """Encode rows of ``(N, C, H, W)`` images in [0, 1] as one PNG; small images are enlarged (nearest)."""
    import io

    from PIL import Image

    tiles = []
    for row in rows:
        images = row.detach().float().clamp(0, 1).cpu()
        if images.ndim == 5:  # 3-D volumes: show the middle slice
            images = images[:, :, images.shape[2] // 2]
        tiles.append(images)
    n = max(t.shape[0] for t in tiles)
    channels = 3 if any(t.shape[1] == 3 for t in tiles) else 1
    h, w = tiles[0].shape[2:]
    scale = max(1, -(-min_side // max(h, w)))
    hs, ws = h * scale, w * scale
    canvas = np.ones((len(tiles) * (hs + pad) + pad, n * (ws + pad) + pad, channels), dtype=np.float32)
    for r, images in enumerate(tiles):
        for c, image in enumerate(images):
            pixels = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            if pixels.shape[0] != channels:
                pixels = pixels[:1].expand(channels, -1, -1)
            y, x = pad + r * (hs + pad), pad + c * (ws + pad)
            canvas[y : y + hs, x : x + ws] = pixels.permute(1, 2, 0).numpy()
    array = (canvas * 255).round().astype(np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
