"""The pre-flight assessment of a job: per site, what will likely leak, measured changes that would reduce it.

`assess_site` reads the site's risk factors (`medpfl_app.audit.preflight.factors`), probes its declared round
(`medpfl_app.audit.preflight.probe`) and, when the probe is not low, probes each factor's suggested change, so the
advice says e.g. "batch size 16: SSIM 0.98 → 0.21". `JobPreflight` is what the server writes before round 1
(``<run dir>/medpfl/preflight.json``), what the report opens with and what `medpfl preflight` prints.

A site's level is its probe's verdict level: "high" only when the attack reconstructed the synthetic images through
every declared defense, "low" only when the audit's risk policy calls a failed serious attack low, otherwise
"inconclusive" with what would settle it. Risk factors alone never make a site high.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.preflight.factors import CHANGE_TEXT, Change, RiskFactor, apply_change, risk_factors
from medpfl_app.audit.preflight.probe import ProbeResult, run_probe
from medpfl_app.audit.preflight.settings import JobTraining, ProbeSetting, network_has_batchnorm
from medpfl_app.contracts.preflight import SiteRiskFacts
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.errors import MedPFLError

PREFLIGHT_REPORT_SCHEMA = "medpfl.preflight/1"
#: File name of the pre-flight in the server's ``<run dir>/medpfl/`` (next to the audit ledger) and for the report.
PREFLIGHT_FILE = "preflight.json"
#: The probe's attack budget: the audit's default plan with a shorter wall-clock limit per probe.
PROBE_PLAN = AuditPlan(time_limit_s=20.0)


@dataclass(frozen=True)
class WhatIf:
    """One suggested change and what the probe measured with it."""

    change: Change
    probe: ProbeResult

    @property
    def text(self) -> str:
        return CHANGE_TEXT[self.change]

    def to_json(self) -> dict[str, Any]:
        return {"change": str(self.change), "text": self.text, "probe": self.probe.to_json()}


@dataclass(frozen=True)
class SitePreflight:
    """The pre-flight of one site."""

    site: str
    facts: SiteRiskFacts | None
    factors: tuple[RiskFactor, ...] = ()
    probe: ProbeResult | None = None
    what_ifs: tuple[WhatIf, ...] = ()
    problem: str | None = None

    @property
    def level(self) -> RiskLevel:
        if self.probe is None:
            return RiskLevel.INCONCLUSIVE
        return self.probe.verdict.level

    @property
    def summary(self) -> str:
        """One plain sentence for the report and the terminal."""
        if self.problem is not None:
            return f"no pre-flight: {self.problem}"
        assert self.probe is not None
        return self.probe.verdict.evidence

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "level": str(self.level),
            "summary": self.summary,
            "facts": None if self.facts is None else self.facts.to_json(),
            "factors": [factor.to_json() for factor in self.factors],
            "probe": None if self.probe is None else self.probe.to_json(),
            "what_ifs": [what_if.to_json() for what_if in self.what_ifs],
            "problem": self.problem,
        }


@dataclass(frozen=True)
class JobPreflight:
    """The pre-flight of a job: one entry per site, and whether the policy refuses to start it."""

    job: JobTraining
    sites: tuple[SitePreflight, ...]
    refuse_high_risk: bool = False
    created: float = field(default_factory=time.time)

    @property
    def high_risk_sites(self) -> tuple[str, ...]:
        return tuple(site.site for site in self.sites if site.level is RiskLevel.HIGH)

    @property
    def refused(self) -> bool:
        return self.refuse_high_risk and bool(self.high_risk_sites)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PREFLIGHT_REPORT_SCHEMA,
            "created": self.created,
            "job": {
                "network": self.job.network,
                "in_channels": self.job.in_channels,
                "num_classes": self.job.num_classes,
                "image_size": self.job.image_size,
                "learning_rate": self.job.learning_rate,
                "job_defenses": [defense.to_json() for defense in self.job.job_defenses],
            },
            "refuse_high_risk": self.refuse_high_risk,
            "refused": self.refused,
            "high_risk_sites": list(self.high_risk_sites),
            "sites": [site.to_json() for site in self.sites],
        }


def assess_site(
    job: JobTraining,
    facts: SiteRiskFacts,
    *,
    plan: AuditPlan = PROBE_PLAN,
    what_ifs: bool = True,
    seed: int = 0,
    has_batchnorm: bool | None = None,
    deadline: float | None = None,
) -> SitePreflight:
    """Factors, probe and (unless the probe is low) the probe of each suggested change, for one site.

    Args:
        deadline: ``time.monotonic()`` after which no further what-if probe starts (None: no limit).
    """
    setting = ProbeSetting.of_site(job, facts)
    batchnorm = network_has_batchnorm(job) if has_batchnorm is None else has_batchnorm
    factors = risk_factors(facts, setting, has_batchnorm=batchnorm)
    probe = run_probe(setting, plan, seed=seed)
    tried: list[WhatIf] = []
    if what_ifs and probe.verdict.level is not RiskLevel.LOW:
        for change in dict.fromkeys(factor.change for factor in factors if factor.change is not None):
            assert change is not None
            if deadline is not None and time.monotonic() > deadline:
                break
            tried.append(WhatIf(change, run_probe(apply_change(setting, change, facts), plan, seed=seed)))
    return SitePreflight(site=facts.site, facts=facts, factors=factors, probe=probe, what_ifs=tuple(tried))


def assess_job(
    job: JobTraining,
    replies: Mapping[str, Any],
    *,
    expected_sites: Sequence[str] = (),
    refuse_high_risk: bool = False,
    plan: AuditPlan = PROBE_PLAN,
    what_ifs: bool = True,
    problems: Mapping[str, str] | None = None,
    time_limit_s: float | None = None,
) -> JobPreflight:
    """Assess every site from its (untrusted) reply; a bad or missing reply is an inconclusive entry, not an error.

    Args:
        replies: Site name → the ``to_json`` of its `SiteRiskFacts` as received (any value).
        expected_sites: Sites that should have replied; those that did not get an entry saying so.
        problems: Site name → why it sent no facts (its own words, untrusted).
        time_limit_s: Wall-clock budget of the whole assessment: what-if probes stop first, then sites not yet
            probed get an entry saying the budget ran out.
    """
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    batchnorm = network_has_batchnorm(job)
    entries: list[SitePreflight] = []
    problems = problems or {}
    for site in sorted(set(replies) | set(expected_sites) | set(problems)):
        if site not in replies:
            why = f"the site could not compute its facts: {problems[site]}" if site in problems else None
            entries.append(SitePreflight(site=site, facts=None, problem=why or "the site sent no pre-flight facts"))
            continue
        if deadline is not None and time.monotonic() > deadline:
            entries.append(SitePreflight(site=site, facts=None, problem="the pre-flight's time budget ran out"))
            continue
        try:
            facts = SiteRiskFacts.from_json(replies[site])
            if facts.site != site:
                raise MedPFLError(f"facts name site {facts.site!r}", fix="each site reports its own facts")
        except MedPFLError as error:
            entries.append(SitePreflight(site=site, facts=None, problem=error.problem))
            continue
        entries.append(
            assess_site(job, facts, plan=plan, what_ifs=what_ifs, has_batchnorm=batchnorm, deadline=deadline)
        )
    return JobPreflight(job=job, sites=tuple(entries), refuse_high_risk=refuse_high_risk)
