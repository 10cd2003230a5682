"""Reading the ``[[rules]]`` tables: conditions, action, upstreams, rate, header edits. Pure.

Rules are kept in file order (`gateway.policy.rules` takes the first that
matches); each names upstreams and apps defined elsewhere in the document, so
it is read after them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.headers import read_header_edits
from gateway.config.model import ACTIONS, DELIVERY_MODES, App, Rate, Rule, UpstreamConfig
from gateway.config.reader import Reader
from gateway.config.values import parse_rate


def read_rules(
    reader: Reader,
    document: Mapping[str, Any],
    upstreams: Mapping[str, UpstreamConfig],
    apps: Mapping[str, App],
) -> tuple[Rule, ...]:
    """The ``[[rules]]`` tables in file order, checked against the defined upstreams and apps."""
    section = document.get("rules", [])
    if not isinstance(section, list):
        reader.problem("rules", section, "an array of [[rules]] tables")
        return ()
    rules = []
    for i, value in enumerate(section):
        key = f"rules[{i}]"
        if not isinstance(value, dict):
            reader.problem(key, value, "a table")
            continue
        known = {
            "name",
            "clients",
            "senders",
            "recipients",
            "action",
            "upstream",
            "apps",
            "rate",
            "delivery",
            "bounce_to_senders",
        }
        known |= {"rewrite_from", "strip_headers"}
        reader.unknown_keys(value, key, known)
        name = reader.string(value, f"{key}.name", f"rule-{i + 1}") or f"rule-{i + 1}"
        action = reader.string(value, f"{key}.action", None, choices=ACTIONS)
        if action is None and "action" not in value:
            reader.problem(f"{key}.action", "nothing", '"relay" or "reject"', raw=True)
        delivery = (
            reader.string(value, f"{key}.delivery", "relay", choices=DELIVERY_MODES) or "relay"
        )
        if delivery == "queue" and action != "relay":
            reader.problem(
                f"{key}.delivery", delivery, 'delivery = "queue" only with action = "relay"'
            )
        bounce_safe = reader.boolean(value, f"{key}.bounce_to_senders", False)
        if bounce_safe and value.get("senders") is None:
            reader.problem(
                f"{key}.bounce_to_senders",
                True,
                "bounce_to_senders only with a senders list (the senders a DSN may go to)",
            )
        names = _upstream_names(
            reader, value, f"{key}.upstream", upstreams, required=action == "relay"
        )
        rules.append(
            Rule(
                name=name,
                action=action or "reject",
                upstreams=names,
                clients=reader.networks(value, f"{key}.clients"),
                senders=reader.strings(value, f"{key}.senders"),
                recipients=reader.strings(value, f"{key}.recipients"),
                apps=_rule_apps(reader, value, f"{key}.apps", apps),
                rate=_rate(reader, value, f"{key}.rate"),
                headers=read_header_edits(reader, value, key),
                delivery=delivery,
                bounce_to_senders=bounce_safe,
            )
        )
    rule_names = [r.name for r in rules]
    for i, name in enumerate(rule_names):
        if name in rule_names[:i]:
            reader.problem(f"rules[{i}].name", name, "a name not used by an earlier rule")
    return tuple(rules)


def _upstream_names(
    reader: Reader,
    table: Mapping[str, Any],
    key: str,
    upstreams: Mapping[str, UpstreamConfig],
    *,
    required: bool,
) -> tuple[str, ...]:
    """``upstream = "NAME"`` or ``upstream = ["primary", "backup"]`` (failover, in order)."""
    value = table.get("upstream")
    if value is None:
        if required:
            reader.problem(
                key,
                "nothing",
                "the name of an [upstreams.NAME] table, or a list of them",
                raw=True,
            )
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        reader.problem(key, value, 'an upstream name or a list such as ["primary", "backup"]')
        return ()
    defined = ", ".join(sorted(upstreams)) or "none defined"
    for i, name in enumerate(names):
        if name not in upstreams:
            where = key if isinstance(value, str) else f"{key}[{i}]"
            reader.problem(where, name, f"one of the defined upstreams ({defined})")
    if len(set(names)) != len(names):
        reader.problem(key, value, "each upstream at most once")
    return tuple(names)


def _rule_apps(
    reader: Reader, table: Mapping[str, Any], key: str, apps: Mapping[str, App]
) -> tuple[str, ...] | None:
    names = reader.strings(table, key)
    for i, name in enumerate(names or ()):
        if name not in apps:
            reader.problem(
                f"{key}[{i}]",
                name,
                f"one of the defined apps ({', '.join(sorted(apps)) or 'none defined'})",
            )
    return names


def _rate(reader: Reader, table: Mapping[str, Any], key: str) -> Rate | None:
    value = table.get("rate")
    if value is None:
        return None
    rate = parse_rate(value) if isinstance(value, str) else None
    if rate is None:
        reader.problem(key, value, 'COUNT/UNIT such as "100/minute" (unit: second, minute, hour)')
    return rate
