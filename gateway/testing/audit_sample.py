"""Synthetic audit logs shaped like a real run's, written through the real `AuditLog` (chained).

For tests of the review commands without sockets, and for the large-file manual
check (``python -m gateway.testing.audit_sample FILE MEGABYTES``). Times are
given, not read from a clock, so the same arguments give the same records.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
from collections.abc import Iterator
from typing import Any

from gateway.audit.events import Event
from gateway.audit.log import AuditLog, _order

SENDERS = ("app@example.com", "billing@example.com", "alerts@example.com", "noreply@shop.example")
UPSTREAMS = ("submission", "smtps")


def sessions(
    count: int, start: dt.datetime, seed: int = 5, spacing_s: float = 7.0
) -> Iterator[list[dict[str, Any]]]:
    """`count` sessions, each a list of (unsealed) events with their timestamp set."""
    rng = random.Random(seed)
    when = start
    for n in range(count):
        when += dt.timedelta(seconds=rng.expovariate(1 / spacing_s))
        sid = f"{rng.getrandbits(64):016x}"
        client = f"127.0.0.{1 + n % 3}"
        sender = rng.choice(SENDERS)
        upstream = UPSTREAMS[n % 2]
        roll = rng.random()
        rcpt = f"user{rng.randrange(50)}@example.net"
        base = {"session_id": sid}
        events = [
            dict(
                base,
                event=Event.SESSION_OPENED,
                client_ip=client,
                client_port=40000 + n % 20000,
                allowed=True,
            )
        ]
        result: dict[str, Any] = dict(
            base,
            event=Event.MESSAGE_RESULT,
            client_ip=client,
            helo="app.test",
            sender=sender,
            rules=["net-via-587"],
            upstream=upstream,
            upstream_host="localhost",
            upstream_port=587 if upstream == "submission" else 465,
            tls_mode="starttls" if upstream == "submission" else "implicit",
        )
        if roll < 0.80:
            reply = f"250 2.0.0 Queued as upstream-{n}"
            result.update(
                recipients=[
                    {"address": rcpt, "result": "relayed", "reply": reply, "rule": "net-via-587"}
                ],
                outcome="relayed",
                reply=reply,
                tls_version="TLSv1.3",
                tls_cipher="TLS_AES_256_GCM_SHA384",
                peer_cert_sha256="ab" * 32,
                auth_user="relay@demo.example",
                upstream_code=250,
                upstream_enhanced="2.0.0",
                upstream_reply=f"Queued as upstream-{n}",
                size=rng.randrange(800, 40000),
                message_id=f"<{sid}@example.com>",
                sha256="cd" * 32,
            )
        elif roll < 0.90:
            reply = "550 5.7.1 Recipient not allowed by policy"
            result.update(
                recipients=[
                    {
                        "address": "x@blocked.example",
                        "result": "rejected",
                        "reply": reply,
                        "rule": "blocked-domain",
                    }
                ],
                rules=["blocked-domain"],
                outcome="rejected",
                reason="client session ended (client quit)",
            )
            for key in ("upstream", "upstream_host", "upstream_port", "tls_mode"):
                result.pop(key)
        else:
            reply = "451 4.4.1 Upstream unreachable, try again later"
            result.update(
                recipients=[
                    {"address": rcpt, "result": "deferred", "reply": reply, "rule": "net-via-587"}
                ],
                outcome="deferred",
                upstream_error="cannot connect to localhost:587: Connection refused",
                reason="client session ended (client quit)",
            )
        step = dt.timedelta(milliseconds=rng.randrange(20, 400))
        result["timestamp"] = when + step
        events.append(result)
        events.append(
            dict(
                base,
                event=Event.SESSION_CLOSED,
                reason="client quit",
                duration_s=round(2 * step.total_seconds(), 3),
                messages=1,
                relayed=int(result["outcome"] == "relayed"),
                rejected=int(result["outcome"] == "rejected"),
                deferred=int(result["outcome"] == "deferred"),
                failed=0,
                timestamp=when + 2 * step,
            )
        )
        events[0]["timestamp"] = when
        yield events


def write(log: AuditLog, count: int, start: dt.datetime, seed: int = 5) -> int:
    """Write `count` sessions to `log` through its chained sink, each event at its given time."""
    written = 0
    for events in sessions(count, start, seed):
        for event in events:
            event["timestamp"] = event["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            event.setdefault("instance", log.instance)
            log._sink.msg(
                _order(None, "info", event)
            )  # the same sealing and line as AuditLog.event
            written += 1
    return written


def main(argv: list[str]) -> int:
    path, megabytes = argv[0], float(argv[1])
    log = AuditLog(path)
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    size, batch, seed = 0, 2000, 0
    try:
        while size < megabytes * 1e6:
            seed += 1
            write(log, batch, start, seed)
            start += dt.timedelta(seconds=7 * batch)
            size = log._sink.stream.tell()
    finally:
        log.close()
    print(f"{path}: {size / 1e6:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
