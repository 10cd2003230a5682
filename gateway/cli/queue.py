"""``mailgate queue ...``: look at and steer the spool, safe while the daemon runs.

Every command acts by reading envelopes and renaming message folders — the
same atomic step the runner uses — so it never writes a file the runner may be
writing. ``retry`` moves ``deferred/ID`` to ``active/ID``; ``delete`` moves a
message to ``trash/`` (the runner logs ``message.deleted`` and removes it, at
once or at its next start); ``requeue`` resets the failed recipients of a dead
letter to pending and moves it to ``active/``; ``hold`` and ``release``
(`gateway.cli.queue_hold`) move a message to and from ``hold/`` or write the spool's
``held-upstreams``; ``drain``, ``resume`` and ``status``
(`gateway.cli.queue_drain`) write or read the spool's drain marker. The running daemon looks at the
spool every second, so a command takes effect within about a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway.cli import queue_drain, queue_hold
from gateway.config.environment import from_environment
from gateway.config.toml import load
from gateway.errors import MailgateError, UsageError
from gateway.outbound.pacing import is_paced
from gateway.queue import holds
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    FAILED,
    HOLD,
    PENDING,
    QUARANTINE,
    QUEUED,
    TRASH,
    Envelope,
    EnvelopeInvalid,
    MessageGone,
    Spool,
    valid_id,
)
from gateway.terminal import printable


def _spool(args: argparse.Namespace, *, must_exist: bool = True) -> Spool:
    config = load(args.config) if args.config else from_environment()
    spool = Spool(config.queue.path)
    if not spool.exists() and not must_exist:
        return spool
    if not spool.exists():
        raise MailgateError(
            f"queue.path: {config.queue.path} is not a spool (no active/ folder); "
            "it is created when the gateway starts with a queue rule"
        )
    spool.check()  # folders others can write: refused, each named (SpoolUnsafe)
    return spool


def _load(spool: Spool, state: str, queue_id: str) -> Envelope:
    try:
        return spool.load(state, queue_id)
    except EnvelopeInvalid as exc:
        raise MailgateError(
            f"queue: {queue_id} ({state}): its envelope or files cannot be used: {exc}"
        ) from None


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _held_upstreams(envelope: Envelope, held: frozenset[str], configured: set[str]) -> list[str]:
    """The held upstreams the message's pending recipients wait for (their next upstream)."""
    hops = {holds.waits_for(r.hops, held, configured.__contains__) for r in envelope.pending}
    return sorted(hop for hop in hops if hop is not None)


def _line(
    envelope: Envelope, state: str, now: float, recipients: list[str], waiting: Sequence[str] = ()
) -> str:
    reply = (envelope.last_reply or "-").replace("\n", " / ")
    waits = ""
    if state == DEFERRED and envelope.pending:
        # "paced=": waiting for a provider budget or a throttling pause, due in that long
        kind = "paced" if is_paced(envelope.last_reply) else "next"
        waits = f"  {kind}={_age(envelope.next_attempt - now)}"
    if waiting:  # "held-upstream=": its next upstream is held (mailgate queue hold --upstream)
        waits += f"  held-upstream={','.join(waiting)}"
    return (
        f"{envelope.id}  {state:<8}  {_age(now - envelope.received):>4}  <{envelope.sender}>  "
        f"{','.join(recipients) or '-'}  attempts={envelope.attempts}{waits}  {reply}"
    )


def _envelopes(spool: Spool, states: tuple[str, ...]) -> list[tuple[str, Envelope]]:
    found = []
    for state in states:
        for queue_id in spool.ids(state):
            try:
                found.append((state, spool.load(state, queue_id)))
            except MessageGone:
                continue  # moved by the runner while we looked
            except (ValueError, OSError) as exc:
                print(printable(f"{queue_id}  {state:<8}  (unreadable envelope: {exc})"))
    return sorted(found, key=lambda item: item[1].id)


