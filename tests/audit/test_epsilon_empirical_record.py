"""The site's empirical ε (ε̂) in the audit record: checked against the server's own claim, flagged, never trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medpfl_app.audit.ledger import AuditLedger, read_ledger
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.provenance import empirical_epsilon, epsilon_so_far
from medpfl_app.audit.risk import RiskPolicy, formal_epsilon
from medpfl_app.audit.worker import build_record, metric_settings
from medpfl_app.contracts.record import AuditRecord, EmpiricalStatus
from medpfl_app.defenses.accountant import epsilon_per_release
from medpfl_app.defenses.client_dp import ClientDP, clip_update
from medpfl_app.defenses.dp_sgd import DPSGDConfig
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon, audit_defense
from medpfl_app.defenses.epsilon_audit_dp_sgd import per_step_epsilon
from medpfl_app.defenses.update_arrays import DefenseOutput

#: z = 4 claims ε ≈ 1.01 per release at δ = 1e-5: 200 canary trials can disprove that, and run in milliseconds.
NOISE = 4.0
DELTA = 1e-5
TRIALS = 200


class NoiseOffClientDP(ClientDP):
    """A broken client DP: clips, but forgets the noise (what the empirical check exists to catch)."""

    def _apply(self, update: Any, rng: Any) -> DefenseOutput:
        clipped, _ = clip_update(update, self.clip_norm)
        return DefenseOutput(clipped, {"clip_norm": float(self.clip_norm), "sigma": self.sigma})


def honest() -> dict[str, Any]:
    return audit_defense(ClientDP(clip_norm=1.0, noise_multiplier=NOISE), trials=TRIALS, delta=DELTA).to_json()


def noise_off() -> dict[str, Any]:
    return audit_defense(NoiseOffClientDP(clip_norm=1.0, noise_multiplier=NOISE), trials=TRIALS, delta=DELTA).to_json()


def client_dp_meta(empirical: Any, *, noise: float = NOISE, delta: float = DELTA) -> dict[str, Any]:
    """An update meta as `ClientDPFilter` writes it, carrying ``empirical`` as its ``epsilon_empirical``."""
    entry = {
        "defense": "client_dp",
        "guarantee": "(ε, δ)-DP at client level",
        "params": {"clip_norm": 1.0, "noise_multiplier": noise},
        "installed_by": "site",
        "epsilon_round": epsilon_per_release(noise, delta),
        "epsilon_total": 3 * epsilon_per_release(noise, delta),
        "delta": delta,
        "releases": 3,
        "epsilon_empirical": empirical,
    }
    return {"network": "small_cnn", "num_classes": 4, "batch_size": 4, "medpfl_defenses": [entry]}


def record_of(meta: dict[str, Any]) -> dict[str, Any]:
    return build_record(
        job_id="job",
        site="site-1",
        round_number=2,
        status="not_audited",
        reason="audit queue full",
        meta=meta,
        outcome=None,
        site_scores=None,
        policy=RiskPolicy(),
        plan=AuditPlan(),
        versions={"torch": "2.4.0"},
        settings=metric_settings(0.9),
    )


def test_honest_value_is_recorded_as_consistent_and_survives_the_ledger(tmp_path: Path) -> None:
    """A correct ClientDP's ε̂ is recorded verbatim, next to the formal ε, with status consistent."""
    value = honest()
    record = record_of(client_dp_meta(value))
    epsilon = record["epsilon"]
    assert epsilon["client_dp"] == pytest.approx(3 * epsilon_per_release(NOISE, DELTA))
    assert epsilon["client_dp_empirical"] == value and epsilon["dp_sgd_empirical"] is None
    assert epsilon["empirical_status"] == {"client_dp": "consistent", "dp_sgd": "absent"}
    AuditLedger(tmp_path / "ledger.jsonl").append(record)
    back = AuditRecord.from_json(read_ledger(tmp_path / "ledger.jsonl").records[0])
    assert back.epsilon is not None and back.epsilon["client_dp_empirical"] == value


def test_noise_off_defense_is_flagged_exceeds_claim() -> None:
    """Without noise the canary is always told apart: ε̂ above the ε of one release is flagged."""
    value = noise_off()
    assert value["epsilon_lower"] > epsilon_per_release(NOISE, DELTA)
    epsilon = record_of(client_dp_meta(value))["epsilon"]
    assert epsilon["empirical_status"]["client_dp"] == EmpiricalStatus.EXCEEDS_CLAIM
    assert epsilon["client_dp_empirical"] == value
    # nothing may rest on a formal ε its own check disproved
    assert formal_epsilon(epsilon) is None
    assert formal_epsilon({**epsilon, "empirical_status": {"client_dp": "consistent"}}) == epsilon["client_dp"]


