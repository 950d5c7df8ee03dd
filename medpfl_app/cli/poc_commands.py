"""The handlers of ``medpfl poc``'s actions: each takes the parsed namespace, prints and returns an exit status.

NVFlare is imported inside the handlers so that ``medpfl --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medpfl_app.nvflare.poc.shutdown import StopReport
    from medpfl_app.nvflare.poc.submit import JobOutcome
    from medpfl_app.nvflare.poc.system import PocLayout, Prepared


def _layout(args: argparse.Namespace) -> PocLayout:
    from medpfl_app.nvflare.poc.system import PocLayout, default_poc_workspace

    return PocLayout((args.workspace or default_poc_workspace()).resolve())


def _site_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


def prepare(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    prepared = system.prepare(_layout(args).workspace, _site_names(args.sites), force=args.force)
    _print_prepared(prepared)
    print("next: medpfl poc configure-data --demo   (or --data-root DIR)")
    return 0


def _print_prepared(prepared: Prepared) -> None:
    layout = prepared.layout
    print(f"POC workspace ready: {layout.prod_dir} (sites: {', '.join(layout.sites())})")
    for state in prepared.discarded:
        print(f"discarded (--force): {state.describe(layout.workspace)}")
    for path in prepared.kept:
        if layout.prod_dir in path.parents:  # a site's DP ledger (this folder's own files are kept silently)
            print(f"kept: {path}")
    for path in prepared.left_aside:
        print(f"WARNING: could not put back {path} (the new workspace has a file there): move it back by hand")


def configure_data(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc.sites import configure_site_data

    for site, config in configure_site_data(_layout(args), demo=args.demo, data_root=args.data_root).items():
        print(f"{site}: {config}")
    return 0


def install_privacy(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc.processes import find_poc_processes
    from medpfl_app.nvflare.poc.sites import install_site_privacy

    layout = _layout(args)
    for site, path in install_site_privacy(layout, args.template, default_scope=args.default_scope).items():
        print(f"{site}: {path}")
    if find_poc_processes(layout.prod_dir):
        print(
            "the POC system is running and its sites read privacy.json only when they start: run "
            "`medpfl poc stop`, then `medpfl poc start`, for the policy to apply"
        )
    return 0


def start(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    layout = _layout(args)
    for job_id in system.start(layout, timeout_s=args.timeout):
        print(f"job {job_id} was left RUNNING by a server that is gone: marked FINISHED:ABANDONED")
    print(f"POC system running with sites {', '.join(layout.sites())}; admin kit: {layout.admin_dir}")
    return 0


def submit(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc.submit import submit_and_wait

    layout = _layout(args)
    outcome = submit_and_wait(layout, args.job, timeout_s=args.timeout, download_to=args.download)
    return _report_outcome(layout, outcome, args.timeout)


def _report_outcome(layout: PocLayout, outcome: JobOutcome, timeout_s: float) -> int:
    from medpfl_app.nvflare.poc.job_logs import log_locations

    print(f"job {outcome.job_id}: {outcome.status}")
    for site in outcome.lost_sites:
        print(
            f"{site} restarted during the job and did not rejoin it (NVFlare 2.9 does not bring a restarted site "
            "back into a running job): the job was aborted instead of waiting for it forever"
        )
    if outcome.status == "RUNNING":
        print(
            f"the job did not finish within {timeout_s:.0f} s and is still running; abort it in the admin console "
            f"with `abort_job {outcome.job_id}`, or wait and download it later"
        )
    if outcome.reasons:
        print("from the server's log:")
        for line in outcome.reasons:
            print(f"  {line}")
    if not outcome.completed:
        logs = log_locations(layout.prod_dir, outcome.job_id, layout.sites())
        print("full logs: " + (", ".join(str(path) for path in logs) or f"under {layout.prod_dir}"))
    if outcome.result_dir:
        print(f"result downloaded to {outcome.result_dir} (audited jobs: `medpfl report {outcome.result_dir}`)")
    return 0 if outcome.completed else 1


def stop(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    return _report_stop(system.stop(_layout(args)))


def _report_stop(report: StopReport) -> int:
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system
    from medpfl_app.nvflare.poc.sites import configure_site_data
    from medpfl_app.nvflare.poc.submit import submit_and_wait

    prepared = system.prepare(_layout(args).workspace, _site_names(args.sites), force=args.force)
    _print_prepared(prepared)
    layout = prepared.layout
    configure_site_data(layout, demo=True, data_root=None)
    try:
        system.start(layout)
        print("POC system running; submitting", args.job)
        outcome = submit_and_wait(layout, args.job, timeout_s=args.timeout, download_to=args.download)
    finally:
        stopped = _report_stop(system.stop(layout))
    return 1 if _report_outcome(layout, outcome, args.timeout) or stopped else 0
