"""The server-side audit filter as NVFlare runs it: ``process(shareable, fl_ctx)`` on DXOs of tiny arrays."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.event import fire_event_to_components
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit import worker as audit_worker
from medpfl_app.audit.ledger import read_ledger
from medpfl_app.audit.update_audit import AuditOutcome
from medpfl_app.nvflare.server import audit_filter as audit_server
from medpfl_app.nvflare.server.audit_filter import AuditFilter, GlobalWeightsCache

JOB = "job-audit"
#: Generous bound for "well under 50 ms" on a loaded 2-core machine; benchmarks/bench_audit.py measures the typical.
FAST_S = 0.5
FACTS = {"network": "lenet_sigmoid", "image_size": 8, "in_channels": 1, "num_classes": 4, "batch_size": 1}


class _Engine:
    def __init__(self, root) -> None:
        self.root = root

    def get_workspace(self) -> Workspace:
        for folder in ("startup", "local"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        return Workspace(root_dir=str(self.root), site_name="server")

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        del event_type, fl_ctx


def _ctx(root, site: str = "site-1") -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "server", private=False, sticky=True)
    ctx.set_prop(ReservedKey.ENGINE, _Engine(root), private=True, sticky=True)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=True)
    ctx.set_peer_context(peer)
    return ctx


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"net.fc.weight": rng.normal(size=(4, 6)).astype(np.float32), "net.fc.bias": np.zeros(4, np.float32)}


def _shareable(data=None, *, kind=DataKind.WEIGHT_DIFF, meta=None, round_=0) -> Shareable:
    shareable = DXO(
        data_kind=kind, data=_update() if data is None else data, meta=dict(FACTS) if meta is None else meta
    ).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_)
    return shareable


def _outcome() -> AuditOutcome:
    return AuditOutcome(
        server_indicators={"labels_recovered": True, "images_per_update": 1, "bn_statistics_exposed": False},
        attack_budget={"attack": "fake", "iterations": 0},
        threat_model={"attacker": "test"},
        model={"network": "lenet_sigmoid", "config_hash": "sha256:0", "num_parameters": 1},
    )


def _started_filter(tmp_path, **kwargs) -> tuple[AuditFilter, FLContext]:
    """A started filter; the attack runs on the worker thread (monkeypatched audits are not picklable) unless a
    test asks for the isolated worker process."""
    audit = AuditFilter(**{"isolate": False, **kwargs})
    ctx = _ctx(tmp_path)
    audit.handle_event(EventType.START_RUN, ctx)
    return audit, ctx


def _records(tmp_path, audit: AuditFilter, expected: int) -> list[dict]:
    assert audit._worker is not None
    assert audit._worker.drain(60), "the audit worker did not drain"
    records = read_ledger(tmp_path / JOB / "medpfl" / "audit_ledger.jsonl").records
    assert len(records) == expected, records
    return list(records)


def _assert_unchanged(before: dict[str, np.ndarray], shareable_in: Shareable, shareable_out: Shareable) -> None:
    assert shareable_out is shareable_in
    after = from_shareable(shareable_out).data
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


def test_process_returns_the_shareable_unchanged_and_fast_while_the_worker_is_busy(tmp_path, monkeypatch) -> None:
    """A blocked attack thread must not slow or change what NVFlare gets back."""
    release = threading.Event()
    entered = threading.Event()

    def blocked(item, plan):
        entered.set()
        release.wait(30)
        return _outcome()

    monkeypatch.setattr(audit_worker, "audit_update", blocked)
    audit, ctx = _started_filter(tmp_path, max_queue=2)
    try:
        for round_ in range(4):
            before = _update(round_)
            shareable = _shareable({k: v.copy() for k, v in before.items()}, round_=round_)
            started = time.perf_counter()
            returned = audit.process(shareable, ctx)
            elapsed = time.perf_counter() - started
            _assert_unchanged(before, shareable, returned)
            assert elapsed < FAST_S, f"process() took {elapsed:.3f} s with a busy worker"
            if round_ == 0:
                assert entered.wait(10)
    finally:
        release.set()
    records = _records(tmp_path, audit, 4)
    statuses = sorted(r["status"] for r in records)
    # One update in the attack thread, two in the queue (its bound and this only site's share), the fourth refused.
    assert statuses == ["audited", "audited", "audited", "not_audited"]
    refused = next(r for r in records if r["status"] == "not_audited")
    assert "audit queue" in refused["reason"] and refused["round"] == 3 and refused["site"] == "site-1"
    assert refused["risk"] == "not_audited" and refused["verdict"]["evidence"] == refused["reason"]


def test_process_is_unchanged_and_fast_when_the_audit_is_broken(tmp_path, monkeypatch) -> None:
    """An audit that raises becomes a not_audited record; the update still goes through untouched."""

    def broken(item, plan):
        raise RuntimeError("attack exploded")

    monkeypatch.setattr(audit_worker, "audit_update", broken)
    audit, ctx = _started_filter(tmp_path)
    before = _update(1)
    shareable = _shareable({k: v.copy() for k, v in before.items()})
    started = time.perf_counter()
    returned = audit.process(shareable, ctx)
    assert time.perf_counter() - started < FAST_S
    _assert_unchanged(before, shareable, returned)
    (record,) = _records(tmp_path, audit, 1)
    assert (
        record["status"] == "not_audited" and "attack exploded" in record["reason"] and record["risk"] == "not_audited"
    )


def test_process_survives_an_internal_error_in_the_filter(tmp_path, monkeypatch) -> None:
    """Even a failure before the queue (here: copying the update) never raises into NVFlare."""

    def no_copy(data):
        raise MemoryError("no room")

    monkeypatch.setattr(audit_server, "copy_arrays", no_copy)
    audit, ctx = _started_filter(tmp_path)
    shareable = _shareable()
    assert audit.process(shareable, ctx) is shareable
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_audited" and "no room" in record["reason"]


@pytest.mark.parametrize(
    ("make", "reason_part"),
    [
        pytest.param(
            lambda: _shareable(
                {"net.fc.weight": np.array([b"\x01\x02"])}, meta={**FACTS, "processed_algorithm": "CKKS"}
            ),
            "processed by 'CKKS'",
            id="he",
        ),
        pytest.param(
            lambda: _shareable({"net.fc.weight": np.array(["a", "b"], dtype=object)}), "non-numeric", id="object-array"
        ),
        pytest.param(lambda: _shareable({"net.fc.weight": b"ciphertext"}), "not a numeric array", id="bytes"),
        pytest.param(lambda: _shareable(meta={"batch_size": 1}), "model facts", id="no-model"),
        pytest.param(
            lambda: _shareable(kind=DataKind.METRICS, data={"accuracy": 0.5}), "no model weights", id="metrics"
        ),
    ],
)
def test_unattackable_updates_are_recorded_not_auditable(tmp_path, make, reason_part) -> None:
    """Encrypted, non-numeric or model-less updates are 'not auditable' with the reason, and pass unchanged."""
    audit, ctx = _started_filter(tmp_path)
    shareable = make()
    assert audit.process(shareable, ctx) is shareable
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_auditable" and reason_part in record["reason"], record["reason"]
    assert record["risk"] == "not_auditable" and record["site_scores"]["status"] == "unavailable"


def test_a_result_that_is_no_dxo_is_not_auditable(tmp_path) -> None:
    audit, ctx = _started_filter(tmp_path)
    shareable = Shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, 2)
    assert audit.process(shareable, ctx) is shareable
    (record,) = _records(tmp_path, audit, 1)
    assert record["status"] == "not_auditable" and "not an NVFlare DXO" in record["reason"]


def test_end_of_run_is_held_while_audits_remain(tmp_path, monkeypatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: (release.wait(30), _outcome())[1])
    from medpfl_app.nvflare.end_of_run import holds_end_of_run

    audit, ctx = _started_filter(tmp_path)
    audit.check_wait_s = 0.0
    audit.process(_shareable(), ctx)
    audit.handle_event(EventType.CHECK_END_RUN_READINESS, ctx)  # "not ready" as a property: nothing raised
    assert holds_end_of_run(ctx)
    release.set()
    _records(tmp_path, audit, 1)
    drained = _ctx(tmp_path)
    audit.handle_event(EventType.CHECK_END_RUN_READINESS, drained)
    assert not holds_end_of_run(drained)  # drained: ready


def test_constructor_args_are_stored_under_their_names() -> None:
    """NVFlare's exporter reads constructor args back from same-named attributes (pitfall 9)."""
    audit = AuditFilter(plan={"iterations": 5}, risk_policy={"ssim_high": 0.7}, max_queue=3, drain_timeout_s=9.0)
    assert (audit.plan, audit.risk_policy, audit.max_queue, audit.drain_timeout_s) == (
        {"iterations": 5},
        {"ssim_high": 0.7},
        3,
        9.0,
    )


