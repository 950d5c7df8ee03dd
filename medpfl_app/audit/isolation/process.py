"""`AuditProcess`: one lower-priority, killable worker process that runs audit jobs (see the package docstring)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from medpfl_app.audit.isolation.child import ChildInfo, ChildSettings, child_main
from medpfl_app.audit.isolation.errors import (
    AuditClosed,
    AuditCrashed,
    AuditIsolationError,
    AuditJobError,
    AuditTimeout,
)
from medpfl_app.audit.isolation.runner import T, check_timeout, job_name
from medpfl_app.audit.isolation.slot import GRACEFUL_STOP_S, ChildHandle, ChildSlot, exit_detail, stop_child

logger = logging.getLogger("medpfl.audit")


class AuditProcess:
    """One lower-priority worker process that runs audit jobs; killed and replaced when a job overruns or crashes.

    The child is started with ``spawn`` on first use (or by `warm_up`) and kept for later jobs: importing torch
    there takes seconds. A job past its ``timeout_s`` kills the child and raises `AuditTimeout`; a child that dies
    raises `AuditCrashed`; the next `run` starts a fresh child. One job runs at a time (a lock). The child is stopped
    by `close`, when the runner is garbage-collected and at interpreter exit.

    Args:
        nice: Niceness added in the child (0-19; higher is lower priority).
        torch_threads: ``torch.set_num_threads`` in the child (None: leave torch alone and do not import it).
        memory_limit_mb: MB of data memory one job may allocate on top of the idle child's, enforced with
            ``RLIMIT_DATA`` (Linux). Past it torch raises ``RuntimeError`` (``can't allocate memory``) and NumPy
            ``MemoryError`` inside the job, which come back as `AuditJobError`. It counts virtual memory (mappings
            the job reserves), so it is an upper bound on resident memory. None: no limit.
        start_timeout_s: Seconds the child may take to start (spawn, imports, ``os.nice``).

    Attributes:
        settings: What the child applies at start.
        starts: Children started so far (1 + restarts after timeouts and crashes).
        startup_s: Seconds the latest child took from spawn to ready (None: none ready yet).

    Notes:
        As with any ``spawn``, jobs must be module-level functions the child can import, and a script that creates
        a runner must guard its entry point with ``if __name__ == "__main__"`` (the child re-imports it).

    Example:
        >>> runner = AuditProcess(nice=10)                      # doctest: +SKIP
        >>> runner.run(audit_update, item, plan, timeout_s=600)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        nice: int = 10,
        torch_threads: int | None = 1,
        memory_limit_mb: float | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        if not isinstance(nice, int) or not 0 <= nice <= 19:
            raise ValueError(f"nice must be an int in 0..19 (raising priority needs privileges), got {nice!r}")
        if torch_threads is not None and (not isinstance(torch_threads, int) or torch_threads < 1):
            raise ValueError(f"torch_threads must be a positive int or None, got {torch_threads!r}")
        if memory_limit_mb is not None and not memory_limit_mb > 0:
            raise ValueError(f"memory_limit_mb must be positive or None, got {memory_limit_mb!r}")
        if not start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be positive, got {start_timeout_s!r}")
        self.settings = ChildSettings(nice=nice, torch_threads=torch_threads, memory_limit_mb=memory_limit_mb)
        self.start_timeout_s = float(start_timeout_s)
        self._context = multiprocessing.get_context("spawn")
        self._run_lock = threading.Lock()
        self._slot = ChildSlot()
        self.starts = 0
        self.startup_s: float | None = None
        # Stops the child at interpreter exit or when this runner is collected, whichever comes first.
        self._finalizer = weakref.finalize(self, self._slot.shutdown)

    # --- public ------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The current child's process id (None: no child running)."""
        child = self._slot.child
        return child.process.pid if child is not None else None

    @property
    def child_info(self) -> ChildInfo | None:
        """What the current child reported when it became ready (None: not ready yet)."""
        child = self._slot.child
        return child.info if child is not None else None

    def warm_up(self, *, wait: bool = False) -> None:
        """Start the child now (e.g. at START_RUN) instead of on the first job.

        Args:
            wait: Block until the child is ready (``start_timeout_s`` at most); otherwise return once it is spawned.

        Raises:
            AuditTimeout: ``wait`` and the child did not become ready in time (it was killed).
            AuditCrashed: ``wait`` and the child failed to start.
            AuditClosed: The runner was closed.
        """
        with self._run_lock:
            child = self._ensure_child()
            if wait:
                self._await_ready(child)

    def run(self, fn: Callable[..., T], /, *args: Any, timeout_s: float | None, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the child and return its result.

        Args:
            fn: A module-level function the child can import.
            *args: Picklable positional arguments (NumPy arrays, frozen dataclasses, ...).
            timeout_s: Seconds the job may run (counted from sending it, not including the child's start-up);
                None: no limit. Keyword-only and required: a caller must decide.
            **kwargs: Picklable keyword arguments.

        Raises:
            AuditJobError: The job raised; type name, message and traceback text of its exception.
            AuditTimeout: The job ran past ``timeout_s``; the child was killed.
            AuditCrashed: The child died during the job (or could not start).
            AuditClosed: The runner was closed before or during the job.
            pickle.PicklingError, TypeError, AttributeError: ``fn`` or the arguments cannot be pickled (nothing sent).
        """
        check_timeout(timeout_s)
        with self._run_lock:
            child = self._ensure_child()
            self._await_ready(child)
            what = job_name(fn)
            try:
                child.conn.send((fn, args, kwargs))
            except (BrokenPipeError, ConnectionResetError, EOFError) as error:
                raise self._crashed(child, "died before it received the job") from error
            child.busy = True
            try:
                return cast("T", self._wait_for_reply(child, timeout_s, what))
            finally:
                child.busy = False

    def _wait_for_reply(self, child: ChildHandle, timeout_s: float | None, what: str) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([child.conn, child.process.sentinel], remaining)
            if child.conn in ready or child.conn.poll(0):
                try:
                    status, payload = child.conn.recv()
                except (EOFError, OSError) as error:
                    raise self._crashed(child, "died during the job") from error
                if status == "ok":
                    return payload
                raise AuditJobError(payload, what=what)
            if ready:  # only the sentinel: the child exited without a reply
                raise self._crashed(child, "died during the job")
            if timeout_s is not None and deadline is not None and time.monotonic() >= deadline:
                pid = child.process.pid
                self._discard(child, wait_s=0.0)
                if self._slot.closed:
                    raise AuditClosed()
                logger.warning("MedPFL audit: %s ran past %g s; worker process %s killed", what, timeout_s, pid)
                raise AuditTimeout(float(timeout_s), what=what)

    def close(self) -> None:
        """Stop the child and refuse further jobs (idempotent).

        An idle child is asked to leave; a child that is running a job (in another thread) is killed, and that
        job raises `AuditClosed`.
        """
        with self._slot.lock:
            self._slot.closed = True
            child = self._slot.child
        acquired = self._run_lock.acquire(blocking=False)
        if not acquired:
            if child is not None:
                with contextlib.suppress(ValueError):  # ValueError: that job's thread reaped it meanwhile
                    child.process.kill()  # the job's thread wakes up on the child's exit and raises AuditClosed
            acquired = self._run_lock.acquire(timeout=2 * GRACEFUL_STOP_S)
        try:
            self._finalizer()  # stops what is left (idempotent); also detaches the exit hook
        finally:
            if acquired:
                self._run_lock.release()

    def __enter__(self) -> AuditProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- private -----------------------------------------------------------------------------------------------
    def _ensure_child(self) -> ChildHandle:
        if self._slot.closed:
            raise AuditClosed()
        child = self._slot.child
        if child is not None and not child.process.is_alive():
            pid = child.process.pid
            self._discard(child, wait_s=0.0)
            logger.warning(
                "MedPFL audit: the idle worker process %s %s; starting a new one", pid, exit_detail(child.exitcode)
            )
            child = None
        if child is not None:
            return child
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=child_main, args=(child_conn, self.settings, os.getpid()), name="medpfl-audit-worker", daemon=True
        )
        started = time.monotonic()
        try:
            process.start()
        except (OSError, AssertionError) as error:  # AssertionError: a daemonic process may not have children
            parent_conn.close()
            child_conn.close()
            raise AuditCrashed(None, f"could not be started ({error!r}): use InlineRunner here") from error
        child_conn.close()  # the child holds its end: its death now reads as EOF here
        child = ChildHandle(process=process, conn=parent_conn, started=started)
        if not self._slot.put(child):  # closed while it was spawning
            stop_child(child, wait_s=0.0)
            raise AuditClosed()
        self.starts += 1
        return child

    def _await_ready(self, child: ChildHandle) -> None:
        if child.info is not None:
            return
        remaining = self.start_timeout_s - (time.monotonic() - child.started)
        ready = multiprocessing.connection.wait([child.conn, child.process.sentinel], max(0.0, remaining))
        if not ready:
            self._discard(child, wait_s=0.0)
            if self._slot.closed:
                raise AuditClosed()
            raise AuditTimeout(self.start_timeout_s, phase="start")
        try:
            status, payload = child.conn.recv()
        except (EOFError, OSError) as error:
            raise self._crashed(child, "died while starting") from error
        if status != "ready":
            self._discard(child, wait_s=GRACEFUL_STOP_S)
            raise AuditCrashed(None, f"failed to start: {payload.type_name}: {payload.message}")
        child.info = payload
        self.startup_s = time.monotonic() - child.started
        logger.info(
            "MedPFL audit: worker process %s ready in %.2f s (priority %d, torch threads %s)",
            payload.pid,
            self.startup_s,
            payload.priority,
            payload.torch_threads,
        )

    def _crashed(self, child: ChildHandle, when: str) -> AuditIsolationError:
        self._discard(child, wait_s=GRACEFUL_STOP_S)  # it closed its pipe: let it finish exiting for its exit code
        if self._slot.closed:
            return AuditClosed()
        detail = f"{exit_detail(child.exitcode)}: it {when}"
        logger.warning("MedPFL audit: worker process %s", detail)
        return AuditCrashed(child.exitcode, detail)

    def _discard(self, child: ChildHandle, *, wait_s: float) -> None:
        """Stop ``child`` unless someone else (`close`, the exit hook) took it out of the slot first."""
        if self._slot.take(child) is not None:
            stop_child(child, wait_s=wait_s)
