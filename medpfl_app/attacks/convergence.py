"""Did an attack converge? Evidence from its matching-loss trace and how far its images moved (pure functions).

A loss threshold alone cannot tell: on a freshly initialised sigmoid LeNet, random noise already matches the
gradient to a relative loss of ~4e-6, and an optimiser that stops at its first convergence check returns its
starting noise with a "small" loss. So the evidence combines

- the reduction of the best matching loss from the initialisation to the end (``initial / final``);
- whether the images moved away from their initialisation at all (relative L2 change);
- whether the loss was still falling when the budget ended (improvement over the last half of the iterations).

Statuses (`Convergence`): ``matched`` (the update is matched to numerical precision and the loss fell by orders
of magnitude: the attack found an input that explains the update), ``stalled`` (the loss stopped improving above
a match: a noise floor or local minimum; more of the same budget would not help), ``improving`` (the budget ended
while the loss still fell: a larger budget may reconstruct more), ``no_progress`` (the attack never moved: not
evidence of anything) and ``diverged``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from medpfl_app.errors import MedPFLError

#: Relative matching loss (``‖Δ̂ − Δ‖² / ‖Δ‖²``) at or below which the update counts as matched.
MATCH_TOLERANCE = 1e-10
#: A match must also have reduced the loss from its initialisation at least this many times.
MIN_REDUCTION = 1e3
#: Below this relative improvement over the last half of the iterations, the loss has stalled.
STALL_TOLERANCE = 0.01
#: Fewer iterations than this cannot show a stall (a trend needs a history).
MIN_ITERATIONS_FOR_STALL = 20
#: Below this relative image change, or loss reduction, the attack made no progress.
NO_PROGRESS_TOLERANCE = 1e-3


class Convergence(StrEnum):
    """How an attack's optimisation ended (see the module docstring)."""

    MATCHED = "matched"
    STALLED = "stalled"
    IMPROVING = "improving"
    NO_PROGRESS = "no_progress"
    DIVERGED = "diverged"

    @property
    def meaning(self) -> str:
        """What the status says about the optimisation, in a few words (never a verdict on leakage)."""
        return _MEANINGS[self]

    @property
    def settled(self) -> bool:
        """Whether more of the same budget would not change the outcome (matched or stalled)."""
        return self in (Convergence.MATCHED, Convergence.STALLED)


_MEANINGS = {
    Convergence.MATCHED: "the update is matched to numerical precision",
    Convergence.STALLED: "the loss stopped improving above a match",
    Convergence.IMPROVING: "the loss was still falling when the run ended",
    Convergence.NO_PROGRESS: "the images did not move from their initialisation, or the loss did not fall",
    Convergence.DIVERGED: "the optimiser hit a non-finite loss",
}


@dataclass(frozen=True)
class ConvergenceEvidence:
    """The numbers behind a `Convergence` status (plain JSON through `to_json`).

    Attributes:
        status: The verdict on the optimisation.
        initial_loss: Matching loss of the initialisation (best restart).
        final_loss: Best matching loss reached.
        iterations: Optimiser steps run.
        reduction: ``initial_loss / final_loss`` (inf when the final loss is 0).
        recent_improvement: Relative improvement of the best loss over the last half of the iterations.
        moved: Relative L2 change of the returned images from their initialisation.
    """

    status: Convergence
    initial_loss: float
    final_loss: float
    iterations: int
    reduction: float
    recent_improvement: float
    moved: float

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["status"] = str(self.status)
        return {key: (json_number(value) if isinstance(value, float) else value) for key, value in values.items()}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> ConvergenceEvidence:
        """Read back what `to_json` wrote.

        Raises:
            MedPFLError: A missing field or an unknown status.
        """
        try:
            return cls(
                status=Convergence(values["status"]),
                initial_loss=_float(values["initial_loss"]),
                final_loss=_float(values["final_loss"]),
                iterations=int(values["iterations"]),
                reduction=_float(values["reduction"]),
                recent_improvement=_float(values["recent_improvement"]),
                moved=_float(values["moved"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MedPFLError(f"unreadable convergence evidence: {error!r}", fix="re-run the audit") from error

    def describe(self) -> str:
        """One phrase for reports: status with the loss from start to end."""
        return (
            f"{self.status} after {self.iterations} iterations (matching loss {self.initial_loss:.3g} → "
            f"{self.final_loss:.3g})"
        )


def assess_convergence(
    losses: Sequence[float],
    *,
    moved: float,
    diverged: bool = False,
    match_tolerance: float = MATCH_TOLERANCE,
    min_reduction: float = MIN_REDUCTION,
    stall_tolerance: float = STALL_TOLERANCE,
) -> ConvergenceEvidence:
    """Classify one optimisation from its best-so-far matching loss per iteration.

    Args:
        losses: ``losses[0]`` is the loss of the initialisation, ``losses[i]`` the best loss after iteration ``i``.
        moved: Relative L2 change of the returned images from their initialisation.
        diverged: The optimiser hit a non-finite loss.
        match_tolerance: Relative loss at or below which the update is matched.
        min_reduction: A match must have reduced the loss at least this many times.
        stall_tolerance: Relative improvement over the last half below which the loss has stalled.

    Raises:
        MedPFLError: No loss at all.
    """
    finite = [float(v) for v in losses if math.isfinite(float(v))]
    if not finite:
        if diverged:
            return ConvergenceEvidence(
                Convergence.DIVERGED, math.inf, math.inf, max(len(losses) - 1, 0), 1.0, 0.0, float(moved)
            )
        raise MedPFLError("no matching loss recorded", fix="run the attack for at least one iteration")
    initial, final = finite[0], min(finite)
    iterations = max(len(losses) - 1, 0)
    # A cosine loss can end a rounding error below 0: that is a perfect match, not a negative reduction.
    reduction = math.inf if final <= 0 else initial / final
    half = [float(v) for v in losses[: iterations // 2 + 1] if math.isfinite(float(v))]
    at_half = min(half) if half else initial
    recent = 0.0 if at_half <= 0 else max(0.0, (at_half - final) / at_half)
    if final <= match_tolerance and reduction >= min_reduction:
        status = Convergence.MATCHED
    elif moved < NO_PROGRESS_TOLERANCE or reduction == 1.0:  # never moved, or never beat the initialisation
        status = Convergence.NO_PROGRESS
    elif diverged:
        status = Convergence.DIVERGED
    elif iterations >= MIN_ITERATIONS_FOR_STALL and recent < stall_tolerance:
        status = Convergence.STALLED
    else:
        status = Convergence.IMPROVING
    return ConvergenceEvidence(status, initial, final, iterations, reduction, recent, float(moved))


def json_number(value: float) -> float | str:
    """``value`` for strict JSON: finite floats as they are, ``inf``, ``-inf`` and ``nan`` as strings (which
    ``float()`` reads back)."""
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")


def _float(value: Any) -> float:
    return float(value)  # float("inf") reads back what json_number wrote
