"""``medpfl jobs``: list and (re)generate the ready-to-submit NVFlare job folders under ``jobs/``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list or regenerate the NVFlare job folders",
        description="Generate MedPFL's NVFlare job folders from their Python definitions (medpfl_app.nvflare.jobs).",
    )
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list the defined jobs")
    listing.set_defaults(func=_list)

    export = actions.add_parser(
        "export",
        help="write job folders (default: every job, into ./jobs)",
        description="Write each job as <out>/<name>/ with meta.json, app/config and app/custom, replacing old ones.",
    )
    export.add_argument("names", nargs="*", help="job names (default: all)")
    export.add_argument("--out", type=Path, default=Path("jobs"), help="folder to write into (default: ./jobs)")
    export.set_defaults(func=_export)


def _list(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.jobs import JOB_CATALOG

    width = max(len(name) for name in JOB_CATALOG)
    for name, spec in JOB_CATALOG.items():
        print(f"{name:<{width}}  {spec.description}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medpfl_app.nvflare.jobs.catalog_io import export_catalog

    for path in export_catalog(args.out, args.names or None):
        print(f"wrote {path}")
    return 0
