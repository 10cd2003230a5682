"""Text that clients and servers chose, made safe to print on an operator's terminal. Pure.

Addresses, HELO names, Message-IDs, upstream replies, a token endpoint's error, a
record in an edited audit file: any of them may hold an escape sequence (retitle
the window, rewrite the screen, fake a prompt), a bidi override that reorders what
is shown, or a character that is not shown at all. Every ``mailgate`` command
passes such text through `printable` before it reaches stdout or stderr.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    """``\\uXXXX`` (UTF-16 units, as in JSON), so an escaped JSON line stays valid JSON."""
    point = ord(char)
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    point -= 0x10000
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def printable(text: str) -> str:
    """`text` with every character a terminal would obey or hide shown as ``\\uXXXX``.

    That is everything `str.isprintable` refuses: C0 and C1 controls (ESC, CSI, BEL,
    BS, CR, LF, TAB), DEL, format characters (bidi overrides and isolates,
    zero-width characters, tag characters), surrogates, private-use and unassigned
    code points, line and paragraph separators and spaces other than U+0020. Text
    that is already printable comes back unchanged (the fast path).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
