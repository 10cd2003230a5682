"""``mailgate run``: the reactor, the gateway, and signals.

- SIGTERM or SIGINT stops accepting, lets sessions in flight finish (bounded by
  ``listener.shutdown_grace``) and exits 0.
- SIGHUP reloads the configuration (file and policies, secrets re-read): new
  sessions use it, open sessions from their next MAIL. An invalid one is refused,
  its problems printed on stderr and written as a ``config.reload_failed``
  audit event; the running one stays. A good one writes ``config.reloaded``.
- SIGUSR1 reopens the audit file (after logrotate renamed it).

Each signal handler only schedules the work on the reactor thread
(``callFromThread``); each outcome is one ``mailgate: ...`` line on stderr.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from gateway.config.model import Config
from gateway.errors import ConfigError, MailgateError


def say(text: str) -> None:
    print(f"mailgate: {text}", file=sys.stderr, flush=True)


def reload(gateway: Any, load: Callable[[], Config]) -> bool:
    """Load the configuration again and hand it to the gateway; report either way."""
    try:
        config = load()
    except ConfigError as exc:
        gateway.reload_refused(exc.problems)
        problems = [str(p) for p in exc.problems]
    except MailgateError as exc:
        gateway.reload_refused([str(exc)])
        problems = [str(exc)]
    else:
        try:
            gateway.reload(config)  # records its own refusal
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        else:
            say(f"reloaded configuration from {config.source}")
            return True
    for problem in problems:
        print(problem, file=sys.stderr, flush=True)
    say(f"reload refused ({len(problems)} problem(s)); still running with {gateway.config.source}")
    return False


def reopen_audit(gateway: Any) -> bool:
    """Reopen the audit file if the audit log can (it writes ``audit.reopened``); report."""
    reopen = getattr(gateway.audit, "reopen", None)
    if reopen is None:
        say("SIGUSR1: this audit log cannot be reopened; ignored")
        return False
    try:
        ok = reopen()
    except MailgateError as exc:
        say(f"SIGUSR1: {exc}")
        return False
    if ok is False:
        say("SIGUSR1: cannot reopen the audit file; still writing to the old one")
        return False
    say("reopened the audit file")
    return True


def install_signals(reactor: Any, gateway: Any, load: Callable[[], Config] | None) -> None:
    def on_hup(signum: int, frame: object) -> None:
        if load is None:
            reactor.callFromThread(say, "SIGHUP: nothing to reload from")
        else:
            reactor.callFromThread(reload, gateway, load)

    def on_usr1(signum: int, frame: object) -> None:
        reactor.callFromThread(reopen_audit, gateway)

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_usr1)


def run(config: Config, load: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM/SIGINT; `load` reads the configuration again on SIGHUP."""
    from twisted.internet import defer, reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from gateway.daemon.gateway import Gateway

    # Twisted's own warnings and unhandled errors go to stderr; the audit trail is separate.
    level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [level])], redirectStandardIO=False
    )

    gateway = Gateway(reactor, config)  # resolves secrets: fails before binding anything
    for warning in gateway.listener_tls.warnings if gateway.listener_tls is not None else ():
        say(f"warning: {warning}")  # the listener's certificate expires within 14 days
    outcome: dict[str, BaseException | None] = {"error": None}

    def started_failed(failure: object) -> None:
        outcome["error"] = getattr(failure, "value", None)
        reactor.stop()  # type: ignore[attr-defined]

    def started(port: int) -> None:
        for bound in gateway.ports:
            say(f"listening on {bound.getHost().host}:{bound.getHost().port}")
        if gateway.status_port is not None and config.metrics.listen is not None:
            say(
                f"metrics and health on http://{config.metrics.listen.host}:{gateway.status_port.getHost().port}/"
            )

    def start() -> None:
        d = defer.Deferred.fromCoroutine(gateway.start())
        d.addCallback(started)
        d.addErrback(started_failed)

    def stop() -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(gateway.stop())

    install_signals(reactor, gateway, load)
    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    gateway.audit.close()
    if isinstance(outcome["error"], MailgateError):
        raise outcome["error"]  # already names the key and the problem (e.g. queue.path)
    if outcome["error"] is not None:
        listen = ", ".join(str(entry) for entry in config.listener.listen)
        raise MailgateError(f"cannot listen on {listen}: {outcome['error']}")
    return 0
