"""What a reload may change: everything except what is bound or opened at start. Pure.

``listener.listen``, ``listener.proxy_protocol``, ``listener.reuse_port``, ``metrics.listen``,
``audit.path``, the ``[queue]`` keys and the ``[cluster]`` table are fixed for the life of the
process (a bound socket, an open file); a new config that changes one is refused as a whole,
naming each key, so that nothing half-applies. Restart mailgate to change them.
"""

from __future__ import annotations

from gateway.config.model import Config
from gateway.errors import Problem

FIXED = (
    "listener.listen",
    "listener.proxy_protocol",
    "listener.reuse_port",
    "metrics.listen",
    "audit.path",
    # the spool and its delivery runner are set up at start
    "queue.path",
    "queue.min_backoff",
    "queue.max_backoff",
    "queue.max_age",
    "queue.bounce",
    "queue.min_free",
    # the Redis client, its thread pool and this instance's registration are made at start
    "cluster",
)


def _value(config: Config, key: str) -> object:
    section, _, name = key.partition(".")
    value = getattr(config, section)
    return getattr(value, name) if name else value


def _shown(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def fixed_changes(running: Config, new: Config) -> list[Problem]:
    """One problem per fixed setting that `new` changes."""
    problems = []
    for key in FIXED:
        before, after = _value(running, key), _value(new, key)
        if before != after:
            shown, was = _shown(after), _shown(before)
            problems.append(
                Problem(
                    new.source,
                    key,
                    f"{shown} (changed on reload)",
                    f"{was} as at start: this setting needs a restart",
                )
            )
    return problems
