"""The one error a round record's reader gives: why the site cannot say or load what a round trained on."""

from __future__ import annotations


class RoundSamplesUnavailable(Exception):
    """The site cannot tell which images a round used, or cannot load them.

    Args:
        reason: One short sentence naming no path, file or sample (safe to send to the server).
        detail: The full site-local explanation for the site's log (may name paths); None when ``reason`` says all.
    """

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
