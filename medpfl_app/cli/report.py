"""``medpfl report``: re-render the audit report of a job from its ledger (and arrivals file) and print a summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``medpfl report`` to the top-level parser."""
    parser = subparsers.add_parser(
        "report",
        help="re-render the privacy audit report (HTML + per-round JSON) from a job's audit ledger",
        description=(
            "Read the audit ledger (audit_ledger.jsonl, schema medpfl.audit/1 or /2) of a downloaded job folder, a "
            "simulator workspace or the ledger file itself, write report_round_<n>.json per round and a "
            "self-contained audit_report.html (with --pdf also a print-ready audit_report.pdf), and print a site x "
            "round summary with the verdict in plain words, its evidence, the coverage and the yardstick. The job's "
            "name and purpose come from its meta.json above the ledger. Coverage compares the ledger with the "
            "server's received_updates.jsonl beside it: an update received without an audit record is reported as "
            "lost (the server or its audit stopped before auditing it); without that file the coverage is reported "
            "unknown. Model accuracy is taken from a metrics/round_metrics.jsonl under the folder when present (a "
            "model that did not learn is flagged). Values outside their valid range (an SSIM above 1, a success "
            "rate above 100 %, a negative ε) are flagged as invalid, never used as measurements; control "
            "characters in ledger text are printed escaped."
        ),
    )
    parser.add_argument("source", type=Path, help="downloaded job folder, simulator workspace or audit_ledger.jsonl")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder, created if missing; only report_round_<n>.json, audit_report.html and (with --pdf) "
        "audit_report.pdf are (re)written in it, and an existing file given as --out is refused, never "
        "overwritten (default: the ledger's folder)",
    )
    parser.add_argument(
        "--open-thumbnails",
        type=Path,
        default=None,
        metavar="DIR",
        help="show the server's stored reconstructions from DIR/<site>/round_<n>/*.png (original_<i>.png there are "
        "synthetic demo originals a site released, shown above recon_<i>.png). Without it, the report shows the "
        "reconstructions the run itself stored beside the ledger (<run dir>/medpfl/thumbnails: only a job that "
        "turned store_reconstructions on, meant for synthetic demo data, writes them) and none otherwise. They are "
        "patient data for real data: copies and the HTML are written owner-only (0600).",
    )
    parser.add_argument(
        "--no-thumbnails",
        action="store_true",
        help="show no reconstruction, even ones the run stored beside the ledger",
    )
    parser.add_argument(
        "--pdf",
        action="store_true",
        help="also print the HTML report to a print-ready audit_report.pdf beside it (owner-only), with headless "
        "Chromium (install it with your package manager, e.g. apt-get install chromium, or set MEDPFL_CHROMIUM)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medpfl_app.errors import MedPFLError
    from medpfl_app.reports import build_report
    from medpfl_app.reports.pdf import find_chromium, print_pdf
    from medpfl_app.reports.terminal import summary_text

    if args.open_thumbnails is not None and args.no_thumbnails:
        raise MedPFLError("--open-thumbnails and --no-thumbnails contradict each other", fix="pass one of them")
    if args.out is not None:
        check_report_folder(args.out)
    if args.pdf:
        find_chromium()  # before any work: a missing browser is one clear error naming how to install it
    try:
        report = build_report(
            args.source, args.out, thumbnails_from=args.open_thumbnails, stored_thumbnails=not args.no_thumbnails
        )
    except OSError as error:  # a folder that cannot be created or written, a ledger that cannot be read
        raise MedPFLError(
            f"could not read the ledger or write the report: {error.strerror or error} "
            f"({error.filename or args.out or args.source})",
            fix="pass a readable ledger and an --out folder you can write to",
        ) from None
    print(summary_text(report))
    if args.pdf:
        print(f"PDF report: {print_pdf(report.paths.html)}")
    return 0


def check_report_folder(out: Path) -> None:
    """Refuse an ``--out`` that is not (or cannot become) a report folder, before anything is read or written.

    Raises:
        MedPFLError: ``out`` (or a folder above it) is an existing file, or a file the report writes is a folder.
    """
    from medpfl_app.errors import MedPFLError
    from medpfl_app.reports import HTML_FILE
    from medpfl_app.reports.pdf import PDF_FILE

    for place in (out, *out.parents):
        if place.exists() and not place.is_dir():
            why = (
                "it is an existing file, and the report never overwrites a file"
                if place == out
                else f"{place} above it is an existing file"
            )
            raise MedPFLError(
                f"--out {out} is not a folder: {why}",
                fix="pass --out a folder (new or existing) for audit_report.html and report_round_<n>.json, or "
                "leave --out out to write beside the ledger",
            )
        if place.exists():
            break
    if out.is_dir():
        written = (out / HTML_FILE, out / PDF_FILE, *out.glob("report_round_*.json"))
        blocking = [p for p in written if p.exists() and not p.is_file()]
        if blocking:
            raise MedPFLError(
                f"--out {out} holds {blocking[0].name} that is not a file, so the report cannot be written there",
                fix="pass another --out folder, or move that entry away",
            )
