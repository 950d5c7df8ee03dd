"""The terminal summary printed by ``medpfl report`` and ``medpfl demo``: table, verdict, coverage, yardstick, files.

Site names, reasons, evidence and every other string come from a ledger that sites influence: every line passes
through `medpfl_app.reports.fields.printable` before it is returned, so no escape sequence, carriage return or bidi
override from a record reaches the user's terminal (they are shown escaped, e.g. ``\\x1b``), and a value cannot
start a line of its own.
"""

from __future__ import annotations

from medpfl_app.reports.coverage import gap_label
from medpfl_app.reports.model import AuditView, Cell
from medpfl_app.reports.render import Report
from medpfl_app.reports.sources import unreadable_text
from medpfl_app.text import printable

#: Gaps printed one per line; the rest are counted (all of them are in the HTML and the round JSON).
MAX_GAP_LINES = 12


def _cell_text(view: AuditView, site: str, round_number: int) -> str:
    cell: Cell | None = view.cell(site, round_number)
    if cell is None:
        if view.lost(site, round_number):
            return "LOST (no record)"
        return "not received" if view.coverage.known else "no record"
    lost = view.coverage.cells.get((site, round_number))
    extra = f" +{lost.lost} lost" if lost is not None and lost.lost else ""
    if cell.status != "audited":
        return cell.status.replace("_", " ") + extra
    level = cell.risk.replace("_", " ")
    if cell.invalid:
        return f"{level} (invalid values){extra}"
    if not cell.scored:
        why = (
            cell.detail.convergence.replace("_", " ")
            if cell.detail.convergence
            else f"scores {cell.scores_status or 'missing'}"
        )
        return f"{level} ({why}){extra}"
    ssim = f"{cell.ssim_max:.2f}" if cell.ssim_max is not None else "-"
    psnr = f"{cell.psnr_max:.1f}" if cell.psnr_max is not None else "-"
    eps = cell.epsilon_client if cell.epsilon_client is not None else cell.epsilon_sample
    eps_text = f"{eps:.3g}" if eps is not None else "-"
    if cell.empirical_failed:
        eps_text += " ε̂ FAILED"
    tag = cell.config.tag if cell.config else "-"
    return f"{level} {ssim}/{psnr}/{eps_text} {tag}{extra}"


def coverage_by_round(view: AuditView) -> str:
    """``round 0: 3 received, 3 audited; round 1: 3 received, 1 audited, 2 lost; …`` (records only if unknown)."""
    parts = []
    for r in view.coverage.rounds:
        c = view.coverage.round_counts(r)
        words = [
            f"{c.received} received" if c.received is not None else f"{c.records} recorded",
            f"{c.audited} audited",
        ]
        words += [
            f"{n} {label}"
            for n, label in ((c.not_audited, "not audited"), (c.not_auditable, "not auditable"), (c.lost, "lost"))
            if n
        ]
        parts.append(f"round {r}: " + ", ".join(words))
    return "; ".join(parts) or "nothing received or recorded"


def summary_text(report: Report) -> str:
    """The summary as text (no colour codes, so it can be logged or piped), every line made `printable`."""
    lines = [
        *_intro_lines(report),
        *_preflight_lines(report),
        *_table_lines(report.view),
        *_verdict_lines(report),
        *empirical_lines(report.view),
        *_coverage_lines(report),
        *_finding_lines(report.view),
        *_file_lines(report),
    ]
    return "\n".join(printable(line) for line in lines)


def _intro_lines(report: Report) -> list[str]:
    """The job's name and purpose, and the verdict in plain words."""
    lines = []
    if report.job is not None:
        job = report.job
        lines.append(
            f"Job: {job.title}"
            + (f" — {job.description}" if job.description else "")
            + ("" if job.name and "meta.json" in job.source else f" (name from {job.source})")
        )
    if report.plain:
        lines.append("In plain words: " + report.plain)
    return lines


def _preflight_lines(report: Report) -> list[str]:
    """One line: each site's pre-flight level (before round 1), or that the job ran without one."""
    preflight = report.verdict.get("preflight")
    if not isinstance(preflight, dict):
        return []
    if not preflight.get("present"):
        return [f"Pre-flight: none ({preflight.get('note')})"]
    levels = ", ".join(f"{site} {level}" for site, level in preflight.get("sites", {}).items())
    refused = "; the job's policy refused to start it" if preflight.get("refused") else ""
    return [f"Pre-flight before round 1 (probe attack on synthetic data): {levels}{refused} (details in the HTML)"]


def _table_lines(view: AuditView) -> list[str]:
    """The level table (a row per site, a column per round) and the audit configurations its tags name."""
    lines = ["Level by site and round (level SSIM/PSNR dB/ε, worst image, audit config tag):"]
    site_width = max([len("site")] + [len(printable(s)) for s in view.sites])
    cells = {(s, r): printable(_cell_text(view, s, r)) for s in view.sites for r in view.rounds}
    width = max([12] + [len(t) for t in cells.values()])
    lines.append("  " + "site".ljust(site_width) + "".join(f"  {'round ' + str(r):<{width}}" for r in view.rounds))
    for site in view.sites:
        row = "".join(f"  {cells[(site, r)]:<{width}}" for r in view.rounds)
        lines.append("  " + printable(site).ljust(site_width) + row)
    if view.configs:
        lines.append("Audit configurations:")
        lines.extend(f"  {printable(c.tag)}: {printable(c.describe())}" for c in view.configs)
    return lines


