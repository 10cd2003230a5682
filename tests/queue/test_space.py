"""queue.min_free: the spool's free space, cached on a clock, and the floor's refusals and audit."""

from __future__ import annotations

import os

from twisted.internet import task

from gateway.queue.space import FreeSpace, free_bytes, shown
from gateway.testing.audit import CapturedAudit

MiB = 1024 * 1024


class Disk:
    """A file system whose free bytes the test sets, counting how often it is asked."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked = 0

    def __call__(self, path: str) -> int:
        self.asked += 1
        return self.free


def test_free_space_is_measured_at_most_once_per_second_of_the_clock():
    """Many messages within a second cost one statvfs; a second later it is asked again."""
    clock, disk = task.Clock(), Disk(500 * MiB)
    space = FreeSpace("/spool", 100 * MiB, clock=clock.seconds, measure=disk)
    for _ in range(50):
        assert space.refusal() is None
    assert disk.asked == 1
    disk.free = 10 * MiB
    clock.advance(0.5)
    assert space.refusal() is None  # still the cached figure
    clock.advance(0.6)
    assert space.refusal() is not None
    assert disk.asked == 2


def test_below_the_floor_the_refusal_names_the_key_the_free_space_and_the_floor():
    """The reason (for the audit) says queue.min_free, what is free and the floor, in MiB."""
    space = FreeSpace("/spool", 100 * MiB, clock=lambda: 0.0, measure=Disk(80 * MiB))
    assert space.refusal() == (
        "queue.min_free: 80.0 MiB free on the spool's file system (/spool), "
        "below the floor of 100.0 MiB"
    )


def test_announced_size_counts_against_the_floor():
    """SIZE= at MAIL: free minus the size must stay above the floor."""
    space = FreeSpace("/spool", 100 * MiB, clock=lambda: 0.0, measure=Disk(130 * MiB))
    assert space.refusal(20 * MiB) is None
    reason = space.refusal(40 * MiB)
    assert reason is not None and "40.0 MiB announced (SIZE=)" in reason


def test_a_floor_of_zero_refuses_nothing_and_never_measures():
    """min_free = 0: only a failed write answers 452 4.3.1."""
    disk = Disk(0)
    space = FreeSpace("/spool", 0, clock=lambda: 0.0, measure=disk)
    assert space.refusal(10 * MiB) is None
    assert disk.asked == 0


def test_a_file_system_that_cannot_be_measured_does_not_refuse():
    """statvfs failing (the spool gone): no refusal here, the write says what is wrong."""

    def broken(path: str) -> int:
        raise FileNotFoundError(2, "No such file or directory")

    space = FreeSpace("/spool", 100 * MiB, clock=lambda: 0.0, measure=broken)
    assert space.refusal() is None
    assert space.free() is None


def test_free_bytes_is_what_statvfs_gives_an_unprivileged_writer(tmp_path):
    """f_bavail x f_frsize of the folder's file system."""
    info = os.statvfs(tmp_path)
    assert abs(free_bytes(str(tmp_path)) - info.f_bavail * info.f_frsize) < 64 * MiB


def test_watch_logs_the_crossing_once_each_way():
    """queue.space_low when the floor is crossed, once; queue.space_restored when back above it."""
    clock, disk = task.Clock(), Disk(500 * MiB)
    captured = CapturedAudit()
    audit = captured.log()
    space = FreeSpace("/spool", 100 * MiB, clock=clock.seconds, measure=disk)
    space.watch(audit)
    disk.free = 50 * MiB
    for _ in range(3):
        clock.advance(1.0)
        space.watch(audit)
    disk.free = 200 * MiB
    clock.advance(1.0)
    space.watch(audit)
    names = [e["event"] for e in captured.events]
    assert names == ["queue.space_low", "queue.space_restored"]
    low = captured.events[0]
    assert (low["free_bytes"], low["min_free"], low["path"]) == (50 * MiB, 100 * MiB, "/spool")


def test_a_failed_measure_after_a_low_alarm_says_nothing():
    """statvfs failing while the spool is low: no queue.space_restored with a made-up figure;
    the alarm stays until a measure shows room again."""
    clock, disk = task.Clock(), Disk(50 * MiB)
    captured = CapturedAudit()
    audit = captured.log()
    space = FreeSpace("/spool", 100 * MiB, clock=clock.seconds, measure=disk)
    space.watch(audit)

    def broken(path: str) -> int:
        raise OSError(5, "Input/output error")

    space.measure = broken
    clock.advance(1.0)
    space.watch(audit)
    assert [e["event"] for e in captured.events] == ["queue.space_low"] and space.low
    space.measure = Disk(200 * MiB)
    clock.advance(1.0)
    space.watch(audit)
    assert [e["event"] for e in captured.events] == ["queue.space_low", "queue.space_restored"]


def test_sizes_are_shown_for_people():
    assert (shown(512), shown(1536), shown(3 * 1024**3)) == ("512 B", "1.5 KiB", "3.0 GiB")
