"""The running gateway: config, audit, upstream connectors and the listening port.

`Gateway.start()` binds the listener; `Gateway.stop()` stops accepting, lets
sessions in flight finish within ``listener.shutdown_grace`` seconds, then
closes the rest with ``421 4.3.2``. `Gateway.reload()` swaps in a new config
with freshly built upstream pools: new sessions use it, open sessions from their
next MAIL (a transaction in flight finishes under the old one). App password
checks run in a bounded thread pool of their own (`hash_pool`), so an AUTH flood
cannot delay spool commits in the reactor's pool. The status server (metrics, health) runs when ``[metrics]`` is set.

The gateway is the listener's host (`gateway.inbound.host.ListenerHost`): what its
sessions may ask for is that Protocol, and nothing in `gateway.inbound` imports this module.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from twisted.internet import defer, task, threads
from twisted.python.threadpool import ThreadPool

from gateway.audit.events import Event
from gateway.audit.log import AuditLog
from gateway.cluster import shared as cluster_state
from gateway.cluster.budgets import SharedBudgets
from gateway.cluster.cooldowns import SharedCooldowns
from gateway.config.changes import fixed_changes
from gateway.config.model import Config, Endpoint, Rate
from gateway.config.secrets import Secret, resolve_password
from gateway.daemon import status as status_server
from gateway.daemon.bind import listen_smtp
from gateway.daemon.health import Readiness, WatchedConnector
from gateway.daemon.listener_tls import ListenerTLS, check_files
from gateway.daemon.metrics import Metrics
from gateway.daemon.refresh_keeper import RefreshKeeper
from gateway.errors import ConfigError, MailgateError, Problem, SecretError
from gateway.inbound.connections import Connections
from gateway.inbound.proxy import listener_factory
from gateway.outbound.connector import UpstreamConnector
from gateway.outbound.failover import Cooldowns
from gateway.outbound.oauth import TokenCache, tokens_for
from gateway.outbound.pool import UpstreamPool
from gateway.outbound.relay import RelayTransaction
from gateway.policy import passwords
from gateway.policy.auth_throttle import AuthThrottle
from gateway.policy.budgets import Ledger, has_budget
from gateway.policy.ratelimit import RateLimits
from gateway.queue.commit import GroupCommit
from gateway.queue.enqueue import QueueTransaction
from gateway.queue.runner import DeliveryRunner
from gateway.queue.spool import Spool
from gateway.smtp.commands import MailFrom

HASH_THREADS = max(1, min(4, (os.cpu_count() or 2) - 1))  # app password checks at once


class Gateway:
    def __init__(
        self,
        reactor: Any,
        config: Config,
        audit: AuditLog | None = None,
        *,
        instance: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        # `instance` names this gateway on every audit event: the argument, else
        # `[cluster] instance`, else the hostname (AuditLog's default).
        if instance is None and config.cluster is not None:
            instance = config.cluster.instance
        self.audit = audit or AuditLog(config.audit.path, instance=instance)
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.tokens = TokenCache(
            reactor, on_event=self._oauth_event
        )  # one per gateway, kept across reloads
        self.pools = self._build_pools(config)
        self._retired: dict[
            str, UpstreamPool
        ] = {}  # pools a reload removed, for sessions on the old config
        self.cooldowns = Cooldowns()
        # [cluster]: rule rates, cool-downs and the live instances shared through Redis.
        self.cluster: cluster_state.SharedState | None = None
        if config.cluster is not None:
            self.cluster = cluster_state.build(reactor, config.cluster, self.audit, self.metrics)
            shared = SharedCooldowns(reactor.seconds, self.cluster.cool, self.cluster.uncool)
            self.cluster.upstreams = lambda: list(self.config.upstreams)
            self.cluster.learned = shared.learn
            self.cooldowns = shared
        # Provider budgets per sending identity, kept across reloads (gateway.policy.budgets).
        self.ledger = Ledger(on_pause=self._throttled)
        self.budgets: Ledger | SharedBudgets = self.ledger
        if self.cluster is not None:  # [cluster]: the windows and the pauses in Redis
            self.budgets = SharedBudgets(self.cluster, self.ledger)
            self.cluster.paused = self.budgets.learn
        self.metrics.watch_budgets(lambda: self.budgets.usage(self.reactor.seconds()), None)
        self.refresh_keeper = RefreshKeeper(  # unused refresh tokens kept alive (a day apart)
            reactor, lambda: [p.connector for p in self.pools.values()]
        )
        self.connections = Connections()  # the app connections open now
        self.rate_limits = RateLimits()
        self.auth_throttle = AuthThrottle()  # kept across reloads
        self.dummies = passwords.DummyHashes(a.password_hash for a in config.apps.values())
        self.hash_pool = ThreadPool(minthreads=0, maxthreads=HASH_THREADS, name="mailgate-auth")
        self.hash_pool.start()
        self._hash_pool_trigger: Any = reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_hash_pool
        )
        self.metrics.watch_sessions(self.connections.__len__)
        # starttls:// and smtps:// entries: the certificate is checked now, before binding.
        self.listener_tls: ListenerTLS | None = None
        if config.listener.tls_wanted:
            self.listener_tls = ListenerTLS(config.listener, config.source)
            self.metrics.listener_certificate(self.listener_tls.expires)
        self.readiness.config_loaded = True
        self.port: Any = None  # the first entry's listening port
        self.ports: list[Any] = []  # one per listener.listen entry, in order
        self.status_port: Any = None
        # Store-and-forward: a spool and its runner when a rule queues, or the spool holds mail.
        spool = Spool(config.queue.path)
        queueing = any(rule.delivery == "queue" for rule in config.rules)
        self.spool: Spool | None = spool if queueing or spool.exists() else None
        self.group_commit = GroupCommit(self.run_blocking)
        self.runner: DeliveryRunner | None = None
        if self.spool is not None:
            self.runner = DeliveryRunner(
                reactor,
                self.spool,
                config,
                self._queue_pool,
                self.audit,
                on_result=self.metrics.message_result,
                cooldowns=self.cooldowns,
                on_drain=self._drain_changed,
                budgets=self.budgets,
            )
            self.metrics.watch_queue(self.runner.queue_state)
            paced = self.runner.paced
            self.metrics.watch_budgets(
                lambda: self.budgets.usage(self.reactor.seconds()), paced.__len__
            )

    def _build_pools(
        self, config: Config, problems: list[Problem] | None = None
    ) -> dict[str, UpstreamPool]:
        """One pool per upstream, its connector watched for readiness and metrics, secrets read now.

        An unreadable secret raises `SecretError`, or with `problems` is added to it.
        """
        pools = {}
        for name, upstream in config.upstreams.items():
            try:
                password = resolve_password(upstream)
            except SecretError as exc:
                if problems is None:
                    raise
                key = "password_env" if upstream.password_env else "password_file"
                problems.append(
                    Problem(
                        config.source,
                        f"upstreams.{name}.{key}",
                        str(exc).partition(": ")[2],
                        "a readable, non-empty secret",
                    )
                )
                continue
            try:
                tokens = tokens_for(self.reactor, self.tokens, upstream)
            except SecretError as exc:
                if problems is None:
                    raise
                problems.append(
                    Problem(
                        config.source,
                        f"upstreams.{name}",
                        str(exc).partition(": ")[2],
                        "readable, non-empty OAuth secrets",
                    )
                )
                continue
            if upstream.oauth_client_secret_expires is not None:
                self.metrics.oauth_secret_expires(name, upstream.oauth_client_secret_expires)
            connector = UpstreamConnector(
                self.reactor, upstream, password, config.listener.hostname, tokens=tokens
            )
            watched = WatchedConnector(
                connector, self.readiness, self.metrics, self.reactor.seconds
            )
            pools[name] = UpstreamPool(watched, self.reactor)  # type: ignore[arg-type]
        return pools

    def _pool(self, name: str) -> UpstreamPool:
        return self.pools[name] if name in self.pools else self._retired[name]

    def run_blocking(self, function: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run blocking disk work (spool fsyncs) in the reactor's thread pool."""
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), function, *args, **kwargs
        )

    def verify_password(self, password_hash: str, password: Secret) -> defer.Deferred[bool]:
        """Check an app password off the reactor thread (the hashes are slow by design), in
        `hash_pool` (bounded; not the reactor's pool, where spool commits run)."""
        return threads.deferToThreadPool(
            self.reactor, self.hash_pool, passwords.verify, password_hash, password.reveal()
        )

    def dummy_hash(self, name: str) -> str:
        """An unknown app name's stand-in hash: the scheme and cost of the configured apps'."""
        return self.dummies.for_name(name)

    def pause(self, seconds: float) -> defer.Deferred[None]:
        return task.deferLater(self.reactor, seconds, lambda: None)

    def _stop_hash_pool(self) -> None:
        if self.hash_pool.started:
            self.hash_pool.stop()

    def rate_allowed(self, rule: str, rate: Rate) -> bool | None | defer.Deferred[bool | None]:
        """Take one message from `rule`'s bucket now (the reactor's clock); with ``[cluster]``
        from the bucket the instances share, asked in Redis (None: undecided, defer)."""
        if self.cluster is not None:
            return self.cluster.rate_allowed(rule, rate)
        return self.rate_limits.allow(rule, rate, self.reactor.seconds())

    def monotonic(self) -> float:
        return time.monotonic()

    def _queue_pool(self, name: str) -> UpstreamPool | None:
        """The pool queue deliveries to `name` use now: the current config's, never a removed one."""
        return self.pools.get(name)

    def connector(self, name: str) -> UpstreamConnector:
        return self._pool(name).connector

    def delivery(
        self, mode: str, route: tuple[str, ...], mail: MailFrom
    ) -> RelayTransaction | QueueTransaction | None:
        """The delivery of one transaction: a cut-through relay over `route` (upstream names,
        failover order) or a spool commit; None in queue mode when no spool is running."""
        if mode == "queue":
            if self.spool is None or self.runner is None:
                return None
            runner = self.runner
            return QueueTransaction(
                self.spool,
                mail,
                route,
                run_blocking=self.run_blocking,
                committer=self.group_commit.submit,
                on_committed=self.runner.submitted,
                draining=lambda: runner.draining,
                backlogged=self.paced_backlog_full,
                low_space=runner.space.refusal,
            )
        return RelayTransaction(
            [self._pool(name) for name in route], mail, self.cooldowns, self.reactor, self.budgets
        )

    def _oauth_event(self, name: Event, **fields: Any) -> None:
        """A token event: to the audit, and the upstream's token health to the metrics."""
        self.audit.event(name, **fields)
        self.metrics.oauth_event(name, fields, time.time())

    def _throttled(self, upstream: str, identity: str, seconds: float, reply: str) -> None:
        """A provider's throttling reply paused a sending identity: the audit says why."""
        self.metrics.throttle_pause(upstream)
        self.audit.event(
            Event.UPSTREAM_THROTTLED,
            upstream=upstream,
            identity=identity,
            paused_s=round(seconds, 3),
            reply=reply[:300],
        )

    def paced_backlog_full(self, route: tuple[str, ...], sender: str) -> bool:
        """Queue mode: every upstream of `route` has a paced backlog for `sender` longer than
        ``queue.max_age`` (new mail gets 452 4.3.1 rather than a promise the queue cannot keep)."""
        now = self.reactor.seconds()
        limit = self.config.queue.max_age
        configured = [self.config.upstreams[n] for n in route if n in self.config.upstreams]
        return bool(configured) and all(
            has_budget(u) and self.budgets.backlog(u, sender, now) > limit for u in configured
        )

    def _drain_changed(self, draining: bool) -> None:
        """`mailgate queue drain` (or `resume`) was taken up: readiness follows it."""
        self.readiness.draining = draining

    # --- reload ------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Use `config` for new sessions, and in open ones from their next MAIL.

        The dummy hashes for unknown app names are made here for any new hash parameters.

        Raises `ConfigError` (and changes nothing) when `config` changes a setting fixed
        at start or names a secret that cannot be read.
        """
        problems = fixed_changes(self.config, config)
        pools = self._build_pools(config, problems)
        renewed = self._check_tls(config, problems)
        if problems:
            self.reload_refused(problems)
            raise ConfigError(problems)
        self.dummies = passwords.DummyHashes(
            (a.password_hash for a in config.apps.values()), previous=self.dummies
        )
        old, old_pools = self.config, self.pools
        self._retired.update({n: p for n, p in old_pools.items() if n not in pools})
        self.pools, self.config = pools, config
        if renewed and self.listener_tls is not None:  # new connections get the new files
            self.listener_tls.load(config.listener, config.source)
            self.metrics.listener_certificate(self.listener_tls.expires)
        if self.runner is not None:  # who a DSN may go to follows the reloaded apps and rules
            self.runner.settler.config = config
        for pool in old_pools.values():
            pool.retire()  # its sessions were opened with the old settings and secrets
        self.readiness.forget(n for n, u in old.upstreams.items() if config.upstreams.get(n) != u)
        self.metrics.config_reload(True)
        self.audit.event(
            Event.CONFIG_RELOADED,
            config=config.source,
            rules=len(config.rules),
            upstreams={n: u.url for n, u in config.upstreams.items()},
        )

    def _check_tls(self, config: Config, problems: list[Problem]) -> bool:
        """The reloaded config's TLS files (re-read on every SIGHUP: a renewed certificate);
        their problems join the reload's. True when there is a context to reload."""
        if self.listener_tls is None or not config.listener.tls_wanted:
            return False
        found = check_files(config.listener, config.source).problems
        problems.extend(found)
        return not found

    def reload_refused(self, problems: list[Problem] | list[str]) -> None:
        """Record a refused reload: the running config stays."""
        self.metrics.config_reload(False)
        self.audit.event(
            Event.CONFIG_RELOAD_FAILED,
            config=self.config.source,
            problems=[str(p) for p in problems],
        )

    def probe_upstreams(self) -> None:
        """Try again each upstream whose last attempt failed a while ago (see `gateway.daemon.health`)."""
        for name in self.readiness.due_probes(self.reactor.seconds()):
            if name in self.pools:
                self.pools[name].connector.probe()  # type: ignore[attr-defined]

    # --- start and stop -------------------------------------------------------------------

    async def start(self) -> int:
        if self.cluster is not None:
            self.cluster.start()  # registers in the background: a Redis that is down delays nothing
        if self.runner is not None:
            try:
                self.runner.start()
            except OSError as exc:
                raise MailgateError(
                    f"queue.path: cannot use {self.config.queue.path}: {exc.strerror}"
                ) from None
        bound_entries = []
        for entry in self.config.listener.listen:
            port = await listen_smtp(
                self.reactor,
                entry.endpoint,
                listener_factory(self, entry.tls),
                reuse_port=self.config.listener.reuse_port,
            )
            self.ports.append(port)
            bound_entries.append(
                str(
                    dataclasses.replace(
                        entry, endpoint=Endpoint(entry.endpoint.host, port.getHost().port)
                    )
                )
            )
        self.port = self.ports[0]
        bound = self.port.getHost().port
        self.readiness.listening = True
        self.refresh_keeper.start()
        status = {}
        if self.config.metrics.listen is not None:
            where = self.config.metrics.listen
            site = status_server.site(self, self.reactor)
            self.status_port = await status_server.listen(self.reactor, site, where)
            status["metrics"] = f"{where.host}:{self.status_port.getHost().port}"
        self.audit.event(
            Event.GATEWAY_STARTED,
            listen=bound_entries[0],
            listeners=bound_entries,
            config=self.config.source,
            upstreams={n: u.url for n, u in self.config.upstreams.items()},
            **status,
        )
        return bound

    async def stop(self) -> None:
        self.refresh_keeper.stop()
        if self.ports:
            self.readiness.listening = False
            for port in self.ports:
                await port.stopListening()
            self.ports, self.port = [], None
        # Sessions in flight may finish; after the grace period the rest get 421.
        await self.connections.drain(self.config.listener.shutdown_grace, self.reactor.callLater)
        if self.runner is not None:
            await self.runner.stop(self.config.listener.shutdown_grace)
        # QUIT on every pooled connection, and a graceful close (TLS close_notify), within the
        # grace: a server logs an abrupt disconnection against our address.
        closing = [pool.retire() for pool in [*self.pools.values(), *self._retired.values()]]
        await _within(
            defer.DeferredList(closing, consumeErrors=True),
            self.config.listener.shutdown_grace,
            self.reactor,
        )
        if self.status_port is not None:
            await self.status_port.stopListening()
            self.status_port = None
        if self.cluster is not None:
            await self.cluster.stop()
        self._stop_hash_pool()
        if self._hash_pool_trigger is not None:
            self.reactor.removeSystemEventTrigger(self._hash_pool_trigger)
            self._hash_pool_trigger = None
        self.audit.event(Event.GATEWAY_STOPPED)


async def _within(waited: defer.Deferred[Any], seconds: float, clock: Any) -> None:
    """Wait for `waited`, but no longer than `seconds` (it goes on; only the wait ends)."""
    done: defer.Deferred[None] = defer.Deferred()

    def finished(_: object = None) -> None:
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(None)

    timer = clock.callLater(seconds, finished)
    waited.addBoth(finished)
    await done
