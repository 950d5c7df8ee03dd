"""The resumable cell store: one JSON line per finished cell, keyed by the cell's configuration hash.

The whole file is rewritten atomically after each cell (`medpfl_app.atomic_io`), so an interrupted study leaves
either the old or the new store, never a torn line. A line whose key does not match any cell of the current study
(another preset, a changed option, an older schema) is kept in the file but never reused.
"""

from __future__ import annotations

import json
from pathlib import Path

from medpfl_app.atomic_io import write_text_atomic
from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.result import CellResult

STORE_NAME = "cells.jsonl"


class CellStore:
    """Finished cells of one output folder, by key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: dict[str, str] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = str(entry["key"])
                CellResult.from_json(entry["result"])
            except (ValueError, KeyError, TypeError) as error:
                raise MedPFLError(
                    f"{self.path} line {number} is not a study cell ({type(error).__name__}: {error})",
                    fix=f"delete {self.path} (or rerun with --no-resume) to recompute every cell",
                ) from None
            self._lines[key] = line

    def __contains__(self, key: str) -> bool:
        return key in self._lines

    def __len__(self) -> int:
        return len(self._lines)

    def get(self, key: str) -> CellResult:
        return CellResult.from_json(json.loads(self._lines[key])["result"])

    def put(self, key: str, result: CellResult) -> None:
        """Record a finished cell and rewrite the store atomically."""
        self._lines[key] = json.dumps({"key": key, "result": result.to_json()}, sort_keys=True)
        write_text_atomic(self.path, "".join(line + "\n" for line in self._lines.values()))

    def clear(self) -> None:
        """Forget every stored cell (``--no-resume``)."""
        self._lines.clear()
        write_text_atomic(self.path, "")
