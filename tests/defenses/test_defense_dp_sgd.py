"""Sample-level DP-SGD through Opacus on a tiny BatchNorm network and loader."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medpfl_app.defenses.dp_sgd import DPSGDConfig, SampleLevelLedger, make_dp_compatible, make_private
from medpfl_app.errors import MedPFLError


def _tiny() -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)
    )
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 2, (32,)))
    return model, DataLoader(data, batch_size=8)


def _train_epoch(session) -> None:
    for images, labels in session.data_loader:
        if len(labels) == 0:  # Poisson sampling can draw an empty batch
            continue
        session.optimizer.zero_grad()
        nn.functional.cross_entropy(session.module(images), labels).backward()
        session.optimizer.step()


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus' hooks on a first layer whose input has no grad
def test_dp_sgd_replaces_batchnorm_and_reports_growing_epsilon() -> None:
    """BN → GroupNorm via Opacus, ε > 0 after an epoch and larger after two, equal to Opacus' RDP for the history."""
    model, loader = _tiny()
    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    session = make_private(model, lambda params: torch.optim.SGD(params, lr=0.1), loader, config)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in session.module.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in session.module.modules())
    assert session.compatibility.replaced == ["1"] and "BatchNorm" in session.compatibility.problems[0]
    assert list(session.module.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    before = {k: v.clone() for k, v in session.module.state_dict().items()}
    _train_epoch(session)
    first = session.epsilon()
    _train_epoch(session)
    second = session.epsilon()
    assert 0 < first < second
    reference = RDPAccountant()
    reference.history = list(session.privacy_engine.accountant.history)
    assert second == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert any(not torch.equal(before[k], v) for k, v in session.module.state_dict().items())
    meta = session.meta()
    json.dumps(meta)
    assert meta["guarantee"] == "(ε, δ)-DP at sample level" and meta["epsilon_total"] == pytest.approx(second)
    assert meta["record"]["steps"] == sum(n for _, _, n in reference.history) > 0


def test_dp_sgd_rebuilds_a_given_optimizer_for_the_fixed_module() -> None:
    """An optimizer instance over the old BN parameters is rebuilt over the fixed module's parameters."""
    model, loader = _tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    session = make_private(model, optimizer, loader, DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    assert session.optimizer_rebuilt
    params = {id(p) for group in session.optimizer.param_groups for p in group["params"]}
    assert params == {id(p) for p in session.module.parameters()}
    assert session.optimizer.defaults["momentum"] == 0.9


def test_incompatible_module_is_refused_without_fix_and_bad_config_fails_early() -> None:
    """fix_module=False refuses BatchNorm with the reason; bad σ, C or δ fail at configuration time."""
    model, _ = _tiny()
    with pytest.raises(MedPFLError, match="BatchNorm"):
        make_dp_compatible(model, fix=False)
    for kwargs in (
        {"noise_multiplier": 0.0, "max_grad_norm": 1.0},
        {"noise_multiplier": 1.0, "max_grad_norm": -1},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 2.0},
    ):
        with pytest.raises(MedPFLError):
            DPSGDConfig(**kwargs)


def _session(config: DPSGDConfig | None = None):
    model, loader = _tiny()
    config = config or DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    return make_private(model, lambda params: torch.optim.SGD(params, lr=0.1), loader, config)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_the_sample_level_ledger_carries_epsilon_into_the_next_session(tmp_path) -> None:
    """Job 1 records its steps; job 2 (a new process's session) starts from job 1's ε and adds its own steps."""
    path = tmp_path / "site" / "medpfl" / "dp_sgd_ledger.json"
    first, ledger = _session(), SampleLevelLedger(path)
    assert ledger.restore(first) == 0
    _train_epoch(first)
    ledger.record(first, {"round": 0})
    job_one = first.epsilon()

    second, reopened = _session(), SampleLevelLedger(path)
    restored_steps = reopened.restore(second)
    assert restored_steps == sum(n for _, _, n in first.privacy_engine.accountant.history) > 0
    assert second.epsilon() == pytest.approx(job_one)  # before training: what the site already spent
    _train_epoch(second)
    reopened.record(second, {"round": 0})
    reference = RDPAccountant()
    reference.history = list(second.privacy_engine.accountant.history)
    assert second.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5)) and second.epsilon() > job_one
    state = json.loads(path.read_text())
    assert state["mechanism"] == "rdp" and [r["round"] for r in state["releases"]] == [0, 0]
    assert state["releases"][-1]["epsilon_total"] == pytest.approx(second.epsilon())
    assert sum(n for _, _, n in state["history"]) == sum(n for _, _, n in reference.history)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_the_sample_level_ledger_refuses_what_would_lose_or_mix_steps(tmp_path) -> None:
    """Recording an unrestored session, a file changed by another job, another accountant, a corrupt file."""
    path = tmp_path / "dp_sgd_ledger.json"
    session, ledger = _session(), SampleLevelLedger(path)
    with pytest.raises(MedPFLError, match="was not restored"):
        ledger.record(session)
    ledger.restore(session)
    other, other_ledger = _session(), SampleLevelLedger(path)
    other_ledger.restore(other)
    _train_epoch(other)
    other_ledger.record(other)  # another job of the same site recorded steps meanwhile
    _train_epoch(session)
    with pytest.raises(MedPFLError, match="changed while this job trained"):
        ledger.record(session)
    with pytest.raises(MedPFLError, match="mechanism 'rdp'.*uses 'prv'"):
        SampleLevelLedger(path).restore(_session(DPSGDConfig(1.0, 1.0, accountant="prv")))
    path.write_text("{not json")
    with pytest.raises(MedPFLError, match="cannot read the DP ledger"):
        SampleLevelLedger(path).restore(_session())
    trained = _session()
    _train_epoch(trained)
    with pytest.raises(MedPFLError, match="already taken steps"):
        SampleLevelLedger(tmp_path / "new.json").restore(trained)
