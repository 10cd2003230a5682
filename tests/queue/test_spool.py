"""The on-disk spool: commit order, atomic state changes, and reading the body back by lines."""

from __future__ import annotations

import dataclasses
import os

import pytest

from gateway.queue import spool as spool_module
from gateway.queue import writer as writer_module
from gateway.queue.spool import (
    ACTIVE,
    DEFERRED,
    INCOMING,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
    read_headers,
    read_lines,
    valid_id,
)
from gateway.queue.writer import SpoolWriter

BODY = b"Subject: hi\r\nMessage-ID: <m@example.com>\r\n\r\n.dot\r\nline\r\n"


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(str(tmp_path / "spool"))
    s.create()
    return s


def envelope(queue_id: str) -> Envelope:
    return Envelope(
        id=queue_id,
        sender="app@example.com",
        received=1000.0,
        recipients=[RecipientState("a@example.net", "up", "all")],
    )


def commit(spool: Spool, body: bytes = BODY) -> str:
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(body)
    writer.commit(envelope(queue_id))
    return queue_id


def test_commit_moves_body_and_envelope_into_active(spool):
    """A committed message is active/ID with its body and envelope; incoming/ is empty."""
    queue_id = commit(spool)
    assert spool.ids(ACTIVE) == [queue_id] and spool.ids(INCOMING) == []
    with open(spool.body_path(ACTIVE, queue_id), "rb") as handle:
        assert handle.read() == BODY
    assert spool.load(ACTIVE, queue_id) == envelope(queue_id)