def test_weights_cache_copies_once_per_round_and_never_touches_the_payload(tmp_path) -> None:
    cache = GlobalWeightsCache()
    ctx = _ctx(tmp_path)
    weights = _update(7)
    original = {k: v.copy() for k, v in weights.items()}
    shareable = _shareable(weights, kind=DataKind.WEIGHTS, round_=5)
    assert cache.process(shareable, ctx) is shareable
    cached = cache.store.get(JOB, 5)
    assert cached is not None and sorted(cached) == sorted(original)
    for key in original:
        assert cached[key] is not weights[key]
        np.testing.assert_array_equal(weights[key], original[key])
    weights["net.fc.bias"] += 1  # the next client's copy of the payload changes later: the cache must not
    np.testing.assert_array_equal(cached["net.fc.bias"], original["net.fc.bias"])
    cache.process(_shareable(_update(8), kind=DataKind.WEIGHTS, round_=5), ctx)  # second client: not re-copied
    np.testing.assert_array_equal(cache.store.get(JOB, 5)["net.fc.weight"], original["net.fc.weight"])


class _EventEngine(_Engine):
    """Fires events to the job's handlers, filters included, as NVFlare's run manager does."""

    def __init__(self, root, handlers: list) -> None:
        super().__init__(root)
        self.handlers = handlers

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        fire_event_to_components(event_type, self.handlers, fl_ctx)


