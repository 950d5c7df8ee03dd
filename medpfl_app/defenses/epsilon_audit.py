"""Empirical ε lower bounds: statistical evidence against a claimed (ε, δ), from canaries on synthetic updates.

An (ε, δ)-DP mechanism M satisfies P[M(D) ∈ S] ≤ e^ε · P[M(D') ∈ S] + δ for neighbouring D, D' and every event S.
A distinguishing test "was the canary in?" turns this into ε ≥ ln((TPR − δ) / FPR) for the test's true and false
positive rates (Jagielski et al. 2020; Nasr et al. 2021; Andrew et al. 2023 for canary clients in FL). With
Clopper–Pearson bounds on the rates, the result is a lower bound valid at the stated confidence: it can DISPROVE a
claimed ε (the mechanism, filter or accountant is wrong) but never prove it; a small ε̂ only means this test,
with this many trials, found nothing.

`audit_defense` runs a site's actual `Defense` object (``Defense.apply``, the code path the NVFlare filter uses) on
a synthetic, seeded update: never on patient data. The result is an `EmpiricalEpsilon` contract (JSON, schema
version). NumPy and SciPy only; the claimed ε comes from the accountant (`epsilon_per_release`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from medpfl_app.defenses.accountant import epsilon_per_release
from medpfl_app.defenses.base import Defense, Guarantee
from medpfl_app.errors import MedPFLError

SCHEMA = "medpfl-empirical-epsilon/1"
#: Most trials an `EmpiricalEpsilon` may claim (a bound on what an untrusted site can send).
MAX_TRIALS = 10_000_000
MAX_METHOD_CHARS = 500


def _check_probability(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise MedPFLError(f"{name} must be a number in (0, 1), got {value!r}", fix=f"pass e.g. {name}=0.95")
    return float(value)


def cp_lower(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound at level 1 − ``alpha`` (0 where there are no successes)."""
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    bound = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.asarray(np.where(k > 0, bound, 0.0), dtype=np.float64)


