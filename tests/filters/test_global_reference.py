"""The recorded global model travels with its task's FLContext: right task only, never across tasks or jobs.

The last tests drive NVFlare's own `ClientRunner._process_task` (data filters → executor → result filters on one
context), once with job filter chains and once with a privacy.json-style site scope, so the design is checked
against the runtime that makes it hold, not only against our reading of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.private.fed.client.client_engine_executor_spec import TaskAssignment
from nvflare.private.fed.client.client_runner import ClientRunner, ClientRunnerConfig, TaskRouter
from nvflare.private.privacy_manager import Scope

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.compression import TopKFilter
from medpfl_app.nvflare.filters.defense_filter import META_KEY
from medpfl_app.nvflare.filters.reference import GlobalModelRecorder, recorded_reference


class _Engine:
    """What `ClientRunner` and `FLContextManager` touch on a client engine in these tests."""

    def register_aux_message_handler(self, topic: str, message_handle_func: object) -> None:
        del topic, message_handle_func

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        del event_type, fl_ctx


def _task_ctx(manager: FLContextManager, task_id: str) -> FLContext:
    """A fresh per-task context, as ``ClientRunner`` gets one from ``engine.new_context()``."""
    ctx = manager.new_context()
    ctx.set_prop(FLContextKey.TASK_ID, task_id, private=True, sticky=False)
    return ctx


def _weights(value: float, n: int = 8) -> dict[str, np.ndarray]:
    return {"w": np.full(n, value, np.float32), "steps": np.array(3, np.int64)}


def _receive(ctx: FLContext, weights: dict[str, np.ndarray], round_: int | None = None) -> None:
    shareable = DXO(DataKind.WEIGHTS, weights).to_shareable()
    if round_ is not None:
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
    GlobalModelRecorder().process(shareable, ctx)


def _release(f: Filter, ctx: FLContext, weights: dict[str, np.ndarray], round_: int | None = None) -> DXO:
    shareable = DXO(DataKind.WEIGHTS, weights).to_shareable()
    if round_ is not None:
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
    return from_shareable(f.process(shareable, ctx))


def test_interleaved_jobs_with_shared_filter_objects_each_use_their_own_global_model() -> None:
    """Two jobs' tasks, recorded then released interleaved through ONE filter object: each gets its own base."""
    job_a = FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-a")
    job_b = FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-b")
    ctx_a, ctx_b = _task_ctx(job_a, "t-1"), _task_ctx(job_b, "t-1")
    _receive(ctx_a, _weights(10.0))
    _receive(ctx_b, _weights(-5.0))
    keep_all = TopKFilter(fraction=1.0)  # difference formed and added back exactly
    out_a = _release(keep_all, ctx_a, _weights(11.0))
    out_b = _release(keep_all, ctx_b, _weights(-4.0))
    np.testing.assert_allclose(out_a.data["w"], 11.0)
    np.testing.assert_allclose(out_b.data["w"], -4.0)
    assert out_a.meta[META_KEY][0]["applied_to"] == "difference to recorded global model"
    half = _release(TopKFilter(fraction=0.5), ctx_b, _weights(-4.0)).data["w"]
    assert sorted(half.tolist()) == [-5.0] * 4 + [-4.0] * 4  # job b's base, not job a's 10.0