def _linked_filter(tmp_path, **kwargs) -> tuple[AuditFilter, GlobalWeightsCache, FLContext]:
    """A started audit filter and its job's weights cache, both handlers of one job (as NVFlare builds them)."""
    cache, audit = GlobalWeightsCache(), AuditFilter(**{"isolate": False, **kwargs})
    ctx = _ctx(tmp_path)
    ctx.set_prop(ReservedKey.ENGINE, _EventEngine(tmp_path, [cache, audit]), private=True, sticky=True)
    fire_event_to_components(EventType.START_RUN, [cache, audit], ctx)
    return audit, cache, ctx


def test_the_audit_gets_the_global_weights_of_its_own_jobs_cache_only(tmp_path, monkeypatch) -> None:
    """The filter finds its job's cache through the job's events (no process-global store): the audited item
    starts from the round's cached weights, while a filter of another job run, same job id, sees none of them."""
    seen = []
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: seen.append(item) or _outcome())
    audit, cache, ctx = _linked_filter(tmp_path)
    weights = _update(7)
    cache.process(_shareable(weights, kind=DataKind.WEIGHTS, round_=0), ctx)
    audit.process(_shareable(round_=0), ctx)
    _records(tmp_path, audit, 1)
    other_root = tmp_path / "other"
    other, _, other_ctx = _linked_filter(other_root)
    other.process(_shareable(round_=0), other_ctx)
    _records(other_root, other, 1)
    first, second = seen
    assert first.global_weights is cache.store.get(JOB, 0)
    np.testing.assert_array_equal(first.global_weights["net.fc.weight"], weights["net.fc.weight"])
    assert second.global_weights is None


class _PanicEngine(_Engine):
    def __init__(self, root, clients: tuple[str, ...] = ("site-1", "site-2")) -> None:
        super().__init__(root)
        self.events: list[tuple[str, object]] = []
        self.clients = clients

    def get_clients(self) -> list:
        from nvflare.apis.client import Client

        return [Client(name, None) for name in self.clients]

    def new_context(self) -> FLContext:
        ctx = FLContext()
        ctx.set_prop(ReservedKey.ENGINE, self, private=True, sticky=True)
        return ctx

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        from nvflare.apis.fl_constant import FLContextKey

        self.events.append((event_type, fl_ctx.get_prop(FLContextKey.EVENT_DATA)))


@pytest.mark.parametrize("action", ["report", "stop_job"])
def test_high_risk_policy_action(tmp_path, monkeypatch, action) -> None:
    """stop_job ends the run once, with a reason naming site and round; report (default) only writes the ledger."""
    risky = _risky_outcome()
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: risky)
    _site_scores_leak(monkeypatch)
    audit = AuditFilter(on_high_risk=action, isolate=False)
    engine = _PanicEngine(tmp_path)
    ctx = _ctx(tmp_path)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=True)
    audit.handle_event(EventType.START_RUN, ctx)
    audit.process(_shareable(round_=0), ctx)
    audit.process(_shareable(round_=1), ctx)
    records = _records(tmp_path, audit, 2)
    assert all(r["risk"] == "high" for r in records)
    panics = [data for event, data in engine.events if event == EventType.FATAL_SYSTEM_ERROR]
    if action == "report":
        assert panics == []
    else:
        assert len(panics) == 1 and "high privacy risk for site-1 in round 0" in panics[0]


