"""A terminal progress bar for a simulated job: rounds trained, then what the end of the run is waiting for.

`medpfl_app.nvflare.jobs.simulate.run_simulation` reports each round's start (``on_round``) and the server audit's drain
(``on_drain``, `medpfl_app.audit.drain_progress.DrainProgress`). The bar counts rounds *finished*: it reaches the
end only when training is over, and then says ``auditing round 4: 2 of 3 updates left`` until the audit is done,
instead of sitting at 100 % with no word while the last round trains and the audit drains.
"""

from __future__ import annotations

from types import TracebackType

from medpfl_app.audit.drain_progress import DrainProgress


class SimulationProgress:
    """A tqdm bar over ``num_rounds`` rounds fed by `run_simulation`'s callbacks.

    Use as a context manager and pass `round_started` as ``on_round`` and `draining` as ``on_drain``.

    Args:
        num_rounds: The job's rounds.
        enabled: False shows nothing (the callbacks still work).
        label: The bar's description.
    """

    def __init__(self, num_rounds: int, *, enabled: bool = True, label: str = "FedAvg rounds") -> None:
        from tqdm import tqdm

        self.num_rounds = num_rounds
        self.status = ""
        self._finished = 0  # kept here: a disabled tqdm bar counts nothing
        self._bar = tqdm(total=num_rounds, desc=label, unit="round", disable=not enabled)

    def round_started(self, number: int) -> None:
        """Round ``number`` (0-based) started: every round before it is finished."""
        self._advance_to(min(number, self.num_rounds))
        self._say(f"training round {number}")

    def draining(self, progress: DrainProgress) -> None:
        """Training is over; the end of the run waits for the audit's backlog."""
        self._advance_to(self.num_rounds)
        self._say(progress.describe())

    @property
    def finished_rounds(self) -> int:
        return self._finished

    def _advance_to(self, finished: int) -> None:
        if finished > self._finished:
            self._bar.update(finished - self._finished)
            self._finished = finished

    def _say(self, text: str) -> None:
        self.status = text
        self._bar.set_postfix_str(text)

    def __enter__(self) -> SimulationProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:  # the run finished: so did its last round, audited or not
            self._advance_to(self.num_rounds)
        self._bar.close()
