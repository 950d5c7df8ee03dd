"""The parent's handle on one audit worker process, the slot that holds the current one, and how one is stopped."""

from __future__ import annotations

import multiprocessing.connection
import signal
import threading
from dataclasses import dataclass
from typing import Any

from medpfl_app.audit.isolation.child import ChildInfo

#: Seconds a child gets to leave on its own (pipe closed, stop message) before it is killed.
GRACEFUL_STOP_S = 5.0


@dataclass
class ChildHandle:
    """One started worker process as its parent sees it: the process, its end of the pipe and its state."""

    process: Any  # multiprocessing.context.SpawnProcess
    conn: multiprocessing.connection.Connection
    started: float
    info: ChildInfo | None = None
    busy: bool = False  # a job is running: stopping it means killing it
    exitcode: int | None = None  # set once reaped


class ChildSlot:
    """The current child and the closed flag, shared with the finalizer (which must not hold the runner).

    Whoever takes the child out of the slot owns it and is the one to stop it.
    """

    def __init__(self) -> None:
        self.child: ChildHandle | None = None
        self.closed = False
        self.lock = threading.Lock()

    def put(self, child: ChildHandle) -> bool:
        """Make ``child`` the current one; False (and nothing stored) when closed."""
        with self.lock:
            if self.closed:
                return False
            self.child = child
            return True

    def take(self, child: ChildHandle | None = None) -> ChildHandle | None:
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
        stop_child(child, wait_s=wait_s)


def stop_child(child: ChildHandle, *, wait_s: float) -> None:
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


def exit_detail(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering and has no exit status yet"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"
