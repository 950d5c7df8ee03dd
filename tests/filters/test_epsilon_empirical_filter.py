"""ClientDPFilter puts an empirical ε lower bound (``epsilon_empirical``) next to the accountant's ε in the meta."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants

import medpfl_app.nvflare.filters.client_dp as client_dp_filter
from medpfl_app.defenses.client_dp import ClientDP
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon, audit_defense
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.client_dp import EMPIRICAL_SEED, ClientDPFilter
from medpfl_app.nvflare.filters.defense_filter import META_KEY


def _ctx(root) -> FLContext:
    """A site context whose engine knows the site workspace (where the DP ledger lives)."""
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_ID, "task-1", private=True, sticky=False)
    for folder in ("startup", "local"):  # NVFlare's Workspace insists on both
        (root / folder).mkdir(parents=True, exist_ok=True)

    class _Engine:
        def get_workspace(self) -> Workspace:
            return Workspace(root_dir=str(root), site_name="site-1")

        def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
            del event_type, fl_ctx

    ctx.set_prop(ReservedKey.ENGINE, _Engine(), private=True, sticky=True)
    return ctx


def _release(f: ClientDPFilter, ctx: FLContext, round_: int) -> DXO:
    data = {"fc.weight": np.random.default_rng(round_).normal(size=(4, 6)).astype(np.float32)}
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_)
    return from_shareable(f.process(shareable, ctx))


def test_meta_carries_the_empirical_epsilon_next_to_the_formal_one(tmp_path, monkeypatch) -> None:
    """Every release's meta holds the EmpiricalEpsilon JSON of the filter's own ClientDP, audited once."""
    calls = []
    real_audit = client_dp_filter.audit_defense

    def counting_audit(defense, **kwargs):
        calls.append((defense, kwargs))
        return real_audit(defense, **kwargs)

    monkeypatch.setattr(client_dp_filter, "audit_defense", counting_audit)
    f = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, seed=0, empirical_trials=400)
    ctx = _ctx(tmp_path / "site-1")
    entries = [_release(f, ctx, round_).meta[META_KEY][0] for round_ in (1, 2)]

    assert len(calls) == 1 and calls[0][0] is f._defense  # the filter's own defense object, cached across rounds
    for entry in entries:
        json.dumps(entry)
        result = EmpiricalEpsilon.from_json(entry["epsilon_empirical"])
        assert result.trials == 400 and result.delta == entry["delta"] == 1e-5
        assert result.claimed_epsilon == pytest.approx(entry["epsilon_round"])  # first round: one release
        assert not result.exceeds_claim
    expected = audit_defense(ClientDP(clip_norm=1.0, noise_multiplier=1.0), trials=400, seed=EMPIRICAL_SEED)
    assert EmpiricalEpsilon.from_json(entries[0]["epsilon_empirical"]) == expected  # the server can recompute it


def test_empirical_epsilon_can_be_switched_off(tmp_path) -> None:
    f = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, seed=0, empirical_trials=0)
    entry = _release(f, _ctx(tmp_path / "site-1"), 1).meta[META_KEY][0]
    assert entry["epsilon_empirical"] is None and entry["epsilon_round"] > 0


def test_a_failing_audit_refuses_the_release_before_the_ledger_is_charged(tmp_path, monkeypatch) -> None:
    def broken_audit(defense, **kwargs):
        raise MedPFLError("audit failed", fix="none")

    monkeypatch.setattr(client_dp_filter, "audit_defense", broken_audit)
    f = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, seed=0, empirical_trials=100)
    root = tmp_path / "site-1"
    with pytest.raises(MedPFLError, match="audit failed"):
        _release(f, _ctx(root), 1)
    assert not (root / "medpfl" / "client_dp_ledger.json").exists()  # nothing released, nothing spent


@pytest.mark.parametrize("trials", [-1, 2, 1.5, True, "4000", 10**7])
def test_bad_trial_counts_fail_at_construction(trials) -> None:
    with pytest.raises(MedPFLError, match="empirical_trials"):
        ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, empirical_trials=trials)


def test_default_keeps_job_exports_unchanged() -> None:
    """NVFlare's job exporter leaves out an argument equal to its default: existing exports stay as they were."""
    from nvflare.job_config.fed_job_config import FedJobConfig

    exporter = FedJobConfig.__new__(FedJobConfig)  # only its argument serialiser is used
    default = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, delta=1e-6)
    assert exporter._get_args(default, "") == {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-6}
    configured = ClientDPFilter(clip_norm=1.0, noise_multiplier=1.0, empirical_trials=2000)
    assert exporter._get_args(configured, "")["empirical_trials"] == 2000
