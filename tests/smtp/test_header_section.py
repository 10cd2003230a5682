"""gateway.smtp.header_section: the one header-section grammar, and its readers agreeing."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.headers import HeaderEdits
from gateway.policy.headers import HeaderRewriter
from gateway.smtp.data import MessageFacts
from gateway.smtp.header_section import (
    CONTINUATION,
    END,
    FIELD,
    MALFORMED,
    HeaderSection,
    run_of_fields,
)


def kinds(*lines: bytes) -> list[str]:
    section = HeaderSection()
    out = []
    for line in lines:
        out.append(section.read(line).kind)
        if section.done:
            break
    return out


def test_fields_continuations_and_the_end():
    """A field, its fold, a field without a space, an empty field, then the empty line."""
    assert kinds(b"From: a\r\n", b"\t b\r\n", b"To:x\r\n", b"X:\r\n", b"\r\n") == [
        FIELD,
        CONTINUATION,
        FIELD,
        FIELD,
        END,
    ]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([b"\r\n"], "no header section"),
        ([b" \r\n"], "starts with white space"),
        ([b"\tX: y\r\n"], "starts with white space"),
        ([b"A: b\r\n", b": c\r\n"], "line 2 has an empty field name"),
        ([b"A: b\r\n", b" \t\r\n"], "line 2 is white space only"),
        ([b"A: b\r\n", b"From : c\r\n"], "white space between the field name and the colon"),
        ([b"A: b\r\n", b"no colon\r\n"], "line 2 is neither a field"),
        ([b"\xc3\xa9: b\r\n"], "neither a field"),
        ([b"A: b\n"], "does not end in CRLF alone"),
        ([b"A: b\rc\r\n"], "does not end in CRLF alone"),
    ],
)
def test_malformed_lines_say_why(lines, problem):
    """Every way a line can fail the grammar ends the section with a reason."""
    section = HeaderSection()
    for line in lines:
        kind = section.read(line).kind
    assert kind == MALFORMED and section.done and problem in (section.problem or "")


def test_empty_message_and_all_header_message():
    """No line at all: no header section; lines and no empty line: all header, well formed."""
    empty = HeaderSection()
    empty.end_of_data()
    assert empty.problem is not None and "empty" in empty.problem
    headers = HeaderSection()
    headers.read(b"A: b\r\n")
    headers.end_of_data()
    assert headers.done and headers.problem is None


def test_cap():
    """Past the cap the section is malformed and too big."""
    section = HeaderSection(limit=20)
    assert section.read(b"A: 0123456789\r\n").kind == FIELD
    assert section.read(b"B: 0123456789\r\n").kind == MALFORMED and section.too_big


def test_skip_reads_only_whole_well_formed_lines_it_may():
    """skip passes over fields not named (and folds) and stops at a named field or a bad line."""
    section = HeaderSection()
    section.read(b"A: b\r\n")
    data = b"C: d\r\n e\r\nfROM: x\r\n"
    end = section.skip(data, 0, run_of_fields(frozenset({"from"})))
    assert data[end:] == b"fROM: x\r\n" and section.lines == 3
    assert section.skip(b": bad\r\n", 0, run_of_fields(frozenset())) == 0
    assert section.skip(b" \r\n", 0, run_of_fields(frozenset())) == 0
    named = run_of_fields(frozenset({"received"}), named=True)
    assert section.skip(b"Received: a\r\n\tb\r\nX: y\r\n", 0, named) == len(
        b"Received: a\r\n\tb\r\n"
    )


LINE = st.sampled_from(
    [
        b"From: a@x.example\r\n",
        b"FROM:b@y.example\r\n",
        b"Received: r\r\n",
        b"Subject: s\r\n",
        b"Message-ID: <m@x>\r\n",
        b" folded\r\n",
        b"\tfolded\r\n",
        b" \r\n",
        b": colon\r\n",
        b"Received : r\r\n",
        b"no colon\r\n",
        b"\r\n",
        b"body From: c@z.example\r\n",
    ]
)


@given(st.lists(LINE, max_size=12), st.integers(min_value=1, max_value=40))
def test_rewriter_and_facts_agree_on_the_header_section(lines, size):
    """The edits and the facts read the same header section, however the content is split:
    the same problem (or none), and they end it at the same line."""
    content = b"".join(lines)
    facts = MessageFacts()
    for start in range(0, len(content), size):
        facts.update(content[start : start + size])
    rewriter = HeaderRewriter(HeaderEdits("relay@corp.example", frozenset({"received"})))
    out = b"".join(rewriter.feed(line) for line in lines)
    facts.end_headers()
    out += rewriter.finish()
    assert rewriter.problem == facts.section.problem
    assert rewriter.section.lines == facts.section.lines


@given(st.lists(LINE, max_size=12))
def test_what_the_rewriter_passes_a_receiving_parser_reads_as_edited(lines):
    """Whatever the rewriter lets through (a well-formed section), Python's email parser reads
    exactly one From, ours, and no stripped field: the receiver and the rewriter agree."""
    rewriter = HeaderRewriter(HeaderEdits("relay@corp.example", frozenset({"received"})))
    out = b"".join(rewriter.feed(line) for line in lines) + rewriter.finish()
    if rewriter.problem is not None:
        return  # refused: nothing of it is delivered
    for policy in (email.policy.compat32, email.policy.SMTP):
        parsed = email.message_from_bytes(out, policy=policy)
        assert parsed.get_all("From") == ["relay@corp.example"]
        assert parsed.get_all("Received") is None
        assert not parsed.defects