def test_claimed_epsilon_is_compared_with_the_server_recomputation_not_the_sites() -> None:
    """A forged claimed ε (raised above ε̂ to hide the failure) is a mismatch, never consistent."""
    forged = {**noise_off(), "claimed_epsilon": 6.0}
    assert not EmpiricalEpsilon.from_json(forged).exceeds_claim  # the site's own numbers would look fine
    assert record_of(client_dp_meta(forged))["epsilon"]["empirical_status"]["client_dp"] == "mismatch"


def test_value_for_another_delta_or_noise_is_a_mismatch() -> None:
    """ε̂ computed at another δ, or for another noise multiplier than the entry declares, is not comparable."""
    other_delta = audit_defense(ClientDP(clip_norm=1.0, noise_multiplier=NOISE), trials=TRIALS, delta=1e-3).to_json()
    assert record_of(client_dp_meta(other_delta))["epsilon"]["empirical_status"]["client_dp"] == "mismatch"
    assert record_of(client_dp_meta(honest(), noise=2.0))["epsilon"]["empirical_status"]["client_dp"] == "mismatch"


@pytest.mark.parametrize(
    "garbage",
    [
        "ε̂ = 0",
        [1, 2],
        {"schema": "medpfl-empirical-epsilon/1"},
        {"epsilon_lower": 0.1},
        "__OVERRIDE_CAP__",
    ],
)
def test_garbage_is_invalid_and_never_fails_the_record(garbage: Any) -> None:
    """Whatever the site sends, the record is written; an unreadable ε̂ is invalid and not kept."""
    if garbage == "__OVERRIDE_CAP__":  # a well-formed value above what its trials can certify
        garbage = {**honest(), "epsilon_lower": 50.0}
    epsilon = record_of(client_dp_meta(garbage))["epsilon"]
    assert epsilon["empirical_status"]["client_dp"] == "invalid" and epsilon["client_dp_empirical"] is None


def test_absent_value_is_absent() -> None:
    """A filter with its check turned off (null) records absent."""
    epsilon = record_of(client_dp_meta(None))["epsilon"]
    assert epsilon["empirical_status"] == {"client_dp": "absent", "dp_sgd": "absent"}


def test_no_dp_record_is_byte_identical_to_before(tmp_path: Path) -> None:
    """Without a formal ε the epsilon section keeps its three keys and the ledger line has nothing new."""
    record = record_of({"network": "small_cnn", "num_classes": 4, "batch_size": 4, "medpfl_defenses": []})
    assert record["epsilon"] == {"client_dp": None, "dp_sgd": None, "delta": None}
    assert empirical_epsilon({}, epsilon_so_far({})) == {}
    AuditLedger(tmp_path / "ledger.jsonl").append(record)
    line = (tmp_path / "ledger.jsonl").read_text()
    assert '"epsilon": {"client_dp": null, "delta": null, "dp_sgd": null}' in line and "empirical" not in line


def _dp_sgd_meta(lower: float, *, claimed: float | None = None) -> dict[str, Any]:
    config = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA)
    claim = per_step_epsilon(config, 0.5) if claimed is None else claimed
    value = EmpiricalEpsilon(
        epsilon_lower=lower, confidence=0.95, trials=4000, delta=DELTA, claimed_epsilon=claim, method="one step"
    )
    facts = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "delta": DELTA,
        "epsilon": 12.0,
        "accountant": "rdp",
        "sample_rate": 0.5,
        "steps_total": 8,
        "epsilon_empirical": value.to_json(),
    }
    return {"network": "small_cnn", "num_classes": 4, "batch_size": 4, "dp_sgd": facts}


def test_dp_sgd_value_is_checked_against_one_step_epsilon() -> None:
    """DP-SGD ε̂ is compared with the server's ε of ONE step (≈ 3.9 here), never with the cumulative 12."""
    one_step = per_step_epsilon(DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA), 0.5)
    assert 3.0 < one_step < 5.0
    assert record_of(_dp_sgd_meta(0.2))["epsilon"]["empirical_status"] == {
        "client_dp": "absent",
        "dp_sgd": "consistent",
    }
    flagged = record_of(_dp_sgd_meta(one_step + 1.0))["epsilon"]
    assert flagged["empirical_status"]["dp_sgd"] == "exceeds_claim"
    assert flagged["dp_sgd_empirical"]["epsilon_lower"] == pytest.approx(one_step + 1.0)
    assert record_of(_dp_sgd_meta(5.0, claimed=6.5))["epsilon"]["empirical_status"]["dp_sgd"] == "mismatch"
    assert json.dumps(flagged)  # plain JSON for the ledger
