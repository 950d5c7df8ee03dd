"""`render_report`: the ledger of a job → per-round JSON reports and one self-contained HTML report."""

from __future__ import annotations

import dataclasses
import importlib
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
from medpfl_app.reports.coverage import gap_label
from medpfl_app.reports.fields import printable
from medpfl_app.reports.model import (
    RISK_MEANINGS,
    RISK_ORDER,
    AuditView,
    build_view,
    defense_chains,
    defense_label,
    params_text,
    verdict,
)
from medpfl_app.reports.sources import (
    ARRIVALS_FILE,
    Unreadable,
    arrivals_beside,
    read_arrivals,
    read_ledger_records,
    unreadable_text,
)
from medpfl_app.reports.svg import Series, line_chart, site_colors
from medpfl_app.reports.thumbnails import (
    ThumbnailSet,
    collect_thumbnails,
    thumbnail_rows,
)

REPORT_SCHEMA = "medpfl.audit-report/2"
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


def resolve_ledger(source: str | os.PathLike[str]) -> Path:
    """The one audit ledger behind ``source``: the ledger file itself, or the only one under a folder.

    Raises:
        MedPFLError: nothing there, no ledger under the folder, or several (ambiguous).
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise MedPFLError(f"{path} does not exist",
                          fix="pass a downloaded job folder, a simulator workspace or an audit_ledger.jsonl file")
    ledgers = list(find_ledgers(path))
    if not ledgers:
        arrivals = sorted(path.rglob(ARRIVALS_FILE))
        seen = ""
        if arrivals:
            count = len(read_arrivals(arrivals[0]).arrivals)
            seen = (f"; {arrivals[0]} lists {count} received update{'s' if count != 1 else ''}: either the job ran "
                    "without the audit, or its server stopped before writing the first audit record (then none of "
                    "them was audited)")
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
) -> ReportPaths:
    """Render ``report_round_<n>.json`` per round and ``audit_report.html`` from a job's audit ledger.

    Args:
        source: A downloaded job folder, a simulator workspace or an ``audit_ledger.jsonl`` file. Model accuracy is
            read from a ``metrics/round_metrics.jsonl`` under the folder (or next to the ledger) when there is one.
        out_dir: Report folder; default: the ledger's folder, so a downloaded job carries its report.
        thumbnails_from: Opt-in folder of server reconstructions (``<site>/round_<n>/*.png``; ``original_<i>.png``
            files are originals a site released for synthetic demo data, shown above ``recon_<i>.png``).
            Reconstructions of real data are patient data: default ``None`` shows none. When given, downsized
            copies are written owner-only (0600) and embedded, and the HTML itself is then written 0600 too.

    Returns:
        The paths read and written.

    Raises:
        MedPFLError: no ledger, several ledgers, or a bad thumbnail folder.
    """
    return build_report(source, out_dir, thumbnails_from=thumbnails_from).paths


def build_report(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    thumbnails_from: str | os.PathLike[str] | None = None,
) -> Report:
    """`render_report`, also returning the content (for the terminal summary)."""
    ledger = resolve_ledger(source)
    contents = read_ledger_records(ledger)
    arrivals_path = arrivals_beside(ledger)
    view = build_view(contents.records, read_arrivals(arrivals_path) if arrivals_path else None)
    search_root = Path(source) if Path(source).is_dir() else ledger.parent
    accuracy = read_accuracy(find_round_metrics(search_root))
    target = Path(out_dir) if out_dir is not None else ledger.parent
    target.mkdir(mode=0o700, parents=True, exist_ok=True)  # reports describe patients' leakage: owner-only
    summary = verdict(view, contents.skipped_lines)
    thumbs = collect_thumbnails(thumbnails_from, target) if thumbnails_from is not None else None

    round_paths = tuple(
        _write(target / f"report_round_{n}.json",
               json.dumps(round_report(view, n, ledger, contents.skipped_lines, accuracy), indent=2) + "\n")
        for n in view.rounds
    )
    html = render_html(view, summary, ledger=ledger, skipped_lines=contents.skipped_lines, accuracy=accuracy,
                       thumbnails=thumbs, unreadable=contents.unreadable)
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
    return Report(paths=paths, view=view, verdict=summary, skipped_lines=contents.skipped_lines, accuracy=accuracy,
                  thumbnail_notes=thumbs.ignored if thumbs else (), unreadable=contents.unreadable)


def _write(path: Path, content: str) -> Path:
    """Atomic, owner-only (0600) write: every report file names sites' leakage, and may embed thumbnails."""

    def write(temp: Path) -> None:
        temp.write_text(content, encoding="utf-8")
        os.chmod(temp, 0o600)

    return write_atomic(path, write)


def round_report(
    view: AuditView, round_number: int, ledger: Path, skipped_lines: Sequence[int], accuracy: Accuracy
) -> dict[str, Any]:
    """The JSON report of one round: its records verbatim plus a summary (verdict, coverage, details, accuracy)."""
    only = view.only_round(round_number)
    cells = [view.cell(site, round_number) for site in view.sites]
    return {
        "schema": REPORT_SCHEMA,
        "round": round_number,
        "ledger": str(ledger),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {
            "verdict": verdict(only),
            "coverage": only.coverage.to_dict(),
            "sites": [
                {
                    "site": c.site,
                    "status": c.status,
                    "risk": c.risk,
                    "evidence": c.evidence,
                    "settle": c.settle,
                    "reason": c.reason,
                    "site_scores": c.scores_status,
                    "ssim_max": c.ssim_max,
                    "psnr_max": c.psnr_max,
                    "attack_success_rate": c.success_rate,
                    "identifiability": c.detail.identifiability,
                    "identifiability_chance": c.detail.identifiability_chance,
                    "identifiability_excess": c.detail.identifiability_excess,
                    "identifiability_p_value": c.detail.identifiability_p_value,
                    "epsilon": {"client_dp": c.epsilon_client, "dp_sgd": c.epsilon_sample, "delta": c.delta},
                    "audit_config": c.config.tag if c.config else None,
                    "records": c.record_count,
                    "invalid_values": list(c.invalid),
                }
                for c in cells if c is not None
            ],
            "details": [d.to_dict() for d in only.details],
            "sites_without_record": [s for s, c in zip(view.sites, cells, strict=True) if c is None],
            "sites_lost": [s for s in view.sites if view.lost(s, round_number)],
            "policy_actions": [dataclasses.asdict(a) for a in view.actions if a.round == round_number],
            "audit_configs": [c.to_dict() for c in view.configs],
            "yardstick": view.yardstick.to_dict(),
            "model_accuracy": accuracy.aggregated.get(round_number),
            "model_accuracy_metric": accuracy.metric,
            "ledger_lines_unreadable": list(skipped_lines),
            "ledger_lines_unreadable_text": unreadable_text(skipped_lines),
            "risk_levels": RISK_MEANINGS,
        },
        "records": list(only.records),
    }


def risk_policy(records: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
    """The risk thresholds behind the records' levels, and how the audit applies them.

    Returns:
        ``thresholds`` and their ``source``: the ``risk_policy`` the records carry when they all agree, else the
        defaults of `medpfl_app.audit.risk` (labelled as such); ``doc``: that module's description of the levels
        (empty when the module is not installed). ``None`` when neither records nor module say anything.
    """
    try:
        module = importlib.import_module("medpfl_app.audit.risk")
    except ImportError:
        module = None
    recorded = {json.dumps(r["risk_policy"], sort_keys=True) for r in records if isinstance(r.get("risk_policy"), dict)}
    defaults = getattr(module, "RiskPolicy", None)
    if len(recorded) == 1:
        thresholds, source = json.loads(recorded.pop()), "as recorded with every audit record"
    elif defaults is not None and hasattr(defaults, "to_dict"):
        thresholds = defaults().to_dict()
        source = ("the policy's defaults (the records do not say which thresholds the job used)" if not recorded
                  else "the policy's defaults (the records name different thresholds; each level is as recorded)")
    elif module is None:
        return None
    else:
        thresholds, source = {}, ""
    doc = (module.__doc__ or "").replace("``", "").strip() if module is not None else ""
    return {"doc": doc, "thresholds": thresholds, "source": source}


def _plots(view: AuditView, accuracy: Accuracy) -> list[dict[str, Any]]:
    colors = site_colors(view.sites)
    rounds = sorted(set(view.rounds) | set(accuracy.aggregated))
    measured = {site: [c for r in view.rounds if (c := view.cell(site, r)) is not None and c.scored]
                for site in view.sites}

    def leak(attr: str) -> list[Series]:
        return [Series(site, colors[site], {c.round: v for c in measured[site] if (v := getattr(c, attr)) is not None})
                for site in view.sites]

    def tags(series_attr: str) -> list[str]:
        used = {c.config.tag for cells in measured.values() for c in cells
                if c.config is not None and getattr(c, series_attr) is not None}
        return [c.tag for c in view.configs if c.tag in used]

    epsilon: list[Series] = []
    for site in view.sites:
        cells = [c for r in view.rounds if (c := view.cell(site, r)) is not None]
        client = {c.round: c.epsilon_client for c in cells if c.epsilon_client is not None}
        sample = {c.round: c.epsilon_sample for c in cells if c.epsilon_sample is not None}
        if client or not sample:
            epsilon.append(Series(f"{site} client-level" if client else f"{site}: none", colors[site], client))
        if sample:
            epsilon.append(Series(f"{site} sample-level", colors[site], sample, dashed=True))
    acc = [Series("global model", "#333333", dict(accuracy.aggregated))] if accuracy.aggregated else []
    acc += [Series(site, colors.get(site, "#888888"), dict(values), dashed=True)
            for site, values in sorted(accuracy.per_site.items())]
    no_metrics = "no metrics/round_metrics.jsonl found" if not accuracy.path else "no accuracy metric in the file"
    specs = [
        ("ssim", "Reconstruction SSIM (worst image)", "SSIM", leak("ssim_max"), (0.0, 1.0), tags("ssim_max"),
         "no site-scored SSIM"),
        ("psnr", "Reconstruction PSNR (worst image)", "PSNR (dB)", leak("psnr_max"), None, tags("psnr_max"),
         "no site-scored PSNR"),
        ("success", "Attack success rate", "share of images", leak("success_rate"), (0.0, 1.0), tags("success_rate"),
         "no site-scored success rate"),
        ("epsilon", "Formal ε so far", "ε", epsilon, None, [], "no formal DP in any record: ε undefined"),
        ("accuracy", "Model accuracy", accuracy.metric or "accuracy", acc, (0.0, 1.0), [], no_metrics),
    ]
    return [
        {"key": key, "svg": line_chart(key=key, title=title, y_label=y_label, rounds=rounds, series=series,
                                       y_range=y_range, empty_note=empty),
         "configs": configs}
        for key, title, y_label, series, y_range, configs, empty in specs
    ]


def render_html(
    view: AuditView,
    summary: Mapping[str, Any],
    *,
    ledger: Path,
    skipped_lines: Sequence[int],
    accuracy: Accuracy,
    thumbnails: ThumbnailSet | None,
    unreadable: Sequence[Unreadable] = (),
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
    plots = _plots(view, accuracy)
    for plot in plots:
        plot["svg"] = Markup(plot["svg"])  # built by svg.line_chart, which escapes every text itself
    chains = {
        site: [
            {"rounds": rounds, "defenses": [(*defense_label(d), params_text(d)) for d in chain]}
            for rounds, chain in entries
        ]
        for site, entries in defense_chains(view).items()
    }
    job_ids = sorted({str(r.get("job_id")) for r in view.records if r.get("job_id") is not None})
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
        job_ids=job_ids,
        risk_order=RISK_ORDER,
        risk_meanings=RISK_MEANINGS,
        policy=risk_policy(view.records),
        thumbnails=thumbnails,
        thumbnail_rows=thumbnail_rows(thumbnails),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
