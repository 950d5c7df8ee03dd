"""The errors an audit runner raises instead of a job's result, and a job's exception described in plain strings."""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass

from medpfl_app.errors import MedPFLError


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