def _find(spool: Spool, queue_id: str) -> str:
    if not valid_id(queue_id):
        raise UsageError(
            f"ID: found {queue_id!r}, expected a queue id as printed by `mailgate queue list`"
        )
    state = spool.locate(queue_id)
    if state is None or state == TRASH:
        raise MailgateError(f"queue: no message {queue_id}")
    return state


def cmd_list(args: argparse.Namespace) -> int:
    spool, now = _spool(args), time.time()
    config = load(args.config) if args.config else from_environment()
    held, configured = holds.held(spool), set(config.upstreams)
    messages = _envelopes(spool, (*QUEUED, HOLD))
    for state, envelope in messages:
        waiting = _held_upstreams(envelope, held, configured) if state != HOLD else []
        pending = [r.address for r in envelope.pending]
        print(printable(_line(envelope, state, now, pending, waiting)))
    on_hold = sum(1 for state, _ in messages if state == HOLD)
    upstreams = f"; upstreams held: {', '.join(sorted(held))}" if held else ""
    print(
        printable(
            f"-- {len(messages) - on_hold} message(s) queued, {on_hold} held{upstreams}; "
            f"{queue_drain.state_line(spool)}"
        ),
        file=sys.stderr,
    )
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    spool, now = _spool(args), time.time()
    messages = _envelopes(spool, (DEAD,))
    for state, envelope in messages:
        failed = [r.address for r in envelope.recipients if r.status == FAILED]
        print(printable(_line(envelope, state, now, failed)))
    print(f"-- {len(messages)} dead letter(s)", file=sys.stderr)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    spool, now = _spool(args), time.time()
    ids = spool.ids(QUARANTINE)
    for queue_id in ids:
        try:
            spool.load(QUARANTINE, queue_id)
            problem = "passes its checks now: move it to active/ to deliver it"
        except MessageGone:
            continue
        except (ValueError, OSError) as exc:
            problem = str(exc)
        age = _age(now - int(queue_id[:14], 16) / 1_000_000) if len(queue_id) >= 14 else "?"
        print(printable(f"{queue_id}  {age:>4}  {problem}"))
    print(f"-- {len(ids)} message(s) in quarantine", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    spool = _spool(args)
    state = _find(spool, args.id)
    envelope = _load(spool, state, args.id)
    out: dict[str, Any] = {
        "id": envelope.id,
        "state": state,
        "sender": envelope.sender,
        "message_id": envelope.message_id,
        "size": envelope.size,
        "sha256": envelope.sha256,
        "received": envelope.received,
        "attempts": envelope.attempts,
        "next_attempt": envelope.next_attempt if state == DEFERRED else None,
        "bounce_of": envelope.bounce_of,
        "session_id": envelope.session_id,
        "client_ip": envelope.client_ip,
        "client_tls_version": envelope.client_tls_version,
        "client_tls_cipher": envelope.client_tls_cipher,
        "client_cert_sha256": envelope.client_cert_sha256,
    }
    for key, value in out.items():
        if value is not None:
            print(printable(f"{key}: {value}"))
    if state == HOLD:
        print(f"held: yes, not delivered until `mailgate queue release {envelope.id}`")
    config = load(args.config) if args.config else from_environment()
    waiting = _held_upstreams(envelope, holds.held(spool), set(config.upstreams))
    if waiting and state != HOLD:
        print(printable(f"held upstream: {', '.join(waiting)} (its recipients wait)"))
    for r in envelope.recipients:
        line = (
            f"recipient: <{r.address}> {r.status} via {r.upstream} attempts={r.attempts} "
            f"last_reply={r.last_reply or '-'}" + (" (expired)" if r.expired else "")
        )
        print(printable(line))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    spool = _spool(args)
    if args.all == (args.id is not None):
        raise UsageError("queue retry: give one ID or --all")
    ids = spool.ids(DEFERRED) if args.all else [args.id]
    moved = 0
    for queue_id in ids:
        state = DEFERRED if args.all else _find(spool, queue_id)
        if state == QUARANTINE:
            raise MailgateError(
                f"queue: {queue_id} is in quarantine (its envelope or files were refused); "
                "see `mailgate queue quarantine`"
            )
        if state == DEAD:
            raise MailgateError(
                f"queue: {queue_id} is a dead letter; use `mailgate queue requeue {queue_id}`"
            )
        if state == HOLD:
            raise MailgateError(
                f"queue: {queue_id} is held; use `mailgate queue release {queue_id}`"
            )
        if state != DEFERRED:
            print(f"{queue_id}: already due ({state})")
            continue
        try:
            spool.move(queue_id, DEFERRED, ACTIVE)
            moved += 1
        except MessageGone:
            print(f"{queue_id}: already due or gone")
    print(f"{moved} message(s) due now")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    spool = _spool(args)
    state = _find(spool, args.id)
    try:
        spool.move(args.id, state, TRASH)
    except MessageGone:
        raise MailgateError(f"queue: {args.id} moved while deleting; try again") from None
    print(f"{args.id}: deleted (was {state})")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    spool = _spool(args)
    state = _find(spool, args.id)
    if state != DEAD:
        raise MailgateError(
            f"queue: {args.id} is not a dead letter (it is {state}); use `queue retry`"
        )
    envelope = _load(spool, DEAD, args.id)
    failed = [r for r in envelope.recipients if r.status == FAILED]
    for recipient in failed:
        recipient.status = PENDING
        recipient.expired = False
        recipient.bounced = False
    envelope.requeued = time.time()
    envelope.paced_s = 0.0  # the age counts afresh from now
    envelope.next_attempt = 0.0
    spool.save(DEAD, envelope)  # the runner never writes dead letters
    spool.move(args.id, DEAD, ACTIVE)
    print(f"{args.id}: requeued {len(failed)} recipient(s)")
    return 0


def cmd_convert_back(args: argparse.Namespace) -> int:
    """Rewrite every envelope in format 1, for a release before issue 13 (a rollback)."""
    spool = _spool(args)
    converted = 0
    for state in (ACTIVE, DEFERRED, HOLD, DEAD, TRASH):
        for queue_id in spool.ids(state):
            envelope = _load(spool, state, queue_id)
            try:
                spool.convert_back(state, envelope)
            except MessageGone:
                raise MailgateError(
                    f"queue: {queue_id} moved while converting: stop the gateway first"
                ) from None
            converted += 1
    print(f"converted {converted} envelope(s) to format 1; quarantine/ is left as it is")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``mailgate queue ...`` on the top-level subparsers."""
    queue = subparsers.add_parser("queue", help="list and steer the store-and-forward spool")
    sub = queue.add_subparsers(dest="queue_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, func: Any, text: str, with_id: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=text)
        parser.add_argument("--config", metavar="FILE", help="TOML config (default: embedded)")
        if with_id:
            parser.add_argument("id", metavar="ID")
        parser.set_defaults(func=func)
        return parser

    command(
        "list",
        cmd_list,
        "one line per queued message: id, state, age, sender, pending, attempts, last reply",
    )
    command("show", cmd_show, "every detail of one message", with_id=True)
    retry = command("retry", cmd_retry, "deliver now, ignoring backoff (ID or --all)")
    retry.add_argument("id", metavar="ID", nargs="?")
    retry.add_argument("--all", action="store_true", help="every deferred message")
    command("delete", cmd_delete, "remove a message (logged as message.deleted)", with_id=True)
    command("dead", cmd_dead, "list dead letters")
    command("quarantine", cmd_quarantine, "list messages set aside: envelope or files refused")
    command("requeue", cmd_requeue, "move a dead letter back to the queue", with_id=True)
    command(
        "convert-back",
        cmd_convert_back,
        "rewrite every envelope in spool format 1, for an older release (gateway stopped)",
    )
    queue_hold.add_commands(sub, command, _spool, _find)
    queue_drain.add_commands(sub, command, _spool)
