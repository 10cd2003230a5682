"""gateway.policy.headers: the streaming rewriter for rewrite_from / strip_headers, without sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.config.headers import HeaderEdits
from gateway.policy.headers import HeaderRewriter

MESSAGE = (
    b"Received: from app.internal (10.0.0.5)\r\n"
    b"\tby mailgate; Sat, 28 Nov 2026 01:00:00 +0000\r\n"
    b'From: "Billing App"\r\n'
    b" <billing@app.internal>\r\n"
    b"X-ORIGINATING-IP: [10.0.0.5]\r\n"
    b"To: ops@example.net\r\n"
    b"Subject: invoice\r\n"
    b"\r\n"
    b"From: this line is body text\r\n"
    b"Received: so is this\r\n"
    b".\r\n"
)
BODY = MESSAGE[MESSAGE.index(b"\r\n\r\n") + 4 :]
EDITS = HeaderEdits("relay@corp.example", frozenset({"received", "x-originating-ip"}))


def rewrite(
    message: bytes, edits: HeaderEdits = EDITS, *, chunks: list[int] | None = None
) -> tuple[bytes, HeaderRewriter]:
    """Feed whole-line regions split after the given line counts (default: line by line)."""
    rewriter = HeaderRewriter(edits)
    lines = message.split(b"\r\n")[:-1]
    lines = [line + b"\r\n" for line in lines]
    out = b""
    if chunks is None:
        for line in lines:
            out += rewriter.feed(line)
    else:
        start = 0
        for size in chunks + [len(lines)]:
            out += rewriter.feed(b"".join(lines[start : start + size]))
            start += size
    return out + rewriter.finish(), rewriter


def test_strips_folded_headers_case_insensitively():
    """Received (folded over two lines) and X-ORIGINATING-IP are removed whole."""
    out, _ = rewrite(MESSAGE)
    head = out[: out.index(b"\r\n\r\n") + 2]
    assert b"Received" not in head and b"10.0.0.5" not in head and b"\tby mailgate" not in head


def test_rewrites_from_and_moves_the_original_to_reply_to():
    """From becomes rewrite_from; the original (folded) value goes to an added Reply-To."""
    out, rewriter = rewrite(MESSAGE)
    assert out.startswith(
        b"From: relay@corp.example\r\nTo: ops@example.net\r\nSubject: invoice\r\n"
        b'Reply-To: "Billing App"\r\n <billing@app.internal>\r\n\r\n'
    )
    assert rewriter.original_from == '"Billing App" <billing@app.internal>'


def test_body_is_unchanged_byte_for_byte():
    """Lines in the body that look like headers are neither stripped nor rewritten."""
    out, _ = rewrite(MESSAGE)
    assert out.endswith(b"\r\n\r\n" + BODY)


@given(st.lists(st.integers(min_value=0, max_value=12), max_size=6))
def test_region_boundaries_do_not_matter(chunks):
    """Any split of the message into whole-line regions gives the same output."""
    assert rewrite(MESSAGE, chunks=chunks)[0] == rewrite(MESSAGE)[0]


def test_existing_reply_to_is_kept_and_none_added():
    """A message that has a Reply-To keeps it; the original From is only in the audit."""
    message = b"From: app@x.example\r\nreply-to: desk@x.example\r\n\r\nbody\r\n"
    out, rewriter = rewrite(message, HeaderEdits("relay@corp.example"))
    assert out == b"From: relay@corp.example\r\nreply-to: desk@x.example\r\n\r\nbody\r\n"
    assert rewriter.original_from == "app@x.example"


def test_stripped_reply_to_does_not_count_as_existing():
    """If strip_headers removes Reply-To, the original From still goes to a new Reply-To."""
    message = b"From: app@x.example\r\nReply-To: desk@x.example\r\n\r\nbody\r\n"
    out, _ = rewrite(message, HeaderEdits("relay@corp.example", frozenset({"reply-to"})))
    assert out == b"From: relay@corp.example\r\nReply-To: app@x.example\r\n\r\nbody\r\n"


def test_message_without_from_gets_one():
    """rewrite_from adds a From when the app sent none; nothing goes to Reply-To."""
    out, rewriter = rewrite(b"Subject: x\r\n\r\nbody\r\n", HeaderEdits("relay@corp.example"))
    assert out == b"Subject: x\r\nFrom: relay@corp.example\r\n\r\nbody\r\n"
    assert rewriter.original_from is None


def test_second_from_field_is_dropped():
    """Only one From leaves the gateway, even if the app sent two."""
    message = b"From: a@x.example\r\nFrom: b@y.example\r\n  (folded)\r\n\r\nbody\r\n"
    out, rewriter = rewrite(message, HeaderEdits("relay@corp.example"))
    assert out == b"From: relay@corp.example\r\nReply-To: a@x.example\r\n\r\nbody\r\n"
    assert rewriter.original_from == "a@x.example"


def test_headers_only_message_gets_additions_at_finish():
    """Data that ends inside the header section still gets its Reply-To."""
    out, _ = rewrite(b"From: a@x.example\r\nSubject: x\r\n", HeaderEdits("relay@corp.example"))
    assert out == b"From: relay@corp.example\r\nSubject: x\r\nReply-To: a@x.example\r\n"


def test_strip_only_leaves_from_alone():
    """Without rewrite_from, From and everything else not named passes through."""
    message = b"From: a@x.example\r\nReceived: x\r\nSubject: s\r\n\r\nb\r\n"
    out, _ = rewrite(message, HeaderEdits(None, frozenset({"received"})))
    assert out == b"From: a@x.example\r\nSubject: s\r\n\r\nb\r\n"


def test_region_with_header_end_and_body_passes_body_through_in_one_piece():
    """After the blank line the rest of the region is returned as is, without per-line work."""
    rewriter = HeaderRewriter(HeaderEdits(None, frozenset({"received"})))
    assert (
        rewriter.feed(b"Received: x\r\nSubject: s\r\n\r\n.\r\nReceived: y\r\n")
        == b"Subject: s\r\n\r\n.\r\nReceived: y\r\n"
    )
    assert rewriter.in_body and rewriter.feed(b"Received: z\r\n") == b"Received: z\r\n"
