"""The audit's worker process: results, errors, timeouts, crashes, priority, shutdown; the inline twin."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import isolation_jobs as jobs  # the spawned child imports it by this name (tests/audit is on sys.path)
import numpy as np
import pytest

from medpfl_app.audit.isolation import (
    AuditClosed,
    AuditCrashed,
    AuditJobError,
    AuditProcess,
    AuditTimeout,
    InlineRunner,
)
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.update_audit import AuditItem, audit_update
from medpfl_app.errors import MedPFLError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="priority, signals and RLIMIT_DATA as on Linux")

JOB_TIMEOUT_S = 60.0  # generous: a job that should finish at once


def _gone(pid: int, within_s: float = 10.0, *, zombie_ok: bool = False) -> bool:
    """Whether no process ``pid`` exists (a zombie counts as existing unless ``zombie_ok``: not ours to reap)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if zombie_ok and _state(pid) == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _update() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "fc.bias": np.arange(3.0)}


@pytest.fixture(scope="module")
def runner() -> Iterator[AuditProcess]:
    """One worker (with torch) shared by the tests that leave it alive."""
    with AuditProcess(nice=10, torch_threads=1) as shared:
        yield shared


@pytest.fixture
def bare_runner() -> Iterator[AuditProcess]:
    """Give the tests that kill the worker one without torch (it starts in a fraction of a second)."""
    with AuditProcess(nice=5, torch_threads=None) as fresh:
        yield fresh


def test_round_trip_with_arrays_and_dataclasses(runner: AuditProcess) -> None:
    """Arrays, a frozen dataclass and keyword arguments go to the child and come back equal."""
    # Prepare
    update = _update()
    # Execute
    result = runner.run(jobs.scaled_sum, update, jobs.Scale(2.0, 1.0), timeout_s=JOB_TIMEOUT_S, extra=np.ones(2))
    # Assert
    assert runner.pid is not None and runner.pid != os.getpid()
    assert result["scale"] == jobs.Scale(2.0, 1.0)
    for name, value in update.items():
        np.testing.assert_array_equal(result["arrays"][name], value * 2.0 + 1.0)
        assert result["arrays"][name].dtype == value.dtype
    assert result["total"] == pytest.approx(jobs.scaled_sum(update, jobs.Scale(2.0, 1.0))["total"] + 2.0)


def test_exception_in_child_surfaces_with_type_and_message(runner: AuditProcess) -> None:
    """A job's exception comes back with its type name, message and traceback text; the child survives it."""
    pid = runner.pid or runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    with pytest.raises(AuditJobError, match="ValueError: the update is odd") as caught:
        runner.run(jobs.fail, "the update is odd", timeout_s=JOB_TIMEOUT_S)
    assert caught.value.type_name == "ValueError"
    assert caught.value.message == "the update is odd"
    assert "in fail" in caught.value.remote_traceback
    assert runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S) == pid


def test_medpfl_error_keeps_problem_and_fix(runner: AuditProcess) -> None:
    """A `MedPFLError` (which would not unpickle) keeps its problem, fix and site across the process boundary."""
    with pytest.raises(AuditJobError) as caught:
        runner.run(jobs.fail_medpfl, "no global weights", "cache them", timeout_s=JOB_TIMEOUT_S)
    assert isinstance(caught.value, MedPFLError)
    assert (caught.value.problem, caught.value.fix, caught.value.site) == ("no global weights", "cache them", "site-1")
    assert caught.value.type_name == "medpfl_app.errors.MedPFLError"


def test_child_runs_niced_with_one_torch_thread(runner: AuditProcess) -> None:
    """The child lowered its own priority by ``nice`` and runs torch on one thread."""
    facts = runner.run(jobs.process_facts, timeout_s=JOB_TIMEOUT_S)
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert facts["priority"] == min(parent + 10, 19) and facts["priority"] > parent
    assert facts["torch_threads"] == 1
    assert runner.child_info is not None and runner.child_info.priority == facts["priority"]
    assert runner.startup_s is not None and runner.startup_s > 0


