"""Module-level jobs for `test_isolation`: the spawned audit worker imports them by name (``isolation_jobs``)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medpfl_app.errors import MedPFLError


@dataclass(frozen=True)
class Scale:
    """A frozen-dataclass argument, as the audit's plan is."""

    factor: float
    offset: float = 0.0


def scaled_sum(update: dict[str, np.ndarray], scale: Scale, *, extra: np.ndarray | None = None) -> dict[str, Any]:
    """Arrays in, arrays out: every entry scaled, plus their total."""
    out = {name: value * scale.factor + scale.offset for name, value in update.items()}
    total = sum(float(value.sum()) for value in out.values()) + (0.0 if extra is None else float(extra.sum()))
    return {"arrays": out, "total": total, "scale": scale}


def fail(message: str) -> None:
    """Raise a plain exception."""
    raise ValueError(message)


def fail_medpfl(problem: str, fix: str) -> None:
    """Raise a `MedPFLError` (keyword-only ``fix``: its pickle would not unpickle)."""
    raise MedPFLError(problem, fix=fix, site="site-1")


def sleep_then_pid(seconds: float) -> int:
    """Sleep, then return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def exit_now(code: int) -> None:
    """Leave the process without cleanup."""
    os._exit(code)


def segfault() -> None:
    """Die by SIGSEGV."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(30)


def process_facts() -> dict[str, Any]:
    """Return the worker's pid, niceness and torch thread count, seen from inside a job."""
    import torch

    priority = os.getpriority(os.PRIO_PROCESS, 0)
    return {"pid": os.getpid(), "priority": priority, "torch_threads": torch.get_num_threads()}


def allocate(megabytes: int) -> int:
    """Allocate and touch ``megabytes`` MB with torch; returns the element count."""
    import torch

    tensor = torch.ones(megabytes * 1024 * 1024 // 4, dtype=torch.float32)
    return int(tensor.numel())
