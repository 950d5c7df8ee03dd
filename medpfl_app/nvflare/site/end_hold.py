"""A site's hold on the end of the run: it waits for the server's audit to be done, bounded, and says so once.

At the end of the job the site's scorer asks NVFlare to wait (its "not ready to end run" property,
`medpfl_app.nvflare.end_of_run`: no exception, so no traceback in the logs) until the server says its audit is done
(`medpfl_app.nvflare.site.protocol.RELEASE_TOPIC`, sent once the server's audit queue is drained), at most
``wait_at_end_s`` seconds, so the last round's scores of every site reach the ledger. Not only until this site's
own last round is scored: in NVFlare's simulator the first site whose run ends ends every site's run, which would
cut off the other sites' last scores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from medpfl_app.nvflare.end_of_run import EndOfRunHold, hold_end_of_run


class SiteEndHold:
    """Whether the server released this site, the rounds it asked about, and the bounded wait.

    Args:
        limit_s: ``wait_at_end_s`` at construction (each check passes the value configured then).
    """

    def __init__(self, limit_s: float) -> None:
        self._hold = EndOfRunHold(limit_s)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._asked_rounds: set[int] = set()

    def note_asked(self, round_number: int) -> None:
        """The server asked for this round's scores: no need to wait for it."""
        with self._lock:
            self._asked_rounds.add(round_number)

    def release(self) -> None:
        """The server's audit is done: stop holding."""
        self._released.set()

    def check(
        self,
        fl_ctx: FLContext,
        owner: FLComponent,
        *,
        site: str | None,
        recorded_rounds: Callable[[], tuple[int, ...]] | None,
        limit_s: float,
        wait_s: float,
    ) -> None:
        """Hold the end of the run until released, at most ``limit_s`` from the first check; a site that trained
        no round does not wait. Never raises: the wait is designed, so it is said once at INFO, and giving up at
        the bound once as a warning.

        Args:
            fl_ctx: The readiness check's context.
            owner: The scorer (its log).
            site: This site.
            recorded_rounds: The rounds this site trained in the job (None: the scorer has no job).
            limit_s: ``wait_at_end_s`` as configured now.
            wait_s: Longest this check waits inside the handler.
        """
        if not self._hold.started:
            self._hold.limit_s = limit_s  # as configured now, not at construction
        if recorded_rounds is None or self._released.is_set() or self._hold.expired():
            return
        rounds = recorded_rounds()
        if not rounds:
            return
        if self._hold.start():
            with self._lock:
                asked = rounds[-1] in self._asked_rounds
            owner.log_info(
                fl_ctx,
                f"MedPFL audit: {site} holds the end of the run until the server's audit "
                f"is done (at most {limit_s:g} s)" + ("" if asked else f"; its round {rounds[-1]} is not scored yet"),
            )
        if self._released.wait(min(wait_s, self._hold.left_s())):
            owner.log_info(fl_ctx, f"MedPFL audit: {site} released by the server after {self._hold.waited_s():.0f} s")
            return
        if self._hold.expired():
            owner.log_warning(
                fl_ctx,
                f"MedPFL audit: {site} stopped waiting for the server's audit after "
                f"{limit_s:g} s (wait_at_end_s); its last scores may be missing",
            )
            return
        hold_end_of_run(fl_ctx)
