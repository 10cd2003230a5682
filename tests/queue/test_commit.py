"""The group commit: batches of sessions' commits, each answered when its own batch is durable."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.queue.commit import GroupCommit
from gateway.queue.spool import ACTIVE, Envelope, RecipientState, Spool, new_id
from gateway.queue.writer import SpoolWriter


class HeldThread:
    """A run_blocking whose work runs only when the test says (one call = one batch)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        done: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((function, args, done))
        return done

    def run(self, n: int) -> None:
        function, args, done = self.calls[n]
        try:
            result = function(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the Deferred, as a thread would
            done.errback(exc)
        else:
            done.callback(result)


def received(spool: Spool) -> tuple[SpoolWriter, Envelope]:
    writer = SpoolWriter(spool, new_id())
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    return writer, Envelope(
        id=writer.id,
        sender="app@example.com",
        received=1000.0,
        recipients=[RecipientState("ops@example.net", "up", "all")],
    )


def submit(group: GroupCommit, spool: Spool, answered: list[str]) -> SpoolWriter:
    writer, envelope = received(spool)
    d = group.submit(lambda: writer.commit(envelope), writer)
    d.addCallbacks(
        lambda _: answered.append(writer.id), lambda f: answered.append(f"452 {f.value}")
    )
    return writer


def test_sessions_finishing_during_a_batch_share_the_next_one(tmp_path):
    """One batch runs at a time; the three commits that arrive meanwhile are one batch."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    thread, answered = HeldThread(), []
    group = GroupCommit(thread)
    first = submit(group, spool, answered)
    later = [submit(group, spool, answered) for _ in range(3)]
    assert len(thread.calls) == 1 and answered == []  # nothing answered before it is durable
    thread.run(0)
    assert answered == [first.id] and len(thread.calls) == 2
    assert len(thread.calls[1][1][0]) == 3  # the second batch holds the three
    thread.run(1)
    assert answered == [first.id] + [w.id for w in later]
    assert spool.ids(ACTIVE) == sorted(answered)
    assert (group.batches, group.messages) == (2, 4)


def test_a_failed_commit_answers_only_its_own_session(tmp_path):
    """One message of a batch cannot be written: it alone fails (452), the others are durable."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    thread, answered = HeldThread(), []
    group = GroupCommit(thread)
    submit(group, spool, answered)
    broken = submit(group, spool, answered)
    broken.error = OSError(28, "No space left on device")
    fine = submit(group, spool, answered)
    thread.run(0)
    thread.run(1)
    assert answered[1:] == ["452 [Errno 28] No space left on device", fine.id]
    assert broken.id not in spool.ids(ACTIVE) and fine.id in spool.ids(ACTIVE)
