"""The catalogue of audit events: every name mailgate writes, defined once. Pure.

docs/audit.md's event catalogue lists exactly these (tests/audit/test_events.py checks it),
and the audit log refuses a name that is not here, so a new event cannot go undocumented.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # the gateway process
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    GATEWAY_ERROR = "gateway.error"
    CONFIG_RELOADED = "config.reloaded"
    CONFIG_RELOAD_FAILED = "config.reload_failed"
    AUDIT_REOPENED = "audit.reopened"
    AUDIT_REOPEN_FAILED = "audit.reopen_failed"
    # an app's connection and session
    CONNECTION_REFUSED = "connection.refused"
    SESSION_OPENED = "session.opened"
    SESSION_DENIED = "session.denied"
    SESSION_AUTHENTICATED = "session.authenticated"
    SESSION_AUTH_FAILED = "session.auth_failed"
    SESSION_CLOSED = "session.closed"
    SESSION_TLS_FAILED = "session.tls_failed"
    MAIL_REFUSED = "mail.refused"
    # a message
    MESSAGE_RESULT = "message.result"
    MESSAGE_QUEUED = "message.queued"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_DEAD = "message.dead"
    MESSAGE_BOUNCED = "message.bounced"
    MESSAGE_DELETED = "message.deleted"
    MESSAGE_QUARANTINED = "message.quarantined"
    # the queue
    QUEUE_STARTED = "queue.started"
    QUEUE_INCOMPLETE_DISCARDED = "queue.incomplete_discarded"
    QUEUE_UNREADABLE = "queue.unreadable"
    QUEUE_WRITE_FAILED = "queue.write_failed"
    QUEUE_DRAIN_STARTED = "queue.drain_started"
    QUEUE_DRAINED = "queue.drained"
    QUEUE_DRAIN_CANCELLED = "queue.drain_cancelled"
    DELIVERY_ATTEMPT = "delivery.attempt"
    DELIVERY_DUPLICATE_RISK = "delivery.duplicate_risk"
    # provider budgets
    UPSTREAM_THROTTLED = "upstream.throttled"
    # OAuth tokens for XOAUTH2 upstreams
    OAUTH_TOKEN_ISSUED = "oauth.token_issued"
    OAUTH_TOKEN_FAILED = "oauth.token_failed"
    # [cluster]: the shared Redis
    CLUSTER_UNAVAILABLE = "cluster.unavailable"
    CLUSTER_RESTORED = "cluster.restored"
    # operator holds (mailgate queue hold/release) and queue.min_free, as the runner sees them
    MESSAGE_HELD = "message.held"
    MESSAGE_RELEASED = "message.released"
    UPSTREAM_HELD = "upstream.held"
    UPSTREAM_RELEASED = "upstream.released"
    QUEUE_SPACE_LOW = "queue.space_low"
    QUEUE_SPACE_RESTORED = "queue.space_restored"


class Outcome(StrEnum):
    """A ``message.result``'s ``outcome``, and what each recipient's ``result`` says."""

    # relay mode, decided in the session
    RELAYED = "relayed"  # the upstream took it
    REJECTED = "rejected"  # 5xx: policy, a limit, or the upstream
    DEFERRED = "deferred"  # 4xx: try again later
    FAILED = "failed"  # the app gave up after recipients were accepted, or in DATA
    QUEUED = "queued"  # queue mode: durable in the spool (``message.queued``)
    # queue mode, decided by the runner
    DELIVERED = "delivered"
    PARTIAL = "partial"  # some recipients delivered, some failed
    DELETED = "deleted"  # by the operator (mailgate queue delete)


ACCEPTED = "accepted"  # a recipient's result while its transaction is still open (never recorded)
RELAY_OUTCOMES = (Outcome.RELAYED, Outcome.REJECTED, Outcome.DEFERRED, Outcome.FAILED)
