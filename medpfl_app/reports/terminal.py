"""The terminal summary printed by ``medpfl report``: a compact site × round table, the verdict, the files."""

from __future__ import annotations

from medpfl_app.reports.model import Cell
from medpfl_app.reports.render import Report


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "no record"
    if cell.status != "audited":
        return cell.status.replace("_", " ")
    if not cell.measured:
        return f"{cell.risk} (scores {cell.scores_status or 'missing'})"
    ssim = f"{cell.ssim_max:.2f}" if cell.ssim_max is not None else "-"
    psnr = f"{cell.psnr_max:.1f}" if cell.psnr_max is not None else "-"
    eps = cell.epsilon_client if cell.epsilon_client is not None else cell.epsilon_sample
    eps_text = f"{eps:.3g}" if eps is not None else "-"
    tag = cell.config.tag if cell.config else "-"
    return f"{cell.risk} {ssim}/{psnr}/{eps_text} {tag}"


def _printable(value: str) -> str:
    # site names come from the ledger: keep terminal control sequences out of the user's shell
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def summary_text(report: Report) -> str:
    """The summary as text (no colour codes, so it can be logged or piped)."""
    view = report.view
    lines = ["Risk by site and round (risk SSIM/PSNR dB/ε, worst image, audit config tag):"]
    site_width = max([len("site")] + [len(_printable(s)) for s in view.sites])
    cells = {(s, r): _cell_text(view.cell(s, r)) for s in view.sites for r in view.rounds}
    width = max([12] + [len(t) for t in cells.values()])
    lines.append("  " + "site".ljust(site_width) + "".join(f"  {'round ' + str(r):<{width}}" for r in view.rounds))
    for site in view.sites:
        row = "".join(f"  {cells[(site, r)]:<{width}}" for r in view.rounds)
        lines.append("  " + _printable(site).ljust(site_width) + row)
    if view.configs:
        lines.append("Audit configurations:")
        lines.extend(f"  {_printable(c.tag)}: {_printable(c.describe())}" for c in view.configs)
    lines.append("Verdict: " + _printable(str(report.verdict["headline"])))
    coverage = report.verdict["coverage"]
    lines.append(
        f"  measured {coverage['measured']} of {coverage['site_rounds']} site-rounds; "
        f"{len(view.notes)} not audited / not auditable / unscored (reasons in the HTML); "
        f"{coverage['skipped_ledger_lines']} ledger lines skipped"
    )
    lines.extend(f"  not in the table: {_printable(m)}" for m in view.malformed)
    lines.extend(
        f"Policy: {_printable(a.site)} round {a.round} {_printable(a.action.replace('_', ' '))} ({_printable(a.reason)})"
        for a in view.actions
    )
    paths = report.paths
    lines.append(f"Ledger: {paths.ledger}")
    lines.append(f"HTML report: {paths.html}")
    lines.append(f"Round reports: {len(paths.round_json)} × {paths.out_dir / 'report_round_<n>.json'}")
    if paths.round_metrics:
        lines.append(f"Model accuracy from: {paths.round_metrics}")
    if paths.thumbnails:
        lines.append(f"Reconstruction thumbnails (patient data, owner-only): {len(paths.thumbnails)} in "
                     f"{paths.thumbnails[0].parent.parent.parent}")
    for note in report.thumbnail_notes:
        lines.append(f"  not used: {_printable(note)}")
    return "\n".join(lines)
