"""The shared state in Redis, blocking (redis-py): call it from a thread, never the reactor's.

Every key starts with ``mailgate:`` and expires:

- ``mailgate:rate:RULE`` — a rule's rate as a GCRA (the theoretical arrival time, in
  microseconds of Redis's clock); `take` decides one message in one script (one round trip),
  so instances sharing a rule share its budget exactly. Later budgets (upstream pacing) take
  the same script under their own key.
- ``mailgate:budget:UPSTREAM:IDENTITY:pace`` / ``:rcpt`` / ``:rcpt_total`` — a provider budget
  (`spend`): the messages of the pace's period and the recipients of the last 24 hours as
  sorted sets (exact rolling windows, both taken in one script or neither); `refund` removes a
  take's members again (the provider cannot have counted it).
- ``mailgate:instances`` — a sorted set of the live instances (member ``NAME/PID``, score the
  time its registration expires); `heartbeat` renews this one's and counts the others.
- ``mailgate:cooldown:UPSTREAM`` — an upstream some instance found down, expiring with its
  ``failover_cooldown``; `heartbeat` reads what is left of each (milliseconds).
- ``mailgate:pause:UPSTREAM:IDENTITY`` — a sending identity (hashed) that the provider told some
  instance to slow down, expiring with the pause (`pause`; the value names that instance);
  ``mailgate:pauses`` indexes them (member ``UPSTREAM:IDENTITY``, score its expiry)
  so that `heartbeat` reads what is left of each in the same round trip, without a SCAN.

Times come from Redis's ``TIME``, so the instances' clocks never disagree about a budget.
A Redis that restarted empty just starts the budgets again and relearns the instances within
a heartbeat; a script it forgot is loaded again (redis-py's `Script` answers NOSCRIPT).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.config.model import ClusterConfig
from gateway.config.secrets import Secret, from_env, from_file

PREFIX = "mailgate:"
INSTANCES = PREFIX + "instances"
PAUSES = PREFIX + "pauses"  # the index of the live pauses (their keys are PREFIX + "pause:" ...)
PAUSES_READ = 1000  # pauses a heartbeat reads at most (each a throttled identity)

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

# A provider budget per sending identity: exact rolling windows, both taken or neither.
# KEYS: the pace's sorted set, the recipients' sorted set, the recipients' running total.
# ARGV: pace count, pace period (s; 0: none), recipients a day (0: none), messages, recipients,
# a member unique to this take. Answer {1}, or {0, which (1 pace, 2 recipients), ms until free}.
SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count, period = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000000
local limit, day = tonumber(ARGV[3]), 86400 * 1000000
local messages, rcpts, member = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if period > 0 and messages > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
  local n = redis.call('ZCARD', KEYS[1])
  if n > 0 and n + messages > count then
    local oldest = redis.call('ZRANGE', KEYS[1], n - count, n - count, 'WITHSCORES')
    return {0, 1, math.ceil((tonumber(oldest[2]) + period - now) / 1000)}
  end
end
local total = 0
if limit > 0 and rcpts > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - day)
  -- the total counts the set's members: with the set gone (expired), so is what it counted
  if redis.call('EXISTS', KEYS[2]) == 1 then total = tonumber(redis.call('GET', KEYS[3])) or 0 end
  for _, m in ipairs(gone) do total = total - tonumber(string.match(m, ':(%d+)$')) end
  if total < 0 then total = 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - day)
  redis.call('SET', KEYS[3], total, 'PX', 86400000 + 1000)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], 86400000 + 1000) end
  if total > 0 and total + rcpts > limit then
    local excess = total + rcpts - limit
    local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #held, 2 do
      excess = excess - tonumber(string.match(held[i], ':(%d+)$'))
      if excess <= 0 then return {0, 2, math.ceil((tonumber(held[i + 1]) + day - now) / 1000)} end
    end
    return {0, 2, 86400000}
  end
end
if period > 0 and messages > 0 then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1000)
end
if limit > 0 and rcpts > 0 then
  redis.call('ZADD', KEYS[2], now, member .. ':' .. rcpts)
  redis.call('SET', KEYS[3], total + rcpts, 'PX', 86400000 + 1000)
  redis.call('PEXPIRE', KEYS[2], 86400000 + 1000)
end
return {1}
"""

# Give back (part of) one take of SPEND. KEYS as SPEND's; ARGV: the take's member, messages to give
# back (0 or 1), the recipients it holds now, the recipients to give back. Answer what was given
# back (0: the take is no longer in the windows).
REFUND = """
local member, messages = ARGV[1], tonumber(ARGV[2])
local held, back = tonumber(ARGV[3]), tonumber(ARGV[4])
local given = 0
if messages > 0 then given = redis.call('ZREM', KEYS[1], member) end
if back > 0 and held > 0 then
  local old = member .. ':' .. held
  local score = redis.call('ZSCORE', KEYS[2], old)
  if score then
    redis.call('ZREM', KEYS[2], old)
    if held > back then
      redis.call('ZADD', KEYS[2], score, member .. ':' .. string.format('%d', held - back))
    end
    local total = tonumber(redis.call('GET', KEYS[3])) or 0
    if total > 0 then redis.call('SET', KEYS[3], math.max(0, total - back), 'KEEPTTL') end
    given = given + back
  end
end
return given
"""

