"""`render_report`: the ledger of a job → per-round JSON reports and one self-contained HTML report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.atomic_io import write_atomic
from medpfl_app.audit.ledger import LEDGER_FILE, find_ledgers
from medpfl_app.errors import MedPFLError
from medpfl_app.reports.accuracy import Accuracy, find_round_metrics, read_accuracy
from medpfl_app.reports.chains import site_chains
from medpfl_app.reports.coverage import gap_label
from medpfl_app.reports.job import JobInfo, job_info
from medpfl_app.reports.model import RISK_MEANINGS, RISK_ORDER, AuditView, build_view
from medpfl_app.reports.plain import plain_verdict
from medpfl_app.reports.plots import plots as build_plots
from medpfl_app.reports.policy import risk_policy
from medpfl_app.reports.privacy import BANDS_TEXT, FORMAL_SCOPE, EpsilonReading, epsilon_readings, grouped
from medpfl_app.reports.round_json import REPORT_SCHEMA, round_report
from medpfl_app.reports.sources import (
    ARRIVALS_FILE,
    Unreadable,
    arrivals_beside,
    read_arrivals,
    read_ledger_records,
    unreadable_text,
)
from medpfl_app.reports.thumbnails import (
    THUMBNAILS_DIR,
    ThumbnailSet,
    collect_thumbnails,
    stored_any,
    thumbnail_rows,
)
from medpfl_app.reports.utility import Utility, assess_utility
from medpfl_app.reports.verdict import verdict
from medpfl_app.reports.yardstick import ASR_DEFINITION, policy_lines
from medpfl_app.text import printable

__all__ = [
    "HTML_FILE",
    "REPORT_SCHEMA",
    "Report",
    "ReportPaths",
    "build_report",
    "render_html",
    "render_report",
    "resolve_ledger",
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
    view = build_view(contents.records, read_arrivals(arrivals_path) if arrivals_path else None)
    search_root = Path(source) if Path(source).is_dir() else ledger.parent
    accuracy = read_accuracy(find_round_metrics(search_root))
    target = Path(out_dir) if out_dir is not None else ledger.parent
    target.mkdir(mode=0o700, parents=True, exist_ok=True)  # reports describe patients' leakage: owner-only
    summary = verdict(view, contents.skipped_lines)
    if thumbnails_from is None and stored_thumbnails and stored_any(ledger.parent / THUMBNAILS_DIR):
        thumbnails_from = ledger.parent / THUMBNAILS_DIR
    thumbs = collect_thumbnails(thumbnails_from, target) if thumbnails_from is not None else None
    job = job_info(ledger, contents.records)
    utility = assess_utility(accuracy, contents.records, ledger)
    readings = tuple(epsilon_readings(view))
    plain = plain_verdict(view, summary, job, readings, utility)
    summary = {
        **summary,
        "plain": plain,
        "job": job.to_dict(),
        "plan_coverage": view.coverage.against(job.plan).to_dict(),
        "model_learned": utility.learned,
        "model_warnings": list(utility.warnings),
        "epsilon_readings": [
            {
                "site": r.site,
                "epsilon": r.epsilon,
                "delta": r.delta,
                "level": r.level,
                "band": r.band,
                "round": r.last_round,
            }
            for r in readings
        ],
    }

    round_paths = tuple(
        _write(
            target / f"report_round_{n}.json",
            json.dumps(round_report(view, n, ledger, contents.skipped_lines, accuracy, job.to_dict()), indent=2) + "\n",
        )
        for n in view.rounds
    )
    content = ReportContent(
        job=job,
        plain=plain,
        utility=utility,
        epsilon=readings,
        thumbnails_why=_thumbnails_why(thumbnails_from, stored_thumbnails),
    )
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
    html_path = _write(target / HTML_FILE, html)
    paths = ReportPaths(
        ledger=ledger,
        out_dir=target,
        html=html_path,
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
        job=job,
        plain=plain,
        utility=utility,
        epsilon=readings,
    )


def _thumbnails_why(thumbnails_from: object, stored_thumbnails: bool) -> str:
    """Why no reconstruction is shown, in one line (used when none is)."""
    if thumbnails_from is not None:
        return "Not shown: the folder given holds no reconstruction this report could use."
    if not stored_thumbnails:
        return "Not shown: this report was rendered with reconstructions turned off (--no-thumbnails)."
    return (
        "Not shown (default): this run stored no reconstructions. The audit stores them only when the job turns "
        "on store_reconstructions, meant for synthetic demo data, because reconstructions of real data are "
        "patient data."
    )


@dataclass(frozen=True)
class ReportContent:
    """What the page shows beyond the view and verdict: job, plain verdict, utility, ε readings, thumbnail note."""

    job: JobInfo
    plain: str
    utility: Utility
    epsilon: tuple[EpsilonReading, ...]
    thumbnails_why: str


def _write(path: Path, content: str) -> Path:
    """Atomic, owner-only (0600) write: every report file names sites' leakage, and may embed thumbnails."""

    def write(temp: Path) -> None:
        temp.write_text(content, encoding="utf-8")
        os.chmod(temp, 0o600)

    return write_atomic(path, write)


