"""Time spent paced (waiting for a provider budget or a throttling pause) does not age a queued
message: ``paced_s`` in its envelope moves the ``queue.max_age`` limit; older envelopes read 0."""

from __future__ import annotations

import json

import pytest

from gateway.queue.envelope import Envelope, EnvelopeInvalid, RecipientState
from gateway.queue.spool import ACTIVE, DEAD, DEFERRED, FAILED, PENDING
from tests.queue.test_settle import Harness


def back(h: Harness, queue_id: str) -> Envelope:
    """Due again: the runner moves it to active/ and reads it there."""
    h.spool.move(queue_id, DEFERRED, ACTIVE, durable=False)
    return h.spool.load(ACTIVE, queue_id)


def test_a_paced_round_adds_its_wait_and_the_age_limit_moves_with_it(tmp_path):
    """max_age 3600: paced at 4000+3000 for 1000 s, the message is still pending past the hour
    after it came, and its age limit is an hour plus the paced 1000 s."""
    h = Harness(tmp_path, now=7000.0, max_age=3600)
    envelope = h.queue("a@example.net", received=4000.0)
    assert h.settler.settle(envelope, opened=False, paced=8000.0) == 8000.0
    assert envelope.paced_s == 1000.0 and envelope.age_base == 5000.0
    h.now = 8000.0  # 4000 s after it came: past max_age counted from its arrival
    again = back(h, envelope.id)
    assert again.paced_s == 1000.0
    due = h.settler.settle(again, opened=False)  # a transient failure at its slot
    assert due == 8060.0 and again.recipients[0].status == PENDING
    h.now = 5000.0 + 3600
    last = back(h, envelope.id)
    assert h.settler.settle(last, opened=False) is None
    assert last.recipients[0].status == FAILED and last.recipients[0].expired
    assert h.spool.locate(envelope.id) == DEAD


def test_an_envelope_from_before_paced_s_reads_zero(tmp_path):
    envelope = Envelope("ab" * 8, "a@example.com", [RecipientState("b@example.net", "up")], 10.0)
    record = json.loads(envelope.to_record())
    del record["paced_s"]
    old = Envelope.from_json(json.dumps(record).encode())
    assert old.paced_s == 0.0 and old.age_base == 10.0


def test_format_1_is_written_without_paced_s():
    """The releases that read format 1 refuse fields they do not know (`queue convert-back`)."""
    envelope = Envelope("ab" * 8, "a@example.com", [RecipientState("b@example.net", "up")], 10.0)
    envelope.paced_s = 5.0
    assert "paced_s" not in json.loads(envelope.to_json())


@pytest.mark.parametrize("value", [-1, "5", None, True])
def test_a_paced_s_that_is_not_seconds_is_refused(value):
    envelope = Envelope("ab" * 8, "a@example.com", [RecipientState("b@example.net", "up")], 10.0)
    record = json.loads(envelope.to_record())
    record["paced_s"] = value
    with pytest.raises(EnvelopeInvalid, match="paced_s"):
        Envelope.from_json(json.dumps(record).encode())