def test_timeout_kills_child_and_next_job_gets_a_fresh_one(bare_runner: AuditProcess) -> None:
    """A job past its timeout kills the whole child and raises `AuditTimeout`; the next job starts a new child."""
    first = bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(AuditTimeout, match=r"0\.5 s") as caught:
        bare_runner.run(jobs.sleep_then_pid, 30, timeout_s=0.5)
    assert time.monotonic() - started < 20
    assert caught.value.seconds == 0.5
    assert _gone(first)
    assert bare_runner.pid is None
    second = bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    assert second != first
    assert bare_runner.starts == 2
    assert bare_runner.child_info is not None and bare_runner.child_info.priority > os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize(
    ("job", "args", "expected"), [(jobs.exit_now, (3,), "exited with code 3"), (jobs.segfault, (), "SIGSEGV")]
)
def test_crash_raises_and_next_job_restarts(bare_runner: AuditProcess, job, args, expected: str) -> None:
    """A child that dies during a job raises `AuditCrashed` naming the exit code or signal; the next job works."""
    first = bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    with pytest.raises(AuditCrashed, match=expected) as caught:
        bare_runner.run(job, *args, timeout_s=JOB_TIMEOUT_S)
    assert caught.value.exitcode in (3, -11)
    assert _gone(first)
    assert bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S) not in (first, None)


def test_idle_child_killed_from_outside_is_replaced(bare_runner: AuditProcess) -> None:
    """A child that died between jobs (e.g. the OOM killer) is replaced silently by the next job."""
    first = bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    os.kill(first, 9)
    time.sleep(0.2)
    assert bare_runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S) != first
    assert _gone(first)  # reaped by the runner
    assert bare_runner.starts == 2


def test_unpicklable_job_fails_before_sending(runner: AuditProcess) -> None:
    """A job that cannot be pickled raises in the caller and leaves the child and its pipe usable."""
    pid = runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
    with pytest.raises(Exception, match="pickle"):
        runner.run(lambda: 1, timeout_s=JOB_TIMEOUT_S)
    assert runner.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S) == pid


def test_close_leaves_no_child_and_is_final() -> None:
    """`close` stops the child (twice is fine); later jobs raise `AuditClosed`."""
    worker = AuditProcess(torch_threads=None)
    worker.warm_up(wait=True)
    pid = worker.pid
    assert pid is not None
    worker.close()
    worker.close()
    assert worker.pid is None
    assert _gone(pid)
    with pytest.raises(AuditClosed):
        worker.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)


def test_close_during_a_job_kills_the_child() -> None:
    """Closing from another thread while a job runs kills the child; that job raises `AuditClosed`."""
    worker = AuditProcess(torch_threads=None)
    worker.warm_up(wait=True)
    pid = worker.pid
    assert pid is not None
    errors: list[BaseException] = []

    def long_job() -> None:
        try:
            worker.run(jobs.sleep_then_pid, 30, timeout_s=None)
        except BaseException as error:  # noqa: BLE001 - inspected below
            errors.append(error)

    thread = threading.Thread(target=long_job)
    thread.start()
    time.sleep(0.3)
    worker.close()
    thread.join(20)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], AuditClosed)
    assert _gone(pid)


def test_memory_limit_fails_the_job_not_the_child() -> None:
    """With ``memory_limit_mb`` a job allocating more gets an allocation error; the same child runs the next job."""
    with AuditProcess(torch_threads=1, memory_limit_mb=64) as worker:
        assert worker.run(jobs.allocate, 16, timeout_s=JOB_TIMEOUT_S) == 16 * 1024 * 1024 // 4
        pid = worker.pid
        with pytest.raises(AuditJobError, match="can't allocate memory"):
            worker.run(jobs.allocate, 512, timeout_s=JOB_TIMEOUT_S)
        assert worker.run(jobs.allocate, 16, timeout_s=JOB_TIMEOUT_S) == 16 * 1024 * 1024 // 4
        assert worker.pid == pid


CHILD_AT_EXIT = """
import os, sys, threading, time
sys.path.insert(0, {jobs_dir!r})
import isolation_jobs
from medpfl_app.audit.isolation import AuditProcess

if __name__ == "__main__":  # spawn re-imports the main module in the child
    worker = AuditProcess(torch_threads=None)
    worker.warm_up(wait=True)
    print(worker.pid, flush=True)
    if {hard!r}:
        job = (isolation_jobs.sleep_then_pid, 30)
        threading.Thread(target=worker.run, args=job, kwargs={{"timeout_s": None}}).start()
        time.sleep(0.3)
        os._exit(0)  # no atexit, no finalizers: the child's watchdog must notice
"""


