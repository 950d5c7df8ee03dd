"""A site's pre-flight facts from its own data configuration and the job's training arguments.

Used by the site's pre-flight executor inside a job and by `medpfl preflight` for an operator who holds the
sites' data configurations. Only counts are read from the datalist (`medpfl_app.audit.preflight.site_facts`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.audit.preflight import JobTraining, site_risk_facts
from medpfl_app.contracts.preflight import DeclaredDefense, SiteRiskFacts
from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import DATALIST_NAME
from medpfl_app.data.site_config import SiteDataSettings, read_site_data_config


@dataclass(frozen=True)
class SitePlan:
    """One site's facts and the job model its probe uses (image size and channels may be the site's own)."""

    facts: SiteRiskFacts
    job: JobTraining


def site_data_from_path(path: str | Path, site: str) -> SiteDataSettings:
    """A site data configuration file (``medpfl_data.json``), or a datalist / class-per-folder root with defaults."""
    path = Path(path).expanduser().resolve()
    if path.is_dir() and (path / DATALIST_NAME).is_file():
        path = path / DATALIST_NAME
    if path.is_file() and _names_a_datalist(path):
        return read_site_data_config(path, site=site)
    return SiteDataSettings(datalist=path, data=DataConfig(), config_file=None)


def _names_a_datalist(path: Path) -> bool:
    """Whether ``path`` is a site data configuration (a JSON object with a ``datalist`` key), not a datalist."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "datalist" in content


def plan_site(
    site: str,
    training: argparse.Namespace,
    data: SiteDataSettings,
    *,
    job_defenses: Sequence[DeclaredDefense] = (),
    scope_defenses: Sequence[DeclaredDefense] = (),
) -> SitePlan:
    """The site's facts (counts only) and its probe's job model.

    Raises:
        MedPFLError: The site's datalist cannot be read.
    """
    from medpfl_app.data import load_site_data

    site_data = load_site_data(data.datalist, site=site, num_classes=training.num_classes)
    facts = site_risk_facts(
        site,
        site_data.class_counts(),
        batch_size=training.batch_size or data.data.batch_size,
        local_epochs=training.local_epochs,
        max_steps=training.max_steps,
        dp_sgd_noise_multiplier=float(training.dp_noise_multiplier),
        scope_defenses=scope_defenses,
    )
    job = JobTraining(
        network=training.network,
        in_channels=training.in_channels or data.data.in_channels,
        num_classes=training.num_classes,
        image_size=training.image_size or data.data.image_size,
        learning_rate=float(training.learning_rate),
        job_defenses=tuple(job_defenses),
    )
    return SitePlan(facts=facts, job=job)
