"""Empirical ε of one DP-SGD step through Opacus (real per-sample clipping, noise, Poisson sampling)."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

import medpfl_app.defenses.epsilon_audit_dp_sgd as dp_sgd_audit
from medpfl_app.defenses.dp_sgd import DPSGDConfig
from medpfl_app.defenses.epsilon_audit_dp_sgd import audit_dp_sgd, per_step_epsilon
from medpfl_app.errors import MedPFLError


def test_per_step_claim_is_the_accountants_epsilon_for_one_step() -> None:
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.5, sample_rate=0.5)
    config = DPSGDConfig(noise_multiplier=1.5, max_grad_norm=1.0, delta=1e-5)
    assert per_step_epsilon(config, 0.5) == pytest.approx(reference.get_epsilon(delta=1e-5))


@pytest.mark.parametrize("noise_multiplier, max_grad_norm", [(0.5, 1.0), (1.0, 0.1), (3.0, 5.0)])
def test_real_dp_sgd_step_stays_below_its_claim(noise_multiplier, max_grad_norm) -> None:
    """Opacus' honest step, weak to strong noise: ε̂ ≤ the per-step ε (not flagged)."""
    config = DPSGDConfig(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=1e-5)
    result = audit_dp_sgd(config, trials=600, seed=2)
    assert result.claimed_epsilon == pytest.approx(per_step_epsilon(config, 0.5))  # 2 batches per epoch: q = 1/2
    assert result.epsilon_lower <= result.claimed_epsilon and not result.exceeds_claim


def test_dp_sgd_without_noise_is_caught(monkeypatch) -> None:
    """The optimizer's noise switched off while the configuration (and so the accountant) still claims z = 3."""
    real_session = dp_sgd_audit._session

    def noiseless_session(*args, **kwargs):
        session = real_session(*args, **kwargs)
        session.optimizer.noise_multiplier = 0.0
        return session

    monkeypatch.setattr(dp_sgd_audit, "_session", noiseless_session)
    result = audit_dp_sgd(DPSGDConfig(noise_multiplier=3.0, max_grad_norm=1.0), trials=600, seed=2)
    assert result.exceeds_claim and result.epsilon_lower > 2 * result.claimed_epsilon


def test_bad_arguments_are_refused() -> None:
    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(MedPFLError, match="batches_per_epoch"):
        audit_dp_sgd(config, trials=10, batches_per_epoch=0)
    with pytest.raises(MedPFLError, match="trials"):
        audit_dp_sgd(config, trials=3)


def test_the_audit_uses_the_sites_sample_rate_and_leaves_torchs_generator_alone() -> None:
    """batches_per_epoch = 1/q audits the site's q; training's global torch RNG is not moved by the audit."""
    import torch

    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    result = audit_dp_sgd(config, trials=40, batches_per_epoch=4)
    assert torch.equal(torch.rand(1), expected_next)
    assert result.claimed_epsilon == pytest.approx(per_step_epsilon(config, 0.25))