def _risky_outcome() -> AuditOutcome:
    """An audit whose reconstruction the site then scores as a leak (`_site_scores_leak`)."""
    return AuditOutcome(
        server_indicators={"bn_statistics_exposed": True, "images_per_update": 1, "attack_convergence": "matched"},
        attack_budget={"attack": "fake", "iterations": 0},
        threat_model={},
        model={"network": "x"},
        reconstructions=np.zeros((1, 1, 8, 8), np.float32),
        labels=np.zeros(1, np.int64),
    )


def _site_scores_leak(monkeypatch) -> None:
    """site-1's scorer measures a close reconstruction (SSIM 0.95); other sites' updates carry no reconstruction."""
    scored = {"status": "scored", "ssim_max": 0.95, "attack_success_rate": 1.0, "ssim_threshold": 0.9}
    monkeypatch.setattr(
        AuditFilter, "_ask_site", lambda self, site, round_number, recon, labels, **_: (dict(scored), None)
    )


def _filter_on(tmp_path, engine: _PanicEngine, **kwargs) -> tuple[AuditFilter, FLContext]:
    audit = AuditFilter(**{"isolate": False, **kwargs})
    ctx = _ctx(tmp_path)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=True)
    audit.handle_event(EventType.START_RUN, ctx)
    return audit, ctx


def test_exclude_site_empties_that_sites_later_updates_and_still_audits_them(tmp_path, monkeypatch) -> None:
    """After a high-risk record the site's next update reaches the workflow with no weights (FedAvg skips empty
    results) and the reason in its meta; it is still audited, its record says so; other sites pass untouched."""
    risk_of = {"site-1": _risky_outcome(), "site-2": _outcome()}
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: risk_of[item.site])
    _site_scores_leak(monkeypatch)
    engine = _PanicEngine(tmp_path)
    audit, ctx = _filter_on(tmp_path, engine, on_high_risk="exclude_site")
    first = audit.process(_shareable(round_=0), ctx)
    assert sorted(from_shareable(first).data) == sorted(_update())  # the finding comes after this update
    assert audit._worker.drain(60)

    later = audit.process(_shareable(round_=1), ctx)
    other_site = _ctx(tmp_path, site="site-2")
    other_site.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=True)
    before = _update()
    other_in = _shareable(before, round_=1)
    other_out = audit.process(other_in, other_site)

    excluded = from_shareable(later)
    assert excluded.data == {} and excluded.data_kind == DataKind.WEIGHT_DIFF
    action = excluded.meta["medpfl_policy_action"]
    assert (
        action["action"] == "excluded_from_aggregation"
        and "high privacy risk for site-1 in round 0" in action["reason"]
    )
    _assert_unchanged(before, other_in, other_out)
    records = _records(tmp_path, audit, 3)
    by_key = {(r["site"], r["round"]): r for r in records}
    assert by_key[("site-1", 0)]["policy_action"] is None and by_key[("site-2", 1)]["policy_action"] is None
    assert by_key[("site-1", 1)]["status"] == "audited"
    assert by_key[("site-1", 1)]["policy_action"]["action"] == "excluded_from_aggregation"
    assert not [e for e, _ in engine.events if e == EventType.FATAL_SYSTEM_ERROR]
    # NVFlare's own FedAvg turns the emptied result into an FLModel and skips it instead of aggregating it.
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils
    from nvflare.app_common.workflows.fedavg import FedAvg

    model = FLModelUtils.from_shareable(later)
    model.meta["client_name"] = "site-1"
    assert FedAvg(num_clients=2, num_rounds=1)._aggregate_one_result(model) is False


def test_exclude_site_stops_the_job_when_no_site_is_left(tmp_path, monkeypatch) -> None:
    """Excluding the only connected site would leave FedAvg nothing to aggregate: the job is stopped instead."""
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: _risky_outcome())
    _site_scores_leak(monkeypatch)
    engine = _PanicEngine(tmp_path, clients=("site-1",))
    audit, ctx = _filter_on(tmp_path, engine, on_high_risk="exclude_site")
    audit.process(_shareable(round_=0), ctx)
    _records(tmp_path, audit, 1)
    panics = [data for event, data in engine.events if event == EventType.FATAL_SYSTEM_ERROR]
    assert len(panics) == 1 and "every site is excluded" in panics[0]


def test_unknown_policy_action_is_refused() -> None:
    from medpfl_app.errors import MedPFLError

    with pytest.raises(MedPFLError):
        AuditFilter(on_high_risk="shout")
