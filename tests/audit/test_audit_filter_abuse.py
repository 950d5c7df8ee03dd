"""A malicious site against the audit filter: whatever it sends, one record is written and nothing it claims costs.

Uses the NVFlare-less harness of `test_audit_filter` (a DXO of tiny arrays through ``process(shareable, fl_ctx)``).
"""

from __future__ import annotations

import os
import stat

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from test_audit_filter import (
    FACTS,
    JOB,
    _ctx,
    _linked_filter,
    _outcome,
    _records,
    _shareable,
    _started_filter,
    _update,
)

from medpfl_app.audit import worker as audit_worker
from medpfl_app.nvflare.server.audit_filter import REJECTED_NON_FINITE


def test_a_nan_update_is_rejected_recorded_and_never_aggregated(tmp_path) -> None:
    """NaN in the weights: the workflow gets an emptied result (FedAvg skips it) and the ledger says why."""
    audit, ctx = _started_filter(tmp_path)
    poisoned = _update()
    poisoned["net.fc.weight"][0, 0] = np.nan
    out = audit.process(_shareable(poisoned), ctx)
    dxo = from_shareable(out)
    assert dxo.data == {} and dxo.meta["medpfl_policy_action"]["action"] == REJECTED_NON_FINITE
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_audited" and "NaN or Inf" in record["reason"]
    assert record["policy_action"]["action"] == REJECTED_NON_FINITE and record["risk"] == "not_audited"


def test_invalid_meta_is_a_not_audited_record_and_allocates_nothing(tmp_path, monkeypatch) -> None:
    """batch_size = 1e9 never reaches the attack: recorded not_audited with the fact named."""
    called = []
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: called.append(item) or _outcome())
    audit, ctx = _started_filter(tmp_path)
    shareable = _shareable(meta={**FACTS, "batch_size": 10**9})
    assert audit.process(shareable, ctx) is shareable  # the update itself still reaches the workflow
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_audited" and record["reason"].startswith("invalid meta (batch_size")
    assert called == []


def test_nan_training_facts_cannot_erase_the_record(tmp_path) -> None:
    """A NaN fact used to break the ledger's JSON encoding and lose the record: now it is recorded, named."""
    audit, ctx = _started_filter(tmp_path)
    audit.process(_shareable(meta={**FACTS, "learning_rate": float("nan")}), ctx)
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_audited" and "learning_rate" in record["reason"]


def test_a_claimed_encryption_on_a_plaintext_update_is_still_audited(tmp_path, monkeypatch) -> None:
    """processed_algorithm: CKKS on plain NumPy weights does not make the update 'not auditable'."""
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: _outcome())
    audit, ctx = _started_filter(tmp_path)
    audit.process(_shareable(meta={**FACTS, "processed_algorithm": "CKKS"}), ctx)
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "audited"


def test_an_oversized_update_is_not_copied(tmp_path) -> None:
    """An update far larger than the global model it answers is refused before the audit copies it."""
    audit, cache, ctx = _linked_filter(tmp_path)
    cache.process(_shareable(_update(), kind=DataKind.WEIGHTS, round_=0), ctx)
    huge = {**_update(), "net.extra": np.zeros(100_000, np.float32)}
    audit.process(_shareable(huge), ctx)
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_auditable" and "far more than" in record["reason"]


def test_one_flooding_site_cannot_crowd_out_the_others(tmp_path, monkeypatch) -> None:
    """With two sites known, a site holds at most half the queue; the other site's update is still queued."""
    import threading

    release = threading.Event()
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: (release.wait(30), _outcome())[1])
    audit, ctx = _started_filter(tmp_path, max_queue=4)
    audit._worker.expect_sites(["site-1", "site-2"])
    try:
        for round_ in range(6):  # site-1 floods: one in the attack thread, two waiting, the rest refused
            audit.process(_shareable(round_=round_), ctx)
        honest = _ctx(tmp_path, site="site-2")
        honest.set_prop(ReservedKey.ENGINE, ctx.get_engine(), private=True, sticky=True)
        audit.process(_shareable(round_=0), honest)
    finally:
        release.set()
    records = _records(tmp_path, audit, 7)
    by_site = {site: [r for r in records if r["site"] == site] for site in ("site-1", "site-2")}
    assert [r["status"] for r in by_site["site-2"]] == ["audited"]
    refused = [r for r in by_site["site-1"] if r["status"] == "not_audited"]
    assert refused and all("share of the audit queue" in r["reason"] for r in refused)


def test_ledger_and_its_folder_are_owner_only(tmp_path) -> None:
    audit, ctx = _started_filter(tmp_path)
    audit.process(_shareable(), ctx)
    _records(tmp_path, audit, 1)
    ledger = tmp_path / JOB / "medpfl" / "audit_ledger.jsonl"
    assert stat.S_IMODE(os.stat(ledger).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ledger.parent).st_mode) == 0o700


def test_an_update_the_plan_skips_still_gets_a_record(tmp_path, monkeypatch) -> None:
    """A sampled plan (every 2nd round) records the skipped round as not audited, so coverage never shows it lost."""
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: _outcome())
    audit, ctx = _started_filter(tmp_path, plan={"every_n_rounds": 2})
    for round_ in (0, 1):
        audit.process(_shareable(round_=round_), ctx)
    records = {r["round"]: r for r in _records(tmp_path, audit, 2)}
    assert records[0]["status"] == "audited"
    assert records[1]["status"] == "not_audited" and "not selected by the audit plan" in records[1]["reason"]
