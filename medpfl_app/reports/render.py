"""`render_report`: the ledger of a job → per-round JSON reports and one self-contained HTML report."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_atomic
from medpfl_app.audit.ledger import LEDGER_FILE, find_ledgers
from medpfl_app.errors import MedPFLError
from medpfl_app.reports.accuracy import Accuracy, find_round_metrics, read_accuracy
from medpfl_app.reports.job import JobInfo
from medpfl_app.reports.model import AuditView, build_view
from medpfl_app.reports.page import ReportContent, render_html, report_content, thumbnails_why
from medpfl_app.reports.privacy import EpsilonReading
from medpfl_app.reports.round_json import REPORT_SCHEMA, round_report
from medpfl_app.reports.sources import ARRIVALS_FILE, Unreadable, arrivals_beside, read_arrivals, read_ledger_records
from medpfl_app.reports.thumbnails import THUMBNAILS_DIR, ThumbnailSet, collect_thumbnails, stored_any
from medpfl_app.reports.utility import Utility
from medpfl_app.reports.verdict import verdict

__all__ = [
    "HTML_FILE",
    "REPORT_SCHEMA",
    "Report",
    "ReportPaths",
    "build_report",
    "render_html",
    "render_report",
    "resolve_ledger",
    "ReportContent",
]

HTML_FILE = "audit_report.html"


@dataclass(frozen=True)
class ReportPaths:
    """Where `render_report` read from and what it wrote."""

    ledger: Path
    out_dir: Path
    html: Path
    round_json: tuple[Path, ...]
    thumbnails: tuple[Path, ...] = ()
    round_metrics: Path | None = None
    arrivals: Path | None = None


@dataclass(frozen=True)
class Report:
    """The rendered report's content, for the terminal summary and callers that want the numbers."""

    paths: ReportPaths
    view: AuditView
    verdict: Mapping[str, Any]
    skipped_lines: tuple[int, ...]
    accuracy: Accuracy
    thumbnail_notes: tuple[str, ...]
    unreadable: tuple[Unreadable, ...] = ()
    job: JobInfo | None = None
    plain: str = ""
    utility: Utility | None = None
    epsilon: tuple[EpsilonReading, ...] = ()


