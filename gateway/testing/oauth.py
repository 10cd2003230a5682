"""Real OAuth peers for tests: an HTTPS token endpoint and an XOAUTH2-only submission server.

`TokenServer` is a threaded ``http.server`` behind TLS (a throwaway CA's
certificate) on 127.0.0.1. It issues short-lived opaque tokens, counts and
records every request, can be told to fail (an OAuth error JSON), to hold its
answers until released, to revoke tokens, and to verify RS256 JWT assertions
with a service account's public key. `valid` says whether a token is currently
good — the submission server asks it on every AUTH.

`OAuthSubmissionServer` is the aiosmtpd `SubmissionServer` offering only
XOAUTH2 and OAUTHBEARER: a bad token gets the ``334`` error challenge, then
``535 5.7.8`` (and, if told to, the connection is closed).
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from gateway.testing.submission import _SMTP, SubmissionServer, _Handler


@dataclass
class TokenRequest:
    form: dict[str, str]
    claims: dict[str, Any] | None = None  # the verified JWT claims, for the JWT bearer grant


@dataclass
class TokenScript:
    lifetime: int = 3600  # expires_in sent, and how long the token is really valid...
    grace: float = 0.0  # ...plus this (so a slow test machine does not look like a refused token)
    error: tuple[int, dict[str, str]] | None = None  # (HTTP status, JSON) instead of a token
    rotate_refresh_token: str | None = None
    hold: threading.Event = field(default_factory=threading.Event)  # answers wait until set

    def __post_init__(self) -> None:
        self.hold.set()


class TokenServer:
    def __init__(self, context: ssl.SSLContext, public_key: Any = None) -> None:
        self.script = TokenScript()
        self.public_key = public_key  # an RSA public key: verify JWT bearer assertions with it
        self.requests: list[TokenRequest] = []
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._serial = itertools.count(1)
        self._changed = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                status, answer = owner._answer(form, self.path)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"https://localhost:{self.port}/oauth2/v2.0/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="token-endpoint",
            daemon=True,
        )

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.script.hold.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _answer(self, form: dict[str, str], path: str) -> tuple[int, dict[str, Any]]:
        request = TokenRequest(form)
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            request.claims = self._verify_jwt(form.get("assertion", ""))
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        self.script.hold.wait(30)
        if self.script.error is not None:
            return self.script.error
        if (
            request.claims is None
            and form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        token = f"ya29.token-{next(self._serial)}-{time.monotonic_ns()}"
        with self._changed:
            self._tokens[token] = time.monotonic() + self.script.lifetime + self.script.grace
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.script.lifetime,
        }
        if self.script.rotate_refresh_token:
            answer["refresh_token"] = self.script.rotate_refresh_token
        return 200, answer

    def _verify_jwt(self, assertion: str) -> dict[str, Any] | None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def decode(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        try:
            head, claims, signature = assertion.split(".")
            if json.loads(decode(head)).get("alg") != "RS256" or self.public_key is None:
                return None
            self.public_key.verify(
                decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            return dict(json.loads(decode(claims)))
        except (ValueError, InvalidSignature):
            return None

    # --- what tests ask ---------------------------------------------------------------

    @property
    def issued(self) -> list[str]:
        with self._changed:
            return list(self._tokens)

    def valid(self, token: str) -> bool:
        with self._changed:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def revoke_all(self) -> None:
        with self._changed:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def wait_for_requests(self, count: int, timeout: float = 30) -> list[TokenRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"token endpoint got {len(self.requests)} of {count} requests")
            return list(self.requests)


def _parse_bearer(mechanism: str, blob: bytes) -> tuple[str, str] | None:
    """(user, token) from an XOAUTH2 or OAUTHBEARER initial response, or None."""
    text = blob.decode("utf-8", "replace")
    if mechanism == "OAUTHBEARER":
        gs2, sep, text = text.partition("\x01")
        if not sep or not gs2.startswith("n,a=") or not gs2.endswith(","):
            return None
        user = gs2[4:-1].replace("=2C", ",").replace("=3D", "=")
    else:
        user = ""
    fields = dict(item.split("=", 1) for item in text.split("\x01") if "=" in item)
    user = fields.get("user", user)
    auth = fields.get("auth", "")
    if not text.endswith("\x01\x01") or not auth.startswith("Bearer ") or not user:
        return None
    return user, auth[len("Bearer ") :]


class _OAuthSMTP(_SMTP):
    """Offers XOAUTH2 and OAUTHBEARER only; checks each token with the token server."""

    async def _bearer(self, mechanism: str, args: list[str]) -> AuthResult:
        owner: OAuthSubmissionServer = self._owner  # type: ignore[assignment]
        if len(args) > 1:
            try:
                blob: Any = base64.b64decode(args[1], validate=True)
            except ValueError:
                blob = MISSING
        else:
            blob = await self.challenge_auth("")
        parsed = _parse_bearer(mechanism, blob) if isinstance(blob, bytes) else None
        ok = parsed is not None and owner.tokens.valid(parsed[1]) and parsed[0] in owner.mailboxes
        owner.bearer_attempts.append((mechanism, parsed[0] if parsed else None, ok))
        if ok and parsed is not None:
            return AuthResult(success=True, auth_data=LoginPassword(parsed[0].encode(), b""))
        error = json.dumps(
            {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
        )
        await self.challenge_auth(error)  # the client answers (empty / ^A), then we say 535
        await self.push("535 5.7.8 Username and Password not accepted")
        if owner.close_after_reject and self.transport is not None:
            self.transport.close()
        return AuthResult(success=False, handled=True)

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._bearer("XOAUTH2", args)

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._bearer("OAUTHBEARER", args)


class OAuthSubmissionServer(SubmissionServer):
    """A STARTTLS submission server that accepts only currently valid bearer tokens."""

    def __init__(
        self,
        context: ssl.SSLContext,
        tokens: TokenServer,
        mailboxes: set[str],
        mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER"),
    ) -> None:
        super().__init__("starttls", context, {})
        self.tokens = tokens
        self.mailboxes = mailboxes
        self.mechanisms = mechanisms
        self.close_after_reject = False
        self.bearer_attempts: list[tuple[str, str | None, bool]] = []

    def _factory(self) -> SMTP:
        self.connections += 1
        excluded = ["PLAIN", "LOGIN"] + [
            m for m in ("XOAUTH2", "OAUTHBEARER") if m not in self.mechanisms
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _OAuthSMTP(
                self,
                _Handler(self),
                hostname=self.hostname,
                auth_required=True,
                auth_require_tls=True,
                auth_exclude_mechanism=excluded,
                authenticator=lambda *a: AuthResult(success=False),
                ident="upstream.test ESMTP",
                data_size_limit=None,
                tls_context=self.context,
                require_starttls=True,
            )
