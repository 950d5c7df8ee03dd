"""Check an NVFlare job folder before it is written or submitted: one clear error naming job, field and fix.

NVFlare finds a bad component argument only when it deploys the job, and then the message is in the server's log
alone while the job shows ``FINISHED:EXECUTION_EXCEPTION``. These checks run the same validation MedPFL's
components run at deployment (`medpfl_app.audit.plan.AuditPlan.from_dict`, `RiskPolicy.from_dict`) plus the job's
own numbers, on the folder as it will be submitted, so a hand-edited folder is checked too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError

AUDIT_FILTER_PATH = "medpfl_app.nvflare.server.audit_filter.AuditFilter"
FEDAVG_PATHS = ("nvflare.app_common.workflows.fedavg.FedAvg",)


def check_job_folder(job_dir: Path, *, available_sites: Sequence[str] | None = None) -> None:
    """Raise one `MedPFLError` for the first problem in ``job_dir``; ``available_sites``: sites that can join."""
    job_dir = Path(job_dir)
    meta = _read_json(job_dir / "meta.json", job_dir.name)
    job = str(meta.get("name") or job_dir.name)
    min_clients = meta.get("min_clients", 1)
    _require_count(min_clients, job=job, where="meta.json", field="min_clients")
    for config in sorted((job_dir / "app").rglob("config_fed_server.json")) if (job_dir / "app").is_dir() else []:
        where = str(config.relative_to(job_dir))
        server = _read_json(config, job)
        for workflow in server.get("workflows", []):
            if workflow.get("path") in FEDAVG_PATHS:
                args = workflow.get("args", {})
                for field in ("num_rounds", "num_clients"):
                    if field in args:
                        _require_count(args[field], job=job, where=where, field=f"FedAvg {field}")
        for component in _filters(server.get("task_result_filters", [])):
            if component.get("path") == AUDIT_FILTER_PATH:
                check_audit_filter_args(component.get("args", {}), job=job, where=where)
    if available_sites is not None and min_clients > len(available_sites):
        raise MedPFLError(
            f"job {job}: meta.json min_clients is {min_clients} but this POC system has {len(available_sites)} "
            f"site(s) ({', '.join(available_sites) or 'none'}); the job would wait for sites that never come",
            fix=f"prepare the POC with `medpfl poc prepare --sites {min_clients} --force`, or submit a job with "
            f"min_clients <= {len(available_sites)}",
        )


def check_audit_filter_args(args: dict[str, Any], *, job: str, where: str) -> None:
    """The audit filter's ``plan``, ``risk_policy`` and ``on_high_risk`` exactly as its constructor checks them."""
    from medpfl_app.audit.plan import AuditPlan
    from medpfl_app.audit.risk import RiskPolicy

    checks = (("plan", AuditPlan.from_dict), ("risk_policy", RiskPolicy.from_dict))
    for field, build in checks:
        value = args.get(field)
        if value is not None and not isinstance(value, dict):
            raise MedPFLError(
                f"job {job}: {where}: AuditFilter {field} must be a JSON object, got {value!r}",
                fix=f'write {field} as {{"key": value, ...}} or leave it out for the defaults',
            )
        try:
            build(value)
        except (MedPFLError, TypeError, ValueError) as error:
            problem = getattr(error, "problem", str(error))
            fix = getattr(error, "fix", f"correct AuditFilter {field} in {where}")
            raise MedPFLError(f"job {job}: {where}: AuditFilter {field}: {problem}", fix=fix) from None
    action = args.get("on_high_risk", "report")
    actions = ("report", "stop_job", "exclude_site")
    if action not in actions:
        raise MedPFLError(
            f"job {job}: {where}: AuditFilter on_high_risk {action!r} is not an action",
            fix=f"use one of {', '.join(actions)}",
        )


def _filters(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for chain in chains if isinstance(chain, dict) for f in chain.get("filters", []) if isinstance(f, dict)]


def _require_count(value: Any, *, job: str, where: str, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MedPFLError(
            f"job {job}: {where}: {field} must be an integer >= 1, got {value!r}",
            fix=f"set {field} to 1 or more (regenerate the job with `medpfl jobs export`)",
        )


def _read_json(path: Path, job: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedPFLError(
            f"{path.parent} is not an NVFlare job folder (no {path.name})",
            fix="pass a folder written by `medpfl jobs export`",
        ) from None
    except ValueError as error:
        raise MedPFLError(
            f"job {job}: {path} is not valid JSON: {error}", fix="fix the file or re-export the job"
        ) from None
    if not isinstance(content, dict):
        raise MedPFLError(f"job {job}: {path} must hold a JSON object", fix="re-export the job")
    return content
