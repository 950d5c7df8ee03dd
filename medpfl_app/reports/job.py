"""Which job a report is about: its name and purpose, from the job's own ``meta.json``.

The ledger's ``job_id`` is what NVFlare's run context says, and the simulator calls every run ``simulate_job`` (the
name of the folder it deploys the job into); a POC or production run says a UUID. Neither names the job. The job's
``meta.json`` does: the exporter writes ``name`` and MedPFL adds ``description`` (`medpfl_app.nvflare.jobs.recipe`), and
NVFlare deploys that file into the run folder (``<run dir>/meta.json``; a downloaded job also has one a level up).
So the name and purpose come from the nearest ``meta.json`` above the ledger, and only without one from the records'
``job_id`` (labelled as such, with why it may not be the job's name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.reports.plan import JobPlan, read_plan

META_FILE = "meta.json"
#: How many folders above the ledger's own are searched (``<run>/medpfl/ledger`` → ``<run>`` → download folder).
SEARCH_LEVELS = 3
#: The run name NVFlare's simulator gives every job: not the job's name.
SIMULATOR_RUN_NAME = "simulate_job"


@dataclass(frozen=True)
class JobInfo:
    """The job as the report names it.

    Attributes:
        name: The job's name (``None``: not known).
        description: What the job does, from its ``meta.json`` (``None``: not recorded).
        source: Where the name came from, in words.
        run_ids: The ``job_id`` values the records carry (the run, not the job, under the simulator).
        plan: What the job planned (sites, rounds) and how it ended, from its meta.json and server config.
    """

    name: str | None
    description: str | None
    source: str
    run_ids: tuple[str, ...] = ()
    plan: JobPlan = field(default_factory=JobPlan)

    @property
    def title(self) -> str:
        """The name for the page title and header."""
        return self.name or "job name not recorded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "run_ids": list(self.run_ids),
            "plan": self.plan.to_dict(),
        }


def _read_meta(path: Path) -> Mapping[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] else None


def find_meta(ledger: Path) -> tuple[Path, Mapping[str, Any]] | None:
    """The nearest readable ``meta.json`` with a ``name`` in the ledger's folder or up to `SEARCH_LEVELS` above."""
    folder = ledger.parent
    for place in (folder, *list(folder.parents)[:SEARCH_LEVELS]):
        candidate = place / META_FILE
        if candidate.is_file() and (meta := _read_meta(candidate)) is not None:
            return candidate, meta
    return None


def job_info(ledger: Path, records: Iterable[AuditRecord]) -> JobInfo:
    """Name and purpose of the job behind ``ledger`` (see the module docstring for the order of sources)."""
    run_ids = tuple(sorted({r.job_id for r in records if r.job_id is not None}))
    found = find_meta(ledger)
    plan = read_plan(ledger)
    if found is not None:
        path, meta = found
        description = meta.get("description") if isinstance(meta.get("description"), str) else None
        return JobInfo(
            name=meta["name"],
            description=description or None,
            source=f"the job's {META_FILE} ({path})",
            run_ids=run_ids,
            plan=plan,
        )
    named = [r for r in run_ids if r != SIMULATOR_RUN_NAME]
    if named:
        return JobInfo(
            name=", ".join(named),
            description=None,
            source=(
                f"the records' job id (no {META_FILE} above the ledger; under NVFlare this is the run's id, which may not "
                "be the job's name)"
            ),
            run_ids=run_ids,
            plan=plan,
        )
    why = (
        f"the records name only the simulator's run folder ({SIMULATOR_RUN_NAME})"
        if run_ids
        else "the records carry no job id"
    )
    return JobInfo(
        name=None,
        description=None,
        source=f"not recorded: no {META_FILE} above the ledger and {why}",
        run_ids=run_ids,
        plan=plan,
    )
