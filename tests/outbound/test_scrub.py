"""Unit tests of gateway/outbound/scrub.py: every form of a secret we sent is cut out of a peer's text."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.outbound.scrub import REDACTED, Scrubber, scrub
from gateway.smtp import sasl
from gateway.smtp.replies import Reply

SECRET = "s3cret-Pa55/word+é 😀"
USER = "relay@example.test"


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def plain_blob(secret: str = SECRET) -> str:
    return b64(b"\0" + USER.encode() + b"\0" + secret.encode())


# Every encoding we send a secret in, and the ones a peer may use to echo it.
FORMS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "url-form": quote_plus,
    "url-path": lambda s: quote(s, safe=""),
    "url-lower-hex": lambda s: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(s, safe="")),
    "json-escaped": lambda s: json.dumps(s)[1:-1],
    "json-quoted": json.dumps,
    "json-unicode-everything": lambda s: "".join(
        f"\\u{unit:04x}" for (unit,) in struct.iter_unpack(">H", s.encode("utf-16-be"))
    ),
    "base64": b64,
    "base64-unpadded": lambda s: b64(s).rstrip("="),
    "base64-urlsafe": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base64-after-1-byte": lambda s: b64(b"x" + s.encode()),
    "base64-after-2-bytes": lambda s: b64(b"xy" + s.encode()),
    "auth-plain-blob": plain_blob,
    "xoauth2-payload": lambda s: sasl.xoauth2_response(USER, s).decode(),
    "oauthbearer-payload": lambda s: sasl.oauthbearer_response(USER, s, "smtp.test", 587).decode(),
    "base64-url-encoded": lambda s: quote_plus(b64(s)),
    "base64-json-escaped": lambda s: json.dumps(base64.b64encode(s.encode()).decode())[1:-1],
}


def leaks(text: str, secret: str = SECRET) -> list[str]:
    """The forms of `secret` still found in `text` (whole, and base64 cores at every alignment)."""
    found = [name for name, form in FORMS.items() if form(secret) in text]
    data = secret.encode()
    for offset in range(3):
        encoded = b64(b"\0" * offset + data)
        core = encoded[(offset * 4 + 2) // 3 : (len(data) + offset) // 3 * 4]
        if len(core) < 4:  # too short to mean anything (and to be looked for)
            continue
        if core in text or core.replace("+", "-").replace("/", "_") in text:
            found.append(f"base64-core@{offset}")
    return found


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_is_cut_out(form):
    """Each encoding of the secret, inside ordinary text, is replaced by the marker."""
    text = f"535 5.7.8 you sent {FORMS[form](SECRET)} which is wrong"
    scrubbed = scrub(text, [SECRET])
    assert leaks(scrubbed) == [] and REDACTED in scrubbed
    assert scrubbed.startswith("535 5.7.8 you sent ") and scrubbed.endswith(" which is wrong")


@pytest.mark.parametrize("form", ["base64", "raw", "url-form", "json-unicode-everything"])
@pytest.mark.parametrize("cut", [1, 5, 11, 17])
def test_a_secret_split_across_reply_lines_is_cut_out_of_each(form, cut):
    """The halves of a secret on two lines are found in the joined text; both lines stay lines."""
    encoded = FORMS[form](SECRET)
    scrubbed = scrub(f"{encoded[:cut]}\n{encoded[cut:]}", [SECRET])
    assert scrubbed.split("\n") == [REDACTED, REDACTED]


@pytest.mark.parametrize("cut", [1, 5, 11, 17, 30])
def test_an_auth_plain_blob_split_across_lines_loses_every_bit_of_the_secret(cut):
    """Split anywhere, the blob's secret part goes; only the (public) user part may stay."""
    blob = plain_blob()
    scrubbed = scrub(f"{blob[:cut]}\n{blob[cut:]}", [SECRET])
    assert scrubbed.count("\n") == 1 and leaks(scrubbed.replace("\n", "")) == []
    kept = scrubbed.replace(REDACTED, "").replace("\n", "")
    assert blob.startswith(kept) and len(kept) <= len(b64(b"\0" + USER.encode() + b"\0"))


def test_blanks_inside_an_echo_do_not_hide_it():
    """Spaces or tabs inserted into an echoed base64 blob do not stop the match."""
    encoded = b64(SECRET)
    scrubbed = scrub(f"got {encoded[:6]} {encoded[6:12]}\t{encoded[12:]} ok", [SECRET])
    assert leaks(scrubbed.replace(" ", "").replace("\t", "")) == []
    assert scrubbed.endswith(" ok")


def test_a_reply_keeps_its_code_and_lines():
    """Scrubbing a Reply changes only its text; lines without a secret are untouched."""
    encoded = b64(SECRET)
    reply = Reply(535, "5.7.8", f"bad credentials\n{encoded[:8]}\n{encoded[8:]}\nbye")
    scrubbed = Scrubber([SECRET]).reply(reply)
    assert (scrubbed.code, scrubbed.enhanced) == (535, "5.7.8")
    assert scrubbed.lines() == ["bad credentials", REDACTED, REDACTED, "bye"]


def test_text_without_a_secret_is_returned_unchanged():
    """Nothing is cut from a text that holds no form of the secret (escapes and all)."""
    text = "550 5.7.1 100% sure: \\u12 %zz + a+b \\n \\\\ AAAA====\nsecond line"
    assert scrub(text, [SECRET]) == text
    assert Scrubber([SECRET]).reply(Reply(250, None, text)) == Reply(250, None, text)


def test_no_secrets_no_change():
    """A scrubber without secrets (or with empty ones) changes nothing."""
    assert scrub("anything at all", []) == "anything at all"
    assert scrub("anything at all", ["", "   "]) == "anything at all"


def test_bytes_secrets_are_understood():
    """Secrets given as bytes (as the AUTH code holds them) are searched as their text."""
    assert leaks(scrub(f"x {SECRET} {b64(SECRET)}", [SECRET.encode()])) == []


def test_inherit_keeps_the_earlier_secrets():
    """A scrubber built on an earlier one (a refreshed token) still cuts the old secret."""
    first = Scrubber(["old-token-abcdef"])
    second = Scrubber(["new-token-ghijkl"], inherit=first)
    assert second("old-token-abcdef new-token-ghijkl") == f"{REDACTED} {REDACTED}"


def test_the_marker_can_be_chosen():
    """The token endpoint's errors say <secret>, as they always did."""
    assert (
        scrub("secret 'sec-123' provided", ["sec-123"], "<secret>") == "secret '<secret>' provided"
    )


def test_repr_holds_no_secret():
    """A scrubber printed by accident (a traceback, a debug log) shows no secret."""
    assert SECRET not in repr(Scrubber([SECRET])) and b64(SECRET) not in repr(Scrubber([SECRET]))


secrets = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")),
    min_size=8,
    max_size=40,
)
padding = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(
    secret=secrets,
    form=st.sampled_from(sorted(FORMS)),
    before=padding,
    after=padding,
    cut=st.integers(0, 200),
)
def test_no_form_survives_in_any_surrounding_text(secret, form, before, after, cut):
    """For any secret, any form, any text around it, split over two lines anywhere: no form is left."""
    assume(not leaks(REDACTED, secret))  # a secret that is part of the marker itself
    encoded = FORMS[form](secret)
    cut %= len(encoded) + 1
    text = f"{before}{encoded[:cut]}\n{encoded[cut:]}{after}"
    scrubbed = scrub(text, [secret])
    assert leaks(scrubbed.replace("\n", ""), secret) == []
    assert scrubbed.count("\n") == text.count("\n")
