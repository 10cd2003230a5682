"""``mailgate demo``: the whole path on one machine, no outside network.

A throwaway CA; a 587-style (STARTTLS + AUTH) and a 465-style (implicit TLS +
AUTH) submission server on loopback; the gateway in front with
``policies/demo.toml``; smtplib as the app. Prints what each upstream received
and the audit events, cleans up, and exits 0 only if every route delivered.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import smtplib
import sys
import tempfile
import tomllib
from email.message import EmailMessage
from email.utils import make_msgid
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from gateway.config.toml import parse
from gateway.errors import MailgateError
from gateway.terminal import printable
from gateway.testing.pki import ThrowawayCA
from gateway.testing.submission import SubmissionServer

SHIPPED_POLICIES = "gateway.policies"  # the repository's policies/, installed as package data
SENDER = "cron@app.demo"


def _message(to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="app.demo")
    message.set_content(
        f"Hello from the mailgate demo.\n\n{subject}\n.\n(a line with a lone dot above)\n"
    )
    return message


def _send_all(port: int) -> list[tuple[str, str]]:
    """The app's side: plain SMTP to the gateway. Returns (recipient, outcome) pairs."""
    outcomes = []
    for to, subject in [
        ("ops@example.net", "via 587 STARTTLS"),
        ("ops@example.org", "via 465 implicit TLS"),
        ("someone@blocked.example", "refused by policy"),
    ]:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            try:
                client.send_message(_message(to, subject))
                outcomes.append((to, "accepted (250)"))
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = exc.recipients[to]
                outcomes.append((to, f"refused: {code} {text.decode()}"))
            except smtplib.SMTPException as exc:
                outcomes.append((to, f"failed: {exc}"))
    return outcomes


def shipped_policy(name: str) -> Traversable:
    """A policy shipped with mailgate (policies/NAME in the source tree, package data when installed)."""
    return resources.files(SHIPPED_POLICIES).joinpath(name)


def run_demo(policy_path: str | None) -> int:
    folder = tempfile.mkdtemp(prefix="mailgate-demo-")
    servers: list[SubmissionServer] = []
    try:
        if policy_path is not None:
            if not os.path.isfile(policy_path):
                raise MailgateError(f"demo policy {policy_path} not found; pass --policy FILE")
            return _run(policy_path, folder, servers)
        with resources.as_file(shipped_policy("demo.toml")) as shipped:
            if not shipped.is_file():
                raise MailgateError(
                    "demo policy demo.toml is not installed with mailgate; pass --policy FILE"
                )
            return _run(str(shipped), folder, servers)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("MAILGATE_DEMO_PASSWORD", None)


def _run(policy_path: str, folder: str, servers: list[SubmissionServer]) -> int:
    from twisted.internet import defer, task, threads

    from gateway.daemon.gateway import Gateway

    print("== mailgate demo ==")
    ca = ThrowawayCA(folder)
    cert = ca.issue("upstream", "localhost", "127.0.0.1")
    print(f"throwaway CA: {ca.ca_file}")
    password = secrets.token_urlsafe(18)
    os.environ["MAILGATE_DEMO_PASSWORD"] = password
    users = {"relay@demo.example": password}
    starttls = SubmissionServer("starttls", cert.server_context(), users)
    implicit = SubmissionServer("implicit", cert.server_context(), users)
    servers += [starttls, implicit]
    ports = {"submission": starttls.start(), "smtps": implicit.start()}
    print(f"upstream 'submission' (STARTTLS + AUTH required): localhost:{ports['submission']}")
    print(f"upstream 'smtps' (implicit TLS + AUTH required):  localhost:{ports['smtps']}")

    with open(policy_path, "rb") as handle:
        document: dict[str, Any] = tomllib.load(handle)
    audit_path = os.path.join(folder, "audit.jsonl")
    document["audit"] = {"path": audit_path}
    for name, port in ports.items():
        document["upstreams"][name].update(port=port, ca_file=ca.ca_file)
    config = parse(document, policy_path)

    async def scenario(reactor: Any) -> list[tuple[str, str]]:
        gateway = Gateway(reactor, config)
        port = await gateway.start()
        print(f"gateway listening on 127.0.0.1:{port} with policy {policy_path}\n")
        try:
            return await threads.deferToThread(_send_all, port)
        finally:
            await gateway.stop()
            gateway.audit.close()

    outcomes: list[tuple[str, str]] = []

    def main(reactor: Any) -> Any:
        d = defer.Deferred.fromCoroutine(scenario(reactor))
        d.addCallback(outcomes.extend)
        return d

    try:
        task.react(main)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            print("mailgate demo: the run failed", file=sys.stderr)
            return 1

    print("-- the app (smtplib) saw --")
    for to, outcome in outcomes:
        print(printable(f"  {to}: {outcome}"))
    print("\n-- what the upstreams received --")
    for name, server in (("submission", starttls), ("smtps", implicit)):
        for message in server.messages:
            print(
                printable(
                    f"  {name}: from {message.sender} to {', '.join(message.recipients)}; "
                    f"{message.tls_version}; authenticated as {message.auth_user}; "
                    f"{len(message.content)} bytes"
                )
            )
    print("\n-- audit events --")
    with open(audit_path, encoding="utf-8") as audit:
        for line in audit:
            event = json.loads(line)
            print(printable("  " + json.dumps(event, sort_keys=False)))
    delivered = len(starttls.messages) == 1 and len(implicit.messages) == 1
    tls_ok = all(
        m.tls_version in ("TLSv1.2", "TLSv1.3") for m in starttls.messages + implicit.messages
    )
    print(
        f"\nresult: {'OK' if delivered and tls_ok else 'FAILED'} - both routes delivered over verified TLS with AUTH"
        if delivered and tls_ok
        else "\nresult: FAILED"
    )
    return 0 if delivered and tls_ok else 1
