"""RCPT in an app session: the limits on recipients, policy for each one, the rule's rate, and
handing an accepted recipient to the transaction's delivery. Functions of the `Session`, kept
apart from its dialogue (`Session.smtp_RCPT` calls `rcpt`).

- ``listener.max_rcpt_commands`` counts every RCPT of a transaction: past it the transaction
  and the session end (``421 4.7.0``); ``listener.max_recipients`` caps the accepted ones.
- `gateway.policy.rules.decide` judges each recipient (client, app, sender, recipient): a
  refusal names its rule, or ``no matching rule``.
- A rule's ``rate`` takes one token per transaction (the host answers at once, or later from
  the cluster's Redis; undecided: relay mode defers ``451 4.3.0``, queue mode accepts).
- The first accepted recipient opens the transaction's `Delivery` (relay or queue); later ones
  must fit it (same mode, route and header edits) or get ``452 4.5.3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer

from gateway.inbound import trace
from gateway.inbound.delivery import then
from gateway.inbound.reload import reload_reached_transaction
from gateway.inbound.transaction import Transaction
from gateway.policy import rules as policy
from gateway.smtp import replies
from gateway.smtp.commands import parse_rcpt
from gateway.smtp.replies import RATE_LIMITED, Reply

if TYPE_CHECKING:
    from gateway.config.model import Rate
    from gateway.inbound.session import Session
    from gateway.smtp.address import Address


def rcpt(session: Session, argument: str) -> Reply | defer.Deferred[Reply]:
    """``RCPT TO:<address>``: the recipient's reply, now or once the delivery (or rate) answers."""
    txn = session.transaction
    if txn is None:
        return replies.NEED_MAIL
    refusal = reload_reached_transaction(session)
    if refusal is not None:
        return refusal
    txn.rcpt_commands += 1
    if txn.rcpt_commands > session.config.listener.max_rcpt_commands:
        return _too_many_rcpt_commands(session, txn)
    recipient = parse_rcpt(argument).recipient
    if txn.accepted_count >= session.config.listener.max_recipients:
        return txn.refused(recipient, replies.TOO_MANY_RECIPIENTS, limit="listener.max_recipients")
    assert session.address is not None  # commands come only from an admitted client
    decision = policy.decide(
        session.config, session.address, txn.mail.sender, recipient, session.app
    )
    if decision.action != "relay" or decision.upstream is None:
        assert decision.reply is not None
        return txn.refused(
            recipient,
            decision.reply,
            rule=decision.rule_name,
            limit=None if decision.rule else "no matching rule",
        )
    rate = decision.rule.rate if decision.rule else None
    if rate is None or decision.rule_name in txn.rated_rules:
        return _allowed(session, txn, recipient, decision)
    allowed = session.host.rate_allowed(decision.rule_name or "", rate)
    return then(allowed, _rated, session, txn, recipient, decision, rate)


def _rated(
    allowed: bool | None,
    session: Session,
    txn: Transaction,
    recipient: Address,
    decision: policy.Decision,
    rate: Rate,
) -> Reply | defer.Deferred[Reply]:
    """The rule's rate answered (at once, or from the cluster's Redis): refuse, or go on."""
    mode = decision.rule.delivery if decision.rule is not None else "relay"
    if allowed is None and mode == "relay":  # [cluster] unavailable, on_unavailable = "defer"
        return txn.refused(
            recipient,
            replies.CLUSTER_UNAVAILABLE,
            rule=decision.rule_name,
            limit="cluster.on_unavailable",
        )
    if allowed is False:
        return txn.refused(
            recipient,
            RATE_LIMITED.with_text(
                f"Rate limit of rule {decision.rule_name} ({rate.text}) exceeded, try again later"
            ),
            rule=decision.rule_name,
            limit=f"rules[{decision.rule_name}].rate",
        )
    txn.rated_rules.add(decision.rule_name or "")  # undecided in queue mode: it is queued
    return _allowed(session, txn, recipient, decision)


def _allowed(
    session: Session, txn: Transaction, recipient: Address, decision: policy.Decision
) -> Reply | defer.Deferred[Reply]:
    """The policy relays `recipient` within its rate: hand it to the transaction's delivery."""
    edits = decision.rule.headers if decision.rule else None
    rule = decision.rule_name
    mode = decision.rule.delivery if decision.rule is not None else "relay"
    if txn.delivery is None:
        headers = trace.rewriter(session, edits)
        mail = trace.upstream_mail(txn.mail, headers)
        delivery = session.host.delivery(mode, decision.route, mail)
        if delivery is None:  # a reload added the first queue rule
            return txn.refused(recipient, replies.QUEUE_NOT_RUNNING, rule=rule, limit="queue.path")
        txn.delivery, txn.headers = delivery, headers
    else:
        mismatch = txn.mismatch(mode, decision.route, edits)
        if mismatch is not None:
            reply, limit = mismatch
            return txn.refused(recipient, reply, rule=rule, limit=limit)
    answer = txn.delivery.rcpt(recipient, decision.route, rule)
    if isinstance(answer, defer.Deferred):
        answer.addErrback(session._delivery_failed, txn, recipient, rule)
    return then(answer, txn.answered, recipient, rule)


def _too_many_rcpt_commands(session: Session, txn: Transaction) -> Reply:
    """Over ``listener.max_rcpt_commands``: end the transaction and the session (421)."""
    reply = replies.TOO_MANY_RCPT_COMMANDS
    if txn.delivery is not None:
        txn.delivery.abort("too many RCPT commands")
    session._finish(txn, reply, limit="listener.max_rcpt_commands")
    return reply
