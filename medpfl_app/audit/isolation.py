"""Run audit jobs in a separate, lower-priority, killable worker process (or inline, with the same interface).

The attack on a received update is CPU-heavy and its input comes from a site the server does not control: a
crafted update can make one attack step run far past its time limit. A thread cannot be stopped and competes with
training at the server's own priority; a process can be niced, limited and killed. `AuditProcess` owns one child
process started with the ``spawn`` start method (a multi-threaded NVFlare server must never ``fork``) and sends it
one job at a time: a picklable module-level function and its arguments (NumPy arrays, frozen dataclasses).

No NVFlare import: `medpfl_app.audit.worker` decides which runner to use.

Notes:
    * Priority: the child lowers its own CPU priority with ``os.nice(nice)`` before it imports torch (so its
      start-up is niced too). It stays in the server's session (no ``setsid``): with Linux's autogroup scheduling,
      niceness only weighs against processes of the same session, so a child in a session of its own would compete
      with the whole server at full weight.
    * Memory: ``RLIMIT_AS`` is not used (torch reserves far more address space than it touches). The optional
      per-job guard uses ``RLIMIT_DATA`` (Linux >= 4.7 counts private anonymous mappings): torch then raises
      ``RuntimeError`` (``can't allocate memory``) and NumPy ``MemoryError`` inside the job; native code that
      aborts on a failed allocation instead ends the child, which reads as `AuditCrashed`.
    * The child is daemonic (it may not start processes of its own) and ignores SIGINT (a Ctrl-C in a terminal
      reaches the whole process group; the parent decides when the child stops). It exits when the parent closes
      the pipe, and a watchdog thread ends it within a second when the parent dies while a job runs.
    * ``multiprocessing`` starts its resource-tracker process once per parent alongside the first spawned child.
    * With ``spawn`` the child re-imports the parent's main module as ``__mp_main__`` (guarded by
      ``if __name__ == "__main__"``), which adds to its start-up time.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, cast

from medpfl_app.errors import MedPFLError

logger = logging.getLogger("medpfl.audit")

T = TypeVar("T")

#: Seconds a child gets to leave on its own (pipe closed, stop message) before it is killed.
GRACEFUL_STOP_S = 5.0
#: How often the child's watchdog checks that its parent is still alive.
PARENT_CHECK_INTERVAL_S = 1.0


# --- errors ------------------------------------------------------------------------------------------------------
class AuditIsolationError(MedPFLError):
    """Base of the errors a runner raises instead of a job's result."""


class AuditTimeout(AuditIsolationError):
    """A job (or the worker process's start) ran past its time limit; the worker process was killed.

    Attributes:
        seconds: The limit that was exceeded.
        phase: ``"job"`` or ``"start"``.
    """

    def __init__(self, seconds: float, *, phase: str = "job", what: str = "audit job") -> None:
        self.seconds = seconds
        self.phase = phase
        if phase == "start":
            problem = f"the audit worker process did not start within {seconds:g} s; it was killed"
            fix = "raise start_timeout_s, or check that the server machine is not overloaded"
        else:
            problem = f"{what} ran past its time limit of {seconds:g} s; the audit worker process was killed"
            fix = (
                "the update may be crafted to stall the attack, or the limit is too tight for this model: lower the "
                "attack budget (plan iterations, max_images) or raise the job's timeout"
            )
        super().__init__(problem, fix=fix)


class AuditCrashed(AuditIsolationError):
    """The worker process died during a job (segfault, ``os._exit``, OOM kill) or could not start.

    Attributes:
        exitcode: The child's exit code (negative: ``-signal``), or None when it did not exit.
        detail: What is known about the cause.
    """

    def __init__(self, exitcode: int | None, detail: str) -> None:
        self.exitcode = exitcode
        self.detail = detail
        fix = "the next job starts a fresh worker process"
        if exitcode == -signal.SIGKILL:
            fix += (
                "; a SIGKILL nobody sent is usually the kernel's OOM killer: lower the attack budget or set "
                "memory_limit_mb"
            )
        super().__init__(f"the audit worker process {detail}", fix=fix)


