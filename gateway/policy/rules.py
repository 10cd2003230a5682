"""Policy: which rule a recipient matches and what happens to it. Pure.

Rules are evaluated in order for each recipient; the first rule whose every
given condition (authenticated app, client network, envelope sender glob,
recipient glob) holds
wins. No match is a refusal (``550 5.7.1``): the gateway is closed by default.
Globs have ``*`` (any run of characters) and ``?`` (one character), everything
else literal (so ``*@[10.0.0.1]`` matches an address literal), case-insensitive; the
null sender ``<>`` is matched as the empty string (so ``*`` matches it), and
the glob ``"<>"`` matches the null sender only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from gateway.config.model import Config, Network, Rule, UpstreamConfig
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.replies import Reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Decision:
    """The outcome for one recipient: the rule (if any), the action and where it goes."""

    action: str  # "relay" or "reject"
    rule: Rule | None
    upstreams: tuple[UpstreamConfig, ...]  # in failover order
    reply: Reply | None  # the refusal, when action is "reject"

    @property
    def upstream(self) -> UpstreamConfig | None:
        """The first (primary) upstream of the route."""
        return self.upstreams[0] if self.upstreams else None

    @property
    def route(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.upstreams)

    @property
    def rule_name(self) -> str | None:
        return self.rule.name if self.rule else None


def parse_client(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_allowed(config: Config, client: IPAddress) -> bool:
    return _in_networks(client, config.listener.allowed_clients)


def _in_networks(client: IPAddress, networks: tuple[Network, ...]) -> bool:
    return any(client.version == net.version and client in net for net in networks)


@lru_cache(maxsize=4096)
def _glob(glob: str) -> re.Pattern[str]:
    """``*`` is any run of characters, ``?`` one character; everything else is literal.

    No ``[...]`` classes: address literals such as ``*@[10.0.0.1]`` must match as written.
    """
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob.lower())
    return re.compile("".join(parts), re.DOTALL)


def _globs_match(text: str, globs: tuple[str, ...]) -> bool:
    """Case-insensitive globs; the glob ``<>`` matches only the null sender."""
    return any(
        text == "" if glob == "<>" else _glob(glob).fullmatch(text) is not None for glob in globs
    )


def rule_matches(
    rule: Rule, client: IPAddress, sender: Address, recipient: Address, app: str | None = None
) -> bool:
    if rule.apps is not None and app not in rule.apps:
        return False
    if rule.clients is not None and not _in_networks(client, rule.clients):
        return False
    if rule.senders is not None and not _globs_match(sender.for_matching(), rule.senders):
        return False
    if rule.recipients is not None and not _globs_match(recipient.for_matching(), rule.recipients):
        return False
    return True


def sender_owned(globs: tuple[str, ...] | None, sender: str) -> bool:
    """Whether an app with these sender globs may use `sender` (no globs: any sender)."""
    return globs is None or _globs_match(sender.lower(), globs)


def decide(
    config: Config, client: IPAddress, sender: Address, recipient: Address, app: str | None = None
) -> Decision:
    """The first rule matching (client, app, sender, recipient) decides; none matching refuses."""
    for rule in config.rules:
        if rule_matches(rule, client, sender, recipient, app):
            if rule.action == "relay" and rule.upstreams:
                return Decision(
                    "relay", rule, tuple(config.upstreams[n] for n in rule.upstreams), None
                )
            return Decision(
                "reject",
                rule,
                (),
                replies.RULE_REJECT.with_text(f"Relay access denied by rule {rule.name}"),
            )
    return Decision("reject", None, (), replies.NO_RULE)
