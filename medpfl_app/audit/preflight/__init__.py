"""The pre-flight risk check before round 1: site facts, risk factors, a probe attack on synthetic data, advice.

Pure (no NVFlare): `medpfl_app.nvflare.preflight` runs it inside a job, `medpfl preflight <job>` alone.
"""

from medpfl_app.audit.preflight.assessment import (
    PREFLIGHT_FILE,
    PREFLIGHT_REPORT_SCHEMA,
    PROBE_PLAN,
    JobPreflight,
    SitePreflight,
    WhatIf,
    assess_job,
    assess_site,
)
from medpfl_app.audit.preflight.factors import Change, Factor, RiskFactor, risk_factors
from medpfl_app.audit.preflight.probe import ProbeResult, run_probe
from medpfl_app.audit.preflight.settings import JobTraining, ProbeSetting
from medpfl_app.audit.preflight.site_facts import local_steps_per_round, site_risk_facts

__all__ = [
    "PREFLIGHT_FILE",
    "PREFLIGHT_REPORT_SCHEMA",
    "PROBE_PLAN",
    "Change",
    "Factor",
    "JobPreflight",
    "JobTraining",
    "ProbeResult",
    "ProbeSetting",
    "RiskFactor",
    "SitePreflight",
    "WhatIf",
    "assess_job",
    "assess_site",
    "local_steps_per_round",
    "risk_factors",
    "run_probe",
    "site_risk_facts",
]
