"""``medpfl poc``: NVFlare POC mode under ``poc_workspace/`` for hospital IT, step by step or all at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli.options import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "poc",
        help="prepare, start, submit to and stop an NVFlare POC system",
        description=(
            "NVFlare POC mode on this machine (loopback, port 8002). The workspace is ./poc_workspace unless "
            "NVFLARE_POC_WORKSPACE is set. Steps: prepare -> configure-data -> [install-privacy] -> start -> submit "
            "-> stop; `run` does all of them and always stops the system at the end. After a crash: stop, then "
            "start (see poc_workspace/README.md)."
        ),
    )
    parser.add_argument("--workspace", type=Path, default=None, help="POC workspace (default: ./poc_workspace)")
    actions = parser.add_subparsers(dest="poc_action", metavar="ACTION", required=True)

    prepare = actions.add_parser(
        "prepare",
        help="`nvflare poc prepare` for N sites (new startup kits)",
        description=(
            "Provision the POC workspace with NVFlare (which deletes the workspace folder first). A workspace whose "
            "sites hold DP ledgers, privacy.json, data configuration or job results is refused, naming them; with "
            "--force they are discarded except the DP ledgers, which are carried over. This folder's own files "
            "(README.md, templates/) are always kept. The system must be stopped."
        ),
    )
    prepare.add_argument("--sites", type=positive_int, default=3, help="number of sites site-1..site-N")
    prepare.add_argument(
        "--force", action="store_true", help="replace a workspace that holds site state (DP ledgers are still kept)"
    )
    prepare.set_defaults(func=_prepare)

    configure = actions.add_parser(
        "configure-data",
        help="write each site's local/medpfl_data.json",
        description=(
            "Point every site at its own data: with --demo, generate the phantom demo data set and use one "
            "datalist per site; with --data-root, use <root>/<site>/datalist.json (or a class-folder tree)."
        ),
    )
    source = configure.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="generate and use the embedded demo data")
    source.add_argument("--data-root", type=Path, help="folder holding one <site>/datalist.json per site")
    configure.set_defaults(func=_configure)

    privacy = actions.add_parser(
        "install-privacy",
        help="install the site privacy policy (privacy.json scopes) into every POC site",
        description=(
            "Validate a privacy.json (default: the template shipped as medpfl_app/nvflare/filters/templates/privacy.json, "
            "with the client-level DP scopes private, strict) and write it to <site>/local/privacy.json for every POC site. Site-scope "
            "filters run before any job filter and no job can disable them. Sites read the policy at start: run "
            "this before `medpfl poc start` (or restart the system). `show_scopes client` in the admin console "
            "lists the scopes."
        ),
    )
    privacy.add_argument("--template", default="default", help="'default' or the path of a privacy.json")
    privacy.add_argument("--default-scope", default=None, help="override the policy's default_scope")
    privacy.set_defaults(func=_install_privacy)

    start = actions.add_parser("start", help="start server and sites and wait until all sites are connected")
    start.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        help="seconds to wait for every site to connect (a finite number > 0)",
    )
    start.set_defaults(func=_start)

    submit = actions.add_parser(
        "submit",
        help="check a job folder, submit a copy of it through the FLARE API and wait for it",
        description=(
            "Check the job (audit plan, rounds, sites; one error naming the job, field and fix), submit a copy "
            "staged in a temporary folder (NVFlare signs the submitted folder in place, so the original stays "
            "untouched) and wait for it to finish."
        ),
    )
    submit.add_argument("job", type=Path, help="job folder, e.g. jobs/fedavg_small_cnn")
    submit.add_argument(
        "--timeout",
        type=positive_float,
        default=1800.0,
        help="seconds to wait for the job to finish (a finite number > 0)",
    )
    submit.add_argument("--download", type=Path, default=Path("medpfl_runs/poc_results"), help="result folder")
    submit.set_defaults(func=_submit)

    stop = actions.add_parser(
        "stop",
        help="stop every POC process of this workspace and report what happened",
        description=(
            "Run `nvflare poc stop`, then end every server, site, job and sub_start.sh watchdog process this "
            "workspace started that is still running (SIGTERM, then SIGKILL). Admin consoles and other processes "
            "are never touched. Exit status 1 when NVFlare's stop failed or a process could not be stopped."
        ),
    )
    stop.set_defaults(func=_stop)

    run = actions.add_parser("run", help="prepare, configure demo data, start, submit JOB, download, stop")
    run.add_argument("job", type=Path, nargs="?", default=Path("jobs/fedavg_small_cnn"))
    run.add_argument("--sites", type=positive_int, default=3, help="number of sites site-1..site-N")
    run.add_argument(
        "--timeout",
        type=positive_float,
        default=1800.0,
        help="seconds to wait for the job to finish (a finite number > 0)",
    )
    run.add_argument("--download", type=Path, default=Path("medpfl_runs/poc_results"))
    run.add_argument(
        "--force", action="store_true", help="re-prepare a workspace that holds site state (DP ledgers are still kept)"
    )
    run.set_defaults(func=_run)


def _layout(args: argparse.Namespace):
    from medpfl_app.nvflare.poc.system import PocLayout, default_poc_workspace

    return PocLayout((args.workspace or default_poc_workspace()).resolve())


def _site_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


def _prepare(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    prepared = system.prepare(_layout(args).workspace, _site_names(args.sites), force=args.force)
    _print_prepared(prepared)
    print("next: medpfl poc configure-data --demo   (or --data-root DIR)")
    return 0


def _print_prepared(prepared) -> None:
    layout = prepared.layout
    print(f"POC workspace ready: {layout.prod_dir} (sites: {', '.join(layout.sites())})")
    for state in prepared.discarded:
        print(f"discarded (--force): {state.describe(layout.workspace)}")
    for path in prepared.kept:
        if layout.prod_dir in path.parents:  # a site's DP ledger (this folder's own files are kept silently)
            print(f"kept: {path}")
    for path in prepared.left_aside:
        print(f"WARNING: could not put back {path} (the new workspace has a file there): move it back by hand")


def _configure(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc.sites import configure_site_data

    for site, config in configure_site_data(_layout(args), demo=args.demo, data_root=args.data_root).items():
        print(f"{site}: {config}")
    return 0


def _install_privacy(args: argparse.Namespace) -> int:
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


def _start(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    layout = _layout(args)
    for job_id in system.start(layout, timeout_s=args.timeout):
        print(f"job {job_id} was left RUNNING by a server that is gone: marked FINISHED:ABANDONED")
    print(f"POC system running with sites {', '.join(layout.sites())}; admin kit: {layout.admin_dir}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc.submit import submit_and_wait

    layout = _layout(args)
    outcome = submit_and_wait(layout, args.job, timeout_s=args.timeout, download_to=args.download)
    return _report_outcome(layout, outcome, args.timeout)


def _report_outcome(layout, outcome, timeout_s: float) -> int:
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


def _stop(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.poc import system

    return _report_stop(system.stop(_layout(args)))


def _report_stop(report) -> int:
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def _run(args: argparse.Namespace) -> int:
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
