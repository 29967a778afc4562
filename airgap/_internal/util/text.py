"""Text that reaches a terminal: names from a bundle, a source or a registry are shown escaped, so a file
name with a newline cannot forge an ``OK:`` line and an escape sequence cannot rewrite the screen."""

from __future__ import annotations

from typing import Any


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, tabs, escape sequences, bidi and
    other format characters) shown as a Python escape: ``\\n``, ``\\x1b``, ``\\u202e``."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def printable_lines(text: str) -> str:
    """A multi-line text with each line made printable (its line breaks kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def json_safe(value: Any) -> Any:
    """``value`` (JSON-shaped) with every string that is not valid Unicode (a file name's undecodable bytes,
    held as lone surrogates) shown escaped, so JSON output and receipts stay readable by strict parsers."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return printable(value)
        return value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
