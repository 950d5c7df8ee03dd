"""Text that is safe to show: untrusted strings (ledger values, file names, typed input) on a terminal or page."""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: object, *, newlines: bool = False) -> str:
    """``value`` as text that is safe to print on a terminal: every control character escaped.

    Every character `str.isprintable` rejects is written as its Python escape (``\\x1b``, ``\\r``, ``\\x00``,
    ``\\x7f``, ``\\u202e``): C0 and C1 controls (ANSI escape sequences start with ESC or CSI), DEL, Unicode format
    characters (bidi overrides and isolates, zero-width characters), line and paragraph separators, surrogates,
    private-use and unassigned code points. Other spaces (no-break, thin) become a plain space. The escape is
    visible, so a reader sees that the ledger held something unusual, and it changes nothing on the terminal.

    Args:
        value: Anything; non-strings are shown with ``str``.
        newlines: Keep ``\\n`` (multi-line text MedPFL wrote itself, e.g. an error and its fix); by default it is
            escaped as well, so that a ledger value can never begin a line of its own.
    """
    string = value if isinstance(value, str) else str(value)
    if string.isprintable():
        return string
    out = []
    for char in string:
        if char.isprintable() or (newlines and char == "\n"):
            out.append(char)
        elif unicodedata.category(char) == "Zs":
            out.append(" ")
        else:
            out.append(_escape(char))
    return "".join(out)
