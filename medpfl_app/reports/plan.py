"""What the job planned: the sites it was deployed to, the rounds its workflow was to run, and how it ended.

Read from the files NVFlare leaves with a job, never from the ledger:

* ``meta.json``: ``deploy_map`` (``{app: [sites]}``, entries either names or ``{"sites": [...]}``; ``@ALL`` means
  every client the job was scheduled on, which NVFlare lists in ``job_clients``), ``min_clients`` and, in the copy
  a job download puts at the top of ``<download>/<job id>/``, the server's ``status`` (``FINISHED:ABORTED`` …).
  The copy NVFlare deploys into the run folder has no status, so the nearest file holding each key is used.
* ``config_fed_server.json`` (``<app>/config/`` under the run folder or the downloaded job): the workflow's
  ``num_rounds`` and ``start_round`` (NVFlare's FedAvg runs rounds ``start_round … start_round + num_rounds - 1``).

These files are written by whoever built and submitted the job: every value is bounded and type-checked, text is
limited in length and shown through `medpfl_app.text.printable` by the report, and anything unusable makes that part
of the plan *unknown* (with why), never a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.reports.fields import integer

META_FILE = "meta.json"
SERVER_CONFIG = "config_fed_server.json"
#: Folders above the ledger's own searched for ``meta.json`` (``medpfl`` → run/workspace → job id → download).
SEARCH_LEVELS = 3
#: NVFlare's name for "every client the job is scheduled on" in a deploy map, and the server's own name.
ALL_SITES = "@ALL"
SERVER_SITE = "server"
#: Bounds on what a meta.json or server config may claim before the report stops believing it.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_SITES = 1000
MAX_SITE_NAME = 128
MAX_ROUNDS = 100_000
#: NVFlare job statuses look like ``FINISHED:ABORTED``; anything else is not shown as a status.
STATUS_PATTERN = re.compile(r"[A-Z_]{2,30}(:[A-Z_]{2,40})?")
#: The one status of a job that ran to its end (NVFlare's ``RunStatus.FINISHED_COMPLETED``).
COMPLETED = "FINISHED:COMPLETED"


@dataclass(frozen=True)
class JobPlan:
    """The job's plan, each part ``None`` when unknown.

    Attributes:
        sites: The client sites the job was deployed to (sorted).
        min_clients: The fewest clients the job needed to start, from ``meta.json``.
        rounds: The rounds the server workflow was configured to run.
        status: The job's end status as NVFlare recorded it (e.g. ``FINISHED:ABORTED``).
        meta_path: The ``meta.json`` the sites came from.
        status_path: The ``meta.json`` the status came from.
        config_path: The server config the rounds came from.
        notes: Why a part is unknown, in words.
    """

    sites: tuple[str, ...] | None = None
    min_clients: int | None = None
    rounds: tuple[int, ...] | None = None
    status: str | None = None
    meta_path: Path | None = None
    status_path: Path | None = None
    config_path: Path | None = None
    notes: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Whether both the expected sites and the planned rounds are known."""
        return self.sites is not None and self.rounds is not None

    def rounds_text(self) -> str:
        """``"rounds 0–5"``, ``"round 0"`` or ``"rounds unknown"``."""
        return span_text(self.rounds) if self.rounds else "rounds unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites) if self.sites is not None else None,
            "min_clients": self.min_clients,
            "rounds": list(self.rounds) if self.rounds is not None else None,
            "status": self.status,
            "meta_file": str(self.meta_path) if self.meta_path else None,
            "status_file": str(self.status_path) if self.status_path else None,
            "server_config": str(self.config_path) if self.config_path else None,
            "notes": list(self.notes),
        }


def span_text(rounds: Sequence[int]) -> str:
    """Rounds as runs: ``"round 3"``, ``"rounds 2–5"``, ``"rounds 1, 3–4"``."""
    ordered = sorted(set(rounds))
    runs: list[tuple[int, int]] = []
    for r in ordered:
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    words = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)
    return f"round{'s' if len(ordered) != 1 else ''} {words}"


def _read_json(path: Path) -> Mapping[str, Any] | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _places(ledger: Path) -> list[Path]:
    folder = ledger.parent
    return [folder, *list(folder.parents)[:SEARCH_LEVELS]]


def _metas(ledger: Path) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Every readable ``meta.json`` from the ledger's folder upwards, nearest first."""
    for place in _places(ledger):
        candidate = place / META_FILE
        if candidate.is_file() and (meta := _read_json(candidate)) is not None:
            yield candidate, meta


def _site_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SITE_NAME:
        return None
    return value


