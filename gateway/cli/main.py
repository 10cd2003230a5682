"""The ``mailgate`` command: run, check, explain, demo, queue.

Expected failures print ``mailgate: ...`` on stderr and exit non-zero without a
traceback: 1 for an invalid configuration or a failure while running, 2 for a
command line or environment that does not say enough to start.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from gateway.cli import oauth as oauth_cli
from gateway.config.environment import from_environment
from gateway.config.model import Config
from gateway.config.secrets import resolve_password
from gateway.config.toml import load
from gateway.errors import ConfigError, MailgateError, UsageError
from gateway.outbound import grants
from gateway.policy import budgets
from gateway.policy import rules as policy
from gateway.smtp import replies
from gateway.smtp.address import AddressError, parse_path
from gateway.terminal import printable


def _load(path: str | None) -> Config:
    return load(path) if path else from_environment()


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon.run import run

    return run(_load(args.config), lambda: _load(args.config))


def cmd_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    try:
        config = load(args.config)
    except ConfigError as exc:
        problems.extend(str(p) for p in exc.problems)
        config = None
    warnings: list[str] = []
    if config is not None:
        if config.listener.tls_wanted:  # certificate, key and client CA: readable, matching, valid
            from gateway.daemon.listener_tls import check_files

            checked = check_files(config.listener, args.config)
            problems.extend(str(p) for p in checked.problems)
            warnings = checked.warnings
        for upstream in config.upstreams.values():
            try:
                resolve_password(upstream)
                if upstream.oauth is not None:
                    grants.resolve(upstream.oauth, upstream.name)
            except MailgateError as exc:
                problems.append(f"{args.config}: {exc}")
        if os.path.lexists(config.queue.path):  # the gateway would deliver from it: trusted?
            from gateway.queue.spool import Spool

            problems.extend(f"{args.config}: {p}" for p in Spool(config.queue.path).problems())
            warnings.extend(_space_warnings(args.config, config))
        if config.cluster is not None:
            problems.extend(_check_cluster(args.config, config, connect=args.connect))
        if not config.rules:
            problems.append(
                f"{args.config}: rules: found no rules, expected at least one [[rules]] "
                "(with none, every recipient is refused)"
            )
    for warning in warnings:
        print(printable(f"warning: {warning}"), file=sys.stderr)
    if problems:
        for problem in problems:
            print(printable(problem), file=sys.stderr)
        print(printable(f"mailgate: {args.config}: {len(problems)} problem(s)"), file=sys.stderr)
        return 1
    assert config is not None
    print(
        printable(
            f"{args.config}: OK ({len(config.upstreams)} upstream(s), {len(config.rules)} rule(s))"
        )
    )
    return 0


def _space_warnings(source: str, config: Config) -> list[str]:
    """``queue.min_free`` against the spool's free space now (a warning: it changes by itself)."""
    from gateway.queue import space

    floor = config.queue.min_free
    try:
        free = space.free_bytes(config.queue.path)
    except OSError as exc:
        return [f"{source}: queue.min_free: cannot measure {config.queue.path}: {exc.strerror}"]
    if floor and free < floor:
        return [
            f"{source}: queue.min_free: {space.shown(free)} free on {config.queue.path}, below the "
            f"floor of {space.shown(floor)}: queue-mode mail gets 452 4.3.1 until space is freed"
        ]
    return []


def _check_cluster(source: str, config: Config, *, connect: bool) -> list[str]:
    """``[cluster]``: its password readable; with `connect`, Redis answers PING (TLS verified)."""
    from gateway.cluster import store

    assert config.cluster is not None
    try:
        secret = store.password(config.cluster)
    except MailgateError as exc:
        key = "password_env" if config.cluster.password_env else "password_file"
        return [f"{source}: cluster.{key}: {exc}"]
    if not connect:
        return []
    patient = dataclasses.replace(config.cluster, timeout=max(config.cluster.timeout, 3.0))
    shared = store.Store(store.client(patient, secret, 1), "mailgate-check")
    try:
        shared.ping()
    except store.StoreError as exc:
        url = store.shown(config.cluster.redis_url)
        if exc.refused_password:
            key = next(
                (
                    f"cluster.{k}"
                    for k in ("password_env", "password_file")
                    if getattr(config.cluster, k)
                ),
                "cluster.password_env",
            )
            return [f"{source}: {key}: {url} refused the password, or wants one ({exc})"]
        return [f"{source}: cluster.redis_url: {url} does not answer PING ({exc})"]
    finally:
        shared.close()
    return []


def _say(line: str) -> None:
    """One line of `explain`: addresses and reply texts are shown, never obeyed by the terminal."""
    print(printable(line))


