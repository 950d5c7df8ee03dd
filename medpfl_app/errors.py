"""One error type for everything a user can get wrong, always with the fix."""

from __future__ import annotations


class MedPFLError(Exception):
    """A user-facing error: what is wrong, where, and how to fix it.

    The CLI prints ``str(error)`` without a traceback, and NVFlare site logs show the same single message.

    Args:
        problem: What is wrong, naming the file, site or value concerned.
        fix: What the user should do about it.
        site: The NVFlare site the problem belongs to, when known.
    """

    def __init__(self, problem: str, *, fix: str, site: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        self.site = site
        where = f"[{site}] " if site else ""
        super().__init__(f"{where}{problem}\n  fix: {fix}")
