"""The in-process audit runner: `AuditProcess`'s interface and errors, without a worker process."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from medpfl_app.audit.isolation.errors import AuditClosed, AuditJobError, AuditTimeout, JobFailure
from medpfl_app.audit.isolation.runner import T, check_timeout, job_name


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
        check_timeout(timeout_s)
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
                raise AuditJobError(JobFailure.from_exception(error), what=job_name(fn)) from error
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise AuditTimeout(timeout_s, what=job_name(fn))
            return result

    def close(self) -> None:
        """Refuse further jobs (idempotent)."""
        self._closed = True

    def __enter__(self) -> InlineRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
