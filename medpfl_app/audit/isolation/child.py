"""The audit worker process's side: lower its priority, report ready, then run one job at a time until told to stop.

Everything here runs in the spawned child (`AuditProcess` starts it with `child_main` as its target).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from medpfl_app.audit.isolation.errors import JobFailure

#: How often the child's watchdog checks that its parent is still alive.
PARENT_CHECK_INTERVAL_S = 1.0


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


def child_main(conn: multiprocessing.connection.Connection, settings: ChildSettings, parent_pid: int) -> None:
    """Live as the child: prepare, report ready, then run jobs until the pipe closes or ``None`` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="medpfl-audit-watchdog", daemon=True).start()
    try:
        info = _prepare(settings)
    except BaseException as error:  # noqa: BLE001 - the parent reports it
        conn.send(("failed", JobFailure.from_exception(error)))
        return
    conn.send(("ready", info))
    _serve_jobs(conn, settings)


def _prepare(settings: ChildSettings) -> ChildInfo:
    """Lower this process's priority and fix torch's threads (before torch is imported), then describe it."""
    if settings.nice:
        os.nice(settings.nice)
    threads = None
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
        with contextlib.suppress(RuntimeError):  # already fixed by torch work in the re-imported main module
            torch.set_num_interop_threads(1)
        threads = torch.get_num_threads()
    return ChildInfo(pid=os.getpid(), priority=os.getpriority(os.PRIO_PROCESS, 0), torch_threads=threads)


def _serve_jobs(conn: multiprocessing.connection.Connection, settings: ChildSettings) -> NoReturn:
    """Run each job that arrives and send back its result or failure; leave when the pipe closes or on ``None``."""
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
