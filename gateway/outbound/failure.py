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
    upstream's own reply when there was one.
    """

    def __init__(self, reply: Reply, reason: str, upstream_reply: Reply | None = None) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.upstream_reply = upstream_reply


def lost(name: str, reason: str) -> UpstreamFailure:
    """The connection to upstream `name` went away or timed out (`reason` from the protocol)."""
    reply = replies.UPSTREAM_TIMEOUT if "timeout" in reason else replies.UPSTREAM_LOST
    return UpstreamFailure(reply, f"{name}: {reason}")
