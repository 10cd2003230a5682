"""The message body between 354 and the end of data, on its way to the transaction's delivery.

Body bytes go on through the transaction's `gateway.policy.headers.HeaderRewriter`: the
rule's header edits and the gateway's trace fields (Received, a missing Date and Message-ID)
applied, once the header checks passed. More than `MAX_RECEIVED` Received fields in the
app's header section is a mail loop: refused (``554 5.4.6``) like a failed check. Where
a header edit (``rewrite_from``/``strip_headers``) or the From: check
(`gateway.inbound.from_header`) applies, the header section must be well formed
(`gateway.smtp.header_section`), and the From: check must pass. A refused message, or one
the DATA reader found fault with, is aborted, so the final dot never goes out (in queue
mode: it is never committed). Pure: no reactor imports.
"""

from __future__ import annotations

from gateway.config.model import App
from gateway.inbound.from_header import from_checked, from_problem
from gateway.inbound.transaction import Transaction
from gateway.policy.trace import MAX_RECEIVED
from gateway.smtp import replies
from gateway.smtp.replies import Reply

FROM_REFUSED = "From: header not owned by the app"  # the delivery's abort reason
HEADERS_REFUSED = "header section not well formed"  # the delivery's abort reason
LOOP_REFUSED = "mail loop (too many Received fields)"  # the delivery's abort reason
LOOP_LIMIT = f"at most {MAX_RECEIVED} Received fields (mail loop, RFC 5321 6.3)"


def pass_on(txn: Transaction, app: App | None, content: bytes) -> None:
    """Body bytes from the DATA reader (unstuffed, CRLF lines): on to the delivery, or dropped."""
    if txn.delivery is None or txn.refusal is not None:
        return
    headers_were_done = txn.facts.headers_done
    txn.facts.update(content)
    if not headers_were_done and txn.facts.headers_done and _refused(txn, app):
        return
    if txn.headers is None:
        txn.delivery.write(content)
        return
    out = txn.headers.feed(content)
    if txn.headers.looped:
        reason = f"the header section has more than {MAX_RECEIVED} Received fields: a mail loop"
        _refuse(txn, replies.MAIL_LOOP, LOOP_LIMIT, reason, LOOP_REFUSED)
        return
    txn.delivery.write(out)


def checks(txn: Transaction, app: App | None) -> list[str]:
    """The settings that check this message's header section (empty: none does)."""
    keys = [f"apps.{app.name}.check_from_header"] if app is not None and from_checked(app) else []
    if txn.headers is not None and txn.headers.edits:
        rule = next((r.rule for r in txn.accepted if r.rule), None)
        option = "rewrite_from" if txn.headers.edits.rewrite_from else "strip_headers"
        keys.append(f"rules[{rule}].{option}" if rule else f"rules.{option}")
    return keys


def _refused(txn: Transaction, app: App | None) -> bool:
    """With the header section read: refuse the message if a check that applies fails."""
    keys = checks(txn, app)
    if not keys:
        return False
    facts = txn.facts
    section = facts.section
    if section.problem is not None:
        reply = replies.HEADER_SECTION_TOO_BIG if section.too_big else replies.HEADERS_MALFORMED
        return _refuse(txn, reply, ", ".join(keys), section.problem, HEADERS_REFUSED)
    problem = from_problem(app, facts.header_from, facts.from_count, facts.from_truncated)
    if problem is None:
        return False
    assert app is not None
    reply = replies.FROM_NOT_SINGLE if facts.from_count > 1 else replies.FROM_NOT_OWNED
    return _refuse(txn, reply, f"apps.{app.name}.check_from_header", problem, FROM_REFUSED)


def _refuse(txn: Transaction, reply: Reply, limit: str, reason: str, abort: str) -> bool:
    assert txn.delivery is not None
    txn.refusal, txn.refusal_limit, txn.refusal_reason = reply, limit, reason
    txn.delivery.abort(abort)
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
        txn.facts.end_headers()  # a message that is all header (or empty): check it now
        _refused(txn, app)
    if error is None and txn.refusal is not None:
        assert txn.refusal_limit is not None  # the delivery was aborted when it was set
        return txn.refusal, txn.refusal_limit
    if error is not None:
        delivery.abort(f"message refused by gateway: {error.text}")
        limit = "listener.max_message_size" if error.code == 552 else "data framing (RFC 5321)"
        return error, limit
    if txn.headers is not None:
        delivery.write(txn.headers.finish())
    return None
