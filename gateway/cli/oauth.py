"""``mailgate oauth test``: try an OAuth upstream step by step, for operators setting one up.

    mailgate oauth test --config FILE --upstream NAME [--sender ADDR]

1. fetch an access token from the upstream's token endpoint (never printed);
2. connect, verify TLS, EHLO and authenticate with XOAUTH2 / OAUTHBEARER;
3. QUIT — no mail is sent.

Each step prints one line saying what happened; exit status 0 when all passed,
1 at the first failure, 2 for a command line that does not say enough.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from gateway.config.model import Config, UpstreamConfig
from gateway.config.providers import is_sender_placeholder
from gateway.config.secrets import resolve_password
from gateway.config.toml import load
from gateway.errors import UsageError
from gateway.outbound import grants
from gateway.terminal import printable


def add_commands(subparsers: Any) -> None:
    """Register ``mailgate oauth ...`` on the main parser's subcommands."""
    oauth = subparsers.add_parser("oauth", help="OAuth 2.0 upstreams (XOAUTH2): test a set-up")
    commands = oauth.add_subparsers(dest="oauth_command", required=True, metavar="COMMAND")
    test = commands.add_parser(
        "test", help="fetch a token, connect, authenticate, QUIT; say what happened"
    )
    test.add_argument("--config", metavar="FILE", required=True)
    test.add_argument(
        "--upstream",
        metavar="NAME",
        required=True,
        help='an [upstreams.NAME] with auth = "xoauth2"',
    )
    test.add_argument(
        "--sender", metavar="ADDR", help='the mailbox to test as, when username = "$sender"'
    )
    test.set_defaults(func=cmd_oauth_test)


def _upstream(config: Config, args: argparse.Namespace) -> UpstreamConfig:
    upstream = config.upstreams.get(args.upstream)
    if upstream is None:
        known = ", ".join(sorted(config.upstreams)) or "none defined"
        raise UsageError(
            f"--upstream: {args.config} has no [upstreams.{args.upstream}] (defined: {known})"
        )
    if upstream.auth != "xoauth2":
        raise UsageError(
            f'--upstream: upstreams.{upstream.name} has auth = "{upstream.auth}"; '
            'this test is for auth = "xoauth2"'
        )
    if is_sender_placeholder(upstream.username) and not args.sender:
        raise UsageError(
            f'--sender: upstreams.{upstream.name} has username = "$sender"; '
            "name the mailbox to test with --sender ADDR"
        )
    return upstream


def cmd_oauth_test(args: argparse.Namespace) -> int:
    config = load(args.config)
    upstream = _upstream(config, args)
    assert upstream.oauth is not None
    grants.resolve(upstream.oauth, upstream.name)  # a missing secret fails here, before any network
    from twisted.internet import defer, task

    from gateway.outbound.connector import UpstreamConnector
    from gateway.outbound.oauth import TokenCache, tokens_for

    status = {"code": 1}

    def main(reactor: Any) -> defer.Deferred[None]:
        tokens = tokens_for(reactor, TokenCache(reactor), upstream)  # reads the secrets: may raise
        assert tokens is not None
        connector = UpstreamConnector(
            reactor, upstream, resolve_password(upstream), config.listener.hostname, tokens=tokens
        )
        coroutine = run_test(connector, args.sender, sys.stdout)
        return defer.Deferred.fromCoroutine(coroutine).addCallback(
            lambda code: status.update(code=code)
        )

    try:
        task.react(main)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return 1
    return status["code"]


async def run_test(connector: Any, sender: str | None, out: TextIO) -> int:
    """The three steps against a ready `UpstreamConnector`; 0 when all passed."""
    from gateway.outbound.classify import auth_hint
    from gateway.outbound.failure import UpstreamFailure
    from gateway.outbound.grants import TokenError

    upstream, tokens = connector.config, connector.tokens
    user = sender if is_sender_placeholder(upstream.username) else upstream.username
    oauth = upstream.oauth
    # The token endpoint's error and the upstream's reply are the servers' text: shown, not obeyed.
    say = lambda line: print(printable(line), file=out, flush=True)  # noqa: E731
    say(
        f"upstream {upstream.name}: {upstream.host}:{upstream.port} ({upstream.tls}), "
        f"grant {oauth.grant}, user {user}"
    )
    try:
        token = await tokens.token(user)
    except TokenError as exc:
        say(f"1. token: FAILED: {exc.reason}")
        return 1
    say(
        f"1. token: OK from {oauth.token_url} (client {tokens.endpoint.grant.client}, "
        f"scope {oauth.scope or '-'}, valid {round(token.lifetime)} s)"
    )
    try:
        session = await connector.open(sender)
    except UpstreamFailure as exc:
        say(f"2. connect, TLS, AUTH: FAILED: {exc.reason}")
        if exc.upstream_reply is not None:
            say(f"   the upstream said: {exc.upstream_reply}")
            if (hint := auth_hint(exc.upstream_reply)) is not None and "hint:" not in exc.reason:
                say(f"   hint: {hint}")
        return 1
    say(
        f"2. connect, TLS, AUTH: OK: {session.tls.version} {session.tls.cipher}, "
        f"AUTH {session.auth_mechanism} as {session.auth_user} accepted"
    )
    session.quit()
    await session.protocol.closed
    say("3. QUIT: done; no mail was sent")
    return 0
