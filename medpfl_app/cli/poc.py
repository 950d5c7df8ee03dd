"""``medpfl poc``: NVFlare POC mode under ``poc_workspace/`` for hospital IT, step by step or all at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from medpfl_app.cli import poc_commands
from medpfl_app.cli.options import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl poc`` and its actions to the top-level parser."""
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
    _add_prepare(actions)
    _add_configure_data(actions)
    _add_install_privacy(actions)
    _add_start(actions)
    _add_submit(actions)
    _add_stop(actions)
    _add_run(actions)


def _add_prepare(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc prepare``: provision the POC workspace."""
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
    prepare.set_defaults(func=poc_commands.prepare)


def _add_configure_data(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc configure-data``: point every site at its own data."""
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
    configure.set_defaults(func=poc_commands.configure_data)


def _add_install_privacy(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc install-privacy``: install the site privacy policy into every site."""
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
    privacy.set_defaults(func=poc_commands.install_privacy)


def _add_start(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc start``: start the system and wait for every site."""
    start = actions.add_parser("start", help="start server and sites and wait until all sites are connected")
    start.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        help="seconds to wait for every site to connect (a finite number > 0)",
    )
    start.set_defaults(func=poc_commands.start)


def _add_submit(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc submit``: check, submit and wait for one job."""
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
    submit.set_defaults(func=poc_commands.submit)


def _add_stop(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc stop``: stop every POC process of this workspace."""
    stop = actions.add_parser(
        "stop",
        help="stop every POC process of this workspace and report what happened",
        description=(
            "Run `nvflare poc stop`, then end every server, site, job and sub_start.sh watchdog process this "
            "workspace started that is still running (SIGTERM, then SIGKILL). Admin consoles and other processes "
            "are never touched. Exit status 1 when NVFlare's stop failed or a process could not be stopped."
        ),
    )
    stop.set_defaults(func=poc_commands.stop)


def _add_run(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``poc run``: every step at once, stopping the system at the end."""
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
    run.set_defaults(func=poc_commands.run)
