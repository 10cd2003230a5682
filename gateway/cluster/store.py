"""The shared state in Redis, blocking (redis-py): call it from a thread, never the reactor's.

Every key starts with ``mailgate:`` and expires:

- ``mailgate:rate:RULE`` — a rule's rate as a GCRA (the theoretical arrival time, in
  microseconds of Redis's clock); `take` decides one message in one script (one round trip),
  so instances sharing a rule share its budget exactly. Later budgets (upstream pacing) take
  the same script under their own key (`take` with ``"pace:UPSTREAM"``).
- ``mailgate:instances`` — a sorted set of the live instances (member ``NAME/PID``, score the
  time its registration expires); `heartbeat` renews this one's and counts the others.
- ``mailgate:cooldown:UPSTREAM`` — an upstream some instance found down, expiring with its
  ``failover_cooldown``; `heartbeat` reads what is left of each (milliseconds).

Times come from Redis's ``TIME``, so the instances' clocks never disagree about a budget.
A Redis that restarted empty just starts the budgets again and relearns the instances within
a heartbeat; a script it forgot is loaded again (redis-py's `Script` answers NOSCRIPT).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.config.model import ClusterConfig
from gateway.config.secrets import Secret, from_env, from_file

PREFIX = "mailgate:"
INSTANCES = PREFIX + "instances"

# One message against a budget of ARGV[1] per ARGV[2] seconds (bursts up to the whole budget).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local period = tonumber(ARGV[2]) * 1000000
local interval = period / count
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > period then return 0 end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil(period / 1000) + 1000)
return 1
"""

# Renew ARGV[1]'s registration for ARGV[2] ms; answer the live count and each KEYS[2..]'s PTTL.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local answer = {redis.call('ZCARD', KEYS[1])}
for i = 2, #KEYS do answer[#answer + 1] = redis.call('PTTL', KEYS[i]) end
return answer
"""


class StoreError(Exception):
    """Redis did not answer as it should: unreachable, slow, refused, or garbage."""

    def __init__(self, text: str, *, refused_password: bool = False) -> None:
        super().__init__(text)
        self.refused_password = refused_password  # NOAUTH / WRONGPASS: the password is the problem


def password(cluster: ClusterConfig) -> Secret | None:
    """The Redis password from ``password_env`` or ``password_file`` (raises `SecretError`)."""
    if cluster.password_env:
        return from_env(cluster.password_env)
    if cluster.password_file:
        return from_file(cluster.password_file)
    return None


def client(cluster: ClusterConfig, secret: Secret | None, connections: int) -> redis.Redis:
    """A redis-py client for `cluster`: short timeouts, no retries, verified TLS for rediss://."""
    parts = urlsplit(cluster.redis_url)
    tls = parts.scheme == "rediss"
    options: dict[str, object] = {}
    if tls:
        # Named explicitly: whether redis-py checks the name by default has changed over versions.
        options = {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": cluster.ca_file,
        }
    return redis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(parts.path.lstrip("/") or 0),
        username=unquote(parts.username) if parts.username else None,
        password=secret.reveal() if secret is not None else None,
        socket_timeout=cluster.timeout,
        socket_connect_timeout=cluster.timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=connections,
        client_name="mailgate",
        **options,  # type: ignore[arg-type]
    )


def shown(url: str) -> str:
    """The URL as audit and errors show it: never a password (a validated URL has none)."""
    parts = urlsplit(url)
    return url if parts.password is None else url.replace(f":{parts.password}@", ":***@")


class Store:
    """The shared keys, one method per round trip. Raises `StoreError` for any Redis fault."""

    def __init__(self, redis_client: redis.Redis, instance: str) -> None:
        self.redis = redis_client
        self.member = f"{instance}/{os.getpid()}"  # two processes on one host count twice
        self._take = redis_client.register_script(TAKE)
        self._heartbeat = redis_client.register_script(HEARTBEAT)

    def take(self, key: str, count: int, seconds: float) -> bool:
        """One event against the budget under `key` (``rate:RULE``): False when it is spent."""
        answer = self._run(self._take, [PREFIX + key], [count, repr(float(seconds))])
        if answer not in (0, 1):
            raise StoreError(f"unexpected answer to the rate script: {answer!r:.80}")
        return answer == 1

    def heartbeat(self, ttl: float, upstreams: Sequence[str]) -> tuple[int, dict[str, float]]:
        """Renew this instance for `ttl` seconds: (instances alive, upstream -> seconds cooling)."""
        keys = [INSTANCES, *(PREFIX + "cooldown:" + name for name in upstreams)]
        answer = self._run(self._heartbeat, keys, [self.member, int(ttl * 1000)])
        if (
            not isinstance(answer, list)
            or len(answer) != len(upstreams) + 1
            or not all(isinstance(v, int) for v in answer)
            or answer[0] < 1
        ):
            raise StoreError(f"unexpected answer to the heartbeat script: {answer!r:.80}")
        cooling = {n: ms / 1000 for n, ms in zip(upstreams, answer[1:], strict=True) if ms > 0}
        return answer[0], cooling

    def cool(self, upstream: str, seconds: float) -> None:
        """Tell the others that `upstream` is down for `seconds`."""
        ms = max(1, int(seconds * 1000))
        self._call(lambda: self.redis.set(PREFIX + "cooldown:" + upstream, self.member, px=ms))

    def uncool(self, upstream: str) -> None:
        """`upstream` answered again: end the shared cool-down."""
        self._call(lambda: self.redis.delete(PREFIX + "cooldown:" + upstream))

    def leave(self) -> None:
        """Deregister at shutdown (the registration would expire by itself)."""
        self._call(lambda: self.redis.zrem(INSTANCES, self.member))

    def ping(self) -> None:
        if self._call(self.redis.ping) is not True:
            raise StoreError("unexpected answer to PING")

    def close(self) -> None:
        self.redis.close()

    def _run(self, script: object, keys: list[str], args: list[object]) -> object:
        return self._call(lambda: script(keys=keys, args=args))  # type: ignore[operator]

    @staticmethod
    def _call(action: object) -> object:
        try:
            return action()  # type: ignore[operator]
        except redis.AuthenticationError as exc:
            raise StoreError(_describe(exc), refused_password=True) from None
        except redis.RedisError as exc:
            refused = "NOAUTH" in str(exc) or "WRONGPASS" in str(exc)
            raise StoreError(_describe(exc), refused_password=refused) from None
        except (OSError, ValueError, TypeError, IndexError, UnicodeError) as exc:
            # a garbled reply can surface as a parser's error rather than redis-py's own
            raise StoreError(f"{type(exc).__name__}: {exc}"[:200]) from None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