# Renew ARGV[1]'s registration for ARGV[2] ms; answer the live count, each KEYS[3..]'s PTTL,
# then (member, ms left) of each live pause indexed in KEYS[2] (the keys ARGV[3] .. member;
# at most ARGV[4] of them, soonest to end first; an index entry whose key is gone is dropped).
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local answer = {redis.call('ZCARD', KEYS[1])}
for i = 3, #KEYS do answer[#answer + 1] = redis.call('PTTL', KEYS[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1)) do
  local left = redis.call('PTTL', ARGV[3] .. m)
  if left > 0 then
    answer[#answer + 1] = m
    answer[#answer + 1] = left
  else
    redis.call('ZREM', KEYS[2], m)
  end
end
return answer
"""

# A pause: KEYS[1] the pause's key, KEYS[2] the index; ARGV the index's member, ms, the instance.
PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ms)
redis.call('ZADD', KEYS[2], now + ms, ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[2], math.max(ms, tonumber(last[2]) - now) + 1000)
return 1
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
        self._spend = redis_client.register_script(SPEND)
        self._refund = redis_client.register_script(REFUND)
        self._pause = redis_client.register_script(PAUSE)
        self._spends = 0
        self._token = secrets.token_hex(4)  # a process that restarts with the same pid (pid 1)

    def take(self, key: str, count: int, seconds: float) -> bool:
        """One event against the budget under `key` (``rate:RULE``): False when it is spent."""
        answer = self._run(self._take, [PREFIX + key], [count, repr(float(seconds))])
        if answer not in (0, 1):
            raise StoreError(f"unexpected answer to the rate script: {answer!r:.80}")
        return answer == 1

    def spend(
        self,
        key: str,
        pace: tuple[int, float] | None,
        recipients_per_day: int | None,
        messages: int,
        recipients: int,
        ticket: str | None = None,
    ) -> tuple[int, float] | None:
        """Take from the budget ``budget:UPSTREAM:IDENTITY``: None, or (1 pace / 2 recipients,
        seconds until it frees). `ticket` names the take for a `refund`."""
        self._spends += 1
        keys = self._budget_keys(key)
        count, seconds = pace or (1, 0.0)
        member = self._member(ticket)
        args = [count, repr(float(seconds)), recipients_per_day or 0, messages, recipients, member]
        answer = self._run(self._spend, keys, args)
        if answer == [1]:
            return None
        if (
            isinstance(answer, list)
            and len(answer) == 3
            and answer[0] == 0
            and answer[1] in (1, 2)
            and isinstance(answer[2], int)
        ):
            return answer[1], max(0, answer[2]) / 1000
        raise StoreError(f"unexpected answer to the budget script: {answer!r:.80}")

    def refund(self, key: str, ticket: str, messages: int, held: int, recipients: int) -> int:
        """Give back `messages` and `recipients` of the take `ticket` (holding `held` recipients
        now) of the budget under `key`: what was given back (0: no longer in the windows)."""
        args = [self._member(ticket), messages, held, recipients]
        answer = self._run(self._refund, self._budget_keys(key), args)
        if not isinstance(answer, int):
            raise StoreError(f"unexpected answer to the refund script: {answer!r:.80}")
        return answer

    @staticmethod
    def _budget_keys(key: str) -> list[str]:
        return [PREFIX + key + ":pace", PREFIX + key + ":rcpt", PREFIX + key + ":rcpt_total"]

    def _member(self, ticket: str | None) -> str:
        """A take's member: this process's name and token (unique across restarts too)."""
        return f"{self.member}/{self._token}/{ticket if ticket is not None else self._spends}"

    def heartbeat(
        self, ttl: float, upstreams: Sequence[str]
    ) -> tuple[int, dict[str, float], dict[str, float]]:
        """Renew this instance for `ttl` seconds: (instances alive, upstream -> seconds cooling,
        ``UPSTREAM:IDENTITY`` -> seconds paused)."""
        keys = [INSTANCES, PAUSES, *(PREFIX + "cooldown:" + name for name in upstreams)]
        args = [self.member, int(ttl * 1000), PREFIX + "pause:", PAUSES_READ]
        answer = self._run(self._heartbeat, keys, args)
        counted = len(upstreams) + 1
        if (
            not isinstance(answer, list)
            or len(answer) < counted
            or (len(answer) - counted) % 2
            or not all(isinstance(v, int) for v in answer[:counted])
            or answer[0] < 1
        ):
            raise StoreError(f"unexpected answer to the heartbeat script: {answer!r:.80}")
        cooling = {
            n: ms / 1000 for n, ms in zip(upstreams, answer[1:counted], strict=True) if ms > 0
        }
        pairs = answer[counted:]
        paused: dict[str, float] = {}
        for member, ms in zip(pairs[::2], pairs[1::2], strict=True):
            if not isinstance(member, bytes) or not isinstance(ms, int):
                raise StoreError(f"unexpected pause in the heartbeat's answer: {member!r:.80}")
            paused[member.decode("ascii", "replace")] = ms / 1000
        return answer[0], cooling, paused

    def pause(self, member: str, seconds: float) -> None:
        """Tell the others that the identity ``UPSTREAM:IDENTITY`` (`member`, the identity
        hashed) is paused for `seconds` more."""
        ms = max(1, int(seconds * 1000))
        self._run(self._pause, [PREFIX + "pause:" + member, PAUSES], [member, ms, self.member])

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
