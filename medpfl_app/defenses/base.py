"""The defense contract, the honest guarantee labels and the name → defense registry."""

from __future__ import annotations

import abc
import dataclasses
from enum import StrEnum
from typing import Any, ClassVar

from medpfl_app.defenses.update_arrays import DefenseOutput, Seed, Update, check_update, make_rng
from medpfl_app.errors import MedPFLError
from medpfl_app.registry import Registry


class Guarantee(StrEnum):
    """What a defense formally promises; anything without an accountant is a heuristic."""

    CLIENT_DP = "(ε, δ)-DP at client level"
    SAMPLE_DP = "(ε, δ)-DP at sample level"
    HEURISTIC = "heuristic (no formal guarantee)"


@dataclasses.dataclass(frozen=True)
class Defense(abc.ABC):
    """Base of all update defenses: a frozen, validated configuration that maps an update to a new one.

    Subclasses set ``key`` (registry name) and ``guarantee``, validate their fields in ``__post_init__`` and
    implement `_apply`. `apply` checks the update first, so every defense refuses NaN/Inf and non-numeric payloads
    the same way.
    """

    key: ClassVar[str] = ""
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    #: False when the defense commutes with adding a public constant (additive noise, dropping keys). A defense that
    #: does not (clipping, pruning, quantization) must see the weight *difference*, never full weights.
    needs_difference: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        """The configuration as plain JSON values."""
        return dataclasses.asdict(self)

    def apply(self, update: Update, *, seed: Seed = None) -> DefenseOutput:
        """Defend ``update``; returns a new dict (the input is never modified) and a JSON-able record.

        Args:
            update: Parameter name → NumPy array or torch tensor. Integer/bool entries are copied unchanged.
            seed: An int, a `numpy.random.Generator` (advanced in place) or None for fresh OS entropy.

        Raises:
            MedPFLError: non-numeric entries or NaN/Inf in a float entry.
        """
        check_update(update, defense=self.key)
        return self._apply(update, make_rng(seed))

    @abc.abstractmethod
    def _apply(self, update: Update, rng: Any) -> DefenseOutput:
        """The defense itself, on an already checked update."""


DEFENSES: Registry[type[Defense]] = Registry("defense")


def build_defense(key: str, **params: Any) -> Defense:
    """Build the defense registered as ``key`` from keyword parameters (validated at once)."""
    cls = DEFENSES.get(key)
    try:
        return cls(**params)
    except TypeError as error:
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        raise MedPFLError(f"bad parameters for defense {key!r}: {error}", fix=f"use only: {fields}") from None
