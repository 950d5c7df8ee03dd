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
            "NVFLARE_POC_WORKSPACE is set. Steps: prepare -> configure-data -> [install-privacy] -> start -> submit -> stop; "
            "`run` does all of them and always stops the system at the end."
        ),
    )
    parser.add_argument("--workspace", type=Path, default=None, help="POC workspace (default: ./poc_workspace)")
    actions = parser.add_subparsers(dest="poc_action", metavar="ACTION", required=True)

    prepare = actions.add_parser("prepare", help="`nvflare poc prepare` for N sites (replaces startup kits)")
    prepare.add_argument("--sites", type=positive_int, default=3, help="number of sites site-1..site-N")
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
            "Validate a privacy.json (default: poc_workspace/templates/privacy/privacy.json with the client-level "
            "DP scopes private, strict) and write it to <site>/local/privacy.json for every POC site. Site-scope "
            "filters run before any job filter and no job can disable them. Sites read the policy at start: run "
            "this before `medpfl poc start` (or restart the system). `show_scopes client` in the admin console "
            "lists the scopes."
        ),
    )
    privacy.add_argument("--template", default="default", help="'default' or the path of a privacy.json")
    privacy.add_argument("--default-scope", default=None, help="override the policy's default_scope")
    privacy.set_defaults(func=_install_privacy)

    start = actions.add_parser("start", help="start server and sites and wait until all sites are connected")
    start.add_argument("--timeout", type=positive_float, default=300.0,
                       help="seconds to wait for every site to connect (a finite number > 0)")
    start.set_defaults(func=_start)

    submit = actions.add_parser("submit", help="submit a job folder through the FLARE API and wait for it")
    submit.add_argument("job", type=Path, help="job folder, e.g. jobs/fedavg_small_cnn")
    submit.add_argument("--timeout", type=positive_float, default=1800.0,
                        help="seconds to wait for the job to finish (a finite number > 0)")
    submit.add_argument("--download", type=Path, default=Path("medpfl_runs/poc_results"), help="result folder")
    submit.set_defaults(func=_submit)

    stop = actions.add_parser("stop", help="stop every POC process of this workspace")
    stop.set_defaults(func=_stop)

    run = actions.add_parser("run", help="prepare, configure demo data, start, submit JOB, download, stop")
    run.add_argument("job", type=Path, nargs="?", default=Path("jobs/fedavg_small_cnn"))
    run.add_argument("--sites", type=positive_int, default=3, help="number of sites site-1..site-N")
    run.add_argument("--timeout", type=positive_float, default=1800.0,
                     help="seconds to wait for the job to finish (a finite number > 0)")
    run.add_argument("--download", type=Path, default=Path("medpfl_runs/poc_results"))
    run.set_defaults(func=_run)


def _layout(args: argparse.Namespace):
    from medpfl_app.poc.system import PocLayout, default_poc_workspace

    return PocLayout((args.workspace or default_poc_workspace()).resolve())


def _site_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


def _prepare(args: argparse.Namespace) -> int:
    from medpfl_app.poc import system

    layout = system.prepare(_layout(args).workspace, _site_names(args.sites))
    print(f"POC workspace ready: {layout.prod_dir} (sites: {', '.join(layout.sites())})")
    print("next: medpfl poc configure-data --demo   (or --data-root DIR)")
    return 0


def _configure(args: argparse.Namespace) -> int:
    from medpfl_app.poc.sites import configure_site_data

    for site, config in configure_site_data(_layout(args), demo=args.demo, data_root=args.data_root).items():
        print(f"{site}: {config}")
    return 0


def _install_privacy(args: argparse.Namespace) -> int:
    from medpfl_app.poc.sites import install_site_privacy

    for site, path in install_site_privacy(_layout(args), args.template, default_scope=args.default_scope).items():
        print(f"{site}: {path}")
    return 0


def _start(args: argparse.Namespace) -> int:
    from medpfl_app.poc import system

    layout = _layout(args)
    system.start(layout, timeout_s=args.timeout)
    print(f"POC system running with sites {', '.join(layout.sites())}; admin kit: {layout.admin_dir}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from medpfl_app.poc import system

    outcome = system.submit_and_wait(_layout(args), args.job, timeout_s=args.timeout, download_to=args.download)
    print(f"job {outcome.job_id}: {outcome.status}")
    if outcome.result_dir:
        print(f"result downloaded to {outcome.result_dir}")
    return 0 if outcome.status == "FINISHED:COMPLETED" else 1


def _stop(args: argparse.Namespace) -> int:
    from medpfl_app.poc import system

    system.stop(_layout(args))
    print("POC system stopped")
    return 0


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.poc import system
    from medpfl_app.poc.sites import configure_site_data

    layout = system.prepare(_layout(args).workspace, _site_names(args.sites))
    configure_site_data(layout, demo=True, data_root=None)
    try:
        system.start(layout)
        print("POC system running; submitting", args.job)
        outcome = system.submit_and_wait(layout, args.job, timeout_s=args.timeout, download_to=args.download)
    finally:
        system.stop(layout)
    print(f"job {outcome.job_id}: {outcome.status}; result in {outcome.result_dir}")
    return 0 if outcome.status == "FINISHED:COMPLETED" else 1
