"""What every audit record of an outbound transaction says about the upstream. Pure reading.

One function, so that relay and queue records carry the same fields: the upstream and its
TLS session, who we were there, the upstream's own last reply exactly as it was sent (code,
enhanced code or null, text), and why the transaction failed or moved on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.outbound.classify import auth_hint

if TYPE_CHECKING:
    from gateway.outbound.transaction import Transaction


def upstream_fields(txn: Transaction) -> dict[str, Any]:
    """The upstream, its TLS session, who we were there and its own words, for the audit."""
    up = txn.upstream
    fields: dict[str, Any] = {"upstream": up.name if up else next(iter(txn.route), None)}
    if up is not None:
        fields.update(upstream_host=up.host, upstream_port=up.port, tls_mode=up.tls)
    if txn.session is not None:
        fields.update(
            tls_version=txn.session.tls.version,
            tls_cipher=txn.session.tls.cipher,
            peer_cert_sha256=txn.session.tls.peer_cert_sha256,
            auth_user=txn.session.auth_user,
        )
        if txn.session.oauth_grant:
            fields.update(
                oauth_grant=txn.session.oauth_grant,
                auth_mechanism=txn.session.auth_mechanism,
            )
    if txn.upstream_reply is not None:
        fields.update(
            upstream_code=txn.upstream_reply.code,
            upstream_enhanced=txn.upstream_reply.enhanced,
            upstream_reply=txn.upstream_reply.text,
        )
        if (hint := auth_hint(txn.upstream_reply)) is not None:
            fields["hint"] = hint
    if txn.failure is not None:
        fields["gateway_abort" if txn.aborted else "upstream_error"] = txn.failure.reason
    if txn.tried:
        fields["upstreams_tried"] = txn.tried
    if txn.retried:
        fields["connection_retried"] = txn.retried
    if txn.pacer.paced is not None and txn.failure is not None:
        fields["paced"] = {"budget": txn.pacer.paced.budget, "upstream": txn.pacer.paced.upstream}
    if txn.pacer.throttled_by:
        fields["throttled"] = txn.pacer.throttled_by
    return fields