def test_nothing_leaks_into_the_next_task_or_another_job() -> None:
    """A new context from the same manager (the next task) holds no recording; its WEIGHTS result is refused."""
    manager = FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-a")
    first = _task_ctx(manager, "t-1")
    _receive(first, _weights(1.0))
    assert recorded_reference(first) is not None
    following = _task_ctx(manager, "t-2")
    assert recorded_reference(following) is None
    other_job = _task_ctx(FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-b"), "t-1")
    assert recorded_reference(other_job) is None
    for ctx in (following, other_job):
        with pytest.raises(MedPFLError, match="no global model was recorded for this task"):
            _release(TopKFilter(fraction=0.5), ctx, _weights(2.0))


@pytest.mark.parametrize(
    ("change", "round_"),
    [
        (lambda ctx: ctx.set_prop(FLContextKey.TASK_ID, "t-2", private=True, sticky=False), 4),
        (lambda ctx: ctx.set_prop(ReservedKey.RUN_NUM, "job-b", private=False, sticky=True), 4),
        (lambda ctx: None, 5),
    ],
    ids=["other-task", "other-job", "other-round"],
)
def test_a_recording_is_used_only_for_a_result_of_the_same_task(
    change: Callable[[FLContext], object], round_: int
) -> None:
    """Even on one (reused) context, a result of another task, job or round is refused, never based on it."""
    ctx = _task_ctx(FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-a"), "t-1")
    _receive(ctx, _weights(1.0), round_=4)
    change(ctx)
    with pytest.raises(MedPFLError, match="recorded for another task"):
        _release(TopKFilter(fraction=0.5), ctx, _weights(2.0), round_=round_)


def test_recording_is_a_read_only_copy_and_a_non_weights_task_clears_it() -> None:
    """Later in-place edits of the received arrays do not move the base; WEIGHT_DIFF task data drops a recording."""
    ctx = _task_ctx(FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-a"), "t-1")
    received = _weights(1.0)
    _receive(ctx, received)
    received["w"] += 100.0
    record = recorded_reference(ctx)
    assert record is not None and set(record.weights) == {"w"}  # float arrays only
    np.testing.assert_array_equal(record.weights["w"], 1.0)
    with pytest.raises(ValueError, match="read-only"):
        record.weights["w"][0] = 0.0
    GlobalModelRecorder().process(DXO(DataKind.WEIGHT_DIFF, _weights(0.5)).to_shareable(), ctx)
    assert recorded_reference(ctx) is None


class _TrainPlusOne(Executor):
    """Local training stand-in: sends the received global WEIGHTS + 1 as full WEIGHTS."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        received = from_shareable(shareable).data
        return DXO(
            DataKind.WEIGHTS, {k: v + 1.0 if v.dtype.kind == "f" else v for k, v in received.items()}
        ).to_shareable()


def _runner(data_filters: dict[str, list[Filter]], result_filters: dict[str, list[Filter]]) -> ClientRunner:
    router = TaskRouter()
    router.add_executor(["train"], _TrainPlusOne())
    return ClientRunner({}, ClientRunnerConfig(router, data_filters, result_filters), "job-a", _Engine())


def _run_task(runner: ClientRunner, task_id: str, data: Shareable, scope: Scope | None = None) -> Shareable:
    manager = FLContextManager(engine=_Engine(), identity_name="site-1", job_id="job-a")
    with manager.new_context() as ctx:  # one context per task, as in ClientRunner.fetch_and_run_one_task
        server = FLContext()
        server.set_prop(ReservedKey.RUN_NUM, "job-a", private=False, sticky=False)
        ctx.set_peer_context(server)
        if scope is not None:
            ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
        return runner._process_task(TaskAssignment(name="train", task_id=task_id, data=data), ctx)


def _site_scope() -> Scope:
    scope = Scope()
    scope.set_name("private")
    scope.add_task_data_filter(GlobalModelRecorder(), FilterKey.IN)
    scope.add_task_result_filter(TopKFilter(fraction=0.5), FilterKey.OUT)
    return scope


@pytest.mark.parametrize("wiring", ["job", "site-scope"])
def test_nvflare_client_runner_hands_the_recording_from_data_to_result_filters(wiring: str) -> None:
    """Real ClientRunner: released = global + top-k(local − global); the next task without WEIGHTS data is refused."""
    if wiring == "job":
        runner = _runner({"train/in": [GlobalModelRecorder()]}, {"train/out": [TopKFilter(fraction=0.5)]})
        scope = None
    else:
        runner, scope = _runner({}, {}), _site_scope()
    global_model: dict[str, np.ndarray] = {"w": np.arange(8, dtype=np.float32), "steps": np.array(3, np.int64)}
    reply = _run_task(runner, "t-1", DXO(DataKind.WEIGHTS, global_model).to_shareable(), scope)
    assert reply.get_return_code() == ReturnCode.OK
    released = from_shareable(reply).data["w"]
    moved = released != global_model["w"]
    assert moved.sum() == math.ceil(0.5 * 8)
    np.testing.assert_allclose(released[moved], global_model["w"][moved] + 1.0)
    # Next task: the server sends a difference, so nothing is recorded and the full-WEIGHTS result is refused.
    reply = _run_task(runner, "t-2", DXO(DataKind.WEIGHT_DIFF, global_model).to_shareable(), scope)
    assert reply.get_return_code() == ReturnCode.TASK_RESULT_FILTER_ERROR
