"""The seed paper's experiment, done right: attacks × defenses × settings on demo data, per-image metrics.

Seed setting (Das et al., BIBM 2023): untrained sigmoid LeNet (U(−0.5, 0.5) weights, fresh per image), 32×32,
batch 1, one gradient, Laplace noise of scale b on the gradient. Realistic settings: the BatchNorm ``small_cnn``
(BN in train mode, buffers shared), batches of 4 and 8, 5 local SGD steps, a FedAvg weight difference. Labels are
never given to the attacker; they are recovered. Every row records the attack, its budget and the threat model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from medpfl_app.experiments.grid_cells import realistic_cell_rows, seed_cell_row
from medpfl_app.experiments.grid_config import GridConfig, GridRow
from medpfl_app.experiments.grid_inputs import load_demo_images, noisy_update
from medpfl_app.experiments.grid_summary import markdown_table, summarize, write_grid

__all__ = [
    "GridConfig",
    "GridRow",
    "load_demo_images",
    "markdown_table",
    "noisy_update",
    "run_grid",
    "summarize",
    "timed_grid",
    "write_grid",
]


def _seed_jobs(config: GridConfig) -> list[tuple[str, float, int]]:
    """``(attack, Laplace b, image)`` of every seed-setting run, then the ``random_init`` floor per image."""
    jobs: list[tuple[str, float, int]] = []
    for b in (0.0, *config.noise_scales):
        for attack in config.seed_attacks:
            n = config.seed_images if b == 0 else config.noised_images
            n = min(n, config.dlg_images) if attack == "dlg" else n
            jobs += [(attack, b, i) for i in range(n)]
    return jobs + [("random_init", 0.0, i) for i in range(config.seed_images)]


def run_grid(
    config: GridConfig,
    *,
    datalist: Path | None = None,
    progress: bool = True,
    on_row: Callable[[GridRow], None] | None = None,
) -> list[GridRow]:
    """Run every cell of the grid and return one row per attacked image."""
    from tqdm import tqdm

    largest = max(config.realistic_batches, default=1) * config.realistic_repeats
    images, labels = load_demo_images(
        datalist, count=max(config.seed_images, largest), image_size=config.image_size, seed=config.seed
    )
    rows: list[GridRow] = []
    jobs = _seed_jobs(config)
    realistic_jobs = [
        (batch, r, a)
        for batch in config.realistic_batches
        for r in range(config.realistic_repeats)
        for a in config.realistic_attacks
    ]
    bar = tqdm(total=len(jobs) + len(realistic_jobs), desc="attack grid", unit="run", disable=not progress)

    def emit(row: GridRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for attack, b, i in jobs:
        emit(seed_cell_row(config, attack, b, i, images, labels))
        bar.update(1)
    for batch, repeat, attack in realistic_jobs:
        for row in realistic_cell_rows(config, batch, repeat, attack, images, labels):
            emit(row)
        bar.update(1)
    bar.close()
    return rows


def timed_grid(config: GridConfig, out_dir: Path, *, datalist: Path | None = None, progress: bool = True) -> Path:
    """Run the grid and write its outputs; returns the Markdown table's path.

    Rows are also appended to ``rows.jsonl`` as they finish, so an interrupted run keeps what it measured.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = out_dir / "rows.jsonl"
    stream.write_text("")

    def append(row: GridRow) -> None:
        with stream.open("a") as handle:
            handle.write(json.dumps(asdict(row)) + "\n")

    rows = run_grid(config, datalist=datalist, progress=progress, on_row=append)
    return write_grid(out_dir, config, rows, time.perf_counter() - started)[1]
