"""One stage of the attack ladder the audit ran on an update, as the report shows it (a schema-2 ``ladder`` entry).

Every number is range-checked (`medpfl_app.reports.fields.checked`): wrong types and out-of-range values become
``None``, with a note when the caller collects them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medpfl_app.reports.fields import checked, checked_integer, flag, fmt, mapping, text


@dataclass(frozen=True)
class Stage:
    """One stage of the attack ladder the audit ran on an update (a ``ladder`` entry of a schema-2 record)."""

    stage: str
    attack: str | None
    images: int | None
    local_steps: int | None
    update_mode: str | None
    iterations: int | None
    restarts: int | None
    wall_time_s: float | None
    stop_reason: str | None
    whole_update: bool | None
    convergence: str | None
    initial_loss: float | None
    final_loss: float | None
    reduction: float | None

    @classmethod
    def from_json(cls, values: Any, problems: list[str] | None = None, *, where: str = "ladder") -> Stage:
        """A stage from its JSON entry (wrong types become ``None``; out-of-range numbers too, noted in
        ``problems`` as `medpfl_app.reports.fields.checked` does)."""
        values = mapping(values)
        conv = mapping(values.get("convergence"))

        def count(name: str) -> int | None:
            return checked_integer(values.get(name), name, problems, where=where)

        def loss(name: str) -> float | None:
            return checked(conv.get(name), name, problems, where=f"{where}.convergence")

        return cls(
            stage=text(values.get("stage")) or "unnamed stage",
            attack=text(values.get("attack")),
            images=count("images"),
            local_steps=count("local_steps"),
            update_mode=text(values.get("update_mode")),
            iterations=count("iterations"),
            restarts=count("restarts"),
            wall_time_s=checked(values.get("wall_time_s"), "wall_time_s", problems, where=where),
            stop_reason=text(values.get("stop_reason")),
            whole_update=flag(values.get("whole_update")),
            convergence=text(conv.get("status")),
            initial_loss=loss("initial_loss"),
            final_loss=loss("final_loss"),
            reduction=loss("reduction"),
        )

    def problem_text(self) -> str:
        """What was attacked: images × local steps, update mode, whole update or a reduced problem."""
        parts = []
        if self.images is not None:
            parts.append(f"{self.images} image{'s' if self.images != 1 else ''}")
        if self.local_steps is not None:
            parts.append(f"{self.local_steps} local step{'s' if self.local_steps != 1 else ''}")
        problem = " × ".join(parts) or "problem size not recorded"
        if self.update_mode:
            problem += f", {self.update_mode} update"
        if self.whole_update is True:
            problem += ", whole update"
        elif self.whole_update is False:
            problem += ", reduced problem (not the whole update)"
        return problem

    def describe(self) -> str:
        """One line: stage, attack, problem, spent budget, matching loss start → end, convergence, stop reason."""
        spent = (
            f"{fmt(self.iterations, 'd', '?')} iterations × {fmt(self.restarts, 'd', '?')} "
            f"restart{'s' if self.restarts != 1 else ''}, {fmt(self.wall_time_s, '.1f', '?')} s"
        )
        loss = f"matching loss {fmt(self.initial_loss)} → {fmt(self.final_loss)}"
        return (
            f"{self.stage}: {self.attack or 'attack not recorded'} on {self.problem_text()}; {spent}; {loss}; "
            f"{(self.convergence or 'convergence not recorded').replace('_', ' ')}; "
            f"stopped: {self.stop_reason or 'not recorded'}"
        )


def total(values: Sequence[float | int | None]) -> float | None:
    """The sum of the values present, or ``None`` when none is."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None
