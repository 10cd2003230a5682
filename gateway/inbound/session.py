"""One app session: the SMTP dialogue and its audit story.

The listener protocol hands commands here and writes back whatever `Reply`
comes out (at once, or from a Deferred when the upstream must be asked).
The session asks its surroundings only through a `SessionHost`. Each mail
transaction (`gateway.inbound.transaction`) ends in exactly one ``message.result``.
Policy at each RCPT is `gateway.inbound.recipient`'s; TLS, `gateway.inbound.starttls`'s;
AUTH, `gateway.inbound.auth`'s; the body, `gateway.inbound.body`'s.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer

from gateway.audit.events import RELAY_OUTCOMES, Event, Outcome
from gateway.inbound import body, recipient, starttls
from gateway.inbound.admission import open_session
from gateway.inbound.auth import AppLogin
from gateway.inbound.delivery import Origin, then
from gateway.inbound.host import SessionHost
from gateway.inbound.reload import follow_reload, reload_reached_transaction
from gateway.inbound.transaction import Transaction
from gateway.policy import rules as policy
from gateway.smtp import replies
from gateway.smtp.commands import Command, CommandError, parse_command, parse_mail
from gateway.smtp.replies import Reply

EXTENSIONS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")


def new_session_id() -> str:
    """A ``session_id``: 16 random hex digits."""
    return secrets.token_hex(8)


class Session:
    def __init__(
        self,
        host: SessionHost,
        session_id: str,
        client: str,
        client_port: int,
        listen_tls: str = "plain",
    ) -> None:
        self.host = host
        self.config = (
            host.config
        )  # taken again at each MAIL (`gateway.inbound.reload.follow_reload`)
        self.session_id = session_id
        self.client = client
        self.client_port = client_port
        self.log = host.audit.bind(session_id=session_id)
        self.started = host.monotonic()
        self.helo: str | None = None
        self.esmtp = False  # the app greeted with EHLO (the Received field's "with ESMTP")
        self.address: policy.IPAddress | None = None  # the client's, once admitted
        self.allowed = False
        self.opened = False  # session.opened written: the client's address is decided
        self.proxied = False
        self.proxy_peer: tuple[str, int] | None = None  # the balancer, behind a PROXY header
        self.proxy_rejected = False
        self.proxy_untrusted = False  # the peer is not in listener.proxy_trusted
        self.transaction: Transaction | None = None
        self.login = AppLogin(self.config.apps, host, self.log)
        self.listen_tls = listen_tls  # the entry's: "plain", "starttls" or "smtps"
        self.tls: starttls.ClientTLS | None = None  # once the handshake completed
        self.starting_tls = False  # 220 to STARTTLS sent: the listener starts the handshake
        outcomes = (*RELAY_OUTCOMES, Outcome.QUEUED)
        self.counts = dict.fromkeys(("messages", *outcomes), 0)  # for session.closed
        self.closed = False

    @property
    def app(self) -> str | None:
        """The authenticated app, if any."""
        return self.login.app

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
        return open_session(self)

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

    def proxy_peer_untrusted(self) -> None:
        """The peer outside ``listener.proxy_trusted`` sent bytes: whatever they claim, denied."""
        self.proxy_rejected = self.proxy_untrusted = True

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.opened:
            self._admit()
        if self.transaction is not None:
            self._abandon(f"client session ended ({reason})")
        self.log.info(
            Event.SESSION_CLOSED,
            reason=reason,
            duration_s=round(self.host.monotonic() - self.started, 3),
            **starttls.audit_fields(self.tls),
            **self.counts,
        )

    # --- commands -----------------------------------------------------------------

    def handle_line(self, line: bytes) -> Reply | defer.Deferred[Reply]:
        """One line from the app: a command, or a response inside an AUTH exchange."""
        if self.login.exchanging:
            return self.login.respond(line, self.client)
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
        self.helo, self.esmtp = argument, True
        lines = [f"{self.config.listener.hostname} greets {argument[:64]}"]
        lines += list(EXTENSIONS) + [f"SIZE {self.config.listener.max_message_size}"]
        lines += starttls.ehlo_keywords(self)
        return Reply(250, "", "\n".join(lines))

    def smtp_HELO(self, argument: str) -> Reply:  # noqa: N802
        if not argument:
            return replies.SYNTAX_ARGS.with_text("HELO needs a domain")
        self._reset("HELO")
        self.helo, self.esmtp = argument, False
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

    def smtp_STARTTLS(self, argument: str) -> Reply:  # noqa: N802
        return starttls.starttls(self, argument)

    def smtp_AUTH(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        if not self.config.apps:
            return replies.AUTH_NOT_OFFERED
        refusal = starttls.auth_refusal(self)
        if refusal is not None:
            return refusal
        if self.helo is None:
            return replies.NEED_HELO
        if self.app is not None:
            return replies.AUTH_TWICE
        if self.transaction is not None:
            return replies.AUTH_IN_TRANSACTION
        return self.login.begin(argument, self.client)

    def smtp_MAIL(self, argument: str) -> Reply:  # noqa: N802
        if self.helo is None:
            return replies.NEED_HELO
        if self.transaction is not None:
            return replies.NESTED_MAIL
        refusal = follow_reload(self)
        if refusal is not None:
            return refusal
        key, refusal = "listener.require_tls", starttls.mail_refusal(self)
        if refusal is None and self.config.listener.require_auth and self.app is None:
            key, refusal = "listener.require_auth", replies.AUTH_REQUIRED
        if refusal is not None:  # who the sender would have been, when the line says it
            sender = _sender_of(argument)
            self.log.info(Event.MAIL_REFUSED, sender=sender, limit=key, reply=str(refusal))
            return refusal
        mail = parse_mail(argument)
        if not self.login.owns(mail.sender.text):
            self.log.info(
                Event.MAIL_REFUSED,
                sender=mail.sender.text,
                app=self.app,
                limit=f"apps.{self.app}.senders",
                reply=str(replies.SENDER_NOT_OWNED),
            )
            return replies.SENDER_NOT_OWNED
        limit = self.config.listener.max_message_size
        if mail.size is not None and mail.size > limit:
            self.log.info(
                Event.MAIL_REFUSED,
                sender=mail.sender.text,
                size=mail.size,
                limit="listener.max_message_size",
                reply=str(replies.SIZE_EXCEEDED),
            )
            return replies.SIZE_EXCEEDED
        self.transaction = Transaction(mail)
        return replies.SENDER_OK

    def smtp_RCPT(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        return recipient.rcpt(self, argument)

    def smtp_DATA(self, argument: str) -> Reply | defer.Deferred[Reply]:  # noqa: N802
        txn = self.transaction
        if txn is None:
            return replies.NEED_MAIL_BEFORE_DATA
        if argument:
            return replies.SYNTAX_ARGS
        refusal = reload_reached_transaction(self)
        if refusal is not None:
            return refusal
        if not txn.recipients:
            return replies.NEED_RCPT
        if not txn.accepted or txn.delivery is None:
            return replies.NO_VALID_RECIPIENTS
        answer = txn.delivery.data()
        if isinstance(answer, defer.Deferred):
            answer.addErrback(self._delivery_failed, txn)
        return then(answer, self._data_answered, txn)

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
        if self.transaction is not None:
            body.pass_on(self.transaction, self.login.authenticated, content)

    def data_failed(self, reply: Reply) -> None:
        """The DATA reader found an error: the upstream must never see the final dot."""
        if self.transaction is not None:
            body.failed(self.transaction, reply)

    def data_end(self, error: Reply | None) -> Reply | defer.Deferred[Reply]:
        txn = self.transaction
        assert txn is not None and txn.delivery is not None
        refused = body.end(txn, self.login.authenticated, error)
        if refused is not None:
            reply, limit = refused
            self._finish(txn, reply, limit=limit)
            return reply
        txn.dot_sent = self.host.monotonic()
        tls = starttls.audit_fields(self.tls)
        origin = Origin(self.session_id, self.client, self.helo, self.app, txn.message_id, **tls)
        answer = txn.delivery.finish(txn.facts, origin)
        if isinstance(answer, defer.Deferred):
            answer.addErrback(self._delivery_failed, txn)
        return then(answer, self._data_finished, txn)

    def _data_finished(self, reply: Reply, txn: Transaction) -> Reply:
        assert txn.delivery is not None
        if txn.delivery.mode == "queue" and reply.is_positive:
            self._queued(txn, reply)
        else:
            self._finish(txn, reply, limit="queue.path" if txn.delivery.mode == "queue" else None)
        txn.delivery.settled()
        return reply

    # --- transaction end ---------------------------------------------------------------

    def _delivery_failed(
        self, failure: Any, txn: Transaction, recipient: Any = None, rule: str | None = None
    ) -> Any:
        """The delivery raised (our bug): the app will get ``421`` (the listener's, with its
        ``gateway.error``); record that answer now, drop the delivery, and pass the failure on.

        Without this the transaction ended, at the close, as "rejected" without the recipient,
        or, once handed over (the final dot), with no ``message.result`` at all.
        """
        if self.transaction is txn:
            if recipient is not None:
                txn.answered(replies.INTERNAL_ERROR, recipient, rule)
            if txn.delivery is not None:
                txn.delivery.abort("internal error")
            self._finish(txn, replies.INTERNAL_ERROR, reason="internal error")
        return failure

    def _queued(self, txn: Transaction, reply: Reply) -> None:
        """Durable in the spool: ``message.queued`` (its ``message.result`` comes from the runner)."""
        self.transaction = None
        self.counts["messages"] += 1
        self.counts[Outcome.QUEUED] += 1
        fields = txn.queued(self.client, self.helo, reply) | starttls.audit_fields(self.tls)
        self.log.info(Event.MESSAGE_QUEUED, **fields)
        first = fields["upstreams"][0] if fields["upstreams"] else None
        self.host.metrics.message_result(
            {"outcome": Outcome.QUEUED, "rules": txn.rules, "upstream": first}
        )

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
        self._finish(txn, None, outcome=txn.abandoned_outcome(), reason=reason)

    def _finish(
        self,
        txn: Transaction,
        reply: Reply | None,
        *,
        outcome: Outcome | None = None,
        reason: str | None = None,
        limit: str | None = None,
    ) -> None:
        """Emit the one message.result of this transaction and forget it."""
        if self.transaction is not txn:
            return
        self.transaction = None
        who = {"client_ip": self.client, "helo": self.helo, "app": self.app}
        who |= starttls.audit_fields(self.tls)
        fields = txn.result(who, reply, outcome, reason=reason, limit=limit)
        self.counts["messages"] += 1
        self.counts[fields["outcome"]] += 1
        self.log.info(Event.MESSAGE_RESULT, **fields)
        waited = None if txn.dot_sent is None else self.host.monotonic() - txn.dot_sent
        self.host.metrics.message_result(fields, waited)


def _sender_of(argument: str) -> str | None:
    """The sender a MAIL line names, for the record of its refusal (None: it names none)."""
    try:
        return parse_mail(argument).sender.text
    except CommandError:
        return None
