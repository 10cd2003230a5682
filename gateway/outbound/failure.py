"""`UpstreamFailure`: an upstream session could not be used. Pure: no reactor imports.

On its own so that the protocol, the connector, AUTH, the pool and the transaction can all
raise and catch it without importing each other.
"""

from __future__ import annotations

from gateway.smtp import replies
from gateway.smtp.replies import Reply


class UpstreamFailure(Exception):
    """The upstream session could not be used.

    `reply` is what the app gets (always 4xx unless the upstream itself said 5xx
    to the message); `reason` is for the audit; `upstream_reply` is the
    upstream's own reply when there was one. `at_auth`: it came at AUTH, once the
    sending identity was presented — a throttling reply there is about that identity; one
    at the greeting or EHLO is about us as a client (a connection-rate limit).
    """

    def __init__(
        self,
        reply: Reply,
        reason: str,
        upstream_reply: Reply | None = None,
        *,
        at_auth: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.upstream_reply = upstream_reply
        self.at_auth = at_auth


def lost(name: str, reason: str) -> UpstreamFailure:
    """The connection to upstream `name` went away or timed out (`reason` from the protocol)."""
    reply = replies.UPSTREAM_TIMEOUT if "timeout" in reason else replies.UPSTREAM_LOST
    return UpstreamFailure(reply, f"{name}: {reason}")
