"""Quantization of the update: uniform n-bit and sign, with unbiased stochastic rounding."""

from __future__ import annotations

import dataclasses

import numpy as np

from medpfl_app.defenses.base import DEFENSES, Defense, Guarantee
from medpfl_app.defenses.update_arrays import DefenseOutput, Seed, Update, float_keys, map_floats, require


@DEFENSES.register("uniform_quantization")
@dataclasses.dataclass(frozen=True)
class UniformQuantization(Defense):
    """Quantize each float tensor to 2^bits levels spanning [min, max], returned de-quantized in its own dtype.

    With ``stochastic=True`` a value between two levels rounds up with probability equal to its distance from the
    lower level, so E[q(x)] = x and |q(x) − x| < Δ = (max − min) / (2^bits − 1); with ``stochastic=False`` it
    rounds to nearest, |q(x) − x| ≤ Δ / 2.

    Args:
        bits: Bits per entry, an int in [1, 32].
        stochastic: Unbiased stochastic rounding (True) or round-to-nearest (False).

    Notes:
        Heuristic (no formal guarantee): quantized gradients are still inverted (e.g. ROG); each tensor's min and
        max are released exactly.
    """

    key = "uniform_quantization"
    guarantee = Guarantee.HEURISTIC
    needs_difference = True
    bits: int
    stochastic: bool = True

    def __post_init__(self) -> None:
        ok = isinstance(self.bits, int) and not isinstance(self.bits, bool)
        require(
            ok and 1 <= self.bits <= 32,
            f"uniform_quantization: bits must be an int in [1, 32], got {self.bits!r}",
            "set bits to e.g. 8 (256 levels) or 4",
        )
        require(
            isinstance(self.stochastic, bool),
            "uniform_quantization: stochastic must be true or false",
            "set stochastic to a boolean",
        )

    def _apply(self, update: Update, rng: np.random.Generator) -> DefenseOutput:
        intervals = float(2**self.bits - 1)

        def quantize(_key: str, x: np.ndarray) -> np.ndarray:
            if x.size == 0:
                return x
            lo, hi = float(x.min()), float(x.max())
            if hi == lo:
                return x
            step = (hi - lo) / intervals
            t = (x - lo) / step
            if self.stochastic:
                floor = np.floor(t)
                t = floor + (rng.random(size=x.shape) < (t - floor))
            else:
                t = np.rint(t)
            return lo + np.clip(t, 0, intervals) * step

        return DefenseOutput(
            map_floats(update, quantize),
            {"bits": self.bits, "levels": int(intervals) + 1, "quantized_tensors": len(float_keys(update))},
        )


@DEFENSES.register("sign_quantization")
@dataclasses.dataclass(frozen=True)
class SignQuantization(Defense):
    """Replace each float entry by ±s, one scale s per tensor.

    With ``stochastic=True``, s = max|x| and +s is chosen with probability (1 + x/s)/2, so E[q(x)] = x
    (unbiased; |q(x) − x| ≤ 2s). With ``stochastic=False``, q(x) = sign(x) · mean|x| (signSGD with a scale).

    Args:
        stochastic: Unbiased stochastic sign (True) or deterministic sign (False).

    Notes:
        Heuristic (no formal guarantee): the sign pattern carries most of the gradient direction that inversion
        attacks match.
    """

    key = "sign_quantization"
    guarantee = Guarantee.HEURISTIC
    needs_difference = True
    stochastic: bool = True

    def __post_init__(self) -> None:
        require(
            isinstance(self.stochastic, bool),
            "sign_quantization: stochastic must be true or false",
            "set stochastic to a boolean",
        )

    def _apply(self, update: Update, rng: np.random.Generator) -> DefenseOutput:
        def quantize(_key: str, x: np.ndarray) -> np.ndarray:
            if x.size == 0:
                return x
            if not self.stochastic:
                scaled: np.ndarray = np.sign(x) * float(np.mean(np.abs(x)))
                return scaled
            scale = float(np.max(np.abs(x)))
            if scale == 0:
                return x
            up = rng.random(size=x.shape) < (1.0 + x / scale) / 2.0
            return np.where(up, scale, -scale)

        return DefenseOutput(map_floats(update, quantize), {"quantized_tensors": len(float_keys(update))})


def uniform_quantization(update: Update, bits: int, *, stochastic: bool = True, seed: Seed = None) -> DefenseOutput:
    """Functional form of `UniformQuantization`."""
    return UniformQuantization(bits=bits, stochastic=stochastic).apply(update, seed=seed)


def sign_quantization(update: Update, *, stochastic: bool = True, seed: Seed = None) -> DefenseOutput:
    """Functional form of `SignQuantization`."""
    return SignQuantization(stochastic=stochastic).apply(update, seed=seed)
