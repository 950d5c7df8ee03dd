"""A digest of one model update exactly as it travelled from a site to the server, and what the update declared.

The site records the digest of what it sent, after all its filters (`medpfl_app.nvflare.filters.sent_digest`); the server
computes it over the update it received (on the audit's attack thread) and sends it with its score request; the
site's scorer answers only a request whose digest matches an update this site really sent
(`medpfl_app.nvflare.site.scorer`). Both sides must reach the same value whatever form the arrays take:

- entries are taken in sorted name order (names as ``str``);
- each entry contributes its name, its NumPy dtype string (``'<f4'``: kind, size and byte order), its shape and its
  C-contiguous bytes, each length-prefixed, so no two different updates share an encoding;
- ``torch.Tensor`` values are converted with ``detach().cpu().numpy()`` (the same conversion NVFlare's
  ``pytorch → numpy`` exchange and the server audit's copy use), so a site that sees PyTorch tensors and a server
  that holds NumPy copies of them agree; Python scalars and lists become NumPy arrays (``numpy.asarray``).

Object arrays (no defined bytes) are refused. Pure: NumPy and hashlib only; PyTorch is never imported here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def as_array(value: Any) -> np.ndarray:
    """``value`` as a NumPy array: tensors through ``detach().cpu().numpy()``, anything else ``numpy.asarray``.

    Raises:
        ValueError: The value has no fixed byte layout (an object array) or cannot be converted.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        try:
            array = value.detach().cpu().numpy()
        except Exception as error:  # noqa: BLE001 - e.g. a dtype NumPy lacks (bfloat16)
            raise ValueError(f"a tensor of {getattr(value, 'dtype', '?')} has no NumPy form: {error}") from None
    else:
        array = np.asarray(value)
    if array.dtype.hasobject:
        raise ValueError("an object array has no defined bytes to digest")
    return array


def update_digest(update: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the update's entries (sorted names, dtype, shape, C-contiguous bytes).

    Args:
        update: Entry name → array (NumPy array, ``torch.Tensor``, Python number or list).

    Returns:
        The digest string.

    Raises:
        ValueError: ``update`` is not a mapping, or an entry cannot be digested (see `as_array`).

    Examples:
        >>> a = update_digest({"w": np.zeros((2, 2), np.float32), "b": np.ones(2, np.float32)})
        >>> a == update_digest({"b": np.ones(2, np.float32), "w": np.zeros((2, 2), np.float32)})
        True
        >>> a == update_digest({"w": np.zeros((2, 2), np.float64), "b": np.ones(2, np.float32)})
        False
    """
    if not isinstance(update, Mapping):
        raise ValueError(f"an update must be a mapping of names to arrays, got {type(update).__name__}")
    digest = hashlib.sha256()
    digest.update(len(update).to_bytes(8, "little"))
    for name in sorted(update, key=str):
        array = np.ascontiguousarray(as_array(update[name]))
        header = json.dumps([str(name), array.dtype.str, list(array.shape)], separators=(",", ":")).encode()
        payload = array.tobytes(order="C")
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header)
        digest.update(len(payload).to_bytes(8, "little"))
        digest.update(payload)
    return DIGEST_PREFIX + digest.hexdigest()


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a well-formed `update_digest` string (checked before any comparison)."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def same_digest(a: Any, b: Any) -> bool:
    """Constant-time equality of two well-formed digests (False when either is malformed)."""
    return is_digest(a) and is_digest(b) and hmac.compare_digest(a, b)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        return None
    return int(value)


def declared_images(meta: Mapping[str, Any] | None) -> int | None:
    """The most images the server's audit may reconstruct from an update with this meta, or None when unknown.

    The audit reconstructs ``min(num_train_images, batch_size × local_steps)`` images (``batch_size`` alone when
    the training-set size is not declared; `medpfl_app.attacks.knowledge_from_update`). The bound here never falls
    below that: with the training-set size declared but no step count, it is the training-set size.

    Args:
        meta: The update's DXO meta as sent (``batch_size``, ``local_steps`` or ``NUM_STEPS_CURRENT_ROUND``,
            ``num_train_images``).

    Returns:
        A positive count, or None when the meta declares neither a batch size nor a training-set size.

    Examples:
        >>> declared_images({"batch_size": 8, "local_steps": 2, "num_train_images": 100})
        16
        >>> declared_images({"batch_size": 8, "local_steps": 5, "num_train_images": 20})
        20
        >>> declared_images({}) is None
        True
    """
    meta = meta if isinstance(meta, Mapping) else {}
    batch = _count(meta.get("batch_size"))
    steps = _count(meta.get("local_steps"))
    if steps is None:
        steps = _count(meta.get("NUM_STEPS_CURRENT_ROUND"))
    num_train = _count(meta.get("num_train_images"))
    if num_train is not None:
        if batch is not None and steps is not None:
            return max(1, min(num_train, batch * steps))
        return max(1, num_train)
    if batch is not None:
        return max(1, batch)
    return None