def cp_upper(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson upper bound at level 1 − ``alpha`` (1 where every trial succeeded)."""
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    bound = stats.beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1.0))
    return np.asarray(np.where(k < n, bound, 1.0), dtype=np.float64)


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) interval for a binomial proportion, ``(1 − confidence) / 2`` per tail."""
    alpha = 1.0 - _check_probability(confidence, "confidence")
    if not 0 <= successes <= trials or trials < 1:
        raise MedPFLError(f"need 0 <= successes <= trials, trials >= 1; got {successes}/{trials}", fix="count again")
    return float(cp_lower(successes, trials, alpha / 2)), float(cp_upper(successes, trials, alpha / 2))


def max_certifiable_epsilon(trials: int, confidence: float) -> float:
    """The largest ε̂ any test with ``trials`` trials can certify at ``confidence`` (a plausibility cap).

    Even with no false positives among m ≤ trials negatives, the upper bound on FPR is 1 − (α/2)^(1/m) ≥ x / (1 + x)
    with x = ln(2/α) / m, so ε̂ ≤ ln(1 + trials / ln(2/α)).
    """
    alpha = 1.0 - _check_probability(confidence, "confidence")
    return math.log1p(trials / math.log(2.0 / alpha))


def _scores(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2 or not np.isfinite(array).all():
        raise MedPFLError(
            f"{name} must be a 1-D array of at least 2 finite scores, got shape {array.shape}",
            fix="pass one distinguishing score per trial",
        )
    return array


def _bounds(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray, delta: float, alpha: float) -> np.ndarray:
    """ε bounds, shape (4, thresholds): the two test directions × the event and its complement.

    Row 0: guess "in" if score ≥ t, ln((TPR−δ)/FPR); row 1: its complement, ln((TNR−δ)/FNR); rows 2, 3: the same
    for the guess "in" if score < t (adjacency is symmetric, so either side may play D).
    """
    n_pos, n_neg = pos.size, neg.size
    tp = n_pos - np.searchsorted(np.sort(pos), thresholds, side="left")
    fp = n_neg - np.searchsorted(np.sort(neg), thresholds, side="left")
    fn, tn = n_pos - tp, n_neg - fp
    pairs = ((tp, n_pos, fp, n_neg), (tn, n_neg, fn, n_pos), (fn, n_pos, tn, n_neg), (fp, n_neg, tp, n_pos))
    out = np.empty((4, thresholds.size))
    for row, (k_num, n_num, k_den, n_den) in enumerate(pairs):
        numerator = cp_lower(k_num, n_num, alpha / 2) - delta
        with np.errstate(divide="ignore", invalid="ignore"):
            out[row] = np.where(numerator > 0, np.log(numerator / cp_upper(k_den, n_den, alpha / 2)), 0.0)
    return out


def _candidate_thresholds(pooled: np.ndarray, limit: int) -> np.ndarray:
    """Midpoints between consecutive distinct scores (a gap's middle generalises best), at most ``limit`` of them."""
    values: np.ndarray = np.unique(pooled)
    if values.size < 2:
        return values
    midpoints: np.ndarray = (values[:-1] + values[1:]) / 2
    if midpoints.size > limit:
        midpoints = midpoints[np.unique(np.linspace(0, midpoints.size - 1, max(2, limit)).round().astype(int))]
    return midpoints


def epsilon_lower_bound(
    scores_with_canary: Any, scores_without: Any, *, delta: float, confidence: float = 0.95, max_thresholds: int = 4096
) -> float:
    """A lower bound on ε, valid with probability ≥ ``confidence``, from a canary test's scores.

    Thresholds are chosen on a SEPARATE half, not corrected by Bonferroni: the first half of each score array
    selects the threshold t, the direction (guess "canary in" if score ≥ t, or < t) and the event (the guess or its
    complement) with the largest bound; the second half, untouched by that choice, gives the bound
    ln((TPR_low − δ) / FPR_high) of that one test, where TPR_low and FPR_high are one-sided Clopper–Pearson bounds
    at level 1 − (1 − confidence)/2 each (a union bound makes them hold jointly at ``confidence``).

    Args:
        scores_with_canary: One score per trial where the canary was inserted (higher = "in", usually).
        scores_without: One score per trial where it was withheld.
        delta: The δ of the claim being tested, in (0, 1).
        confidence: Confidence of the bound, in (0, 1).
        max_thresholds: Most candidate thresholds (midpoints between the selection half's pooled scores).

    Returns:
        ε̂ ≥ 0 (0 when the test found no evidence).
    """
    pos, neg = _scores(scores_with_canary, "scores_with_canary"), _scores(scores_without, "scores_without")
    delta = _check_probability(delta, "delta")
    alpha = 1.0 - _check_probability(confidence, "confidence")
    pos_select, pos_test = pos[: pos.size // 2], pos[pos.size // 2 :]
    neg_select, neg_test = neg[: neg.size // 2], neg[neg.size // 2 :]
    thresholds = _candidate_thresholds(np.concatenate([pos_select, neg_select]), max_thresholds)
    selection = _bounds(pos_select, neg_select, thresholds, delta, alpha)
    row = int(np.argmax(selection.max(axis=1)))
    # among equally good thresholds take the middle one: the widest margin to both classes on unseen scores
    tied = np.flatnonzero(selection[row] >= selection[row].max() - 1e-12)
    column = int(tied[tied.size // 2])
    held_out = _bounds(pos_test, neg_test, thresholds[column : column + 1], delta, alpha)
    return max(0.0, float(held_out[row, 0]))


@dataclasses.dataclass(frozen=True)
class EmpiricalEpsilon:
    """An empirical ε lower bound next to the formal ε it tests (one release).

    Attributes:
        epsilon_lower: ε̂, valid with probability ≥ ``confidence``.
        confidence: Confidence of ε̂.
        trials: Canary trials behind ε̂ (inserted + withheld).
        delta: The δ of both ε̂ and the claim.
        claimed_epsilon: The accountant's ε for one release of the audited configuration.
        method: How ε̂ was obtained (free text for people; not parsed).
    """

    epsilon_lower: float
    confidence: float
    trials: int
    delta: float
    claimed_epsilon: float
    method: str

    def __post_init__(self) -> None:
        for name in ("epsilon_lower", "claimed_epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise MedPFLError(f"EmpiricalEpsilon: {name} must be a finite number >= 0, got {value!r}", fix=_FIX)
        _check_probability(self.confidence, "confidence")
        _check_probability(self.delta, "delta")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or not 4 <= self.trials <= MAX_TRIALS:
            raise MedPFLError(
                f"EmpiricalEpsilon: trials must be an int in [4, {MAX_TRIALS}], got {self.trials!r}", fix=_FIX
            )
        if not isinstance(self.method, str) or not 0 < len(self.method) <= MAX_METHOD_CHARS:
            raise MedPFLError(f"EmpiricalEpsilon: method must be a text of 1-{MAX_METHOD_CHARS} characters", fix=_FIX)
        cap = max_certifiable_epsilon(self.trials, self.confidence)
        if self.epsilon_lower > cap + 1e-9:
            raise MedPFLError(
                f"EmpiricalEpsilon: epsilon_lower {self.epsilon_lower:g} exceeds {cap:.3f}, the most {self.trials} "
                f"trials can certify at confidence {self.confidence:g}",
                fix=_FIX,
            )

    @property
    def exceeds_claim(self) -> bool:
        """True when ε̂ > the claimed ε: at ``confidence``, the claim is false (mechanism or accounting wrong)."""
        return self.epsilon_lower > self.claimed_epsilon

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> EmpiricalEpsilon:
        """Read and check an `EmpiricalEpsilon` (e.g. from an untrusted site's meta).

        Raises:
            MedPFLError: not a mapping, another schema, missing or unknown keys, or a value of the wrong type or
                out of range (including ε̂ above what its trials can certify).
        """
        if not isinstance(data, Mapping):
            raise MedPFLError(f"epsilon_empirical must be a JSON object, got {type(data).__name__}", fix=_FIX)
        if data.get("schema") != SCHEMA:
            raise MedPFLError(
                f"epsilon_empirical has schema {str(data.get('schema'))[:60]!r}, not {SCHEMA!r}", fix=_FIX
            )
        expected = {"schema", *(field.name for field in dataclasses.fields(cls))}
        if set(data) != expected:
            unknown, missing = sorted(map(str, set(data) - expected)), sorted(expected - set(data))
            raise MedPFLError(f"epsilon_empirical: unknown keys {unknown[:5]}, missing keys {missing}", fix=_FIX)
        return cls(**{key: value for key, value in data.items() if key != "schema"})


_FIX = "send the EmpiricalEpsilon.to_json() of medpfl_app.defenses.epsilon_audit, unchanged"


def _unit_update(rng: np.random.Generator, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    flat = rng.normal(size=sum(math.prod(shape) for shape in shapes.values()))
    flat /= np.linalg.norm(flat)
    out, start = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape)
        out[key] = flat[start : start + size].reshape(shape)
        start += size
    return out


def _client_dp_claim(defense: Defense) -> tuple[float, float]:
    clip_norm, noise_multiplier = getattr(defense, "clip_norm", None), getattr(defense, "noise_multiplier", None)
    if defense.guarantee is not Guarantee.CLIENT_DP or clip_norm is None or noise_multiplier is None:
        raise MedPFLError(
            f"audit_defense: {type(defense).__name__} makes no client-level (ε, δ) claim to test",
            fix="audit a client-level DP defense (clip_norm + noise_multiplier, e.g. ClientDP)",
        )
    return float(clip_norm), float(noise_multiplier)


def audit_defense(
    defense: Defense,
    *,
    trials: int = 4000,
    seed: int | None = 0,
    delta: float = 1e-5,
    confidence: float = 0.95,
    num_params: int = 1024,
    base_norm_fraction: float = 0.1,
) -> EmpiricalEpsilon:
    """ε̂ of one release of a client-level DP ``defense``, from canaries on a synthetic update.

    Per trial the defense (``defense.apply``, its own clipping and noise) receives a synthetic base update b
    (seeded, norm ``base_norm_fraction`` × C) with, at random for half of the trials, a canary c added: norm C (the
    clip norm, the largest change one site can make after clipping) in a random direction u. Clipping is a
    projection onto a ball, so ‖clip(b + c) − clip(b)‖ ≤ C: the pair is within the claim's sensitivity. The score
    is ⟨defended update, u⟩; `epsilon_lower_bound` turns the scores into ε̂.

    Args:
        defense: A client-level DP defense with ``clip_norm`` and ``noise_multiplier`` (e.g. `ClientDP`).
        trials: Releases simulated (half with the canary), >= 4.
        seed: Seed of the synthetic data, the canary and the defense's noise in the audit (never the site's own
            noise generator); None for fresh entropy.
        delta: δ of the claim (the claimed ε is `epsilon_per_release` of the noise multiplier at this δ).
        confidence: Confidence of ε̂.
        num_params: Size of the synthetic update (one float64 entry, "weight").
        base_norm_fraction: ‖b‖ / C, in [0, 1).
    """
    clip_norm, noise_multiplier = _client_dp_claim(defense)
    if isinstance(trials, bool) or not isinstance(trials, int) or not 4 <= trials <= MAX_TRIALS:
        raise MedPFLError(f"audit_defense: trials must be an int in [4, {MAX_TRIALS}], got {trials!r}", fix="e.g. 4000")
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 2:
        raise MedPFLError(f"audit_defense: num_params must be an int >= 2, got {num_params!r}", fix="e.g. 1024")
    if not 0 <= base_norm_fraction < 1:
        raise MedPFLError(
            f"audit_defense: base_norm_fraction must be in [0, 1), got {base_norm_fraction!r}", fix="e.g. 0.1"
        )
    data_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    shapes = {"weight": (num_params,)}  # one entry: per-entry overhead of `apply` would dominate the audit's time
    base = {k: v * base_norm_fraction * clip_norm for k, v in _unit_update(data_rng, shapes).items()}
    direction = _unit_update(data_rng, shapes)
    with_canary = {key: base[key] + clip_norm * direction[key] for key in shapes}
    inserted = data_rng.permutation(trials) < trials // 2
    released = np.empty((trials, num_params))
    for trial in range(trials):  # one release per call: the defense's own code path, as the filter runs it
        output, _record = defense.apply(with_canary if inserted[trial] else base, seed=noise_rng)
        released[trial] = np.concatenate([np.asarray(output[key], dtype=np.float64).ravel() for key in shapes])
    scores = released @ np.concatenate([direction[key].ravel() for key in shapes])
    epsilon = epsilon_lower_bound(scores[inserted], scores[~inserted], delta=delta, confidence=confidence)
    method = (
        f"canary inserted/withheld at random ({trials} releases of {type(defense).__name__}.apply, seed {seed}); "
        f"canary norm = clip norm {clip_norm:g} in a random direction, synthetic base update norm "
        f"{base_norm_fraction * clip_norm:g}, {num_params} parameters; score = projection on the canary direction; "
        "threshold chosen on one half, one-sided Clopper-Pearson bounds on the other"
    )
    return EmpiricalEpsilon(
        epsilon_lower=epsilon,
        confidence=float(confidence),
        trials=trials,
        delta=float(delta),
        claimed_epsilon=epsilon_per_release(noise_multiplier, delta),
        method=method,
    )
