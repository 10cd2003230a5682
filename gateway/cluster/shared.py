"""The cluster as the reactor sees it: shared decisions that never hang a session.

Every Redis call runs in a thread pool of its own (``mailgate-cluster``: never the reactor's,
where spool commits run, nor the AUTH hash pool) and is given up after twice
``cluster.timeout``. A failed or late answer marks Redis unavailable — one
``cluster.unavailable`` per outage — and from then on decisions do not wait for it:
``on_unavailable = "local"`` takes from this instance's share of the limit (the limit divided by
the instances last seen alive), ``"defer"`` answers None (the session says ``451 4.3.0`` in relay
mode, and queues in queue mode). The heartbeat (every `HEARTBEAT` seconds) keeps this
instance registered, learns the others' cool-downs and throttling pauses (in the same round
trip) and, during an outage, is the probe: its first success writes ``cluster.restored``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task, threads
from twisted.python.threadpool import ThreadPool

from gateway.audit.events import Event
from gateway.cluster.store import Store, StoreError, shown
from gateway.config.model import ClusterConfig, Rate
from gateway.policy.ratelimit import RateLimits, share

HEARTBEAT = 1.0  # seconds between registrations
INSTANCE_TTL = 5.0  # an instance not heard from for this long is no longer counted
THREADS = 4  # Redis calls at once


def instance_name(cluster: ClusterConfig) -> str:
    return cluster.instance or socket.gethostname()


class SharedState:
    def __init__(
        self,
        reactor: Any,
        cluster: ClusterConfig,
        store: Store,
        audit: Any,
        metrics: Any,
        upstreams: Callable[[], list[str]] = list,
        learned: Callable[[str, float], None] = lambda name, seconds: None,
        paused: Callable[[dict[str, float]], None] = lambda pauses: None,
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.store = store
        self.audit = audit
        self.metrics = metrics
        self.instance = instance_name(cluster)
        self.upstreams = upstreams  # the names whose cool-downs to learn (the current config's)
        self.learned = learned  # called with (upstream, seconds cooling) from each heartbeat
        self.paused = paused  # called with {"UPSTREAM:IDENTITY": seconds paused} from each one
        self.available = True
        self.instances = 1  # alive when Redis was last asked (1 until it has been)
        self.down_since: float | None = None
        self.local = RateLimits()  # this instance's shares, used only while Redis is away
        self.pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="mailgate-cluster")
        self._loop: task.LoopingCall | None = None
        metrics.watch_cluster(lambda: (self.available, self.instances))

    # --- start and stop ----------------------------------------------------------------

    def start(self) -> None:
        self.pool.start()
        self._loop = task.LoopingCall(self.heartbeat)
        self._loop.clock = self.reactor
        self._loop.start(HEARTBEAT, now=True).addErrback(lambda _: None)

    async def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.available:
            try:
                await self.call(self.store.leave)
            except Exception:  # noqa: BLE001 (leaving is a courtesy: the registration expires)
                pass
        if self.pool.started:
            self.pool.stop()  # each call in flight ends within the socket timeout
        self.store.close()

    # --- decisions ----------------------------------------------------------------------

    def call(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """`function(*args)` in the cluster pool, failing with `StoreError` when it is late."""
        d = threads.deferToThreadPool(self.reactor, self.pool, function, *args)
        d.addTimeout(self.cluster.timeout * 2, self.reactor, onTimeoutCancel=_late)
        return d

    def ask(
        self,
        question: Callable[..., Any],
        args: tuple[Any, ...],
        answered: Callable[[Any], Any],
        without: Callable[[], Any],
    ) -> Any:
        """One shared decision: `question(*args)` asked of Redis in the pool and its answer
        given to `answered`; `without()` decides instead while Redis is away, or when this
        question fails (the outage is noted once). A Deferred, or `without()`'s answer now."""
        if not self.available:
            return without()
        d = self.call(question, *args)

        def shared(answer: Any) -> Any:
            self.metrics.cluster_decision("shared")
            return answered(answer)

        def failed(failure: Any) -> Any:
            failure.trap(StoreError)
            self._lost(str(failure.value))
            return without()

        return d.addCallbacks(shared, failed)

    def rate_allowed(self, rule: str, rate: Rate) -> defer.Deferred[bool | None] | bool | None:
        """One message against `rule`'s shared rate: True, False (spent), or None (deferred)."""
        key = "rate:" + rule
        return self.ask(
            self.store.take,
            (key, rate.count, rate.seconds),
            lambda allowed: allowed,
            lambda: self._without_redis(key, rate),
        )

    def _without_redis(self, key: str, rate: Rate) -> bool | None:
        if self.cluster.on_unavailable == "defer":
            self.metrics.cluster_decision("undecided")
            return None
        self.metrics.cluster_decision("local")
        return self.local.allow(key, share(rate, self.instances), self.reactor.seconds())

    # --- cool-downs ---------------------------------------------------------------------

    def cool(self, upstream: str, seconds: float) -> None:
        """Tell the other instances (best effort: an outage is noticed by the heartbeat too)."""
        if self.available:
            self.call(self.store.cool, upstream, seconds).addErrback(self._fault)

    def uncool(self, upstream: str) -> None:
        if self.available:
            self.call(self.store.uncool, upstream).addErrback(self._fault)

    # --- throttling pauses ---------------------------------------------------------------

    def pause(self, member: str, seconds: float) -> None:
        """Tell the other instances that ``UPSTREAM:IDENTITY`` is paused (best effort)."""
        if self.available:
            self.call(self.store.pause, member, seconds).addErrback(self._fault)

    # --- provider budgets -----------------------------------------------------------------

    def refund(self, key: str, ticket: str, messages: int, held: int, recipients: int) -> None:
        """Give back a take of the budget under `key` (best effort: while Redis is away, the
        take stays there until it ages out)."""
        if self.available:
            self.call(self.store.refund, key, ticket, messages, held, recipients).addErrback(
                self._fault
            )

    # --- registration and availability -------------------------------------------------

    def heartbeat(self) -> defer.Deferred[None]:
        """Register this instance, count the live ones, learn the shared cool-downs and pauses."""
        names = self.upstreams()
        d = self.call(self.store.heartbeat, INSTANCE_TTL, names)

        def answered(answer: tuple[int, dict[str, float], dict[str, float]]) -> None:
            self.instances, cooling, pauses = answer
            self._found()
            for name, seconds in cooling.items():
                self.learned(name, seconds)
            self.paused(pauses)

        return d.addCallbacks(answered, self._fault)

    def _fault(self, failure: Any) -> None:
        failure.trap(StoreError)
        self._lost(str(failure.value))

    def _lost(self, error: str) -> None:
        if not self.available:
            return
        self.available = False
        self.down_since = self.reactor.seconds()
        self.audit.event(
            Event.CLUSTER_UNAVAILABLE,
            redis=shown(self.cluster.redis_url),
            instance=self.instance,
            error=error,
            on_unavailable=self.cluster.on_unavailable,
            instances=self.instances,
        )

    def _found(self) -> None:
        if self.available:
            return
        self.available = True
        down = self.reactor.seconds() - (self.down_since or self.reactor.seconds())
        self.down_since = None
        self.audit.event(
            Event.CLUSTER_RESTORED,
            redis=shown(self.cluster.redis_url),
            instance=self.instance,
            down_s=round(down, 3),
        )


def _late(result: Any, timeout: float) -> Any:
    """`Deferred.addTimeout`'s translation: a late Redis answer is a `StoreError`."""
    from twisted.python.failure import Failure

    if isinstance(result, Failure) and result.check(defer.CancelledError):
        raise StoreError(f"no answer within {timeout:g} s")
    return result


def build(reactor: Any, cluster: ClusterConfig, audit: Any, metrics: Any) -> SharedState:
    """The cluster of a gateway being made: its Redis client, password read now (`SecretError`)."""
    from gateway.cluster.store import client, password
    from gateway.errors import SecretError

    try:
        secret = password(cluster)
    except SecretError as exc:
        raise SecretError(f"cluster: {exc}") from None
    store = Store(client(cluster, secret, THREADS), instance_name(cluster))
    return SharedState(reactor, cluster, store, audit, metrics)
