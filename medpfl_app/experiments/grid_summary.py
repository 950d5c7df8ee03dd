"""The attack grid's rows summarised per cell, as a Markdown table, and written to ``grid.json``/``grid.md``."""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medpfl_app.attacks.result import write_atomic
from medpfl_app.experiments.grid_config import GridConfig, GridRow


def summarize(rows: Sequence[GridRow]) -> list[dict[str, Any]]:
    """Mean ± std per (setting, attack, b) cell."""
    cells: dict[tuple[str, str, float], list[GridRow]] = {}
    for row in rows:
        cells.setdefault((row.setting, row.attack, row.noise_b), []).append(row)

    def stats(values: list[float]) -> tuple[float, float]:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return float("nan"), float("nan")
        return statistics.fmean(finite), statistics.pstdev(finite) if len(finite) > 1 else 0.0

    out = []
    for (setting, attack, b), members in cells.items():
        entry: dict[str, Any] = {
            "setting": setting,
            "attack": attack,
            "noise_b": b,
            "n": len(members),
            "budget": members[0].budget,
        }
        for name in ("mse", "psnr", "ssim", "label_accuracy", "time_s"):
            entry[name] = stats([getattr(m, name) for m in members])
        entry["asr"] = sum(m.success for m in members) / len(members)
        entry["ssim_max"] = max(m.ssim for m in members)
        out.append(entry)
    return out


def _mean_std(entry: dict[str, Any], name: str, fmt: str) -> str:
    mean, std = entry[name]
    return "n/a" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (mean ± std over images)."""
    lines = [
        "| setting | attack | Laplace b | n | MSE | PSNR (dB) | SSIM | max SSIM | ASR | label acc. | time/img (s) | budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        pm = functools.partial(_mean_std, e)

        lines.append(
            f"| {e['setting']} | {e['attack']} | {e['noise_b']:g} | {e['n']} | {pm('mse', '.4f')} | {pm('psnr', '.1f')} "
            f"| {pm('ssim', '.3f')} | {e['ssim_max']:.3f} | {100 * e['asr']:.0f}% | {pm('label_accuracy', '.2f')} "
            f"| {pm('time_s', '.1f')} | {e['budget']} |"
        )
    return "\n".join(lines)


def write_grid(out_dir: Path, config: GridConfig, rows: Sequence[GridRow], wall_s: float) -> tuple[Path, Path]:
    """Write ``grid.json`` (config, rows, summary) and ``grid.md`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    payload = {
        "config": asdict(config),
        "threat_model": "honest-but-curious server; knows architecture, weights, update, B, S, lr; labels recovered",
        "wall_time_s": wall_s,
        "torch_threads": torch.get_num_threads(),
        "rows": [asdict(r) for r in rows],
        "summary": summary,
    }
    json_path, md_path = out_dir / "grid.json", out_dir / "grid.md"
    write_atomic(json_path, json.dumps(payload, indent=1).encode())
    write_atomic(md_path, (markdown_table(summary) + f"\n\nTotal wall time: {wall_s:.0f} s\n").encode())
    return json_path, md_path
