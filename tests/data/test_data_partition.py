"""partition_indices: IID balance, Dirichlet skew, determinism, disjoint + covering, impossible requests."""

from __future__ import annotations

import numpy as np
import pytest

from medpfl_app.data import partition_indices
from medpfl_app.errors import MedPFLError

LABELS = np.repeat(np.arange(4), 30)  # 120 samples, 4 balanced classes


def _assert_disjoint_covering(parts: list[np.ndarray], size: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == size
    assert np.array_equal(np.sort(joined), np.arange(size))


def test_iid_is_balanced_in_size_and_labels() -> None:
    """IID sites differ by at most one sample overall and per class."""
    parts = partition_indices(LABELS, 7, scheme="iid", seed=3)
    _assert_disjoint_covering(parts, LABELS.size)
    sizes = [part.size for part in parts]
    assert max(sizes) - min(sizes) <= 1
    counts = np.stack([np.bincount(LABELS[part], minlength=4) for part in parts])
    assert (counts.max(axis=0) - counts.min(axis=0)).max() <= 1


def test_dirichlet_is_skewed_and_respects_minimum() -> None:
    """A small alpha concentrates labels: sites' label mixes are far from uniform; each site keeps its minimum."""
    parts = partition_indices(LABELS, 4, scheme="dirichlet", alpha=0.1, seed=0, min_per_site=10)
    _assert_disjoint_covering(parts, LABELS.size)
    assert min(part.size for part in parts) >= 10
    shares = np.stack([np.bincount(LABELS[part], minlength=4) / part.size for part in parts])
    iid_shares = np.stack(
        [np.bincount(LABELS[part], minlength=4) / part.size for part in partition_indices(LABELS, 4, seed=0)]
    )
    assert shares.max(axis=1).mean() > 0.5  # each site dominated by one class
    assert iid_shares.max(axis=1).mean() < 0.3


def test_same_seed_same_partition_other_seed_differs() -> None:
    """Partitions are a pure function of the inputs and seed."""
    for scheme in ("iid", "dirichlet"):
        first = partition_indices(LABELS, 3, scheme=scheme, seed=5)
        again = partition_indices(LABELS, 3, scheme=scheme, seed=5)
        other = partition_indices(LABELS, 3, scheme=scheme, seed=6)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))
        assert all(part.dtype == np.int64 for part in first)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_sites": 0}, "num_sites"),
        ({"num_sites": 50, "min_per_site": 3}, "at least 3"),
        ({"num_sites": 2, "scheme": "zipf"}, "partition scheme"),
        ({"num_sites": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
    ],
)
def test_impossible_requests_are_clear_errors(kwargs: dict, match: str) -> None:
    """Impossible or unknown requests raise one MedPFLError saying what is wrong."""
    with pytest.raises(MedPFLError, match=match):
        partition_indices(LABELS, **kwargs)


def test_non_integer_labels_are_rejected() -> None:
    """Float labels are a clear error, not a silent cast."""
    with pytest.raises(MedPFLError, match="integers"):
        partition_indices([0.5, 1.0], 1)