@pytest.mark.parametrize("hard", [False, True], ids=["interpreter-exit", "parent-killed"])
def test_no_orphan_when_the_parent_ends(hard: bool, tmp_path: Path) -> None:
    """The child ends when its parent exits without `close` (exit hook) or dies mid-job (watchdog)."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(CHILD_AT_EXIT.format(jobs_dir=str(Path(jobs.__file__).parent), hard=hard)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert _gone(int(done.stdout.split()[0]), zombie_ok=True)  # re-parented: its new parent reaps it


def test_arguments_are_validated() -> None:
    """Bad settings fail at construction; a non-positive timeout fails before anything is sent."""
    for kwargs in ({"nice": -1}, {"nice": 20}, {"torch_threads": 0}, {"memory_limit_mb": 0}, {"start_timeout_s": 0}):
        with pytest.raises(ValueError):
            AuditProcess(**kwargs)
    with InlineRunner() as inline, pytest.raises(ValueError, match="timeout_s"):
        inline.run(jobs.sleep_then_pid, 0, timeout_s=0)


def _lenet_item() -> AuditItem:
    """A one-image, one-step update of the demo's sigmoid LeNet (16 px), as the server's filter would queue it."""
    import torch

    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.models.global_model import build_seeded_network

    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=4, image_size=16, seed=0, dp_sgd=False)
    images = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    site = simulate_site_update(
        net, images, torch.tensor([2]), kind=UpdateKind.WEIGHT_DIFF, local_steps=1, learning_rate=0.1, batch_size=1
    )
    meta = {
        **site.meta,
        "network": "lenet_sigmoid",
        "image_size": 16,
        "in_channels": 1,
        "num_classes": 4,
        "state_dict_prefix": "net.",
    }
    return AuditItem(
        site="site-1",
        round=0,
        job_id="j",
        data_kind="WEIGHT_DIFF",
        update={f"net.{k}": v.numpy() for k, v in site.update.items()},
        global_weights={f"net.{k}": v.numpy() for k, v in site.global_weights.items()},
        meta=meta,
    )


def test_real_audit_in_the_child_matches_inline(runner: AuditProcess) -> None:
    """`audit_update` on a real update runs in the child and returns what it returns inline (both on 1 thread)."""
    import torch

    # no wall-clock budget: stages cut by time would differ between two runs; iterations alone are deterministic
    item, plan = _lenet_item(), AuditPlan(iterations=5, time_limit_s=None)
    in_child = runner.run(audit_update, item, plan, timeout_s=300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child's setting: same arithmetic, and no oversubscription on a busy machine
    try:
        inline = InlineRunner().run(audit_update, item, plan, timeout_s=None)
    finally:
        torch.set_num_threads(threads)
    assert in_child.reconstructions is not None and inline.reconstructions is not None
    np.testing.assert_allclose(in_child.reconstructions, inline.reconstructions, atol=1e-6)
    np.testing.assert_array_equal(in_child.labels, inline.labels)
    assert in_child.model == inline.model
    assert in_child.attack_budget["iterations"] == inline.attack_budget["iterations"]
    no_weights = dataclasses.replace(item, global_weights=None)
    with pytest.raises(AuditJobError, match="no global weights") as caught:
        runner.run(audit_update, no_weights, plan, timeout_s=300)
    assert "GlobalWeightsCache" in caught.value.fix  # what the worker writes into the ledger reason


def test_inline_runner_gives_the_same_results(runner: AuditProcess) -> None:
    """`InlineRunner` returns what the process returns and raises the same error types."""
    update = _update()
    with InlineRunner(check_picklable=True) as inline:
        here = inline.run(jobs.scaled_sum, update, jobs.Scale(0.5), timeout_s=JOB_TIMEOUT_S, extra=np.ones(2))
        there = runner.run(jobs.scaled_sum, update, jobs.Scale(0.5), timeout_s=JOB_TIMEOUT_S, extra=np.ones(2))
        assert here["total"] == there["total"] and here["scale"] == there["scale"]
        for name in update:
            np.testing.assert_array_equal(here["arrays"][name], there["arrays"][name])
        for job, args in ((jobs.fail, ("odd",)), (jobs.fail_medpfl, ("problem", "fix"))):
            with pytest.raises(AuditJobError) as in_thread:
                inline.run(job, *args, timeout_s=JOB_TIMEOUT_S)
            with pytest.raises(AuditJobError) as in_child:
                runner.run(job, *args, timeout_s=JOB_TIMEOUT_S)
            assert str(in_thread.value) == str(in_child.value)
            assert in_thread.value.type_name == in_child.value.type_name
        with pytest.raises(AuditTimeout):
            inline.run(jobs.sleep_then_pid, 0.05, timeout_s=0.01)
        with pytest.raises(Exception, match="pickle"):
            inline.run(lambda: 1, timeout_s=JOB_TIMEOUT_S)  # would fail in the process too
    with pytest.raises(AuditClosed):
        inline.run(jobs.sleep_then_pid, 0, timeout_s=JOB_TIMEOUT_S)
