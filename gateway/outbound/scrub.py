"""Cut the secrets we sent out of what a peer says back. Pure: no reactor, no I/O.

A careless or hostile peer may repeat a credential in its answer: an upstream's
``535`` that quotes the AUTH PLAIN blob, a token endpoint whose ``error`` or
``error_description`` quotes the client secret. Whatever a peer says can reach
the audit, ``/readyz`` and the app, so it passes through a `Scrubber` built from
the secrets of that exchange first.

A scrubber looks for each secret in every form we send it in, and in the forms
an encoder would give those:

- the secret itself, and base64 of it (standard or URL-safe alphabet, padded or
  not) at each of the three byte alignments it can take inside a longer base64
  text: that covers the AUTH PLAIN / XOAUTH2 / OAUTHBEARER payloads that carry it
  (and those payloads are secrets of their own). The whole base64 word around
  such a match goes, since its edges hold bits of the secret too;
- each of those URL-encoded (form or path style, hex in either case, ``+`` for a
  space) and JSON-escaped (``\\"``, ``\\/``, ``\\u00e9`` in either case, surrogate
  pairs, or every character as ``\\uXXXX``);
- across line breaks and blanks: whitespace is left out of the searched text, so
  a base64 blob split over two ``535-`` lines of one reply (joined by ``\\n`` in
  `Reply.text`) is found; every line keeps its place, its matching parts replaced.

Forms are searched for as they are, at any position: no decoding of the text, so
no stray ``%`` or ``\\`` put in front can shift how it would be read.
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from gateway.smtp.replies import Reply

REDACTED = "<redacted>"
MIN_DERIVED = 4  # a shorter base64 fragment would match by chance; the whole secret still does

_BASE64_WORD = frozenset(string.ascii_letters + string.digits + "+/=-_")
_PERCENT = re.compile("%[0-9A-F]{2}")
_JSON_UNICODE = re.compile(r"\\u[0-9a-f]{4}")


def _url_forms(data: bytes) -> set[str]:
    forms = {quote(data, safe=safe) for safe in ("", "/")}
    forms |= {quote_plus(data, safe=safe) for safe in ("", "/")}
    forms = forms | {_PERCENT.sub(_lower, form) for form in forms if "%" in form}
    every = "%" + data.hex("%")  # every byte escaped
    return forms | {every, every.upper()}


def _json_forms(text: str) -> set[str]:
    units = text.encode("utf-16-be", "surrogatepass")
    digits = units.hex("-", 2)
    every = {"\\u" + h.replace("-", "\\u") for h in (digits, digits.upper())}  # all as \\uXXXX
    forms = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    forms |= {form.replace("/", "\\/") for form in forms}
    upper = {_JSON_UNICODE.sub(_upper, form) for form in forms if "\\u" in form}
    return forms | upper | every


def _lower(match: re.Match[str]) -> str:
    return match[0].lower()


def _upper(match: re.Match[str]) -> str:
    return "\\u" + match[0][2:].upper()


def _text_forms(text: str) -> set[str]:
    """`text` as it is, URL-encoded and JSON-escaped, blanks left out (they are never searched)."""
    forms = {text} | _url_forms(text.encode("utf-8", "surrogatepass")) | _json_forms(text)
    return {bare for form in forms if (bare := "".join(form.split()))}


def _base64_cores(data: bytes) -> set[str]:
    """The part of base64(`data`) that is the same inside any longer base64 text, per alignment."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        # Drop the characters that mix in the bytes before or after `data`: the rest is fixed.
        core = encoded[(offset * 4 + 2) // 3 : (len(data) + offset) // 3 * 4]
        if len(core) >= MIN_DERIVED:
            cores.add(core)
    whole = base64.b64encode(data).decode("ascii").rstrip("=")
    if len(whole) >= MIN_DERIVED:  # a short secret: its own base64, padding optional
        cores.add(whole)
    return cores | {core.replace("+", "-").replace("/", "_") for core in cores}


def needles(secret: str | bytes) -> dict[str, bool]:
    """The texts to look for, each with whether it is a base64 form."""
    if isinstance(secret, bytes):
        data, text = secret, secret.decode("utf-8", "replace")
    else:
        data, text = secret.encode("utf-8", "surrogatepass"), secret
    if not text.strip():
        return {}
    found = {form: True for core in _base64_cores(data) for form in _text_forms(core)}
    return found | dict.fromkeys(_text_forms(text), False)


class Scrubber:
    """Built from the secrets of one exchange; call it on anything the peer said."""

    __slots__ = ("_needles", "marker")

    def __init__(
        self,
        secrets: Iterable[str | bytes],
        marker: str = REDACTED,
        *,
        inherit: Scrubber | Iterable[Scrubber] | None = None,
    ) -> None:
        """`inherit`: earlier scrubbers (of this exchange, or of earlier connections) whose
        secrets are kept too."""
        found: dict[str, bool] = {}
        for earlier in [inherit] if isinstance(inherit, Scrubber) else inherit or ():
            for needle, is_base64 in earlier.forms():
                found[needle] = found.get(needle, False) or is_base64
        for secret in secrets:
            for needle, is_base64 in needles(secret).items():
                found[needle] = found.get(needle, False) or is_base64
        self._needles: list[tuple[str, bool]] = sorted(
            found.items(), key=lambda item: -len(item[0])
        )
        self.marker = marker

    def __repr__(self) -> str:
        return f"Scrubber(<{len(self._needles)} forms>)"

    def forms(self) -> list[tuple[str, bool]]:
        """The encoded forms searched for, each with whether it is base64 (for `inherit`)."""
        return list(self._needles)

    def __call__(self, text: str) -> str:
        """`text` with every form of every secret replaced by the marker; line breaks kept."""
        if not self._needles or not text:
            return text
        places = [index for index, char in enumerate(text) if not char.isspace()]
        searched = "".join(text[index] for index in places)
        hidden = bytearray(len(text))
        for needle, is_base64 in self._needles:
            found = searched.find(needle)
            while found >= 0:
                start, end = places[found], places[found + len(needle) - 1] + 1
                if is_base64:  # the rest of that base64 word holds bits of the secret too
                    while start > 0 and text[start - 1] in _BASE64_WORD:
                        start -= 1
                    while end < len(text) and text[end] in _BASE64_WORD:
                        end += 1
                hidden[start:end] = b"\1" * (end - start)
                found = searched.find(needle, found + 1)
        if not any(hidden):
            return text
        out: list[str] = []
        inside = False
        for char, cut in zip(text, hidden, strict=True):
            if cut and char != "\n":
                if not inside:
                    out.append(self.marker)
                inside = True
            else:
                out.append(char)
                inside = False
        return "".join(out)

    def reply(self, reply: Reply) -> Reply:
        """The reply with its text scrubbed as one text: its lines are searched joined."""
        text = self(reply.text)
        return reply if text == reply.text else Reply(reply.code, reply.enhanced, text)


def scrub(text: str, secrets: Iterable[str | bytes], marker: str = REDACTED) -> str:
    """`text` with every form of every secret in `secrets` cut out (see the module docstring)."""
    return Scrubber(secrets, marker)(text)
