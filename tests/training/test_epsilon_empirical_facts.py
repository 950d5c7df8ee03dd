"""The DP-SGD training facts carry an empirical ε lower bound of one step, computed once per configuration."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import medpfl_app.training.facts as facts_module
from medpfl_app.contracts.training_facts import FACTS_VERSION, TrainingFacts
from medpfl_app.defenses.dp_sgd import DPSGDConfig, make_private
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon
from medpfl_app.defenses.epsilon_audit_dp_sgd import per_step_epsilon
from medpfl_app.training.facts import TrainingFactsCallback, dp_sgd_facts, empirical_dp_sgd_epsilon


def _dp_module(config: DPSGDConfig) -> nn.Module:
    """A tiny module with an Opacus session attached the way `enable_dp_sgd` attaches it (16 samples, batch 4)."""
    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    data = TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    session = make_private(
        module, lambda params: torch.optim.SGD(params, lr=0.1), DataLoader(data, batch_size=4), config
    )
    module.dp_session = session
    return module


def test_dp_sgd_facts_carry_the_empirical_epsilon_at_the_sites_sample_rate() -> None:
    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    module = _dp_module(config)
    entry = dp_sgd_facts(module, epsilon_empirical=empirical_dp_sgd_epsilon(module, 40))
    json.dumps(entry)
    result = EmpiricalEpsilon.from_json(entry["epsilon_empirical"])
    assert entry["sample_rate"] == 0.25
    assert result.claimed_epsilon == pytest.approx(per_step_epsilon(config, 0.25)) and result.trials == 40
    # the facts contract the server reads accepts the nested entry unchanged
    facts = TrainingFacts.from_json({"medpfl_facts_version": FACTS_VERSION, "dp_sgd": entry})
    assert facts.dp_sgd["epsilon_empirical"] == entry["epsilon_empirical"]


def test_without_dp_sgd_or_with_zero_trials_there_is_no_empirical_epsilon() -> None:
    assert empirical_dp_sgd_epsilon(nn.Linear(2, 2), 100) is None
    module = _dp_module(DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    assert empirical_dp_sgd_epsilon(module, 0) is None
    assert dp_sgd_facts(module)["epsilon_empirical"] is None


def test_the_callback_audits_each_configuration_once(monkeypatch) -> None:
    calls = []

    def counting(module, trials):
        calls.append(trials)
        return {"stand-in": trials}

    monkeypatch.setattr(facts_module, "empirical_dp_sgd_epsilon", counting)
    callback = TrainingFactsCallback(num_train_images=16, configured_batch_size=4, local_epochs=1, empirical_trials=7)
    module = _dp_module(DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    assert callback._empirical_epsilon(module) == callback._empirical_epsilon(module) == {"stand-in": 7}
    assert calls == [7]
    assert callback._empirical_epsilon(nn.Linear(2, 2)) is None and calls == [7]
