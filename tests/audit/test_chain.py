"""The hash chain, pure: sealing records and finding where a chain was broken."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit.chain import GENESIS, START, ChainCheck, Head


def chain(count: int, start: Head = START) -> list[str]:
    lines, head = [], start
    for n in range(count):
        line, head = audit_chain.seal(
            {"timestamp": f"2026-11-28T00:00:{n:02d}Z", "event": "e", "n": n}, head
        )
        lines.append(line)
    return lines


def check(lines: list[str], **options) -> ChainCheck:
    return audit_chain.check_lines(
        (("a.jsonl", i, text) for i, text in enumerate(lines, 1)), **options
    )


def kinds(result: ChainCheck) -> list[tuple[int, str]]:
    return [(b.where.line, b.kind) for b in result.breaks]


def test_seal_links_each_record_to_the_one_before():
    """seq counts up, prev is the previous hash, the first prev is 64 zeros."""
    records = [json.loads(line) for line in chain(3)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert records[1]["prev"] == records[0]["hash"] and records[2]["prev"] == records[1]["hash"]


def rehash(line: str) -> str:
    """What someone who knows the format does after editing a line."""
    body = line.rpartition(',"hash":"')[0]
    return f'{body},"hash":"{hashlib.sha256(body.encode()).hexdigest()}"}}'


def test_hash_is_sha256_of_the_line_up_to_the_hash_field():
    """The documented formula, computed independently here."""
    line = chain(2)[1]
    body, mark, tail = line.rpartition(',"hash":"')
    assert mark and tail == hashlib.sha256(body.encode()).hexdigest() + '"}'
    assert body.endswith(f',"prev":"{json.loads(chain(1)[0])["hash"]}"')


def test_seal_keeps_the_record_key_order_and_puts_chain_fields_last():
    """People read raw lines: timestamp and event stay first, seq/prev/hash come last."""
    keys = list(json.loads(chain(1)[0]))
    assert keys[:2] == ["timestamp", "event"] and keys[-3:] == ["seq", "prev", "hash"]


def test_values_json_cannot_encode_are_hashed_as_their_text():
    """A value rendered with str() verifies after a round trip through the file."""
    import ipaddress

    line, _ = audit_chain.seal(
        {"event": "e", "client": ipaddress.ip_address("::1"), "ratio": 0.1}, START
    )
    assert check([line]).intact


def test_intact_chain_verifies():
    """An untouched chain has no breaks and counts every record."""
    result = check(chain(5))
    assert (
        result.intact and result.verified == 5 and result.head is not None and result.head.seq == 5
    )


def test_deleted_record_is_found_at_the_next_line():
    """Removing line 3 of 5 is reported at the line that now follows the gap."""
    lines = chain(5)
    del lines[2]
    result = check(lines)
    assert kinds(result) == [(3, "deleted")]
    assert "seq 3" in result.breaks[0].text and "expected seq 3" in result.breaks[0].text


def test_edited_field_is_found_at_its_line():
    """Changing a value without re-hashing breaks that record's hash and nothing else."""
    lines = chain(5)
    lines[1] = lines[1].replace('"n":1', '"n":7')
    assert kinds(check(lines)) == [(2, "changed")]


def test_edited_and_rehashed_record_breaks_the_next_link():
    """Re-hashing an edited record moves the break to the record after it."""
    lines = chain(4)
    lines[1] = rehash(lines[1].replace('"n":1', '"n":99'))
    assert kinds(check(lines)) == [(3, "inserted")]


def test_inserted_copy_is_found():
    """A copy of an earlier record inserted later is reported where it stands."""
    lines = chain(5)
    lines.insert(4, lines[1])
    assert kinds(check(lines)) == [(5, "duplicated")]


def test_inserted_line_without_chain_fields_is_found():
    """A hand-written record has no seq/prev/hash."""
    lines = chain(3)
    lines.insert(1, json.dumps({"timestamp": "2026-11-28T00:00:00Z", "event": "message.result"}))
    assert kinds(check(lines)) == [(2, "unchained")]


