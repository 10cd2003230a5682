"""``mailgate run``: the reactor, the gateway, and signals.

SIGTERM or SIGINT stops accepting, lets sessions in flight finish (bounded by
``listener.shutdown_grace``) and exits 0.
"""

from __future__ import annotations

import sys

from gateway.config import Config
from gateway.errors import MailgateError


def run(config: Config) -> int:
    from twisted.internet import defer, reactor
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, textFileLogObserver)

    from gateway.service import Gateway

    # Twisted's own warnings and unhandled errors go to stderr; the audit trail is separate.
    level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stderr), [level])],
                                     redirectStandardIO=False)

    gateway = Gateway(reactor, config)  # resolves secrets: fails before binding anything
    outcome: dict[str, BaseException | None] = {"error": None}

    def started_failed(failure: object) -> None:
        outcome["error"] = getattr(failure, "value", None)
        reactor.stop()  # type: ignore[attr-defined]

    def start() -> None:
        d = defer.Deferred.fromCoroutine(gateway.start())
        d.addCallback(lambda port: print(f"mailgate: listening on {config.listener.listen.host}:{port}",
                                         file=sys.stderr, flush=True))
        d.addErrback(started_failed)

    def stop() -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(gateway.stop())

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    gateway.audit.close()
    if outcome["error"] is not None:
        raise MailgateError(f"cannot listen on {config.listener.listen}: {outcome['error']}")
    return 0
