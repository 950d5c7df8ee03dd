"""The verdict as one paragraph a reader understands without help: per site, what the audit found, in words.

Built from the view's cells (the worst record per site and round), their evidence and what would settle them, the
coverage against the job's plan (how it ended, expected sites that sent nothing, rounds that never ran), the
formal ε readings and the model's utility. No ``key=value`` text: numbers are named ("worst-image SSIM 0.97"), and
what would settle an inconclusive site is the audit's own hint, quoted once per group of sites it applies to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medpfl_app.reports.job import JobInfo
from medpfl_app.reports.model import AuditView, Cell
from medpfl_app.reports.privacy import EpsilonReading
from medpfl_app.reports.utility import Utility

#: What each level says about a site's updates, as the object of "the audit found …".
_FINDINGS: Mapping[str, str] = {
    "high": "the server could reconstruct recognisable images from {site}'s updates in {count} (high)",
    "medium": "the server recovered partial information (some image structure or identity) from {site}'s updates "
    "in {count} (medium)",
    "unscored": "the attack matched {site}'s updates in {count}, but the site did not return its scores, so how "
    "much leaked is unmeasured (unscored)",
    "low": "the attack on every audited update of {site} ({count}) ran to the end without reconstructing any image "
    "(low: under this attack and budget, not a guarantee against stronger attacks)",
}


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _rounds(count: int, total: int) -> str:
    if count == total == 2:
        return "both rounds"
    return (
        f"all {total} rounds"
        if count == total and total > 1
        else (f"{count} of {total} round{'s' if total != 1 else ''}" if total > 1 else "the only round")
    )


def _sentence(text: str, *, capital: bool = True) -> str:
    """``text`` as a sentence: a full stop at the end, a capital at the start unless it begins with a site name."""
    text = text.strip()
    if not text:
        return ""
    return (text[0].upper() + text[1:] if capital else text) + ("" if text.endswith(".") else ".")


def _why_inconclusive(cell: Cell) -> str:
    """Why one inconclusive cell is inconclusive, in words, from its ladder and scores."""
    detail = cell.detail
    if cell.invalid:
        return "its record holds impossible values"
    if detail.scores_status is not None and detail.scores_status != "scored":
        return "the site did not return its scores"
    timed_out = detail.stop_reason == "time_limit" or any(s.stop_reason == "time_limit" for s in detail.stages)
    limit = detail.time_budget_s or detail.time_limit_s
    if timed_out:
        return (
            f"the attack did not finish within its {limit:g} s budget"
            if limit
            else "the attack did not finish within its time limit"
        )
    if detail.ladder_complete is False:
        return (
            f"the attack did not complete its stages within the {limit:g} s budget per update"
            if limit
            else "the attack did not complete its stages"
        )
    convergence = (detail.convergence or "").replace("_", " ")
    if convergence in ("no progress", "stalled"):
        return "the attack stopped making progress before it matched the update"
    if convergence == "improving":
        return "the attack was still improving when its budget ran out"
    if detail.not_attacked:
        return "the audit did not attack the whole update"
    return "the audit could not settle the level"


def _inconclusive(view: AuditView, sites: Sequence[str], total: int) -> list[str]:
    """One sentence per distinct reason, naming the sites, the rounds and the audit's settle hint."""
    groups: dict[str, list[tuple[str, int, str | None]]] = {}
    for site in sites:
        cells = [c for r in view.rounds if (c := view.cell(site, r)) is not None and c.risk == "inconclusive"]
        for cell in cells:
            groups.setdefault(_why_inconclusive(cell), []).append((site, cell.round, cell.settle))
    sentences = []
    for why, members in groups.items():
        names = sorted({site for site, _, _ in members})
        count = len(members)
        who = f"{_join(names)} {'were' if len(names) > 1 else 'was'} inconclusive"
        hint = next((settle for _, _, settle in members if settle), None)
        sentences.append(_sentence(f"{who} in {count} update{'s' if count != 1 else ''}: {why}", capital=False))
        if hint:
            sentences.append(_sentence(f"What would settle it: {hint}"))
    return sentences


def _site_levels(view: AuditView) -> dict[str, dict[str, int]]:
    levels: dict[str, dict[str, int]] = {}
    for site in view.sites:
        for r in view.rounds:
            if (cell := view.cell(site, r)) is not None:
                levels.setdefault(site, {}).setdefault(cell.risk, 0)
                levels[site][cell.risk] += 1
    return levels


def _worst_scores(view: AuditView, site: str, level: str) -> str:
    cells = [
        c for r in view.rounds if (c := view.cell(site, r)) is not None and c.risk == level and c.ssim_max is not None
    ]
    if not cells:
        return ""
    worst = max(cells, key=lambda c: (c.ssim_max or 0.0, c.round))  # ties: the latest round, as the verdict
    return f"; worst-image SSIM {worst.ssim_max:.2f} in round {worst.round}"


