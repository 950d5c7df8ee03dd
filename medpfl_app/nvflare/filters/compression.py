"""Compression result filters (heuristics): top-k pruning, uniform n-bit and sign quantization.

All three act on the weight difference: on a WEIGHTS result they need the global model recorded by
`medpfl_app.nvflare.filters.reference.GlobalModelRecorder`, otherwise they fail closed.
"""

from __future__ import annotations

from medpfl_app.defenses.quantize import SignQuantization, UniformQuantization
from medpfl_app.defenses.sparsify import TopKPrune
from medpfl_app.nvflare.filters.defense_filter import DefenseFilter, seeded_rng


class TopKFilter(DefenseFilter):
    """Keep exactly ⌈fraction·n⌉ entries of the update by magnitude (per tensor or global), zero the rest.

    Args:
        fraction: Share kept, in (0, 1].
        scope: ``"per_tensor"`` or ``"global"``.

    Notes:
        Heuristic (no formal guarantee): broken by adaptive attacks even at 99 % sparsity.
    """

    def __init__(self, fraction: float, scope: str = "per_tensor") -> None:
        super().__init__()
        self.fraction = fraction
        self.scope = scope
        self._defense = TopKPrune(fraction=fraction, scope=scope)  # type: ignore[arg-type]


class UniformQuantizationFilter(DefenseFilter):
    """Quantize each float tensor of the update to 2^bits levels with (by default) unbiased stochastic rounding.

    Args:
        bits: Bits per entry, int in [1, 32].
        stochastic: Stochastic (unbiased) or nearest rounding.
        seed: Tests only.

    Notes:
        Heuristic (no formal guarantee).
    """

    def __init__(self, bits: int, stochastic: bool = True, seed: int | None = None) -> None:
        super().__init__()
        self.bits = bits
        self.stochastic = stochastic
        self.seed = seed
        self._defense = UniformQuantization(bits=bits, stochastic=stochastic)
        self._rng = seeded_rng(seed, type(self).__name__)


class SignQuantizationFilter(DefenseFilter):
    """Replace each entry of the update by ±scale (stochastic, unbiased; or sign × mean|x|).

    Args:
        stochastic: Stochastic unbiased sign (True) or deterministic sign (False).
        seed: Tests only.

    Notes:
        Heuristic (no formal guarantee).
    """

    def __init__(self, stochastic: bool = True, seed: int | None = None) -> None:
        super().__init__()
        self.stochastic = stochastic
        self.seed = seed
        self._defense = SignQuantization(stochastic=stochastic)
        self._rng = seeded_rng(seed, type(self).__name__)