def resolve_ledger(source: str | os.PathLike[str]) -> Path:
    """The one audit ledger behind ``source``: the ledger file itself, or the only one under a folder.

    Raises:
        MedPFLError: nothing there, no ledger under the folder, or several (ambiguous).
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise MedPFLError(
            f"{path} does not exist",
            fix="pass a downloaded job folder, a simulator workspace or an audit_ledger.jsonl file",
        )
    ledgers = list(find_ledgers(path))
    if not ledgers:
        arrivals = sorted(path.rglob(ARRIVALS_FILE))
        seen = ""
        if arrivals:
            count = len(read_arrivals(arrivals[0]).arrivals)
            seen = (
                f"; {arrivals[0]} lists {count} received update{'s' if count != 1 else ''}: either the job ran "
                "without the audit, or its server stopped before writing the first audit record (then none of "
                "them was audited)"
            )
        raise MedPFLError(
            f"no audit ledger ({LEDGER_FILE}) under {path}{seen}",
            fix="pass the job folder of a job that ran with the audit on (nvflare job download / download_job), "
            "or the ledger file itself",
        )
    if len(ledgers) > 1:
        listed = ", ".join(str(p.relative_to(path)) for p in ledgers)
        raise MedPFLError(f"several audit ledgers under {path}: {listed}", fix="pass the ledger file you mean")
    return ledgers[0]


def render_report(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    thumbnails_from: str | os.PathLike[str] | None = None,
    stored_thumbnails: bool = True,
) -> ReportPaths:
    """Render ``report_round_<n>.json`` per round and ``audit_report.html`` from a job's audit ledger.

    Args:
        source: A downloaded job folder, a simulator workspace or an ``audit_ledger.jsonl`` file. Model accuracy is
            read from a ``metrics/round_metrics.jsonl`` under the folder (or next to the ledger) when there is one.
        out_dir: Report folder; default: the ledger's folder, so a downloaded job carries its report.
        thumbnails_from: Folder of server reconstructions (``<site>/round_<n>/*.png``; ``original_<i>.png``
            files are originals a site released for synthetic demo data, shown above ``recon_<i>.png``).
            Downsized copies are written owner-only (0600) and embedded; every report file is 0600.
        stored_thumbnails: Without ``thumbnails_from``, show what the run itself stored beside the ledger
            (``<ledger folder>/thumbnails``: only a job with ``store_reconstructions`` on writes it, meant for the
            synthetic demo data; reconstructions of real data are patient data). ``False`` shows none.

    Returns:
        The paths read and written.

    Raises:
        MedPFLError: no ledger, several ledgers, or a bad thumbnail folder.
    """
    return build_report(source, out_dir, thumbnails_from=thumbnails_from, stored_thumbnails=stored_thumbnails).paths


def build_report(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    thumbnails_from: str | os.PathLike[str] | None = None,
    stored_thumbnails: bool = True,
) -> Report:
    """`render_report`, also returning the content (for the terminal summary).

    ``stored_thumbnails``: when no ``thumbnails_from`` is given, show the reconstructions the run itself stored beside
    the ledger (``<ledger folder>/thumbnails``: only a job that turned ``store_reconstructions`` on writes them, for
    synthetic demo data); ``False`` shows none.
    """
    ledger = resolve_ledger(source)
    contents = read_ledger_records(ledger)
    arrivals_path = arrivals_beside(ledger)
    view = build_view(contents.entries, read_arrivals(arrivals_path) if arrivals_path else None)
    search_root = Path(source) if Path(source).is_dir() else ledger.parent
    accuracy = read_accuracy(find_round_metrics(search_root))
    target = Path(out_dir) if out_dir is not None else ledger.parent
    target.mkdir(mode=0o700, parents=True, exist_ok=True)  # reports describe patients' leakage: owner-only
    summary = verdict(view, contents.skipped_lines)
    thumbs, why = _thumbnails(ledger, target, thumbnails_from, stored_thumbnails)
    content = dataclasses.replace(report_content(view, summary, ledger, accuracy), thumbnails_why=why)
    summary = _with_content(summary, view, content)
    round_paths = _round_files(view, target, ledger, contents.skipped_lines, accuracy, content.job)
    html = render_html(
        view,
        summary,
        ledger=ledger,
        skipped_lines=contents.skipped_lines,
        accuracy=accuracy,
        thumbnails=thumbs,
        unreadable=contents.unreadable,
        content=content,
    )
    paths = ReportPaths(
        ledger=ledger,
        out_dir=target,
        html=_write(target / HTML_FILE, html),
        round_json=round_paths,
        thumbnails=tuple(t.path for t in thumbs.thumbnails) if thumbs else (),
        round_metrics=accuracy.path,
        arrivals=arrivals_path,
    )
    return Report(
        paths=paths,
        view=view,
        verdict=summary,
        skipped_lines=contents.skipped_lines,
        accuracy=accuracy,
        thumbnail_notes=thumbs.ignored if thumbs else (),
        unreadable=contents.unreadable,
        job=content.job,
        plain=content.plain,
        utility=content.utility,
        epsilon=content.epsilon,
    )


def _thumbnails(
    ledger: Path, target: Path, thumbnails_from: str | os.PathLike[str] | None, stored_thumbnails: bool
) -> tuple[ThumbnailSet | None, str]:
    """The reconstructions to show (the folder given, else what the run stored beside the ledger, if allowed) and
    the line saying why none is shown."""
    if thumbnails_from is None and stored_thumbnails and stored_any(ledger.parent / THUMBNAILS_DIR):
        thumbnails_from = ledger.parent / THUMBNAILS_DIR
    thumbs = collect_thumbnails(thumbnails_from, target) if thumbnails_from is not None else None
    return thumbs, thumbnails_why(thumbnails_from, stored_thumbnails)


def _round_files(
    view: AuditView, target: Path, ledger: Path, skipped_lines: tuple[int, ...], accuracy: Accuracy, job: JobInfo
) -> tuple[Path, ...]:
    """``report_round_<n>.json`` for every round of the view."""
    return tuple(
        _write(
            target / f"report_round_{n}.json",
            json.dumps(round_report(view, n, ledger, skipped_lines, accuracy, job.to_dict()), indent=2) + "\n",
        )
        for n in view.rounds
    )


def _with_content(summary: Mapping[str, Any], view: AuditView, content: ReportContent) -> dict[str, Any]:
    """The verdict with what the page adds: plain words, the job, coverage against its plan, utility, ε readings."""
    return {
        **summary,
        "plain": content.plain,
        "job": content.job.to_dict(),
        "plan_coverage": view.coverage.against(content.job.plan).to_dict(),
        "model_learned": content.utility.learned,
        "model_warnings": list(content.utility.warnings),
        "epsilon_readings": [
            {
                "site": r.site,
                "epsilon": r.epsilon,
                "delta": r.delta,
                "level": r.level,
                "band": r.band,
                "round": r.last_round,
            }
            for r in content.epsilon
        ],
        "preflight": content.preflight.to_dict(),
    }


def _write(path: Path, content: str) -> Path:
    """Atomic, owner-only (0600) write: every report file names sites' leakage, and may embed thumbnails."""

    def write(temp: Path) -> None:
        temp.write_text(content, encoding="utf-8")
        os.chmod(temp, 0o600)

    return write_atomic(path, write)
