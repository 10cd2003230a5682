"""The message body between 354 and the end of data, on its way to the transaction's delivery.

Body bytes go on with the rule's header edits applied, once the From: check
(`gateway.inbound.from_header`) passed; a refused message, or one the DATA reader
found fault with, is aborted, so the final dot never goes out. Pure: no reactor imports.
"""

from __future__ import annotations

from gateway.config.model import App
from gateway.inbound.from_header import from_allowed
from gateway.inbound.transaction import Transaction
from gateway.smtp.replies import FROM_NOT_OWNED, Reply

FROM_REFUSED = "From: header not owned by the app"  # the delivery's abort reason


def pass_on(txn: Transaction, app: App | None, content: bytes) -> None:
    """Body bytes from the DATA reader (unstuffed, CRLF lines): on to the delivery, or dropped."""
    if txn.delivery is None or txn.refusal is not None:
        return
    headers_were_done = txn.facts.headers_done
    txn.facts.update(content)
    if not headers_were_done and txn.facts.headers_done and _from_refused(txn, app):
        return
    txn.delivery.write(txn.headers.feed(content) if txn.headers is not None else content)


def _from_refused(txn: Transaction, app: App | None) -> bool:
    """With the headers in: refuse the message if `app` may not use its From: header."""
    assert txn.delivery is not None
    if from_allowed(app, txn.facts.header_from):
        return False
    txn.refusal = FROM_NOT_OWNED
    txn.delivery.abort(FROM_REFUSED)
    return True


def failed(txn: Transaction, error: Reply) -> None:
    """The DATA reader found `error`: the delivery must never send the final dot."""
    if txn.delivery is not None:
        txn.delivery.abort(f"message refused by gateway: {error.text}")


def end(txn: Transaction, app: App | None, error: Reply | None) -> tuple[Reply, str] | None:
    """The end of data: the reply that refuses the message and the limit it hit, or None
    when the final dot may go out (the header edits' last bytes are written first).

    `error` is the DATA reader's (too big, bad framing); the delivery is aborted on a refusal.
    """
    delivery = txn.delivery
    assert delivery is not None
    delivery.unthrottle()
    if error is None and txn.refusal is None and not txn.facts.headers_done:
        txn.facts.end_headers()  # a message that is all header: check it now
        _from_refused(txn, app)
    if error is None and txn.refusal is not None:
        assert app is not None
        delivery.abort(FROM_REFUSED)
        return txn.refusal, f"apps.{app.name}.check_from_header"
    if error is not None:
        delivery.abort(f"message refused by gateway: {error.text}")
        limit = "listener.max_message_size" if error.code == 552 else "data framing (RFC 5321)"
        return error, limit
    if txn.headers is not None:
        delivery.write(txn.headers.finish())
    return None
