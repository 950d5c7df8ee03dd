"""A differentiable Adam step over a parameter dict, for unrolling the site's local Adam training."""

from __future__ import annotations

import torch

from medpfl_app.attacks.update_modes import Params


def adam_step(
    params: Params,
    gradient: Params,
    m: Params,
    v: Params,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Params:
    """One Adam step on every parameter, written out so that it stays differentiable (``m`` and ``v`` are updated)."""
    out = {}
    for n in params:
        m[n] = betas[0] * m[n] + (1 - betas[0]) * gradient[n]
        v[n] = betas[1] * v[n] + (1 - betas[1]) * gradient[n] ** 2
        m_hat = m[n] / (1 - betas[0] ** step)
        v_hat = v[n] / (1 - betas[1] ** step)
        # The tiny offset keeps sqrt differentiable where a gradient entry is exactly zero.
        out[n] = params[n] - lr * m_hat / (torch.sqrt(v_hat + 1e-30) + 1e-8)
    return out
