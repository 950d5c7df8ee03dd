"""The self-contained HTML page of the report (Jinja2 template, inline CSS and SVG)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpfl_app.reports.accuracy import Accuracy
from medpfl_app.reports.chains import site_chains
from medpfl_app.reports.coverage import gap_label
from medpfl_app.reports.job import JobInfo, job_info
from medpfl_app.reports.model import RISK_MEANINGS, RISK_ORDER, AuditView
from medpfl_app.reports.plain import plain_verdict
from medpfl_app.reports.plots import plots as build_plots
from medpfl_app.reports.policy import risk_policy
from medpfl_app.reports.preflight_text import LEVEL_WORDS, PreflightReading, read_preflight
from medpfl_app.reports.privacy import BANDS_TEXT, FORMAL_SCOPE, EpsilonReading, epsilon_readings, grouped
from medpfl_app.reports.sources import Unreadable, unreadable_text
from medpfl_app.reports.thumbnails import ThumbnailSet, thumbnail_rows
from medpfl_app.reports.utility import Utility, assess_utility
from medpfl_app.reports.yardstick import ASR_DEFINITION, policy_lines
from medpfl_app.text import printable

__all__ = ["ReportContent", "render_html", "report_content", "thumbnails_why"]


def thumbnails_why(thumbnails_from: object, stored_thumbnails: bool) -> str:
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
    preflight: PreflightReading = field(default_factory=PreflightReading)


def _environment() -> Any:
    """The Jinja2 environment of the report's templates (autoescaped, strict, every text made `printable`)."""
    import jinja2
    from markupsafe import Markup

    def visible(value: Any) -> Any:
        # every text reaches the page HTML-escaped (autoescape) and with control characters and bidi overrides
        # shown escaped, as on the terminal: a site name cannot reorder or hide what the page says around it
        return value if isinstance(value, Markup) or not isinstance(value, str) else printable(value, newlines=True)

    return jinja2.Environment(
        loader=jinja2.PackageLoader("medpfl_app.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=visible,
    )


def report_content(view: AuditView, summary: Mapping[str, Any], ledger: Path, accuracy: Accuracy) -> ReportContent:
    """What the page shows beyond the view and verdict, when the caller did not compute it already."""
    job = job_info(ledger, view.records)
    utility = assess_utility(accuracy, view.records, ledger)
    readings = tuple(epsilon_readings(view))
    return ReportContent(
        job=job,
        plain=plain_verdict(view, summary, job, readings, utility),
        utility=utility,
        epsilon=readings,
        thumbnails_why=thumbnails_why(None, True),
        preflight=read_preflight(ledger),
    )


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
    from markupsafe import Markup

    plots = build_plots(view, accuracy)
    for plot in plots:
        plot["svg"] = Markup(plot["svg"])  # built by svg.line_chart, which escapes every text itself
    chains = site_chains({key: cell.record for key, cell in view.cells.items()})
    if content is None:
        content = report_content(view, summary, ledger, accuracy)
    policy = risk_policy(view.records)
    return (
        _environment()
        .get_template("audit_report.html.j2")
        .render(
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
            empirical_checks=view.empirical_checks(),
            empirical_failures=view.empirical_failures(),
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
            preflight=content.preflight,
            preflight_level_words=LEVEL_WORDS,
            generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        )
    )
