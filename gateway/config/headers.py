"""A rule's header edits as configured: ``rewrite_from`` and ``strip_headers``. Pure.

`read_header_edits` validates the two keys of one ``[[rules]]`` table into a
`HeaderEdits` value, reporting problems through the config reader with every
other key's; `gateway.policy.headers.HeaderRewriter` applies it to a message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.reader import Reader
from gateway.smtp.address import AddressError, parse_path

_NAME_TEXT = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


@dataclass(frozen=True)
class HeaderEdits:
    """What one rule changes in the header section; `strip` holds lower-case field names."""

    rewrite_from: str | None = None
    strip: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.rewrite_from or self.strip)


def read_header_edits(reader: Reader, rule: Mapping[str, Any], key: str) -> HeaderEdits | None:
    """Validate a rule's ``rewrite_from`` and ``strip_headers``; None when it has neither."""
    rewrite_from = reader.string(rule, f"{key}.rewrite_from", None)
    if rewrite_from is not None:
        try:
            address: object = parse_path(f"<{rewrite_from}>", sender=False)
        except AddressError:
            address = None
        if address is None:
            reader.problem(
                f"{key}.rewrite_from",
                rewrite_from,
                'a plain ASCII address such as "relay@corp.example"',
            )
            rewrite_from = None
    names = reader.strings(rule, f"{key}.strip_headers") or ()
    strip = set()
    for i, name in enumerate(names):
        if not _NAME_TEXT.match(name):
            reader.problem(
                f"{key}.strip_headers[{i}]", name, 'a header field name such as "Received"'
            )
        elif name.lower() == "from":
            reader.problem(
                f"{key}.strip_headers[{i}]", name, "a field other than From (use rewrite_from)"
            )
        else:
            strip.add(name.lower())
    edits = HeaderEdits(rewrite_from, frozenset(strip))
    return edits if edits else None
