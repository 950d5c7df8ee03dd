"""The exact tail of a Poisson-binomial count: the p-value of identification against per-image chances."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medpfl_app.errors import MedPFLError


def poisson_binomial_tail(probabilities: Sequence[float] | torch.Tensor, hits: int) -> float:
    """``P(X >= hits)`` for ``X`` the number of successes of independent Bernoulli trials with ``probabilities``.

    Exact, by dynamic programming over the trials (``O(N²)``).

    Example:
        >>> round(poisson_binomial_tail([0.5, 0.5], 1), 4)
        0.75
    """
    probs = [float(p) for p in probabilities]
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise MedPFLError(f"chance probabilities must lie in [0, 1], got {probs}", fix="pass probabilities")
    if hits <= 0:
        return 1.0
    if hits > len(probs):
        return 0.0
    distribution = torch.zeros(len(probs) + 1, dtype=torch.float64)  # distribution[k] = P(k successes so far)
    distribution[0] = 1.0
    for p in probs:
        shifted = torch.zeros_like(distribution)
        shifted[1:] = distribution[:-1] * p
        distribution = distribution * (1.0 - p) + shifted
    return float(min(1.0, float(distribution[hits:].sum())))
