"""What every audit runner offers (`AuditProcess`, `InlineRunner`) and the checks and names they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


def job_name(fn: Callable[..., Any]) -> str:
    """How errors and logs name the job ``fn``."""
    return f"audit job {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


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


def check_timeout(timeout_s: float | None) -> None:
    """Refuse a ``timeout_s`` that is neither positive nor None."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s!r}")