def render_html(
    view: AuditView,
    summary: Mapping[str, Any],
    *,
    ledger: Path,
    skipped_lines: Sequence[int],
    accuracy: Accuracy,
    thumbnails: ThumbnailSet | None,
    unreadable: Sequence[Unreadable] = (),
    content: ReportContent | None = None,
) -> str:
    """The self-contained HTML report (inline CSS and SVG; every record string auto-escaped by Jinja2 and its
    control characters escaped by `medpfl_app.reports.fields.printable`)."""
    import jinja2
    from markupsafe import Markup

    def visible(value: Any) -> Any:
        # every text reaches the page HTML-escaped (autoescape) and with control characters and bidi overrides
        # shown escaped, as on the terminal: a site name cannot reorder or hide what the page says around it
        return value if isinstance(value, Markup) or not isinstance(value, str) else printable(value, newlines=True)

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("medpfl_app.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=visible,
    )
    plots = build_plots(view, accuracy)
    for plot in plots:
        plot["svg"] = Markup(plot["svg"])  # built by svg.line_chart, which escapes every text itself
    chains = site_chains({key: cell.record for key, cell in view.cells.items()})
    if content is None:
        job = job_info(ledger, view.records)
        utility = assess_utility(accuracy, view.records, ledger)
        readings = tuple(epsilon_readings(view))
        content = ReportContent(
            job=job,
            plain=plain_verdict(view, summary, job, readings, utility),
            utility=utility,
            epsilon=readings,
            thumbnails_why=_thumbnails_why(None, True),
        )
    policy = risk_policy(view.records)
    return environment.get_template("audit_report.html.j2").render(
        view=view,
        verdict=summary,
        ledger=str(ledger),
        skipped_lines=list(skipped_lines),
        unreadable=list(unreadable),
        unreadable_text=unreadable_text(list(skipped_lines)),
        coverage=view.coverage,
        yardstick=view.yardstick,
        gap_label=gap_label,
        accuracy=accuracy,
        plots=plots,
        chains=chains,
        job=content.job,
        plain=content.plain,
        utility=content.utility,
        epsilon_readings=content.epsilon,
        weak_groups=grouped([r for r in content.epsilon if r.weak]),
        formal_scope=FORMAL_SCOPE,
        bands_text=BANDS_TEXT,
        asr_definition=ASR_DEFINITION,
        risk_order=RISK_ORDER,
        risk_meanings=RISK_MEANINGS,
        policy=policy,
        policy_rows=policy_lines(policy["thresholds"]) if policy else [],
        thumbnails=thumbnails,
        thumbnail_rows=thumbnail_rows(thumbnails),
        thumbnails_why=content.thumbnails_why,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
