"""Client-level DP ledger: Opacus' own ε, monotone growth, persistence, exact budget refusal."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from medpfl_app.defenses import BudgetExceeded, PrivacyLedger, SiteAccountant, epsilon_per_release
from medpfl_app.errors import MedPFLError


def _opacus_epsilon(z: float, rounds: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=1.0)
    return accountant.get_epsilon(delta=delta)


def test_ledger_matches_opacus_and_grows_monotonically(tmp_path) -> None:
    """Each charge reports Opacus' RDP ε for (z, rounds, δ); ε_total strictly increases, ε_round is constant."""
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-5)
    totals = []
    for rounds in range(1, 6):
        cost = ledger.charge(noise_multiplier=1.3, context={"round": rounds - 1})
        assert cost.epsilon_total == pytest.approx(_opacus_epsilon(1.3, rounds, 1e-5), rel=1e-12)
        assert cost.epsilon_round == pytest.approx(_opacus_epsilon(1.3, 1, 1e-5), rel=1e-12)
        assert cost.releases == rounds
        totals.append(cost.epsilon_total)
    assert all(later > earlier for earlier, later in zip(totals, totals[1:], strict=False))
    assert epsilon_per_release(1.3, 1e-5) == pytest.approx(totals[0])


def test_ledger_survives_a_restart(tmp_path) -> None:
    """A new ledger object on the same file continues the history instead of resetting it."""
    path = tmp_path / "site" / "ledger.json"
    PrivacyLedger(path, delta=1e-5).charge(noise_multiplier=1.0)
    PrivacyLedger(path, delta=1e-5).charge(noise_multiplier=1.0)
    cost = PrivacyLedger(path, delta=1e-5).charge(noise_multiplier=1.0, context={"round": 2})
    assert cost.releases == 3
    assert cost.epsilon_total == pytest.approx(_opacus_epsilon(1.0, 3, 1e-5), rel=1e-12)
    state = json.loads(path.read_text())
    assert state["mechanism"] == "rdp" and state["releases"][-1]["round"] == 2
    assert not list(path.parent.glob("*.tmp"))


def test_budget_refuses_exactly_the_round_that_would_exceed_it(tmp_path) -> None:
    """With ε_max = ε after 3 rounds, rounds 1–3 pass, round 4 is refused and stays refused; nothing is charged."""
    budget = _opacus_epsilon(2.0, 3, 1e-5)
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-5, epsilon_max=budget)
    for _ in range(3):
        ledger.charge(noise_multiplier=2.0)
    with pytest.raises(BudgetExceeded, match="budget exhausted"):
        ledger.charge(noise_multiplier=2.0)
    with pytest.raises(BudgetExceeded):
        PrivacyLedger(tmp_path / "ledger.json", delta=1e-5, epsilon_max=budget).charge(noise_multiplier=2.0)
    assert len(ledger.load()) == 3
    assert ledger.spent() == pytest.approx(budget, rel=1e-12)


def test_mixed_noise_levels_compose_like_opacus(tmp_path) -> None:
    """Rounds with different z compose through the RDP history exactly as Opacus composes them."""
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-6)
    for z in (1.0, 2.0, 2.0, 1.0):
        cost = ledger.charge(noise_multiplier=z)
    reference = RDPAccountant()
    for z in (1.0, 2.0, 2.0, 1.0):
        reference.step(noise_multiplier=z, sample_rate=1.0)
    assert cost.epsilon_total == pytest.approx(reference.get_epsilon(delta=1e-6), rel=1e-12)


def test_state_from_another_mechanism_or_a_corrupt_file_is_refused(tmp_path) -> None:
    """load_state_dict refuses a PRV/GDP state; an unreadable ledger fails closed instead of resetting."""
    accountant = SiteAccountant()
    assert accountant.mechanism() == RDPAccountant.mechanism()
    accountant.step(noise_multiplier=1.0)
    state = accountant.state_dict()
    state["mechanism"] = "prv"
    with pytest.raises(MedPFLError, match="mechanism"):
        SiteAccountant().load_state_dict(state)
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(MedPFLError, match="cannot read the DP ledger"):
        PrivacyLedger(path, delta=1e-5).charge(noise_multiplier=1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"delta": 0.0}, {"delta": 1.0}, {"delta": 1e-5, "epsilon_max": 0.0}, {"delta": 1e-5, "epsilon_max": -2.0}],
)
def test_bad_ledger_parameters_fail_at_construction(tmp_path, kwargs) -> None:
    """δ outside (0, 1) or a non-positive budget is a configuration error."""
    with pytest.raises(MedPFLError):
        PrivacyLedger(tmp_path / "ledger.json", **kwargs)
