"""Holding the end of an NVFlare run for the audit, quietly and for a bounded time.

At the end of a run NVFlare fires ``CHECK_END_RUN_READINESS`` every ``end_run_readiness_check_interval`` (0.5 s)
until no component is "not ready" or ``end_run_readiness_timeout`` has passed (``nvflare/private/fed/tbi.py``,
``TBI.check_end_run_readiness``). A component can say "not ready" in two ways: raise ``NotReadyToEndRun``, which
NVFlare's event dispatch logs as an ERROR with a full traceback at every poll
(``nvflare/apis/utils/event.py::fire_event_to_components``), or set the context property
``FLContextKey.NOT_READY_TO_END_RUN``, which it reads without logging anything (NVFlare's own ``FedEventRunner``
does this). The audit uses the property: a designed wait is not an error.

`EndOfRunHold` bounds the wait from the first check, so the audit can never keep a run alive for longer than its
own limit, whatever NVFlare's readiness timeout says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

#: Longest one readiness check waits inside the handler for the audit to finish before it answers "not ready".
#: Waiting a little in the handler, rather than answering at once, spares the logs one NVFlare
#: "Firing CHECK_END_RUN_READINESS" line per half second; the answer stays prompt when the audit finishes.
CHECK_WAIT_S = 2.0


def hold_end_of_run(fl_ctx: FLContext) -> None:
    """Tell NVFlare that this component is not ready to end the run yet (no exception, nothing logged)."""
    fl_ctx.set_prop(FLContextKey.NOT_READY_TO_END_RUN, value=True, private=True, sticky=False)


def holds_end_of_run(fl_ctx: FLContext) -> bool:
    """Whether a component answered "not ready" on this readiness check (what NVFlare reads)."""
    return bool(fl_ctx.get_prop(FLContextKey.NOT_READY_TO_END_RUN, False))


@dataclass
class EndOfRunHold:
    """The time a component may hold the end of the run: at most ``limit_s`` from its first readiness check.

    Args:
        limit_s: The bound (0 or less: never hold).
        clock: Seconds, monotonic (tests pass their own).
    """

    limit_s: float
    clock: Callable[[], float] = time.monotonic
    _started: float | None = field(default=None, init=False)

    def start(self) -> bool:
        """Note the first check; returns True only on that first call (to log the start once)."""
        if self._started is not None:
            return False
        self._started = self.clock()
        return True

    @property
    def started(self) -> bool:
        return self._started is not None

    def waited_s(self) -> float:
        """Seconds since the first check (0 before it)."""
        return 0.0 if self._started is None else max(0.0, self.clock() - self._started)

    def left_s(self) -> float:
        """Seconds the hold may still last (0 once expired)."""
        return max(0.0, self.limit_s - self.waited_s())

    def expired(self) -> bool:
        return self.limit_s <= 0 or (self._started is not None and self.left_s() <= 0)