class AuditJobError(AuditIsolationError):
    """The job raised an exception in the worker; its type name, message and traceback text come back.

    The exception object itself is not sent back (it may not unpickle in the parent, e.g. one with
    keyword-only constructor arguments). When the job raised a `MedPFLError`, its problem, fix and site are kept.

    Attributes:
        type_name: The exception's type (``module.QualName``; builtins without module), e.g. ``ValueError``.
        message: ``str()`` of the exception.
        remote_traceback: The formatted traceback from the worker.
    """

    def __init__(self, failure: JobFailure, *, what: str) -> None:
        self.type_name = failure.type_name
        self.message = failure.message
        self.remote_traceback = failure.traceback
        if failure.problem is not None and failure.fix is not None:
            super().__init__(failure.problem, fix=failure.fix, site=failure.site)
        else:
            super().__init__(
                f"{what} raised {failure.type_name}: {failure.message}",
                fix="a bug in the audit or an update it cannot handle; the traceback from the audit worker is in "
                "the error's remote_traceback",
            )


class AuditClosed(AuditIsolationError):
    """The runner was closed (before or during the job)."""

    def __init__(self) -> None:
        super().__init__(
            "the audit runner is closed", fix="create a new runner; close() is final (it runs at server shutdown)"
        )


@dataclass(frozen=True)
class JobFailure:
    """An exception raised by a job, described in plain strings so that it always unpickles.

    Attributes:
        type_name: ``module.QualName`` of the exception type (builtins: just the name).
        message: ``str()`` of the exception.
        traceback: The formatted traceback.
        problem: `MedPFLError.problem`, when the exception is one.
        fix: `MedPFLError.fix`, when the exception is one.
        site: `MedPFLError.site`, when the exception is one.
    """

    type_name: str
    message: str
    traceback: str
    problem: str | None = None
    fix: str | None = None
    site: str | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> JobFailure:
        """Describe ``error`` (with its traceback)."""
        kind = type(error)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        text = "".join(traceback.format_exception(error))
        if isinstance(error, MedPFLError):
            return cls(name, str(error), text, problem=error.problem, fix=error.fix, site=error.site)
        return cls(name, str(error), text)


def _job_name(fn: Callable[..., Any]) -> str:
    return f"audit job {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --- the common interface ----------------------------------------------------------------------------------------