def _findings(view: AuditView, total: int) -> list[str]:
    levels = _site_levels(view)
    sentences: list[str] = []
    for level in ("high", "medium", "unscored"):
        parts = [
            _FINDINGS[level]
            .format(site=site, count=_rounds(counts[level], total))
            .replace(f"({level})", f"({level}{_worst_scores(view, site, level)})")
            for site, counts in levels.items()
            if counts.get(level)
        ]
        if parts:
            sentences.append(_sentence(_join(parts)))
    inconclusive = [site for site, counts in levels.items() if counts.get("inconclusive")]
    sentences += _inconclusive(view, inconclusive, total)
    low = [site for site, counts in levels.items() if counts.get("low") and set(counts) <= {"low"}]
    if low:
        updates = sum(levels[site]["low"] for site in low)
        sentences.append(
            _sentence(
                _FINDINGS["low"].format(site=_join(low), count=(f"{updates} update{'s' if updates != 1 else ''}"))
            )
        )
    return sentences


def _gaps(view: AuditView) -> str:
    total = view.coverage.total()
    counts = (
        (total.not_audited, "{} not audited"),
        (total.not_auditable, "{} not auditable (e.g. encrypted)"),
        (total.lost or 0, "{} received but lost before the audit recorded {}"),
    )
    parts = [
        words.format(f"{n} update{'s were' if n != 1 else ' was'}", "them" if n != 1 else "it")
        for n, words in counts
        if n
    ]
    if not parts:
        return (
            ""
            if view.coverage.known
            else (
                "Whether every update the server received was audited is unknown: "
                "the server's list of received updates is missing."
            )
        )
    return _sentence(f"{_join(parts)}: gaps in the audit, not evidence of safety")


def _privacy(readings: Sequence[EpsilonReading], has_defenses: bool) -> str:
    if not readings:
        return "No site used a formal differential-privacy defense, so no ε bounds the leakage" + (
            "; the defenses applied are heuristics." if has_defenses else "."
        )
    groups: dict[str, list[str]] = {}
    for r in readings:
        delta = f", δ = {r.delta:.0e}" if r.delta is not None else ", δ not recorded"
        groups.setdefault(f"ε = {r.epsilon:.3g} ({r.level}{delta}): {r.band}", []).append(r.site)
    parts = [f"{_join(sites)} ended at {words}" for words, sites in groups.items()]
    return _sentence("Formal privacy: " + "; ".join(parts), capital=True)


def _empirical(view: AuditView) -> str:
    """The first failed empirical ε check in full, and how many more there are (empty when none failed)."""
    failures = view.empirical_failures()
    if not failures:
        return ""
    more = len(failures) - 1
    return failures[0].flag_text() + (
        f" {more} more failed check{'s' if more != 1 else ''} in the report." if more else ""
    )


def _utility(utility: Utility) -> str:
    if utility.learned is None:
        return "Whether the model learned is unknown: no validation metrics were recorded."
    if utility.learned:
        last = max(utility.rounds)
        value = utility.accuracy.get(last)
        return (
            f"The model learned (validation accuracy {value:.2f} in round {last})."
            if value is not None
            else "The model's validation loss decreased."
        )
    return _sentence(f"Warning: the model did not learn ({utility.warnings[0]})")


def plain_verdict(
    view: AuditView, summary: Mapping[str, Any], job: JobInfo, readings: Sequence[EpsilonReading], utility: Utility
) -> str:
    """The paragraph shown first: rounds and sites, findings per site, gaps, formal ε and model utility."""
    rounds, sites = len(view.rounds), len(view.sites)
    # the plan's sentences (end status, expected sites that sent nothing, rounds that never ran) name what left no
    # trace in the ledger or the arrivals file; an unrecorded end status is said in the coverage section only
    plan = view.coverage.against(job.plan).sentences(with_unknown_status=False)
    if not view.cells:
        return " ".join([_sentence(str(summary.get("headline", "The ledger holds no usable audit record"))), *plan])
    level = str(summary.get("risk", "none")).replace("_", " ").upper()
    opening = (
        f"Overall {level}. In {rounds} round{'s' if rounds != 1 else ''} of the job {job.title} with {sites} "
        f"site{'s' if sites != 1 else ''}, "
    )
    findings = _findings(view, rounds)
    first = findings[0] if findings else "no update was measured."
    text = opening + (first[0].lower() + first[1:] if first.startswith("The ") else first)
    has_defenses = any(cell.defenses for cell in view.cells.values())
    rest = [*findings[1:], _gaps(view), *plan, _empirical(view), _privacy(readings, has_defenses), _utility(utility)]
    return " ".join([text, *[s for s in rest if s]])
