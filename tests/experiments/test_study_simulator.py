"""One real study cell through the NVFlare simulator: leakage from the audit ledger, utility from round metrics.

Threat model: honest-but-curious server with the update as received (no defense), the global weights and the
declared training facts; attack: gradinv at the study's audit budget; sigmoid LeNet at 16 px, 2 sites, 1 round,
one image for one SGD step per round at every site.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.experiments.study import AuditBudget, CellConfig, DefenseKind, DefenseSetting, Engine, RunConfig
from medpfl_app.nvflare.study_cells import simulate_cell

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]

TINY_SIM = RunConfig(
    image_size=16,
    num_classes=2,
    sites=2,
    rounds=1,
    train_per_site=4,
    val_images=4,
    audit=AuditBudget(iterations=200, time_limit_s=30.0),
    engine=Engine.SIMULATOR,
)


def test_a_simulated_cell_reads_leakage_and_utility_from_the_real_run(tmp_path: Path) -> None:
    """site-1's round-0 update is audited and scored at the site; the global model's accuracy is read back."""
    cell = CellConfig("lenet_sigmoid", DefenseSetting(DefenseKind.NONE), 1, 1)

    result = simulate_cell(TINY_SIM, cell, work_dir=tmp_path)

    (site,) = result.sites
    assert (site.site, site.round) == ("site-1", 0)
    measured = (RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW, RiskLevel.INCONCLUSIVE)
    assert site.level in {level.value for level in measured}, site
    assert site.ssim_max is not None and -1.0 <= site.ssim_max <= 1.0 and site.ssim_mean is not None
    assert site.label_accuracy is not None and site.audit_s > 0
    assert 0.0 <= result.accuracy <= 1.0
    assert result.auc is None or math.isnan(result.auc) or 0.0 <= result.auc <= 1.0
    assert result.engine == "simulator" and result.epsilon is None and result.train_s > 0