class AuditRunner(Protocol):
    """What `AuditProcess` and `InlineRunner` both offer."""

    def run(self, fn: Callable[..., T], /, *args: Any, timeout_s: float | None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, or an `AuditIsolationError`."""
        ...

    def warm_up(self, *, wait: bool = False) -> None:
        """Prepare for the first job early."""
        ...

    def close(self) -> None:
        """Release the runner (idempotent, final)."""
        ...


def _check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s!r}")


# --- in-process fallback -----------------------------------------------------------------------------------------
class InlineRunner:
    """Runs jobs in the calling thread, with `AuditProcess`'s interface and errors (tests; no ``spawn`` possible).

    A job cannot be stopped here: ``timeout_s`` is checked when the job returns, and a job that overran raises
    `AuditTimeout` (its result discarded) so that callers see what `AuditProcess` would have raised. Nothing limits
    priority, threads or memory.

    Args:
        check_picklable: Send the function, arguments and result through a pickle round trip, as `AuditProcess`
            would, so that a job that only works in-process is caught in tests.
    """

    def __init__(self, *, check_picklable: bool = False) -> None:
        self.check_picklable = check_picklable
        self._lock = threading.Lock()
        self._closed = False

    def warm_up(self, *, wait: bool = False) -> None:
        """Nothing to start (``wait`` is accepted for interface parity)."""
        if self._closed:
            raise AuditClosed()

    def run(self, fn: Callable[..., T], /, *args: Any, timeout_s: float | None, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` in this thread.

        Raises:
            AuditJobError: The job raised (the original exception is the ``__cause__``).
            AuditTimeout: The job took longer than ``timeout_s``.
            AuditClosed: The runner was closed.
        """
        _check_timeout(timeout_s)
        with self._lock:
            if self._closed:
                raise AuditClosed()
            if self.check_picklable:
                fn, args, kwargs = pickle.loads(pickle.dumps((fn, args, kwargs)))
            started = time.monotonic()
            try:
                result = fn(*args, **kwargs)
                if self.check_picklable:
                    result = pickle.loads(pickle.dumps(result))
            except (Exception, SystemExit) as error:  # noqa: BLE001 - surfaced as in AuditProcess
                raise AuditJobError(JobFailure.from_exception(error), what=_job_name(fn)) from error
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise AuditTimeout(timeout_s, what=_job_name(fn))
            return result

    def close(self) -> None:
        """Refuse further jobs (idempotent)."""
        self._closed = True

    def __enter__(self) -> InlineRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the child process -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildSettings:
    """How the child prepares itself before serving jobs (sent to it at start).

    Attributes:
        nice: Increment to the child's niceness (0: unchanged).
        torch_threads: ``torch.set_num_threads`` in the child (None: torch is not imported at start).
        memory_limit_mb: Per job, MB of data memory (``RLIMIT_DATA``) the job may add to the idle child's.
    """

    nice: int = 10
    torch_threads: int | None = 1
    memory_limit_mb: float | None = None


@dataclass(frozen=True)
class ChildInfo:
    """What the child reports once it is ready.

    Attributes:
        pid: The child's process id.
        priority: Its niceness after ``os.nice`` (``os.getpriority``).
        torch_threads: ``torch.get_num_threads()`` (None when torch was not imported).
    """

    pid: int
    priority: int
    torch_threads: int | None


def _vm_data_bytes() -> int | None:
    """Return what ``RLIMIT_DATA`` counts for this process (``VmData``), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _set_data_limit(headroom_mb: float) -> None:
    import resource

    current = _vm_data_bytes()
    if current is None:
        raise OSError("memory_limit_mb needs Linux (/proc/self/status)")
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = current + int(headroom_mb * 1024 * 1024)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _lift_data_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_INTERVAL_S)
        if os.getppid() != parent_pid:  # re-parented: the parent died without closing the pipe
            os._exit(0)


def _leave() -> NoReturn:
    """End the child now: it holds no state worth a full interpreter shutdown (torch's takes ~1 s)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(0)


def _child_main(conn: multiprocessing.connection.Connection, settings: ChildSettings, parent_pid: int) -> None:
    """Live as the child: prepare, report ready, then run jobs until the pipe closes or ``None`` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="medpfl-audit-watchdog", daemon=True).start()
    try:
        if settings.nice:
            os.nice(settings.nice)
        threads = None
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
            with contextlib.suppress(RuntimeError):  # already fixed by torch work in the re-imported main module
                torch.set_num_interop_threads(1)
            threads = torch.get_num_threads()
        info = ChildInfo(pid=os.getpid(), priority=os.getpriority(os.PRIO_PROCESS, 0), torch_threads=threads)
    except BaseException as error:  # noqa: BLE001 - the parent reports it
        conn.send(("failed", JobFailure.from_exception(error)))
        return
    conn.send(("ready", info))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            _leave()
        try:
            job = pickle.loads(message)
            if job is None:
                _leave()
            fn, args, kwargs = job
            if settings.memory_limit_mb is not None:
                _set_data_limit(settings.memory_limit_mb)
            try:
                result = fn(*args, **kwargs)
            finally:
                if settings.memory_limit_mb is not None:
                    _lift_data_limit()  # receiving, pickling and error reports are not the job's memory
        except BaseException as error:  # noqa: BLE001 - SystemExit in a job is a job error, not a stop
            conn.send(("error", JobFailure.from_exception(error)))
            continue
        finally:
            job = fn = args = kwargs = None  # free the inputs before the next job arrives
        try:
            conn.send(("ok", result))  # pickles first: a failure writes nothing to the pipe
        except BaseException as error:  # noqa: BLE001
            conn.send(("error", JobFailure.from_exception(error)))
        finally:
            result = None


@dataclass
class _Child:
    process: Any  # multiprocessing.context.SpawnProcess
    conn: multiprocessing.connection.Connection
    started: float
    info: ChildInfo | None = None
    busy: bool = False  # a job is running: stopping it means killing it
    exitcode: int | None = None  # set once reaped


class _Slot:
    """The current child and the closed flag, shared with the finalizer (which must not hold the runner).

    Whoever takes the child out of the slot owns it and is the one to stop it.
    """

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.closed = False
        self.lock = threading.Lock()

    def put(self, child: _Child) -> bool:
        """Make ``child`` the current one; False (and nothing stored) when closed."""
        with self.lock:
            if self.closed:
                return False
            self.child = child
            return True

    def take(self, child: _Child | None = None) -> _Child | None:
        """Remove and return the current child (only when it is ``child``, if given)."""
        with self.lock:
            current = self.child
            if current is None or (child is not None and current is not child):
                return None
            self.child = None
            return current

    def shutdown(self) -> None:
        """Close, then stop the child: an idle one is asked to leave, a busy one is killed."""
        with self.lock:
            self.closed = True
        child = self.take()
        if child is None:
            return
        wait_s = 0.0
        if not child.busy and child.process.is_alive():
            try:
                child.conn.send(None)
                wait_s = GRACEFUL_STOP_S
            except (OSError, ValueError):
                pass
        _stop(child, wait_s=wait_s)


def _stop(child: _Child, *, wait_s: float) -> None:
    """Give ``child`` up to ``wait_s`` to exit by itself, kill it if it has not, reap it and release its handles."""
    process = child.process
    if wait_s > 0:
        process.join(wait_s)
    if process.is_alive():
        process.kill()
        process.join(GRACEFUL_STOP_S)
    child.exitcode = process.exitcode
    child.conn.close()
    if child.exitcode is not None:
        process.close()


def _exit_detail(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering and has no exit status yet"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


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
        self._slot = _Slot()
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
        _check_timeout(timeout_s)
        with self._run_lock:
            child = self._ensure_child()
            self._await_ready(child)
            what = _job_name(fn)
            try:
                child.conn.send((fn, args, kwargs))
            except (BrokenPipeError, ConnectionResetError, EOFError) as error:
                raise self._crashed(child, "died before it received the job") from error
            child.busy = True
            try:
                return cast("T", self._wait_for_reply(child, timeout_s, what))
            finally:
                child.busy = False

    def _wait_for_reply(self, child: _Child, timeout_s: float | None, what: str) -> Any:
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
    def _ensure_child(self) -> _Child:
        if self._slot.closed:
            raise AuditClosed()
        child = self._slot.child
        if child is not None and not child.process.is_alive():
            pid = child.process.pid
            self._discard(child, wait_s=0.0)
            logger.warning(
                "MedPFL audit: the idle worker process %s %s; starting a new one", pid, _exit_detail(child.exitcode)
            )
            child = None
        if child is not None:
            return child
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, args=(child_conn, self.settings, os.getpid()), name="medpfl-audit-worker", daemon=True
        )
        started = time.monotonic()
        try:
            process.start()
        except (OSError, AssertionError) as error:  # AssertionError: a daemonic process may not have children
            parent_conn.close()
            child_conn.close()
            raise AuditCrashed(None, f"could not be started ({error!r}): use InlineRunner here") from error
        child_conn.close()  # the child holds its end: its death now reads as EOF here
        child = _Child(process=process, conn=parent_conn, started=started)
        if not self._slot.put(child):  # closed while it was spawning
            _stop(child, wait_s=0.0)
            raise AuditClosed()
        self.starts += 1
        return child

    def _await_ready(self, child: _Child) -> None:
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

    def _crashed(self, child: _Child, when: str) -> AuditIsolationError:
        self._discard(child, wait_s=GRACEFUL_STOP_S)  # it closed its pipe: let it finish exiting for its exit code
        if self._slot.closed:
            return AuditClosed()
        detail = f"{_exit_detail(child.exitcode)}: it {when}"
        logger.warning("MedPFL audit: worker process %s", detail)
        return AuditCrashed(child.exitcode, detail)

    def _discard(self, child: _Child, *, wait_s: float) -> None:
        """Stop ``child`` unless someone else (`close`, the exit hook) took it out of the slot first."""
        if self._slot.take(child) is not None:
            _stop(child, wait_s=wait_s)
