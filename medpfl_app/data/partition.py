"""Split sample indices across federated sites: IID (stratified) or non-IID (Dirichlet over labels)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from medpfl_app.errors import MedPFLError
from medpfl_app.registry import Registry

Partitioner = Callable[[np.ndarray, int, np.random.Generator, float], list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partition scheme")


def partition_indices(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    *,
    scheme: Literal["iid", "dirichlet"] | str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_per_site: int = 1,
) -> list[np.ndarray]:
    """Assign every sample to exactly one site.

    ``"iid"`` deals each class's shuffled samples round-robin, so site sizes and per-class counts differ by at
    most one. ``"dirichlet"`` draws, per class, site proportions from Dir(alpha·1) (Hsu et al., 2019): small
    ``alpha`` gives each site few classes; large ``alpha`` approaches IID. Sites left with fewer than
    ``min_per_site`` samples then take samples from the largest site.

    Args:
        labels: Integer label of each sample.
        num_sites: Number of sites.
        scheme: ``"iid"`` or ``"dirichlet"``.
        alpha: Dirichlet concentration (``"dirichlet"`` only), > 0.
        seed: Random seed; the same inputs and seed give the same partition.
        min_per_site: Fewest samples any site may get.

    Returns:
        One sorted int64 index array per site; together they are disjoint and cover ``range(len(labels))``.

    Raises:
        MedPFLError: On an unknown scheme, non-integer labels, ``num_sites < 1``, ``alpha <= 0``, or fewer samples
            than ``num_sites * min_per_site``.
    """
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise MedPFLError(
            f"labels must be a 1-D sequence of integers, got an array of shape {array.shape} and type {array.dtype}",
            fix="pass one integer class label per sample",
        )
    for name, value, minimum in (("num_sites", num_sites, 1), ("min_per_site", min_per_site, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise MedPFLError(f"{name} must be an integer >= {minimum}, got {value!r}", fix=f"set {name} >= {minimum}")
    if not alpha > 0:
        raise MedPFLError(
            f"Dirichlet alpha must be > 0, got {alpha}", fix="use e.g. alpha=0.5 (skewed) or 100 (near IID)"
        )
    if array.size < num_sites * min_per_site:
        raise MedPFLError(
            f"cannot give {num_sites} sites at least {min_per_site} sample(s) each from {array.size} samples",
            fix=f"use at most {array.size // max(min_per_site, 1)} sites, lower min_per_site, or add samples",
        )
    partitioner = PARTITIONERS.get(scheme)
    parts = partitioner(array.astype(np.int64), int(num_sites), np.random.default_rng(seed), float(alpha))
    parts = _ensure_minimum(parts, array, int(min_per_site))
    return [np.sort(part).astype(np.int64) for part in parts]


@PARTITIONERS.register("iid")
def _iid(labels: np.ndarray, num_sites: int, rng: np.random.Generator, alpha: float) -> list[np.ndarray]:
    del alpha
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)] or [np.empty(0, np.int64)]
    )
    # Rotating the start site per draw keeps site sizes within one of each other.
    start = int(rng.integers(num_sites)) if num_sites else 0
    owner = (np.arange(order.size) + start) % num_sites
    return [order[owner == site] for site in range(num_sites)]


@PARTITIONERS.register("dirichlet")
def _dirichlet(labels: np.ndarray, num_sites: int, rng: np.random.Generator, alpha: float) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_sites, alpha))
        cuts = np.round(np.cumsum(proportions)[:-1] * members.size).astype(int)
        for site, chunk in enumerate(np.split(members, cuts)):
            parts[site].append(chunk)
    return [np.concatenate(chunks) if chunks else np.empty(0, np.int64) for chunks in parts]


def _ensure_minimum(parts: list[np.ndarray], labels: np.ndarray, minimum: int) -> list[np.ndarray]:
    """Move samples from the largest site to sites below ``minimum``, taking that site's most common label."""
    parts = [part.astype(np.int64) for part in parts]
    while True:
        sizes = [part.size for part in parts]
        short = [site for site, size in enumerate(sizes) if size < minimum]
        if not short:
            return parts
        donor = int(np.argmax(sizes))
        donor_labels = labels[parts[donor]]
        common = np.bincount(donor_labels).argmax()
        position = int(np.flatnonzero(donor_labels == common)[-1])
        moved = parts[donor][position]
        parts[donor] = np.delete(parts[donor], position)
        parts[short[0]] = np.append(parts[short[0]], moved)
