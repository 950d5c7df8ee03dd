"""``medpfl report``: re-render the audit report of a job from its ledger and print a terminal summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl report`` to the top-level parser."""
    parser = subparsers.add_parser(
        "report",
        help="re-render the privacy audit report (HTML + per-round JSON) from a job's audit ledger",
        description=(
            "Read the audit ledger (audit_ledger.jsonl) of a downloaded job folder, a simulator workspace or the "
            "ledger file itself, write report_round_<n>.json per round and a self-contained audit_report.html, "
            "and print a site x round summary with the verdict. Model accuracy is taken from a "
            "metrics/round_metrics.jsonl under the folder when present."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="downloaded job folder, simulator workspace or audit_ledger.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: the ledger's folder)")
    parser.add_argument(
        "--open-thumbnails",
        type=Path,
        default=None,
        metavar="DIR",
        help="opt in to showing the server's stored reconstructions from DIR/<site>/round_<n>/*.png (an audited "
        "job with store_reconstructions on keeps them in <run dir>/medpfl/thumbnails; original_<i>.png there are "
        "synthetic demo originals a site released, shown above recon_<i>.png). They are patient data for real "
        "data: copies and the HTML are then written owner-only (0600). Off by default.",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.reports import build_report
    from medpfl_app.reports.terminal import summary_text

    report = build_report(args.source, args.out, thumbnails_from=args.open_thumbnails)
    print(summary_text(report))
    return 0
