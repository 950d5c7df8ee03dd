"""The study's outputs: ``study.csv``, ``study.json``, ``frontier.svg`` and ``study.html``, each written atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_json_atomic, write_text_atomic
from medpfl_app.experiments.study.config import Engine, StudyConfig
from medpfl_app.experiments.study.evaluate import THREAT_MODEL
from medpfl_app.experiments.study.page import study_page
from medpfl_app.experiments.study.plot import frontier_svg
from medpfl_app.experiments.study.result import CellResult

#: Columns of ``study.csv``, in order (the keys of `CellResult.row`).
COLUMNS: tuple[str, ...] = (
    "network",
    "defense",
    "strength",
    "setting",
    "guarantee",
    "batch_size",
    "local_steps",
    "attack",
    "attack_budget",
    "threat_model",
    "accuracy",
    "auc",
    "verdict",
    "site_verdicts",
    "ssim_max",
    "psnr_max",
    "asr",
    "label_accuracy",
    "identifiability_excess",
    "epsilon",
    "delta",
    "wall_s",
    "engine",
)

#: Said in every output of an in-process study: what it shares with the NVFlare jobs and what it does not.
TRANSPORT_NOTE = (
    "In-process FedAvg (engine in_process): the same network, site training, client-side defense objects "
    "(medpfl_app.defenses) and server audit (medpfl_app.audit.update_audit.audit_update, site scoring, risk policy) as "
    "the NVFlare jobs, but not NVFlare's transport, Client API or controller (medpfl study --engine simulator runs "
    "them)."
)
#: Said in every output of a simulator study.
SIMULATOR_NOTE = (
    "NVFlare simulator (engine simulator): each cell is an exported NVFlare job (Client API site script, the "
    "defense as a job-level client result filter, the server audit filter and site scorer) run by the NVFlare "
    "simulator; leakage and formal ε are read from the server's audit ledger, utility from the sites' validation "
    "metrics of the global model they received in the last round (metrics/round_metrics.jsonl)."
)


def transport_note(engine: Engine) -> str:
    """What ran the cells of a study under ``engine``."""
    return SIMULATOR_NOTE if engine is Engine.SIMULATOR else TRANSPORT_NOTE


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (header = `COLUMNS`; None as an empty field)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return buffer.getvalue()


def write_outputs(
    out_dir: Path, study: StudyConfig, results: Sequence[CellResult], *, wall_s: float
) -> tuple[Path, ...]:
    """Write the four outputs of ``results`` into ``out_dir``; returns their paths."""
    rows = [result.row() for result in results]
    payload = {
        **study.to_json(),
        "threat_model": THREAT_MODEL,
        "engine": str(study.run.engine),
        "transport": transport_note(study.run.engine),
        "wall_s": round(wall_s, 1),
        "rows": rows,
        "cells_detail": [result.to_json() for result in results],
    }
    svg = frontier_svg(rows)
    paths = (
        write_text_atomic(out_dir / "study.csv", table_csv(rows)),
        write_json_atomic(out_dir / "study.json", payload),
        write_text_atomic(out_dir / "frontier.svg", svg),
        write_text_atomic(
            out_dir / "study.html", study_page(study, rows, svg, transport=transport_note(study.run.engine))
        ),
    )
    return paths
