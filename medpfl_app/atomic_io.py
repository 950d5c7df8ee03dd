"""Atomic file writes: a reader never sees a half-written datalist, manifest, image, ledger or policy."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], object], *, suffix: str = "", durable: bool = False) -> Path:
    """Write ``path`` by calling ``write(temp_path)`` on a sibling temp file and renaming it into place.

    Args:
        path: Destination file; its folder is created if needed.
        write: Writes the complete content to the temp path it is given.
        suffix: Suffix of the temp file, for writers that pick the format from the name (``".nii.gz"``).
        durable: fsync the file and its folder, for records that must survive a crash (privacy ledgers).

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        if durable:
            with open(temp, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(temp, path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"), durable=durable)


def write_json_atomic(path: str | Path, content: Any, *, durable: bool = False) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(content, indent=2, sort_keys=False) + "\n", durable=durable)