def test_swapped_lines_are_reported_as_reordered_at_both_lines():
    """Two neighbouring records swapped: both lines named, no phantom deletion."""
    lines = chain(5)
    lines[1], lines[2] = lines[2], lines[1]
    result = check(lines)
    assert kinds(result) == [(2, "reordered"), (3, "reordered")]
    assert "a.jsonl:3" in result.breaks[0].text


def test_not_json_is_reported_with_its_line():
    """A line that is not JSON is a break naming the line."""
    lines = chain(3)
    lines[1] = "garbage"
    assert (2, "not-json") in kinds(check(lines))


def test_duplicate_key_is_a_change():
    """A second key of the same name (which some tools read instead of the first) changes the bytes."""
    lines = chain(2)
    lines[1] = lines[1].replace('{"timestamp"', '{"n":5,"timestamp"')
    assert kinds(check(lines)) == [(2, "changed")]


def test_whitespace_added_is_a_change():
    """Every byte counts, not just the values: a re-formatted line no longer verifies."""
    lines = chain(2)
    lines[0] = lines[0].replace('"event":', '"event": ')
    assert kinds(check(lines)) == [(1, "changed")]


def test_new_chain_mid_stream_is_a_break_unless_restarts_are_allowed():
    """seq 1 after other records: cut records look like this too; stdout logs opt in."""
    lines = chain(3) + chain(2)
    assert kinds(check(lines)) == [(4, "restarted")]
    allowed = check(lines, allow_restarts=True)
    assert allowed.intact and allowed.restarts == 1


def test_chain_may_start_after_genesis_when_older_files_are_not_given():
    """A file from the middle of the chain verifies on its own; where it starts is known."""
    lines = chain(6)[3:]
    result = check(lines)
    assert result.intact and result.first is not None and result.first.seq == 4


def test_records_cut_from_the_end_are_found_with_the_writer_state():
    """The state file says seq 5 was written; a file ending at seq 3 was truncated."""
    lines = chain(5)
    final = json.loads(lines[-1])
    result = check(lines[:3])
    result.ends_at(Head(final["seq"], final["hash"]), "a.jsonl.chain")
    assert kinds(result) == [(3, "truncated")]


def test_state_line_round_trips_and_has_a_fixed_width():
    """Rewritten in place at offset 0, so every state line has the same length."""
    small, large = Head(1, "a" * 64), Head(10**15, "b" * 64)
    assert len(audit_chain.format_state(small)) == len(audit_chain.format_state(large))
    assert audit_chain.parse_state(audit_chain.format_state(large).decode()) == large
    assert audit_chain.parse_state("something else") is None


def test_breaks_kept_are_bounded_but_all_are_counted():
    """A wholly corrupt file does not grow memory: `keep` breaks kept, all counted."""
    result = ChainCheck(keep=10)
    for number in range(1, 101):
        result.line("a.jsonl", number, "x")
    assert len(result.breaks) == 10 and result.problems == 100


@given(size=st.integers(3, 12), data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_single_tampering_inside_the_chain_is_detected(size, data):
    """Delete, duplicate, move or edit any one record strictly inside the chain: never intact."""
    lines = chain(size)
    operation = data.draw(st.sampled_from(["delete", "duplicate", "move", "edit"]))
    if operation == "delete":
        del lines[data.draw(st.integers(1, size - 2))]
    elif operation == "duplicate":
        lines.insert(data.draw(st.integers(1, size)), lines[data.draw(st.integers(0, size - 1))])
    elif operation == "move":
        source = data.draw(st.integers(0, size - 1))
        target = data.draw(st.integers(0, size - 1).filter(lambda t: t != source))
        lines.insert(target, lines.pop(source))
    else:
        index = data.draw(st.integers(0, size - 1))
        position = data.draw(st.integers(0, len(lines[index]) - 1))
        replacement = data.draw(
            st.characters(codec="ascii").filter(lambda c: c != lines[index][position])
        )
        lines[index] = lines[index][:position] + replacement + lines[index][position + 1 :]
    assert not check(lines).intact
