"""``mailgate queue hold | release``: keep a message, or every message for an upstream, undelivered.

``hold ID`` renames ``active/ID`` or ``deferred/ID`` to ``hold/ID`` (fsynced, the same atomic
step the other commands use): the runner never starts a message in ``hold/``; a round already
under way finishes and its record follows the message to ``hold/``. ``release ID`` renames it to
``active/``: delivered at once. ``hold --upstream NAME`` adds NAME to the spool's
``held-upstreams`` (`gateway.queue.holds`): recipients whose next upstream is NAME wait, their
other recipients go on; ``release --upstream NAME`` takes it back, ``release --all`` releases
every held message and upstream. The running gateway takes each change up within a second.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from gateway.config.environment import from_environment
from gateway.config.toml import load
from gateway.errors import MailgateError, UsageError
from gateway.queue import holds
from gateway.queue.spool import ACTIVE, HOLD, QUEUED, MessageGone, Spool
from gateway.terminal import printable

Find = Callable[[Spool, str], str]


def _upstream(args: argparse.Namespace, spool: Spool, *, releasing: bool) -> str:
    """The ``--upstream`` NAME: a configured upstream (or, to release, one held now)."""
    config = load(args.config) if args.config else from_environment()
    name = args.upstream
    if name in config.upstreams or (releasing and name in holds.held(spool)):
        if not holds.valid_name(name):
            raise UsageError(f"--upstream: {name!r} cannot be held (spaces or control characters)")
        return str(name)
    known = ", ".join(sorted(config.upstreams)) or "none"
    raise UsageError(
        f"--upstream: found {name!r}, expected an upstream of {config.source} ({known})"
    )


def _one_of(args: argparse.Namespace, command: str, *, all_too: bool = False) -> None:
    given = [args.id is not None, args.upstream is not None] + ([args.all] if all_too else [])
    if sum(given) != 1:
        what = "ID, --upstream NAME or --all" if all_too else "ID or --upstream NAME"
        raise UsageError(f"queue {command}: give one of {what}")


def _make_hold_folder(spool: Spool) -> None:
    """``hold/`` in a spool made before holds (0700), the spool user's even when root makes it
    (``sudo mailgate queue hold``): the daemon lists it and renames out of it."""
    folder = spool.folder(HOLD)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    if os.geteuid() == 0 and spool.owner != 0:
        os.chown(folder, spool.owner, -1, follow_symlinks=False)
    os.chmod(folder, 0o700)  # not left to the umask (just made: not a link)


def cmd_hold(spool: Spool, args: argparse.Namespace, find: Find) -> int:
    _one_of(args, "hold")
    if args.upstream is not None:
        name = _upstream(args, spool, releasing=False)
        new = holds.hold(spool, name)
        print(
            f"upstream {name}: held; its queued recipients wait until "
            f"`mailgate queue release --upstream {name}`"
            if new
            else f"upstream {name}: already held"
        )
        return 0
    queue_id = args.id
    state = find(spool, queue_id)
    if state == HOLD:
        print(f"{queue_id}: already held")
        return 0
    if state not in QUEUED:
        raise MailgateError(
            f"queue: {queue_id} is {state}, not queued; only active or deferred mail can be held"
        )
    _make_hold_folder(spool)
    spool.check()
    try:
        spool.move(queue_id, state, HOLD)
    except MessageGone:
        raise MailgateError(f"queue: {queue_id} moved while holding it; try again") from None
    print(f"{queue_id}: held (was {state}); `mailgate queue release {queue_id}` delivers it")
    return 0


def _release_message(spool: Spool, queue_id: str) -> bool:
    try:
        spool.move(queue_id, HOLD, ACTIVE)
    except MessageGone:
        return False
    return True


def cmd_release(spool: Spool, args: argparse.Namespace, find: Find) -> int:
    _one_of(args, "release", all_too=True)
    if args.upstream is not None:
        name = _upstream(args, spool, releasing=True)
        done = holds.release(spool, [name])
        print(f"upstream {name}: released" if done else f"upstream {name}: was not held")
        return 0
    if args.all:
        upstreams = holds.release(spool, holds.held(spool))
        released = [q for q in spool.ids(HOLD) if _release_message(spool, q)]
        shown = ", ".join(upstreams) or "none"
        print(printable(f"{len(released)} message(s) released; upstreams released: {shown}"))
        return 0
    queue_id = args.id
    state = find(spool, queue_id)
    if state != HOLD:
        print(f"{queue_id}: not held ({state})")
        return 0
    if not _release_message(spool, queue_id):
        raise MailgateError(f"queue: {queue_id} moved while releasing it; try again")
    print(f"{queue_id}: released; due now")
    return 0


def add_commands(
    sub: Any, command: Callable[..., argparse.ArgumentParser], spool: Any, find: Find
) -> None:
    """Register hold and release on the ``mailgate queue`` subparsers."""
    hold = command(
        "hold",
        lambda args: cmd_hold(spool(args), args, find),
        "keep a message (ID) or every message for an upstream (--upstream NAME) undelivered",
    )
    hold.add_argument("id", metavar="ID", nargs="?")
    hold.add_argument("--upstream", metavar="NAME", help="hold the upstream [upstreams.NAME]")
    release = command(
        "release",
        lambda args: cmd_release(spool(args), args, find),
        "deliver a held message (ID) or upstream (--upstream NAME) again; --all: everything held",
    )
    release.add_argument("id", metavar="ID", nargs="?")
    release.add_argument("--upstream", metavar="NAME", help="release the upstream [upstreams.NAME]")
    release.add_argument("--all", action="store_true", help="every held message and upstream")
