"""The server side of the pre-flight: a workflow that runs before FedAvg's first round.

`PreflightController` broadcasts `PREFLIGHT_TASK`, collects each site's coarse facts (untrusted: validated by
`medpfl_app.contracts.preflight.SiteRiskFacts.from_json`), runs the pure assessment
(`medpfl_app.audit.preflight.assess_job`: risk factors, a probe attack on synthetic data per site, measured advice)
within a wall-clock budget, and writes ``<run dir>/medpfl/preflight.json`` (delivered by ``download_job``; the
audit report opens with it). With ``refuse_high_risk`` (off by default) a job with a high-risk site is stopped
before any site trains. Anything else that goes wrong is logged in one line and training starts as planned: the
pre-flight never disturbs training unless its policy says so.
"""

from __future__ import annotations

import os
from typing import Any

from nvflare.apis.controller_spec import Task
from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from medpfl_app.contracts.preflight import FACTS_KEY, PREFLIGHT_TASK
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.preflight.executor import PROBLEM_KEY

RECORD_FOLDER = "medpfl"
EXAMPLES = {"min_clients": 3, "probe_time_limit_s": 5.0, "time_limit_s": 60.0, "reply_timeout_s": 300}


class PreflightController(Controller):
    """Pre-flight workflow (list it before the FedAvg workflow in the server config).

    Args:
        task_script_args: The site script's arguments (the job's model and training settings).
        job_defenses: The job-level client result filters on ``train`` (``{"path", "args"}`` as in the client
            config), in chain order.
        min_clients: Replies to wait for.
        refuse_high_risk: Stop the job before round 1 when a site's pre-flight is high risk.
        probe_time_limit_s: Wall-clock seconds of each probe attack.
        time_limit_s: Wall-clock budget of the whole assessment (what-if probes stop first).
        what_ifs: Probe each suggested change of a site that is not low (measured advice).
        reply_timeout_s: How long to wait for the sites' facts.
    """

    def __init__(
        self,
        task_script_args: str = "",
        job_defenses: list[dict[str, Any]] | None = None,
        min_clients: int = 1,
        refuse_high_risk: bool = False,
        probe_time_limit_s: float = 10.0,
        time_limit_s: float = 120.0,
        what_ifs: bool = True,
        reply_timeout_s: int = 300,
    ) -> None:
        super().__init__()
        _check_arguments(
            min_clients=min_clients,
            refuse_high_risk=refuse_high_risk,
            what_ifs=what_ifs,
            probe_time_limit_s=probe_time_limit_s,
            time_limit_s=time_limit_s,
            reply_timeout_s=reply_timeout_s,
        )
        self.task_script_args = task_script_args
        self.job_defenses = job_defenses
        self.min_clients = min_clients
        self.refuse_high_risk = refuse_high_risk
        self.probe_time_limit_s = probe_time_limit_s
        self.time_limit_s = time_limit_s
        self.what_ifs = what_ifs
        self.reply_timeout_s = reply_timeout_s

    def start_controller(self, fl_ctx: FLContext) -> None:
        return None

    def stop_controller(self, fl_ctx: FLContext) -> None:
        return None

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        return None

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        task = Task(name=PREFLIGHT_TASK, data=Shareable(), timeout=int(self.reply_timeout_s))
        self.broadcast_and_wait(task, fl_ctx, min_responses=self.min_clients, abort_signal=abort_signal)
        if abort_signal.triggered:
            return
        replies: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for client_task in task.client_tasks:
            site = client_task.client.name
            data = _reply_data(client_task.result)
            if isinstance(data.get(PROBLEM_KEY), str):
                problems[site] = data[PROBLEM_KEY][:300]
            elif FACTS_KEY in data:
                replies[site] = data[FACTS_KEY]
            else:
                problems[site] = "its reply held no pre-flight facts"
        connected = [client.name for client in fl_ctx.get_engine().get_clients() or []]
        try:
            result = self._assess(replies, problems, connected)
        except MedPFLError as error:
            self.log_error(fl_ctx, f"MedPFL pre-flight not run: {error.problem} ({error.fix}); training starts")
            return
        except Exception as error:  # noqa: BLE001 - the pre-flight must never stop training unless its policy says so
            self.log_error(fl_ctx, f"MedPFL pre-flight failed ({type(error).__name__}: {error}); training starts")
            return
        self._write(result.to_json(), fl_ctx)
        for entry in result.sites:
            self.log_info(fl_ctx, f"MedPFL pre-flight {entry.site}: {entry.level} — {entry.summary}")
        if result.refused:
            self.system_panic(
                f"MedPFL pre-flight: high risk at {', '.join(result.high_risk_sites)}; the job's policy "
                "(refuse_high_risk) stops it before round 1. See preflight.json for the measured advice.",
                fl_ctx,
            )

    def _assess(self, replies: dict[str, Any], problems: dict[str, str], connected: list[str]):
        import argparse
        import shlex
        from dataclasses import replace

        from medpfl_app.audit.preflight import PROBE_PLAN, JobTraining, assess_job
        from medpfl_app.nvflare.preflight.job_settings import declared_defense
        from medpfl_app.nvflare.site.client import build_arg_parser

        training: argparse.Namespace = build_arg_parser().parse_known_args(shlex.split(self.task_script_args))[0]
        declared = (declared_defense(str(f.get("path", "")), f.get("args") or {}) for f in self.job_defenses or [])
        job = JobTraining(
            network=training.network,
            in_channels=training.in_channels or 1,
            num_classes=training.num_classes,
            image_size=training.image_size or 64,
            learning_rate=float(training.learning_rate),
            job_defenses=tuple(defense for defense in declared if defense is not None),
        )
        return assess_job(
            job,
            replies,
            expected_sites=connected,
            problems=problems,
            refuse_high_risk=self.refuse_high_risk,
            plan=replace(PROBE_PLAN, time_limit_s=float(self.probe_time_limit_s)),
            time_limit_s=float(self.time_limit_s),
            what_ifs=bool(self.what_ifs),
        )

    def _write(self, content: dict[str, Any], fl_ctx: FLContext) -> None:
        from medpfl_app.atomic_io import write_json_atomic
        from medpfl_app.audit.preflight import PREFLIGHT_FILE

        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, RECORD_FOLDER, PREFLIGHT_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, content)


def _check_arguments(**values: Any) -> None:
    """Refuse a hand-edited argument at deployment with one message, not mid-job with a traceback."""
    for name in ("refuse_high_risk", "what_ifs"):
        if not isinstance(values[name], bool):
            raise MedPFLError(
                f"PreflightController {name} must be true or false, got {values[name]!r}", fix="use true or false"
            )
    for name in ("min_clients", "probe_time_limit_s", "time_limit_s", "reply_timeout_s"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e7:
            raise MedPFLError(
                f"PreflightController {name} must be a positive number, got {value!r}",
                fix=f"set {name} to a positive number, e.g. {EXAMPLES[name]}",
            )


def _reply_data(result: Shareable | None) -> dict[str, Any]:
    """The METRICS DXO data of a site's reply ({} for anything else: a failed, empty or foreign reply)."""
    if result is None:
        return {}
    try:
        data = from_shareable(result).data
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
