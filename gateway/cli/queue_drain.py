"""``mailgate queue drain | resume | status``: take an instance out before it is removed.

``drain`` writes the spool's drain marker (`gateway.queue.drain`); the running gateway
takes it up within about a second: queue-mode mail gets ``451 4.3.2``, ``/readyz`` says
not ready, and what the spool holds is delivered. ``--wait`` returns once a running
gateway has taken the request up and ``incoming/``, ``active/`` and ``deferred/`` are
empty (exit 0), or after ``--timeout`` seconds with what is left (exit 1); with no
spool at ``queue.path`` (relay only) there is nothing to drain (exit 0). ``resume``
takes the request back. ``status`` prints what the spool holds and whether it drains.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.errors import UsageError
from gateway.queue import drain
from gateway.queue.spool import Spool

POLL = 0.5  # seconds between looks while --wait waits
HINT_AFTER = 5.0  # seconds without the gateway taking the request up before saying so


def _when(line: str | None) -> str:
    at = drain.requested_at(line or "")
    if at is None:
        return "at an unknown time"
    return "since " + dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _left(held: drain.Holding) -> str:
    return (
        f"{held.pending} message(s) to deliver (incoming {held.incoming}, active {held.active}, "
        f"deferred {held.deferred}); held {held.hold}, dead {held.dead}, "
        f"quarantine {held.quarantine}"
    )


def state_line(spool: Spool) -> str:
    """``draining since ...`` (and whether the gateway took it up) or ``accepting``."""
    line = drain.requested(spool)
    if line is None:
        return "accepting queued mail"
    taken = "taken up by the gateway" if drain.seen(spool) == line else "not taken up yet"
    return f"draining {_when(line)} ({taken})"


def cmd_status(spool: Spool) -> int:
    print(f"state: {state_line(spool)}")
    print(f"spool: {spool.path}: {_left(drain.holding(spool))}")
    return 0


def cmd_drain(spool: Spool, args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout: found {args.timeout}, expected seconds above 0")
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout: only with --wait")
    if not spool.exists():  # relay only (or never queued): nothing is held, nothing to wait for
        print(f"{spool.path}: no spool here; nothing to drain")
        return 0
    spool.check()
    line, new = drain.request(spool)
    print(
        f"{spool.path}: drain requested; queue-mode mail gets 451 4.3.2 once the gateway takes it up"
        if new
        else f"{spool.path}: already draining {_when(line)}"
    )
    if not args.wait:
        return 0
    return wait(spool, line, args.timeout, time.monotonic, time.sleep)


def wait(
    spool: Spool,
    line: str,
    timeout: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    """Until the gateway took up `line` and holds nothing to deliver; 1 after `timeout` seconds."""
    started = clock()
    hinted = False
    while True:
        taken = drain.seen(spool) == line
        held = drain.holding(spool)
        if drain.requested(spool) != line:
            print(
                f"{spool.path}: the drain was taken back (mailgate queue resume)", file=sys.stderr
            )
            return 1
        if taken and not held.pending:
            print(
                f"{spool.path}: drained; held {held.hold}, dead {held.dead}, "
                f"quarantine {held.quarantine} left"
            )
            return 0
        waited = clock() - started
        if not taken and not hinted and waited >= HINT_AFTER:
            hinted = True
            print(
                f"{spool.path}: waiting for the gateway to take the drain up (is it running?)",
                file=sys.stderr,
            )
        if timeout is not None and waited >= timeout:
            print(
                f"{spool.path}: not drained after {timeout:g} s: {_left(held)}"
                + ("" if taken else "; no running gateway took the drain up"),
                file=sys.stderr,
            )
            return 1
        sleep(POLL)


def cmd_resume(spool: Spool) -> int:
    if drain.cancel(spool):
        print(f"{spool.path}: drain taken back; queue-mode mail is accepted again within a second")
    else:
        print(f"{spool.path}: was not draining")
    return 0


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser], spool: Any) -> None:
    """Register drain, resume and status on the ``mailgate queue`` subparsers."""
    command("status", lambda args: cmd_status(spool(args)), "what the spool holds; draining?")
    parser = command(
        "drain",
        lambda args: cmd_drain(spool(args, must_exist=False), args),
        "stop taking queued mail (451 4.3.2, /readyz not ready) and deliver what the spool holds",
    )
    parser.add_argument(
        "--wait", action="store_true", help="return once the gateway holds nothing to deliver"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 1, saying what is left)",
    )
    command("resume", lambda args: cmd_resume(spool(args)), "take a drain back: accept queued mail")
