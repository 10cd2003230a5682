"""What a [cluster] rate decision adds: Redis (one Lua script) via the cluster thread pool.

Starts a throwaway redis-server on loopback, then times `SharedState.rate_allowed` from the
reactor (call to answer: thread hand-off, one round trip, back to the reactor) against the
local token bucket, one decision at a time and with `-c` decisions in flight. A measurement,
not a test: ``python bench/cluster_latency.py`` (``-n`` decisions, default 2000).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from gateway.cluster.shared import SharedState
from gateway.cluster.store import Store, client
from gateway.config.model import ClusterConfig, Rate
from gateway.daemon.metrics import Metrics
from gateway.policy.ratelimit import RateLimits
from gateway.testing.redis_server import RedisServer

RATE = Rate(10**9, 60.0, "lots/minute")  # never spent: every decision is a full script run


class _Audit:
    def event(self, *args: Any, **fields: Any) -> None:
        print("audit:", args, fields)


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"median {statistics.median(samples) * 1e6:7.0f} µs  p99 {q[98] * 1e6:7.0f} µs"


async def measure(reactor: Any, shared: SharedState, n: int, concurrency: int) -> None:
    local = RateLimits()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        local.allow("r", RATE, reactor.seconds())
        samples.append(time.perf_counter() - start)
    print(f"local bucket            {percentiles(samples)}")
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await shared.rate_allowed("bench", RATE)
        samples.append(time.perf_counter() - start)
    print(f"redis, 1 in flight      {percentiles(samples)}")
    samples = []

    async def one() -> None:
        start = time.perf_counter()
        await shared.rate_allowed("bench", RATE)
        samples.append(time.perf_counter() - start)

    started = time.perf_counter()
    for _ in range(n // concurrency):
        await defer.gatherResults([defer.Deferred.fromCoroutine(one()) for _ in range(concurrency)])
    rate = len(samples) / (time.perf_counter() - started)
    print(f"redis, {concurrency} in flight     {percentiles(samples)}  ({rate:.0f} decisions/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("-c", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(folder)
        server.start()
        try:
            cluster = ClusterConfig(redis_url=server.url, instance="bench")
            store = Store(client(cluster, None, 4), "bench")

            async def run(reactor: Any) -> None:
                shared = SharedState(reactor, cluster, store, _Audit(), Metrics())
                shared.start()
                await measure(reactor, shared, args.n, args.c)
                await shared.stop()

            task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
