"""gateway.queue.drain: the drain marker and the runner's view of it (files only, no reactor)."""

from __future__ import annotations

import os

import pytest

from gateway.queue import drain
from gateway.queue.spool import DEFERRED, INCOMING, Spool


def spool_at(tmp_path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    return spool


def test_request_is_idempotent_and_cancel_removes_it(tmp_path):
    """A second drain keeps the first request's time; resume removes it, once."""
    spool = spool_at(tmp_path)
    line, new = drain.request(spool, now=100.0)
    assert new and line == "requested_at=100.000" and drain.requested(spool) == line
    assert drain.request(spool, now=200.0) == (line, False)
    assert drain.cancel(spool) is True and drain.cancel(spool) is False
    assert drain.requested(spool) is None


def test_watch_reports_start_once_and_marks_it_seen(tmp_path):
    """The runner's first look after a request says 'started' and writes draining.seen; then nothing."""
    spool = spool_at(tmp_path)
    watch = drain.DrainWatch(spool)
    assert watch.look() is None and not watch.draining
    line, _ = drain.request(spool, now=5.0)
    assert watch.look() == "started" and watch.draining and drain.seen(spool) == line
    assert watch.look() is None


def test_watch_reports_resume_and_forgets_seen(tmp_path):
    """After resume the next look says 'resumed' and draining.seen is gone."""
    spool = spool_at(tmp_path)
    watch = drain.DrainWatch(spool)
    drain.request(spool)
    watch.look()
    drain.cancel(spool)
    assert watch.look() == "resumed" and not watch.draining and drain.seen(spool) is None


def test_finished_once_when_nothing_is_left_to_deliver(tmp_path):
    """finished() is True once per drain, when incoming, active and deferred are empty."""
    spool = spool_at(tmp_path)
    os.mkdir(spool.folder(DEFERRED, "0" * 14 + "a" * 8))
    watch = drain.DrainWatch(spool)
    drain.request(spool)
    watch.look()
    assert drain.holding(spool).pending == 1 and watch.finished(drain.holding(spool)) is False
    os.rmdir(spool.folder(DEFERRED, "0" * 14 + "a" * 8))
    assert watch.finished(drain.holding(spool)) is True
    assert watch.finished(drain.holding(spool)) is False


def test_a_link_in_place_of_the_marker_is_not_a_request(tmp_path):
    """The marker is read without following links: a symbolic link there does not drain."""
    spool = spool_at(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("requested_at=1.000\n")
    os.symlink(target, os.path.join(spool.path, drain.MARKER))
    assert drain.requested(spool) is None


def test_incoming_counts_as_held(tmp_path):
    """A message still being received counts: --wait waits for it to be committed and delivered."""
    spool = spool_at(tmp_path)
    os.mkdir(spool.folder(INCOMING, "1" * 14 + "b" * 8))
    assert drain.holding(spool).incoming == 1 and drain.holding(spool).pending == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_a_drain_asked_as_root_is_readable_by_the_spool_user(tmp_path):
    """sudo mailgate queue drain: the marker is the spool user's, so the daemon running as that
    user sees the drain (a root-owned 0600 marker read as 'not draining')."""
    spool_at(tmp_path)
    os.chown(tmp_path / "spool", 4321, 4321)
    spool = Spool(str(tmp_path / "spool"))  # as the command sees it
    drain.request(spool, now=100.0)
    info = os.stat(os.path.join(spool.path, drain.MARKER))
    assert (info.st_uid, info.st_mode & 0o777) == (4321, 0o600)
