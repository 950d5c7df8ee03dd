"""Formal ε in words: its δ, a plain-language strength band, and what the guarantee does and does not cover.

Strength bands (the upper end of each band is inclusive):

======== ==================================== ====================================================================
ε        band                                  reading
======== ==================================== ====================================================================
≤ 1      strong                                the formal bound on its own limits what any attacker learns
≤ 3      moderate                              meaningful, but weaker than the usual target for health data
≤ 8      weak                                  a loose bound: rely on it only with the measured leakage beside it
> 8      very weak (little formal protection)  the bound allows large changes in what an attacker can infer
======== ==================================== ====================================================================

Sources: the DP literature's usual reading puts ε ≤ 1 as strong and ε ≤ 10 as the most still called reasonable
(TensorFlow Privacy's guide "Measure privacy": "a small constant (less than 10, or for more stringent privacy
guarantees, less than 1)"; Ponomareva et al., "How to DP-fy ML", JAIR 2023, §5: tier 1 ε ≤ 1, tier 2 ε ≤ 10, tier 3
ε > 10 weak). The split of the 1–10 range at 3 and 8 is this report's convention, deliberately conservative for
medical images; the bands are a reading aid, not a compliance threshold.

A site whose empirical ε check failed (a canary test measured ε̂ above the ε of one release,
`medpfl_app.reports.empirical`) gets the band "not valid" instead: its formal ε is not presented as a guarantee.

Only defenses with an accountant (client-level DP: clipping + calibrated Gaussian noise; DP-SGD) give a formal
(ε, δ) guarantee. Noise without clipping or accounting, pruning, compression or filtering are heuristics: they can
lower what this audit's attack achieves, but an attack that knows the defense may do better, and no ε applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medpfl_app.reports.model import AuditView

#: (upper bound inclusive, band, reading), in increasing ε; see the module docstring for the sources.
EPSILON_BANDS: tuple[tuple[float, str, str], ...] = (
    (1.0, "strong", "the formal bound on its own limits what any attacker can learn about a site's data"),
    (3.0, "moderate", "meaningful, but weaker than the usual target for health data"),
    (8.0, "weak", "a loose bound: read it together with the measured leakage, not instead of it"),
    (
        float("inf"),
        "very weak (little formal protection)",
        "the bound allows large changes in what an attacker can infer about a site's data",
    ),
)
#: The band of a formal ε that an empirical check disproved (ε̂ > ε for one release in some round).
FAILED_BAND = "not valid: the empirical check failed"
FAILED_READING = (
    "a canary test measured more leakage for one release than this ε allows, so the accountant's ε is not a "
    "guarantee for this site until the defense and its accounting are fixed"
)
#: Bands that get a visible warning in the report.
WEAK_BANDS = frozenset({"weak", "very weak (little formal protection)", FAILED_BAND})
FORMAL_SCOPE = (
    "The accountant's ε is a formal (ε, δ) guarantee only for the differential-privacy defenses "
    "(clipping with calibrated noise and an accountant). Other defenses (noise without clipping or "
    "accounting, pruning, compression) are heuristics: no ε applies to them, and an attacker who knows "
    "the defense may undo it."
)
BANDS_TEXT = "; ".join(
    f"ε ≤ {bound:g}: {band}" if bound != float("inf") else f"ε > {EPSILON_BANDS[-2][0]:g}: {band}"
    for bound, band, _ in EPSILON_BANDS
)


@dataclass(frozen=True)
class EpsilonReading:
    """One site's formal ε at the end of the job, with its δ, level and band."""

    site: str
    epsilon: float
    delta: float | None
    level: str
    last_round: int
    band: str
    reading: str

    @property
    def weak(self) -> bool:
        """Whether the band earns a warning."""
        return self.band in WEAK_BANDS

    def text(self) -> str:
        """``ε = 12.3 (client-level) at δ = 1e-05 after round 4: very weak …`` (the site is not named)."""
        delta = f"δ = {self.delta:.0e}" if self.delta is not None else "δ not recorded"
        return (
            f"ε = {self.epsilon:.3g} ({self.level}) at {delta} after round {self.last_round}: "
            f"{self.band} — {self.reading}"
        )


def grouped(readings: Sequence[EpsilonReading]) -> list[tuple[str, list[str]]]:
    """Readings with the same text, once each with the sites they apply to (in order)."""
    groups: dict[str, list[str]] = {}
    for r in readings:
        groups.setdefault(r.text(), []).append(r.site)
    return list(groups.items())


def epsilon_band(epsilon: float) -> tuple[str, str]:
    """(band, reading) of ``epsilon`` (see `EPSILON_BANDS`)."""
    for bound, band, reading in EPSILON_BANDS:
        if epsilon <= bound:
            return band, reading
    return EPSILON_BANDS[-1][1], EPSILON_BANDS[-1][2]


def reading(site: str, epsilon: float, delta: float | None, level: str, last_round: int) -> EpsilonReading:
    """The `EpsilonReading` of one site's latest ε."""
    band, words = epsilon_band(epsilon)
    return EpsilonReading(
        site=site, epsilon=epsilon, delta=delta, level=level, last_round=last_round, band=band, reading=words
    )


def epsilon_readings(view: AuditView) -> list[EpsilonReading]:
    """Per site with a formal ε, the latest one (client-level first, else sample-level), in site order."""
    readings = []
    for site in view.sites:
        cells = [
            c
            for r in view.rounds
            if (c := view.cell(site, r)) is not None and (c.epsilon_client is not None or c.epsilon_sample is not None)
        ]
        if not cells:
            continue
        last = cells[-1]
        if last.epsilon_client is not None:
            found = reading(site, last.epsilon_client, last.delta, "client-level", last.round)
        else:
            assert last.epsilon_sample is not None
            found = reading(site, last.epsilon_sample, last.delta, "sample-level", last.round)
        # the cumulative ε includes every release, so one failed check in any round voids the site's ε
        failed = any(c.failed and c.site == site and c.level == found.level for c in view.empirical_checks())
        readings.append(dataclasses.replace(found, band=FAILED_BAND, reading=FAILED_READING) if failed else found)
    return readings