def test_commit_syncs_everything_before_and_after_the_rename(spool, monkeypatch):
    """Body, envelope and message folder are fsynced before the rename into active/, active/ after."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(source: str, target: str) -> None:
        calls.append(("rename", target))
        real_rename(source, target)

    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(BODY)
    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    monkeypatch.setattr(spool_module.os, "rename", rename)
    writer.commit(envelope(queue_id))
    incoming, active = spool.folder(INCOMING, queue_id), spool.folder(ACTIVE)
    assert calls == [
        ("fsync", os.path.join(incoming, "body")),
        ("fsync", os.path.join(incoming, "envelope.json")),
        ("fsync", incoming),
        ("rename", os.path.join(active, queue_id)),
        ("fsync", active),
    ]


def test_write_error_is_raised_at_commit_and_discard_cleans_up(spool):
    """A failed write is kept, commit raises it, and discard leaves nothing in incoming/."""
    writer = SpoolWriter(spool, new_id())

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    writer._file = Full()  # type: ignore[assignment]
    writer.write(b"x\r\n")
    with pytest.raises(OSError):
        writer.commit(envelope(writer.id))
    writer.discard()
    assert spool.ids(INCOMING) == [] and spool.ids(ACTIVE) == []


def test_save_replaces_the_envelope_without_leftovers(spool):
    """save() rewrites envelope.json through a temp file that does not remain."""
    queue_id = commit(spool)
    changed = spool.load(ACTIVE, queue_id)
    changed.recipients[0].status = "delivered"
    spool.save(ACTIVE, changed)
    assert spool.load(ACTIVE, queue_id).recipients[0].status == "delivered"
    assert sorted(os.listdir(spool.folder(ACTIVE, queue_id))) == ["body", "envelope.json"]


def test_save_of_a_moved_message_raises_message_gone(spool):
    """Saving where the message no longer is (the operator moved it) raises MessageGone."""
    queue_id = commit(spool)
    spool.move(queue_id, ACTIVE, DEFERRED)
    with pytest.raises(MessageGone):
        spool.save(ACTIVE, envelope(queue_id))


def test_move_of_a_missing_message_raises_message_gone(spool):
    """Moving a message that is not in the source state raises MessageGone."""
    with pytest.raises(MessageGone):
        spool.move(new_id(), DEFERRED, ACTIVE)


def test_unknown_format_version_is_refused():
    """An envelope of another format version is not guessed at."""
    raw = envelope("0123456789abcdef").to_json().replace(b'"version": 1', b'"version": 99')
    with pytest.raises(ValueError):
        Envelope.from_json(raw)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 1000])
def test_read_lines_gives_whole_lines_that_rebuild_the_body(tmp_path, chunk):
    """Every region starts at a line start and ends at a line end, whatever the read size."""
    path = tmp_path / "body"
    body = b"".join(b"." * (i % 4) + b"line %d\r\n" % i for i in range(50))
    path.write_bytes(body)
    regions = list(read_lines(str(path), chunk))
    assert b"".join(regions) == body
    assert all(region.endswith(b"\r\n") for region in regions)


def test_read_headers_stops_at_the_blank_line(tmp_path):
    """The header section is everything before the first empty line."""
    path = tmp_path / "body"
    path.write_bytes(BODY)
    assert read_headers(str(path)) == b"Subject: hi\r\nMessage-ID: <m@example.com>\r\n"


def test_queue_ids_sort_by_arrival_and_validate():
    """Ids are lowercase hex, sortable by time; anything else is not an id."""
    first, second = new_id(1000.0), new_id(2000.0)
    assert first < second and valid_id(first)
    assert not valid_id("../etc") and not valid_id("ABCDEF0123")


# --- format 2: the envelope as a journal (issue 13) ---------------------------------------------


def test_a_state_change_appends_one_line_and_the_last_line_wins(spool):
    """save() appends a whole-envelope line to envelope.json (no temp file, no rename)."""
    queue_id = commit(spool)
    path = os.path.join(spool.folder(ACTIVE, queue_id), "envelope.json")
    inode = os.stat(path).st_ino
    changed = spool.load(ACTIVE, queue_id)
    changed.recipients[0].in_flight = True
    spool.save(ACTIVE, changed)
    changed.recipients[0].status = "delivered"
    spool.save(ACTIVE, changed, durable=False)
    with open(path, "rb") as handle:
        lines = [line for line in handle.read().split(b"\n") if line]
    assert len(lines) == 3 and os.stat(path).st_ino == inode
    assert spool.load(ACTIVE, queue_id) == changed


def test_an_append_cut_short_by_a_crash_is_skipped(spool):
    """A torn last line (never acknowledged) leaves the previous envelope; the next append reads."""
    queue_id = commit(spool)
    path = os.path.join(spool.folder(ACTIVE, queue_id), "envelope.json")
    first = spool.load(ACTIVE, queue_id)
    changed = spool.load(ACTIVE, queue_id)
    changed.recipients[0].status = "delivered"
    with open(path, "ab") as handle:
        handle.write(b"\n" + changed.to_record()[:40])  # the crash
    assert spool.load(ACTIVE, queue_id) == first
    spool.save(ACTIVE, changed)
    assert spool.load(ACTIVE, queue_id) == changed


def test_a_format_1_envelope_is_read_and_converted_on_its_first_change(spool):
    """An envelope written by the format 1 code is read as it is; its first save rewrites it as
    format 2 (through envelope.json.tmp) and later saves append."""
    queue_id = commit(spool)
    path = os.path.join(spool.folder(ACTIVE, queue_id), "envelope.json")
    old = envelope(queue_id)
    with open(path, "wb") as handle:
        handle.write(old.to_json())
    assert spool.load(ACTIVE, queue_id) == old
    old.recipients[0].attempts = 1
    spool.save(ACTIVE, old)
    with open(path, "rb") as handle:
        assert handle.read().startswith(b'{"version":2,')
    assert spool.load(ACTIVE, queue_id) == old
    assert sorted(os.listdir(spool.folder(ACTIVE, queue_id))) == ["body", "envelope.json"]


TLS = {
    "client_tls_version": "TLSv1.3",
    "client_tls_cipher": "TLS_AES_256_GCM_SHA384",
    "client_cert_sha256": "ab" * 32,
}


def test_the_app_tls_is_journalled_in_format_2_and_left_out_of_format_1(spool):
    """Format 2 keeps the app's TLS facts; format 1 (convert-back) leaves them out, as releases
    before issue 13 refuse fields they do not know; it reads back with them null."""
    queue_id = commit(spool)
    tls = dataclasses.replace(envelope(queue_id), **TLS)
    spool.save(ACTIVE, tls)
    assert spool.load(ACTIVE, queue_id) == tls
    old = tls.to_json()
    assert b"client_tls" not in old and b"client_cert" not in old
    assert Envelope.from_json(old) == envelope(queue_id)


@pytest.mark.parametrize("version", [1, 2])
def test_an_envelope_without_the_app_tls_fields_reads_them_as_null(version):
    """Envelopes written before issue 14 (format 1, and format 2 lines) have no client TLS fields."""
    import json

    data = json.loads(envelope("0123456789abcdef").to_record())
    for name in TLS:
        del data[name]
    data["version"] = version
    read = Envelope.from_json(json.dumps(data).encode())
    assert (read.client_tls_version, read.client_tls_cipher, read.client_cert_sha256) == (
        None,
        None,
        None,
    )
    assert read == envelope("0123456789abcdef")


def test_a_long_journal_is_compacted_to_one_line(spool, monkeypatch):
    """Past COMPACT_AT octets the next save rewrites the journal as one line."""
    monkeypatch.setattr(spool_module, "COMPACT_AT", 2000)
    queue_id = commit(spool)
    path = os.path.join(spool.folder(ACTIVE, queue_id), "envelope.json")
    changed = spool.load(ACTIVE, queue_id)
    for attempt in range(20):
        changed.recipients[0].attempts = attempt
        spool.save(ACTIVE, changed, durable=False)
    assert os.path.getsize(path) < 2000 + 2 * len(changed.to_record())
    assert spool.load(ACTIVE, queue_id) == changed


def test_commit_all_fsyncs_active_once_for_the_batch(spool, monkeypatch):
    """Three messages committed together: each body, envelope and folder fsynced, active/ once."""
    writers = []
    for _ in range(3):
        writer = SpoolWriter(spool, new_id())
        writer.write(BODY)
        writers.append(writer)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        spool_module.os,
        "fsync",
        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1],
    )
    batch = [(lambda w=w: w.commit(envelope(w.id)), w) for w in writers]
    assert writer_module.commit_all(batch) == [None, None, None]
    assert synced.count(spool.folder(ACTIVE)) == 1 and synced[-1] == spool.folder(ACTIVE)
    assert len(synced) == 3 * 3 + 1
    assert spool.ids(ACTIVE) == sorted(w.id for w in writers)


def test_commit_all_takes_the_batch_back_when_active_cannot_be_synced(spool, monkeypatch):
    """The shared fsync of active/ fails: every message of the batch is back out of active/ and
    each gets the error (its app hears 452); one whose own commit failed keeps its own error."""
    good = SpoolWriter(spool, new_id())
    good.write(BODY)
    bad = SpoolWriter(spool, new_id())
    bad.write(BODY)
    bad.error = OSError(28, "No space left on device")
    real = spool_module.fsync_dir

    def fsync_dir(path: str) -> None:
        if path == spool.folder(ACTIVE):
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    errors = writer_module.commit_all(
        [
            (lambda: good.commit(envelope(good.id)), good),
            (lambda: bad.commit(envelope(bad.id)), bad),
        ]
    )
    assert [e.errno if e else None for e in errors] == [5, 28]
    assert spool.ids(ACTIVE) == [] and spool.ids(INCOMING) == sorted([good.id, bad.id])


def test_remove_takes_the_folder_whatever_it_holds(spool, tmp_path):
    """remove() of a message folder with only its files, and of one holding a link and an extra
    file: both gone, the link's target untouched."""
    plain, odd = commit(spool), commit(spool)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    folder = spool.folder(ACTIVE, odd)
    os.remove(os.path.join(folder, "body"))
    os.symlink(outside, os.path.join(folder, "body"))
    open(os.path.join(folder, "envelope.json.tmp"), "wb").close()
    spool.remove(ACTIVE, plain)
    spool.remove(ACTIVE, odd)
    assert spool.ids(ACTIVE) == [] and outside.read_bytes() == b"keep"
