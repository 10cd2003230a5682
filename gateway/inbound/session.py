"""One app session: the SMTP dialogue, policy at each RCPT, and its audit story.

The listener protocol hands commands here and writes back whatever `Reply`
comes out (at once, or from a Deferred when the upstream must be asked).
The session asks its surroundings only through a `SessionHost`.
Each mail transaction ends in exactly one ``message.result`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

from twisted.internet import defer

from gateway.inbound import auth as app_auth
from gateway.inbound.auth import Credentials, SaslExchange
from gateway.inbound.delivery import Delivery, Origin
from gateway.inbound.host import SessionHost
from gateway.policy import passwords
from gateway.policy import rules as policy
from gateway.policy.headers import HeaderRewriter
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import (
    Command,
    CommandError,
    MailFrom,
    parse_command,
    parse_mail,
    parse_rcpt,
)
from gateway.smtp.data import MessageFacts
from gateway.smtp.replies import Reply

EXTENSIONS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")
RATE_LIMITED = Reply(450, "4.7.1", "Rate limit exceeded, try again later")

_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(passwords.make_hash("not a real password", "scrypt"))
    return _DUMMY[0]


@dataclass
class RecipientResult:
    address: str
    result: str  # accepted, relayed, rejected, deferred
    reply: str
    rule: str | None = None
    limit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _then(result: Any, callback: Any, *args: Any) -> Any:
    """Apply `callback` to a reply now, or when its Deferred fires (a delivery may answer either way)."""
    if isinstance(result, defer.Deferred):
        return result.addCallback(callback, *args)
    return callback(result, *args)


def _outcome(reply: Reply) -> str:
    return "relayed" if reply.is_positive else "deferred" if reply.is_transient else "rejected"


@dataclass
class Transaction:
    mail: MailFrom
    recipients: list[RecipientResult] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    delivery: Delivery | None = None  # relay or queue, from the first accepted recipient
    facts: MessageFacts = field(default_factory=MessageFacts)
    in_data: bool = False
    rated_rules: set[str] = field(default_factory=set)
    refusal: Reply | None = None  # set during DATA when the message must be refused (From: check)
    dot_sent: float | None = None  # when the end of data went upstream (for the latency metric)
    headers: HeaderRewriter | None = None  # the rule's rewrite_from / strip_headers, if any

    @property
    def accepted(self) -> list[RecipientResult]:
        return [r for r in self.recipients if r.result == "accepted"]


class Session:
    def __init__(self, host: SessionHost, session_id: str, client: str, client_port: int) -> None:
        self.host = host
        self.config = host.config  # one config for the whole session, even across a reload
        self.session_id = session_id
        self.client = client
        self.client_port = client_port
        self.log = host.audit.bind(session_id=session_id)
        self.started = host.monotonic()
        self.helo: str | None = None
        self.allowed = False
        self.opened = False  # session.opened written: the client's address is decided
        self.proxied = False
        self.proxy_peer: tuple[str, int] | None = (
            None  # the balancer, once a PROXY header named the client
        )
        self.proxy_rejected = False
        self.transaction: Transaction | None = None
        self.app: str | None = None  # the authenticated app, if any
        self._sasl: SaslExchange | None = None
        self.counts = {
            "messages": 0,
            "relayed": 0,
            "rejected": 0,
            "deferred": 0,
            "failed": 0,
            "queued": 0,
        }
        self.closed = False

    # --- session lifecycle --------------------------------------------------------

    def greeting(self) -> Reply:
        """The banner, after deciding on the client's address.

        Behind a PROXY header (`expect_proxy_header`) the address is not known at
        connect: greet 220 and decide at the first command instead (see `handle`).
        """
        if self.proxied:
            return self._banner()
        return self._admit() or self._banner()

    def _banner(self) -> Reply:
        return Reply(220, "", f"{self.config.listener.hostname} ESMTP mailgate")

    def _admit(self) -> Reply | None:
        """Decide on the client's address and write ``session.opened``; the refusal if denied."""
        self.opened = True
        limit = "listener.allowed_clients"
        try:
            self.address = policy.parse_client(self.client)
            self.allowed = policy.client_allowed(self.config, self.address)
        except ValueError:
            self.allowed = False
        proxy: dict[str, Any] = {}
        if self.proxied:
            if self.proxy_peer is None:
                self.allowed, limit = False, "listener.proxy_protocol"
                proxy["proxy_header"] = "invalid" if self.proxy_rejected else "missing"
            else:
                proxy.update(proxy_ip=self.proxy_peer[0], proxy_port=self.proxy_peer[1])
        self.log.info(
            "session.opened",
            client_ip=self.client,
            client_port=self.client_port,
            allowed=self.allowed,
            **proxy,
        )
        self.host.metrics.session_opened(self.allowed)
        if not self.allowed:
            refusal = (
                replies.PROXY_HEADER_INVALID if self.proxy_rejected else replies.GREETING_DENIED
            )
            self.log.info("session.denied", client_ip=self.client, limit=limit, reply=str(refusal))
            return refusal
        return None

    # --- PROXY protocol (listener.proxy_protocol) ---------------------------------------

    def expect_proxy_header(self) -> None:
        """The address at connect is the balancer's; the client's arrives in a PROXY header."""
        self.proxied = True

    @property
    def awaiting_proxy_header(self) -> bool:
        return self.proxied and self.proxy_peer is None and not self.proxy_rejected

    def proxy_header(self, client: str, client_port: int) -> None:
        """The PROXY header named the client (before its first command reaches `handle`)."""
        self.proxy_peer = (self.client, self.client_port)
        self.client, self.client_port = client, client_port

    def proxy_header_invalid(self) -> None:
        self.proxy_rejected = True

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.opened:
            self._admit()
        if self.transaction is not None:
            self._abandon(f"client session ended ({reason})")
        self.log.info(
            "session.closed",
            reason=reason,
            duration_s=round(self.host.monotonic() - self.started, 3),
            **self.counts,
        )

    # --- commands -----------------------------------------------------------------

    def handle_line(self, line: bytes) -> Reply | defer.Deferred[Reply]:
        """One line from the app: a command, or a response inside an AUTH exchange."""
        if self._sasl is not None:
            exchange, self._sasl = self._sasl, None
            return self._sasl_answer(exchange, exchange.respond(line.decode("ascii", "replace")))
        if not self.opened:  # behind a PROXY header: the first command decides on the client
            refusal = self._admit()
            if refusal is not None and line.strip().upper() != b"QUIT":
                return refusal
        try:
            command = parse_command(line)
        except CommandError as exc:
            return exc.reply
        return self.handle(command)

    def handle(self, command: Command) -> Reply | defer.Deferred[Reply]:
        verb = command.verb
        if verb == "QUIT":
            return replies.CLOSING
        if not self.allowed:
            return replies.DENIED_COMMAND
        handler = getattr(self, f"smtp_{verb}", None) if verb.isalpha() else None
        if handler is None:
            return replies.SYNTAX_UNKNOWN
        try:
            return handler(command.argument)
        except CommandError as exc:
            return exc.reply

    def smtp_EHLO(self, argument: str) -> Reply:  # noqa: N802
        if not argument:
            return replies.SYNTAX_ARGS.with_text("EHLO needs a domain or address literal")
        self._reset("EHLO")
        self.helo = argument
        lines = [f"{self.config.listener.hostname} greets {argument[:64]}"]
        lines += list(EXTENSIONS) + [f"SIZE {self.config.listener.max_message_size}"]
        if self.config.apps:
            lines.append("AUTH " + " ".join(app_auth.MECHANISMS))
        return Reply(250, "", "\n".join(lines))

    def smtp_HELO(self, argument: str) -> Reply:  # noqa: N802
        if not argument:
            return replies.SYNTAX_ARGS.with_text("HELO needs a domain")
        self._reset("HELO")
        self.helo = argument
        return Reply(250, "", f"{self.config.listener.hostname}")

    def smtp_NOOP(self, argument: str) -> Reply:  # noqa: N802
        return replies.NOOP_OK

    def smtp_RSET(self, argument: str) -> Reply:  # noqa: N802
        self._reset("RSET")
        return replies.RESET_OK

    def smtp_VRFY(self, argument: str) -> Reply:  # noqa: N802
        return replies.VRFY_CANNOT

    def smtp_HELP(self, argument: str) -> Reply:  # noqa: N802
        return replies.HELP

    def smtp_AUTH(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        if not self.config.apps:
            return app_auth.AUTH_NOT_OFFERED
        if self.helo is None:
            return replies.NEED_HELO
        if self.app is not None:
            return app_auth.AUTH_TWICE
        if self.transaction is not None:
            return app_auth.AUTH_IN_TRANSACTION
        exchange, answer = SaslExchange.begin(argument)
        if exchange is not None and isinstance(answer, Reply):
            self._sasl = exchange
            return answer
        return self._sasl_answer(None, answer)

    def _sasl_answer(
        self, exchange: SaslExchange | None, answer: Reply | Credentials
    ) -> Reply | defer.Deferred[Reply]:
        if isinstance(answer, Reply):
            if answer.code == 334:
                self._sasl = exchange
            elif answer.code >= 500:
                self.log.info("session.auth_failed", client_ip=self.client, reason=answer.text)
            return answer
        app = self.config.apps.get(answer.username)
        # An unknown name costs the same hash check as a wrong password.
        stored = app.password_hash if app is not None else _dummy_hash()
        d = self.host.verify_password(stored, answer.password)
        return d.addCallback(self._verified, answer.username, app is not None)

    def _verified(self, ok: bool, username: str, known: bool) -> Reply:
        if ok and known:
            self.app = username
            self.log.info("session.authenticated", client_ip=self.client, app=username)
            return app_auth.AUTH_OK
        self.log.info(
            "session.auth_failed",
            client_ip=self.client,
            username=username[:64],
            reason="unknown app" if not known else "wrong password",
        )
        return app_auth.AUTH_FAILED

    def smtp_MAIL(self, argument: str) -> Reply:  # noqa: N802
        if self.helo is None:
            return replies.NEED_HELO
        if self.transaction is not None:
            return replies.NESTED_MAIL
        if self.config.listener.require_auth and self.app is None:
            return app_auth.AUTH_REQUIRED
        mail = parse_mail(argument)
        if self.app is not None and not policy.sender_owned(
            self.config.apps[self.app].senders, mail.sender.text
        ):
            self.log.info(
                "mail.refused",
                sender=mail.sender.text,
                app=self.app,
                limit=f"apps.{self.app}.senders",
                reply=str(app_auth.SENDER_NOT_OWNED),
            )
            return app_auth.SENDER_NOT_OWNED
        limit = self.config.listener.max_message_size
        if mail.size is not None and mail.size > limit:
            self.log.info(
                "mail.refused",
                sender=mail.sender.text,
                size=mail.size,
                limit="listener.max_message_size",
                reply=str(replies.SIZE_EXCEEDED),
            )
            return replies.SIZE_EXCEEDED
        self.transaction = Transaction(mail)
        return replies.SENDER_OK

    def smtp_RCPT(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        txn = self.transaction
        if txn is None:
            return replies.NEED_MAIL
        rcpt = parse_rcpt(argument).recipient
        if len(txn.accepted) >= self.config.listener.max_recipients:
            return self._refuse(
                txn, rcpt, replies.TOO_MANY_RECIPIENTS, limit="listener.max_recipients"
            )
        decision = policy.decide(self.config, self.address, txn.mail.sender, rcpt, self.app)
        if decision.action != "relay" or decision.upstream is None:
            assert decision.reply is not None
            return self._refuse(
                txn,
                rcpt,
                decision.reply,
                rule=decision.rule_name,
                limit=None if decision.rule else "no matching rule",
            )
        rate = decision.rule.rate if decision.rule else None
        if rate is not None and decision.rule_name not in txn.rated_rules:
            if not self.host.rate_allowed(decision.rule_name or "", rate):
                return self._refuse(
                    txn,
                    rcpt,
                    RATE_LIMITED.with_text(
                        f"Rate limit of rule {decision.rule_name} ({rate.text}) exceeded, try again later"
                    ),
                    rule=decision.rule_name,
                    limit=f"rules[{decision.rule_name}].rate",
                )
            txn.rated_rules.add(decision.rule_name or "")
        edits = decision.rule.headers if decision.rule else None
        rule = decision.rule_name
        mode = decision.rule.delivery if decision.rule is not None else "relay"
        if txn.delivery is None:
            delivery = self.host.delivery(mode, decision.route, txn.mail)
            if delivery is None:  # a reload added the first queue rule
                return self._refuse(
                    txn, rcpt, replies.QUEUE_NOT_RUNNING, rule=rule, limit="queue.path"
                )
            txn.delivery = delivery
            txn.headers = HeaderRewriter(edits) if edits else None
        elif txn.delivery.mode != mode:
            return self._refuse(
                txn,
                rcpt,
                replies.OTHER_DELIVERY,
                rule=rule,
                limit="one delivery mode per transaction",
            )
        elif mode == "relay" and txn.delivery.route != decision.route:
            return self._refuse(
                txn,
                rcpt,
                replies.OTHER_ROUTE,
                rule=rule,
                limit="one upstream per transaction in relay mode",
            )
        elif (txn.headers.edits if txn.headers else None) != edits:
            return self._refuse(
                txn,
                rcpt,
                replies.OTHER_HEADER_EDITS,
                rule=rule,
                limit="one set of header edits per transaction",
            )
        return _then(
            txn.delivery.rcpt(rcpt, decision.route, rule), self._rcpt_answered, txn, rcpt, rule
        )

    def _rcpt_answered(
        self, reply: Reply, txn: Transaction, rcpt: Address, rule: str | None
    ) -> Reply:
        if rule and rule not in txn.rules:
            txn.rules.append(rule)
        result = "accepted" if reply.is_positive else _outcome(reply)
        txn.recipients.append(RecipientResult(rcpt.text, result, str(reply), rule=rule))
        return reply

    def _refuse(
        self,
        txn: Transaction,
        rcpt: Address,
        reply: Reply,
        *,
        rule: str | None = None,
        limit: str | None = None,
    ) -> Reply:
        txn.recipients.append(
            RecipientResult(rcpt.text, _outcome(reply), str(reply), rule=rule, limit=limit)
        )
        if rule and rule not in txn.rules:
            txn.rules.append(rule)
        return reply

    def smtp_DATA(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        txn = self.transaction
        if txn is None:
            return replies.NEED_MAIL
        if argument:
            return replies.SYNTAX_ARGS
        if not txn.recipients:
            return replies.NEED_RCPT
        if not txn.accepted or txn.delivery is None:
            return replies.NO_VALID_RECIPIENTS
        return _then(txn.delivery.data(), self._data_answered, txn)

    def _data_answered(self, reply: Reply, txn: Transaction) -> Reply:
        if reply.code == 354:
            txn.in_data = True
        else:
            self._finish(txn, reply)
        return reply

    # --- the message body ------------------------------------------------------------

    def data_started(self, producer: Any) -> None:
        """Let the upstream's send buffer throttle the app's transport (bounded memory)."""
        txn = self.transaction
        if txn and txn.delivery:
            txn.delivery.throttle(producer)

    def data_content(self, content: bytes) -> None:
        txn = self.transaction
        if txn is None or txn.delivery is None or txn.refusal is not None:
            return
        headers_were_done = txn.facts.headers_done
        txn.facts.update(content)
        if not headers_were_done and txn.facts.headers_done and not self._from_allowed(txn):
            txn.refusal = app_auth.FROM_NOT_OWNED
            txn.delivery.abort("From: header not owned by the app")
            return
        txn.delivery.write(txn.headers.feed(content) if txn.headers is not None else content)

    def _from_allowed(self, txn: Transaction) -> bool:
        app = self.config.apps.get(self.app or "")
        if app is None or not app.check_from_header:
            return True
        header = txn.facts.header_from or ""
        addresses = [a for _, a in getaddresses([header])] if header else []
        return bool(addresses) and all(policy.sender_owned(app.senders, a) for a in addresses)

    def data_failed(self, reply: Reply) -> None:
        """The DATA reader found an error: the upstream must never see the final dot."""
        txn = self.transaction
        if txn is not None and txn.delivery is not None:
            txn.delivery.abort(f"message refused by gateway: {reply.text}")

    def data_end(self, error: Reply | None) -> Reply | defer.Deferred[Reply]:
        txn = self.transaction
        assert txn is not None and txn.delivery is not None
        delivery = txn.delivery
        delivery.unthrottle()
        if error is None and txn.refusal is None and not txn.facts.headers_done:
            txn.facts.end_headers()  # a message that is all header: check it now
            if not self._from_allowed(txn):
                txn.refusal = app_auth.FROM_NOT_OWNED
                delivery.abort("From: header not owned by the app")
        if error is None and txn.refusal is not None:
            delivery.abort("From: header not owned by the app")
            self._finish(txn, txn.refusal, limit=f"apps.{self.app}.check_from_header")
            return txn.refusal
        if error is not None:
            delivery.abort(f"message refused by gateway: {error.text}")
            limit = "listener.max_message_size" if error.code == 552 else "data framing (RFC 5321)"
            self._finish(txn, error, limit=limit)
            return error
        if txn.headers is not None:
            delivery.write(txn.headers.finish())
        txn.dot_sent = self.host.monotonic()
        origin = Origin(self.session_id, self.client, self.helo)
        return _then(delivery.finish(txn.facts, origin), self._data_finished, txn)

    def _data_finished(self, reply: Reply, txn: Transaction) -> Reply:
        assert txn.delivery is not None
        if txn.delivery.mode == "queue" and reply.is_positive:
            self._queued(txn, reply)
        else:
            self._finish(txn, reply, limit="queue.path" if txn.delivery.mode == "queue" else None)
        txn.delivery.settled()
        return reply

    def _queued(self, txn: Transaction, reply: Reply) -> None:
        """Durable in the spool: ``message.queued`` (its ``message.result`` comes from the runner)."""
        assert txn.delivery is not None
        self.transaction = None
        for recipient in txn.accepted:
            recipient.result = "queued"
        self.counts["messages"] += 1
        self.counts["queued"] += 1
        queued = txn.delivery.audit_fields()
        self.log.info(
            "message.queued",
            queue_id=queued.get("queue_id"),
            client_ip=self.client,
            helo=self.helo,
            sender=txn.mail.sender.text,
            recipients=[r.as_dict() for r in txn.recipients],
            rules=txn.rules,
            upstreams=queued["upstreams"],
            size=txn.facts.size,
            message_id=txn.facts.message_id,
            sha256=txn.facts.sha256,
            reply=str(reply),
        )
        upstreams = queued["upstreams"]
        self.host.metrics.message_result(
            {
                "outcome": "queued",
                "rules": txn.rules,
                "upstream": upstreams[0] if upstreams else None,
            }
        )

    # --- transaction end ---------------------------------------------------------------

    def _reset(self, why: str) -> None:
        if self.transaction is not None:
            self._abandon(f"client sent {why}")

    def _abandon(self, reason: str) -> None:
        txn = self.transaction
        assert txn is not None
        if txn.delivery is not None and txn.delivery.handed_over:
            # The whole message is in and its commit is running, or the final dot went upstream:
            # let it finish, so the audit records what really happened (the app saw no reply and
            # may send it again: the usual at-least-once).
            return
        if txn.delivery is not None:
            txn.delivery.abort(reason)
        if txn.accepted or txn.in_data:
            outcome = "failed"  # the app gave up on a message the upstream would have taken
        elif any(r.result == "deferred" for r in txn.recipients):
            outcome = "deferred"
        else:
            outcome = "rejected"
        self._finish(txn, None, outcome=outcome, reason=reason)

    def _finish(
        self,
        txn: Transaction,
        reply: Reply | None,
        *,
        outcome: str | None = None,
        reason: str | None = None,
        limit: str | None = None,
    ) -> None:
        """Emit the one message.result of this transaction and forget it."""
        if self.transaction is not txn:
            return
        self.transaction = None
        if outcome is None:
            assert reply is not None
            outcome = _outcome(reply)
        for recipient in txn.recipients:
            if recipient.result == "accepted":
                if reply is not None:
                    recipient.result = _outcome(reply)
                    recipient.reply = str(reply)
                else:
                    recipient.result = "failed"
        fields: dict[str, Any] = {
            "client_ip": self.client,
            "helo": self.helo,
            "app": self.app,
            "sender": txn.mail.sender.text,
            "recipients": [r.as_dict() for r in txn.recipients],
            "rules": txn.rules,
            "outcome": outcome,
        }
        if reply is not None:
            fields["reply"] = str(reply)
        if txn.delivery is not None:
            delivered = txn.delivery.audit_fields()
            if txn.delivery.mode == "queue":  # no upstream yet: only why the commit failed
                delivered = {k: v for k, v in delivered.items() if k == "reason"}
            fields.update(delivered)
        if txn.in_data:
            fields.update(
                size=txn.facts.size, message_id=txn.facts.message_id, sha256=txn.facts.sha256
            )
            if txn.headers is not None and txn.headers.edits.rewrite_from:
                fields["original_from"] = txn.headers.original_from
        if reason:
            fields["reason"] = reason
        if limit:
            fields["limit"] = limit
        self.counts["messages"] += 1
        self.counts[outcome] += 1
        self.log.info("message.result", **fields)
        waited = None if txn.dot_sent is None else self.host.monotonic() - txn.dot_sent
        self.host.metrics.message_result(fields, waited)
