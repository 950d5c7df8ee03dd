"""Empirical ε lower bound of ONE DP-SGD step, through Opacus' real per-sample clipping, noise and Poisson sampling.

Two sessions are built with `medpfl_app.defenses.dp_sgd.make_private` (the code path a site's training uses) on a
tiny synthetic regression: one over base samples only, one over the same samples plus a canary. Each trial resets
the weights to zero, takes one optimizer step of one session chosen at random, and scores the step along the
canary's gradient direction. Nothing here sees patient data. Separate from `epsilon_audit` because it needs torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medpfl_app.defenses.dp_sgd import DPSGDConfig, DPSGDSession, make_private
from medpfl_app.defenses.epsilon_audit import MAX_TRIALS, EmpiricalEpsilon, epsilon_lower_bound
from medpfl_app.errors import MedPFLError

#: The canary's input along its own feature and its regression target: its gradient, 2·target·scale at zero
#: weights, is far above any sensible max_grad_norm, so clipping leaves exactly C (the worst case clipping allows).
CANARY_SCALE = 100.0
CANARY_TARGET = 100.0


def per_step_epsilon(config: DPSGDConfig, sample_rate: float) -> float:
    """The configured accountant's ε for one DP-SGD step at ``sample_rate`` (what one step claims)."""
    accountant = create_accountant(config.accountant)
    accountant.history = [(float(config.noise_multiplier), float(sample_rate), 1)]
    return float(accountant.get_epsilon(delta=config.delta))


def _session(features: np.ndarray, targets: np.ndarray, config: DPSGDConfig, batch_size: int) -> DPSGDSession:
    data = TensorDataset(torch.from_numpy(features).float(), torch.from_numpy(targets).float())
    model = nn.Linear(features.shape[1], 1, bias=False)  # no bias: only the canary touches its own feature's weight
    with torch.no_grad():
        model.weight.zero_()
    return make_private(
        model, lambda params: torch.optim.SGD(params, lr=1.0), DataLoader(data, batch_size=batch_size), config
    )


def _batches(session: DPSGDSession) -> Iterator[Any]:
    while True:  # Poisson batches, epoch after epoch
        yield from session.data_loader


def _released_sum(session: DPSGDSession, batch: Any) -> float:
    """One real DP-SGD step from zero weights; returns (Σ clipped grads + noise) along the canary feature."""
    weight = next(session.module.parameters())  # the linear model's only parameter
    with torch.no_grad():
        weight.zero_()
    inputs, targets = batch
    session.optimizer.zero_grad()
    loss = nn.functional.mse_loss(session.module(inputs).squeeze(-1), targets)
    loss.backward()
    session.optimizer.step()
    # θ ← θ − lr · (Σ clipped + noise) / expected batch size with lr 1; the canary's clipped gradient is −C·e_last,
    # so the last weight times the (public) expected batch size is C·[canary drawn] − noise
    return float(weight.detach()[0, -1]) * float(session.optimizer.expected_batch_size)


def audit_dp_sgd(
    config: DPSGDConfig,
    *,
    trials: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    num_features: int = 16,
    batches_per_epoch: int = 2,
    batch_size: int = 4,
) -> EmpiricalEpsilon:
    """ε̂ of one DP-SGD step of ``config`` (Opacus' clipping, noise and Poisson sampling), vs its per-step ε.

    Base samples have a zero last feature; the canary is that feature alone (``CANARY_SCALE``) with a large target,
    so only its clipped gradient (norm exactly ``max_grad_norm``) moves the last weight, and only when Poisson
    sampling draws it. The score of a trial is the released noisy gradient sum along that weight.

    Args:
        config: The DP-SGD configuration audited (its noise multiplier, clip norm, δ and accountant).
        trials: Steps simulated (half on the dataset with the canary, at random), >= 4.
        seed: Seed of the synthetic data, the trial order and torch's generator (Opacus' noise, sampling).
        confidence: Confidence of ε̂.
        num_features: Input features of the linear model (the last one belongs to the canary).
        batches_per_epoch: 1 / q, the Poisson sample rate's inverse (set it from the site's own q to audit the
            site's configuration): there are ``batches_per_epoch · batch_size − 1`` base samples, so q is the same
            with the canary added.
        batch_size: The loader's batch size (Opacus turns it into Poisson sampling at rate q).
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or not 4 <= trials <= MAX_TRIALS:
        raise MedPFLError(f"audit_dp_sgd: trials must be an int in [4, {MAX_TRIALS}], got {trials!r}", fix="e.g. 1000")
    if isinstance(batches_per_epoch, bool) or not isinstance(batches_per_epoch, int) or batches_per_epoch < 1:
        raise MedPFLError(
            f"audit_dp_sgd: batches_per_epoch must be an int >= 1, got {batches_per_epoch!r}", fix="e.g. 2"
        )
    num_samples = batches_per_epoch * batch_size - 1
    rng = np.random.default_rng(seed)
    features = np.zeros((num_samples + 1, num_features))
    features[:num_samples, :-1] = rng.normal(size=(num_samples, num_features - 1))
    features[num_samples, -1] = CANARY_SCALE
    targets = np.append(rng.normal(size=num_samples), CANARY_TARGET)
    # a forked RNG: Opacus' noise and sampling draw from torch's global generator, which training must not see moved
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        sessions = [_session(features[:num_samples], targets[:num_samples], config, batch_size)]
        sessions.append(_session(features, targets, config, batch_size))
        rates = {float(getattr(session.data_loader, "sample_rate", 0.0)) for session in sessions}
        if len(rates) != 1:
            raise MedPFLError(
                f"audit_dp_sgd: the sample rate differs with and without the canary ({sorted(rates)})",
                fix="report this: Opacus computes the sample rate differently than this audit expects",
            )
        streams = [_batches(session) for session in sessions]
        inserted = rng.permutation(trials) < trials // 2
        scores = np.array([_released_sum(sessions[int(i)], next(streams[int(i)])) for i in inserted])
    epsilon = epsilon_lower_bound(scores[inserted], scores[~inserted], delta=config.delta, confidence=confidence)
    sample_rate = rates.pop()
    method = (
        f"one Opacus DP-SGD step per trial ({trials} trials, seed {seed}) via make_private, linear model with "
        f"{num_features} inputs, {num_samples} synthetic samples, Poisson rate {sample_rate:g}; canary sample "
        "inserted/withheld at random, gradient clipped to max_grad_norm; score = noisy gradient sum along the "
        "canary's weight; threshold chosen on one half, one-sided Clopper-Pearson bounds on the other"
    )
    return EmpiricalEpsilon(
        epsilon_lower=epsilon,
        confidence=float(confidence),
        trials=trials,
        delta=float(config.delta),
        claimed_epsilon=per_step_epsilon(config, sample_rate),
        method=method,
    )