def _deployed(deploy_map: Any, job_clients: Any) -> tuple[tuple[str, ...] | None, str | None]:
    """The client sites of a deploy map (``@ALL`` resolved through ``job_clients``), or ``None`` and why."""
    if not isinstance(deploy_map, dict) or not deploy_map:
        return None, "the deploy map is missing or not a map of apps to sites"
    names: list[Any] = []
    for targets in deploy_map.values():
        for item in targets if isinstance(targets, list) else []:
            names.extend(
                item.get("sites", []) if isinstance(item, dict) and isinstance(item.get("sites"), list) else [item]
            )
    if len(names) > MAX_SITES or any(_site_name(n) is None for n in names):
        return None, "the deploy map lists sites that are not usable names"
    if any(n.casefold() == ALL_SITES.casefold() for n in names):
        listed = (
            [c.get("name") if isinstance(c, dict) else c for c in job_clients] if isinstance(job_clients, list) else []
        )
        clients = [name for c in listed if (name := _site_name(c)) is not None]
        if not clients or len(clients) != len(listed) or len(clients) > MAX_SITES:
            return None, (
                f"the deploy map says {ALL_SITES} and the job's client list (job_clients) is missing or "
                "holds unusable names"
            )
        return tuple(sorted(set(clients))), None
    sites = tuple(sorted({n for n in names if n != SERVER_SITE}))
    return (sites, None) if sites else (None, "the deploy map names no client site")


def _status(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("status")
    return value if isinstance(value, str) and STATUS_PATTERN.fullmatch(value) else None


def _server_configs(places: Sequence[Path]) -> Iterator[Path]:
    for place in places:
        for pattern in (f"*/config/{SERVER_CONFIG}", f"*/*/config/{SERVER_CONFIG}"):
            yield from sorted(p for p in place.glob(pattern) if p.is_file())


#: Round defaults of the workflows MedPFL's jobs use: NVFlare's job exporter leaves out an argument equal to its
#: default, so a 5-round FedAvg job names no ``num_rounds`` (``BaseFedAvg(num_rounds=5, start_round=0)``; a test
#: pins these to NVFlare's signature).
WORKFLOW_ROUND_DEFAULTS: dict[str, dict[str, int]] = {
    "nvflare.app_common.workflows.fedavg.FedAvg": {"num_rounds": 5, "start_round": 0},
}


def planned_rounds(config: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, str | None]:
    """The rounds of the one server workflow with a ``num_rounds`` (stated or its known default), or ``None`` and
    why."""
    workflows = config.get("workflows")
    found = (
        [
            {**WORKFLOW_ROUND_DEFAULTS.get(str(w.get("path")), {}), **w["args"]}
            for w in workflows
            if isinstance(w, dict)
            and isinstance(w.get("args"), dict)
            and ("num_rounds" in w["args"] or str(w.get("path")) in WORKFLOW_ROUND_DEFAULTS)
        ]
        if isinstance(workflows, list)
        else []
    )
    if len(found) != 1:
        return None, (f"its server config has {len(found)} workflows with num_rounds (one is needed)")
    count, start = integer(found[0].get("num_rounds")), integer(found[0].get("start_round", 0))
    if count is None or not 0 < count <= MAX_ROUNDS or start is None or not 0 <= start <= MAX_ROUNDS:
        return None, "its server workflow's num_rounds / start_round are not usable round numbers"
    return tuple(range(start, start + count)), None


def read_plan(ledger: Path) -> JobPlan:
    """The plan of the job whose audit ledger is ``ledger`` (see the module docstring for where each part is read)."""
    metas = list(_metas(Path(ledger)))
    notes: list[str] = []
    sites: tuple[str, ...] | None = None
    meta_path: Path | None = None
    min_clients: int | None = None
    with_map = next(((p, m) for p, m in metas if "deploy_map" in m), None)
    if with_map is None:
        notes.append(f"no {META_FILE} with a deploy map above the ledger, so the expected sites are unknown")
    else:
        meta_path = with_map[0]
        sites, why = _deployed(with_map[1].get("deploy_map"), with_map[1].get("job_clients"))
        if why:
            notes.append(f"{why} ({meta_path}), so the expected sites are unknown")
        count = integer(with_map[1].get("min_clients"))
        min_clients = count if count is not None and 0 < count <= MAX_SITES else None
    status_at = next(((p, s) for p, m in metas if (s := _status(m)) is not None), None)
    if status_at is None and (bad := next((p for p, m in metas if "status" in m), None)) is not None:
        notes.append(f"the status in {bad} is not an NVFlare job status, so the end status is unknown")
    places = _places(Path(ledger))
    if meta_path is not None:  # the job's own folders only: a download folder may hold other jobs
        places = [p for p in places if p == meta_path.parent or meta_path.parent in p.parents]
    else:
        places = places[:2]
    rounds, config_path = None, next(_server_configs(places), None)
    if config_path is None:
        notes.append(f"no server config ({SERVER_CONFIG}) in the job's folders, so the planned rounds are unknown")
    else:
        config = _read_json(config_path)
        rounds, why = planned_rounds(config) if config is not None else (None, "it is not readable JSON")
        if why:
            notes.append(f"{config_path}: {why}, so the planned rounds are unknown")
    return JobPlan(
        sites=sites,
        min_clients=min_clients,
        rounds=rounds,
        status=status_at[1] if status_at else None,
        meta_path=meta_path,
        status_path=status_at[0] if status_at else None,
        config_path=config_path,
        notes=tuple(notes),
    )
