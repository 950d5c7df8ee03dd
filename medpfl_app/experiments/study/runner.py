"""Run a study: every cell not yet in the store, with a progress bar (cells done/total, time left) on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.config import CellConfig, Engine, RunConfig, StudyConfig, cell_key
from medpfl_app.experiments.study.result import CellResult
from medpfl_app.experiments.study.store import STORE_NAME, CellStore

CellFunction = Callable[[RunConfig, CellConfig], CellResult]


@dataclass(frozen=True)
class StudyOutcome:
    """The study's cells in config order, how many were computed now and reused, and the outputs written."""

    results: tuple[CellResult, ...]
    computed: int
    reused: int
    wall_s: float
    outputs: tuple[Path, ...]


def run_study(
    study: StudyConfig,
    out_dir: Path,
    *,
    resume: bool = True,
    limit: int | None = None,
    progress: bool = True,
    evaluate: CellFunction | None = None,
) -> StudyOutcome:
    """Run (or resume) ``study`` into ``out_dir`` and write its table, plot and page.

    Args:
        study: The study.
        out_dir: Output folder (created).
        resume: Reuse cells already in ``out_dir/cells.jsonl`` under the same key; False recomputes everything.
        limit: Only the first ``limit`` cells (a quick subset).
        progress: Show the progress bar on stderr.
        evaluate: The cell function (default `medpfl_app.experiments.study.evaluate.evaluate_cell`, the in-process
            engine; a simulator study must pass `medpfl_app.nvflare.study_cells.simulate_cell`).
    """
    from tqdm import tqdm

    from medpfl_app.experiments.study.outputs import write_outputs

    if evaluate is None and study.run.engine is not Engine.IN_PROCESS:
        raise MedPFLError(
            f"study {study.name} runs on the {study.run.engine.value} engine, which needs its cell function",
            fix="pass evaluate=medpfl_app.nvflare.study_cells.simulate_cell (as medpfl study --engine simulator does)",
        )
    if evaluate is None:
        from medpfl_app.experiments.study.evaluate import evaluate_cell

        evaluate = evaluate_cell
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    store = CellStore(out_dir / STORE_NAME)
    if not resume:
        store.clear()
    cells = study.cells[:limit] if limit is not None else study.cells
    keys = [cell_key(study.run, cell) for cell in cells]
    reused = sum(key in store for key in keys)
    bar = tqdm(total=len(cells), initial=reused, desc=f"study {study.name}", unit="cell", disable=not progress)
    results = []
    for cell, key in zip(cells, keys, strict=True):
        if key in store:
            results.append(store.get(key))
            continue
        bar.set_postfix_str(cell.label, refresh=True)
        result = evaluate(study.run, cell)
        store.put(key, result)
        results.append(result)
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - started
    outputs = write_outputs(out_dir, study, results, wall_s=wall)
    return StudyOutcome(tuple(results), len(cells) - reused, reused, wall, outputs)