def cmd_explain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    try:
        client = policy.parse_client(args.client)
    except ValueError:
        raise UsageError(f"--client: found {args.client!r}, expected an IP address") from None
    try:
        sender = parse_path(f"<{args.sender}>", sender=True)
    except AddressError as exc:
        raise UsageError(f"--from: {args.sender!r}: {exc.reply.text}") from None
    allowed = policy.client_allowed(config, client)
    _say(f"client {client}: {'allowed' if allowed else 'DENIED'} by listener.allowed_clients")
    if not allowed:
        _say(f"  every command would get: {replies.GREETING_DENIED}")
    if args.app is not None:
        if args.app not in config.apps:
            raise UsageError(
                f"--app: found {args.app!r}, expected one of the [apps] ({', '.join(config.apps) or 'none'})"
            )
        owned = policy.sender_owned(config.apps[args.app].senders, sender.text)
        _say(f"app {args.app!r}: sender {'owned' if owned else 'NOT owned (553 5.7.1 at MAIL)'}")
    _say(f"sender <{sender.text}>")
    status = 0
    for text in args.recipients:
        try:
            recipient = parse_path(f"<{text}>", sender=False)
        except AddressError as exc:
            _say(f"  <{text}>: refused at RCPT: {exc.reply}")
            continue
        decision = policy.decide(config, client, sender, recipient, args.app)
        rule = f"rule {decision.rule.name!r}" if decision.rule else "no rule matches"
        if (
            decision.action == "relay"
            and decision.upstreams
            and decision.rule
            and decision.rule.delivery == "queue"
        ):
            up = decision.upstreams[0]
            _say(
                f"  <{recipient.text}>: {rule} -> queue for delivery via upstream {up.name!r} "
                f"({up.host}:{up.port}, tls={up.tls}, min TLS {up.min_tls_version})"
            )
        elif decision.action == "relay" and decision.upstreams:
            hops = ", then ".join(
                f"upstream {up.name!r} ({up.host}:{up.port}, tls={up.tls}, min TLS {up.min_tls_version})"
                for up in decision.upstreams
            )
            _say(f"  <{recipient.text}>: {rule} -> relay via {hops}")
        else:
            _say(f"  <{recipient.text}>: {rule} -> reject: {decision.reply}")
            continue
        for up in decision.upstreams:
            _say(f"    {up.name}: {budgets.describe(up, sender.text)}")
    return status if allowed else 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from gateway.policy.passwords import make_hash

    if sys.stdin.isatty():
        password = getpass.getpass("App password: ")
        if getpass.getpass("Again: ") != password:
            raise MailgateError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        raise MailgateError("the password must be at least 12 characters long")
    print(make_hash(password, args.scheme))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(args.policy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"mailgate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument(
        "--config", metavar="FILE", help="TOML config (default: embedded, from MAILGATE_UPSTREAM)"
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file and report every problem")
    check.add_argument("--config", metavar="FILE", required=True)
    check.add_argument(
        "--connect", action="store_true", help="also ping the [cluster] Redis (TLS verified)"
    )
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser(
        "explain", help="show which rule, action and upstream apply; sends nothing"
    )
    explain.add_argument("--config", metavar="FILE")
    explain.add_argument("--client", required=True, metavar="IP")
    explain.add_argument(
        "--from", dest="sender", required=True, metavar="ADDR", help="envelope sender ('' for <>)"
    )
    explain.add_argument("--app", metavar="NAME", help="as if authenticated as this [apps.NAME]")
    explain.add_argument("--to", dest="recipients", required=True, action="append", metavar="ADDR")
    explain.set_defaults(func=cmd_explain)

    hashing = sub.add_parser("hash-password", help="make a password_hash for an [apps.NAME] table")
    hashing.add_argument("--scheme", choices=("argon2", "bcrypt", "scrypt"), default="argon2")
    hashing.set_defaults(func=cmd_hash_password)

    demo = sub.add_parser("demo", help="the whole path on this machine, with local upstreams")
    demo.add_argument("--policy", metavar="FILE", help="demo policy (default: policies/demo.toml)")
    demo.set_defaults(func=cmd_demo)

    oauth_cli.add_commands(sub)

    from gateway.cli.audit import add_commands as add_audit_commands

    add_audit_commands(sub)

    from gateway.cli.queue import add_commands as add_queue_commands

    add_queue_commands(sub)
    return parser


def _version() -> str:
    from gateway import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        _report(exc)
        return 2
    except MailgateError as exc:  # ConfigError included: its problems, one per line
        _report(exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _report(exc: MailgateError) -> None:
    """An expected failure on stderr; its text may quote a file, a client or a server."""
    lines = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [f"mailgate: {exc}"]
    for line in lines:
        print(printable(line), file=sys.stderr)
