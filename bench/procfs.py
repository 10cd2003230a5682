"""What Linux says about a running process: memory (VmRSS, VmHWM) and CPU time, from /proc."""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) in KiB; empty if the process is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except FileNotFoundError:
        pass
    return found


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time the process has used so far (0.0 if it is gone).

    With `reaped`, add the time of children it has already waited for (cutime, cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its live descendants and its reaped children (Postfix's daemons)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current, reaped=current == pid)
        todo.extend(children.get(current, []))
    return total


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def machine_ticks() -> tuple[int, int]:
    """(all CPU ticks, idle + iowait ticks) since boot, summed over every core (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited and been waited for (smtp-source)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tied_to_parent(command: list[str]) -> list[str]:
    """`command` run so that it gets SIGTERM if the bench itself is killed (util-linux setpriv)."""
    import shutil

    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command