def _verdict_lines(report: Report) -> list[str]:
    """The verdict's headline, its evidence and what would settle it."""
    verdict = report.verdict
    lines = ["Verdict: " + printable(str(verdict["headline"]))]
    if verdict.get("evidence"):
        lines.append("  evidence: " + printable(str(verdict["evidence"])))
    if verdict.get("settle"):
        lines.append("  would settle it: " + printable(str(verdict["settle"])))
    return lines


def empirical_lines(view: AuditView) -> list[str]:
    """Every failed empirical ε check in full, then the other checks grouped by site and text (rounds listed)."""
    checks = view.empirical_checks()
    if not checks:
        return []
    lines = [check.flag_text() for check in checks if check.failed]
    groups: dict[tuple[str, str], list[str]] = {}
    for check in checks:
        if not check.failed:
            groups.setdefault((check.site or "unnamed site", check.text()), []).append(str(check.round))
    shown = list(groups.items())
    lines.append("Empirical ε lower bounds (ε̂, per release; a failed check is listed above):")
    for (site, words), rounds in shown[:MAX_GAP_LINES]:
        lines.append(f"  {site} round{'s' if len(rounds) > 1 else ''} {', '.join(rounds)}: {words}")
    if len(shown) > MAX_GAP_LINES:
        lines.append(f"  … {len(shown) - MAX_GAP_LINES} more (all in the HTML report and the round JSON)")
    return lines


def _coverage_lines(report: Report) -> list[str]:
    """Coverage overall, by round and against the plan; its gaps; the ledger lines that could not be read."""
    view = report.view
    lines = ["  " + printable(view.coverage.text()), "  by round: " + printable(coverage_by_round(view))]
    planned = view.coverage.against(report.job.plan if report.job is not None else None)
    lines.extend("  against the plan: " + printable(sentence) for sentence in planned.sentences())
    gaps = view.coverage.gaps
    for gap in gaps[:MAX_GAP_LINES]:
        lines.append(
            f"  gap: {printable(gap.site)} round {gap.round}: {gap_label(gap.kind)}"
            f"{f' ({gap.count} updates)' if gap.count != 1 else ''}: {printable(gap.cause)}"
        )
    if len(gaps) > MAX_GAP_LINES:
        lines.append(f"  … {len(gaps) - MAX_GAP_LINES} more gaps (all in the HTML report and the round JSON)")
    lines.append(
        f"  audit ledger: {unreadable_text(report.skipped_lines)}; {len(view.notes)} audited without site "
        "scores (reasons in the HTML)"
    )
    lines.extend(f"  unreadable: line {u.line}: {printable(u.why)}" for u in report.unreadable[:MAX_GAP_LINES])
    if len(report.unreadable) > MAX_GAP_LINES:
        lines.append(f"  … {len(report.unreadable) - MAX_GAP_LINES} more unreadable lines (all in the HTML report)")
    return lines


def _finding_lines(view: AuditView) -> list[str]:
    """The yardstick, records not in the table, records with invalid values and the policy's actions."""
    lines = [
        "Yardstick: " + printable(view.yardstick.summary()),
        "  budget spent: " + printable(view.yardstick.spent),
        "  attack ladder: " + printable(view.yardstick.ladder),
    ]
    lines.extend(f"  not in the table: {printable(m)}" for m in view.malformed)
    invalid = [d for d in view.details if d.invalid]
    if invalid:
        lines.append(
            f"Invalid values: {len(invalid)} record{'s' if len(invalid) != 1 else ''} hold values outside "
            "their valid range; they are read as missing, never as measurements:"
        )
        lines.extend(f"  {d.site} round {d.round}: {d.invalid_text()}" for d in invalid)
    lines.extend(
        f"Policy: {printable(a.site)} round {a.round} {printable(a.action.replace('_', ' '))} ({printable(a.reason)})"
        for a in view.actions
    )
    return lines


def _file_lines(report: Report) -> list[str]:
    """What the report read and wrote, and the thumbnail files it did not use."""
    paths = report.paths
    lines = [
        f"Ledger: {paths.ledger}",
        f"Arrivals: {paths.arrivals}" if paths.arrivals else "Arrivals: none beside the ledger (coverage unknown)",
        f"HTML report: {paths.html}",
        f"Round reports: {len(paths.round_json)} × {paths.out_dir / 'report_round_<n>.json'}",
    ]
    if paths.round_metrics:
        lines.append(f"Model accuracy from: {paths.round_metrics}")
    if paths.thumbnails:
        lines.append(
            f"Reconstruction thumbnails (patient data, owner-only): {len(paths.thumbnails)} in "
            f"{paths.thumbnails[0].parent.parent.parent}"
        )
    lines.extend(f"  not used: {printable(note)}" for note in report.thumbnail_notes)
    return lines
