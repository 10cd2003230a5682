"""Access tokens for upstreams: fetched over verified HTTPS, cached, shared, refreshed.

`TokenEndpoint` posts one grant's form to its token URL with treq, trusting
``oauth_ca_file`` or the system's roots, TLS 1.2 or later, no redirects.
`TokenCache` (one per gateway) keeps one token per (token URL, client, scope,
subject) — the subject is the mailbox for a delegated Google service account
and empty otherwise, since an app token serves every mailbox. A token is
used until a fifth of its lifetime (at most 5 minutes) before expiry; then the
next caller fetches a new one and every caller that asks meanwhile waits for
that same fetch (single flight: 50 sessions, one request). If that early
refresh fails, the current token is used until it really expires. A token the
upstream refuses is dropped so the next caller fetches afresh — at most once
per 30 s per key, so a set-up the provider keeps refusing does not turn every
message into a token request.

Events (``oauth.token_issued``, ``oauth.token_failed``) go to the audit with
the endpoint, client, grant and lifetime — never a token or a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from treq import collect as collect_body
from treq.client import HTTPClient
from twisted.internet import defer, ssl
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.audit.events import Event
from gateway.config.model import UpstreamConfig
from gateway.outbound import grants
from gateway.outbound.grants import (
    AccessToken,
    GrantCredentials,
    TokenError,
    form_secrets,
    parse_token_response,
    subject_for,
    token_form,
)

MAX_RESPONSE = 65536
REQUEST_TIMEOUT = 30.0
FORCED_REFRESH_INTERVAL = 30.0  # seconds; at most one fetch per key forced by refused tokens

AADSTS = re.compile(r"\bAADSTS\d{4,8}\b")  # Microsoft Entra ID's error codes in a description

TokenKey = tuple[str, str, str, str]  # token URL, client, scope, subject


@implementer(IPolicyForHTTPS)
class _Trust:
    """Verified TLS to the token endpoint: the given roots (or the system's), TLS >= 1.2."""

    def __init__(self, ca_file: str | None) -> None:
        if ca_file:
            with open(ca_file, "rb") as handle:
                pem = handle.read()
            roots = [
                ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
                for block in pem.split(b"-----END CERTIFICATE-----")
                if b"BEGIN CERTIFICATE" in block
            ]
            self._trust = ssl.trustRootFromCertificates(roots)
        else:
            self._trust = ssl.platformTrust()

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trust,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
        )


class TokenEndpoint:
    """One upstream's token source: its grant's secrets and an HTTPS client for its token URL."""

    def __init__(
        self, reactor: Any, name: str, grant: GrantCredentials, *, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.name = name  # the upstream's name, for the audit
        self.grant = grant
        self.timeout = timeout
        oauth = grant.oauth
        agent = Agent(reactor, contextFactory=_Trust(oauth.ca_file), connectTimeout=timeout)
        self._http = HTTPClient(agent)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return self.grant.oauth.token_url

    def key(self, user: str) -> TokenKey:
        oauth = self.grant.oauth
        return (oauth.token_url, self.grant.client, oauth.scope or "", subject_for(oauth, user))

    def fetch(self, user: str) -> defer.Deferred[AccessToken]:
        return defer.Deferred.fromCoroutine(self._fetch(user))

    async def _fetch(self, user: str) -> AccessToken:
        now = self.reactor.seconds()
        form = token_form(self.grant, subject_for(self.grant.oauth, user) or None, now)
        sent = form_secrets(form)  # what the answer must not repeat (the assertion included)
        try:
            response = await self._http.post(
                self.url,
                data=form,
                headers=Headers({b"Accept": [b"application/json"]}),
                allow_redirects=False,
                reactor=self.reactor,
                timeout=self.timeout,
            )
            body = bytearray()

            def collect(data: bytes) -> None:
                body.extend(data)
                if len(body) > MAX_RESPONSE:
                    raise TokenError(
                        f"token endpoint {self.url} sent more than {MAX_RESPONSE} bytes"
                    )

            await collect_body(response, collect)
        except TokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - every transport failure becomes one TokenError
            raise TokenError(f"token endpoint {self.url}: {_describe(exc)}") from None
        finally:
            del form
        token = parse_token_response(
            response.code,
            bytes(body),
            now=self.reactor.seconds(),
            endpoint=self.url,
            secrets=sent,
        )
        del sent
        if token.refresh_token is not None and self.grant.oauth.grant == "refresh_token":
            self.grant.rotate(token.refresh_token)
        return token


def _describe(exc: BaseException) -> str:
    if isinstance(exc, defer.CancelledError):
        return "timed out"
    if isinstance(exc, DNSLookupError):
        return "cannot resolve its host name"
    if isinstance(exc, ConnectError | TimeoutError):
        return f"cannot connect ({type(exc).__name__})"
    if isinstance(exc, ResponseNeverReceived | ResponseFailed | RequestTransmissionFailed):
        for reason in exc.reasons:
            if isinstance(reason, Failure) and reason.check(SSL.Error):
                return "TLS verification failed (is oauth_ca_file right?)"
            if isinstance(reason, Failure) and reason.check(defer.CancelledError):
                return "timed out"
        return "connection lost before a complete answer"
    return type(exc).__name__


class TokenCache:
    """Tokens shared by every session of a gateway; see the module docstring."""

    def __init__(self, clock: Any, on_event: Callable[..., None] | None = None) -> None:
        self.clock = clock
        self.on_event = on_event
        self._tokens: dict[TokenKey, AccessToken] = {}
        self._waiting: dict[TokenKey, list[defer.Deferred[AccessToken]]] = {}
        self._forced: dict[TokenKey, float] = {}  # when a refused token last forced a fetch
        self.fetches = 0

    def token(self, endpoint: TokenEndpoint, user: str) -> defer.Deferred[AccessToken]:
        """A valid token for `user` at `endpoint`: cached, or from the one fetch under way."""
        key = endpoint.key(user)
        cached = self._tokens.get(key)
        if cached is not None and self.clock.seconds() < cached.refresh_at:
            return defer.succeed(cached)
        waiter: defer.Deferred[AccessToken] = defer.Deferred()
        if key in self._waiting:
            self._waiting[key].append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        self.fetches += 1
        endpoint.fetch(user).addBoth(self._fetched, endpoint, key)
        return waiter

    def invalidate(self, endpoint: TokenEndpoint, user: str, token: AccessToken) -> bool:
        """The upstream refused `token`: forget it, so the next caller fetches a new one.

        False (and the token is kept) when a refused token already forced a fetch for
        this key less than `FORCED_REFRESH_INTERVAL` seconds ago: a set-up the provider
        keeps refusing (a missing mailbox permission) must not cost a token request
        per message. True when the caller may retry (a newer token may be there already).
        """
        key = endpoint.key(user)
        if self._tokens.get(key) is not token:
            return True  # another session already replaced it
        now = self.clock.seconds()
        if now - self._forced.get(key, float("-inf")) < FORCED_REFRESH_INTERVAL:
            return False
        self._forced[key] = now
        del self._tokens[key]
        return True

    def _fetched(
        self, result: AccessToken | Failure, endpoint: TokenEndpoint, key: TokenKey
    ) -> None:
        waiters = self._waiting.pop(key, [])
        facts = {
            "upstream": endpoint.name,
            "token_url": key[0],
            "client_id": key[1],
            "grant": endpoint.grant.oauth.grant,
        }
        if key[3]:
            facts["subject"] = key[3]
        if isinstance(result, Failure):
            error = (
                result.value
                if isinstance(result.value, TokenError)
                else TokenError(f"token endpoint {key[0]}: {type(result.value).__name__}")
            )
            code = error.error or "none"  # the endpoint's OAuth error code; "none": it gave none
            found = AADSTS.search(error.reason)
            if found is not None:
                facts["aadsts"] = found.group(0)  # Entra ID's own code (AADSTS700082, ...)
            self._event(Event.OAUTH_TOKEN_FAILED, **facts, error=error.reason, error_code=code)
            stale = self._tokens.get(key)
            if stale is not None and self.clock.seconds() < stale.expires_at:
                for waiter in waiters:  # the early refresh failed: the current token still works
                    waiter.callback(stale)
                return
            for waiter in waiters:
                waiter.errback(Failure(error))
            return
        self._tokens[key] = result
        self._event(Event.OAUTH_TOKEN_ISSUED, **facts, expires_in=round(result.lifetime))
        for waiter in waiters:
            waiter.callback(result)

    def _event(self, name: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(name, **fields)


class UpstreamTokens:
    """What an upstream connector needs: tokens for a user, and a way to refuse one."""

    def __init__(self, cache: TokenCache, endpoint: TokenEndpoint) -> None:
        self.cache = cache
        self.endpoint = endpoint

    @property
    def grant(self) -> str:
        return self.endpoint.grant.oauth.grant

    def token(self, user: str) -> defer.Deferred[AccessToken]:
        return self.cache.token(self.endpoint, user)

    def invalidate(self, user: str, token: AccessToken) -> bool:
        return self.cache.invalidate(self.endpoint, user, token)


def tokens_for(reactor: Any, cache: TokenCache, upstream: UpstreamConfig) -> UpstreamTokens | None:
    """The token source of an ``auth = "xoauth2"`` upstream (its secrets read now), else None."""
    if upstream.auth != "xoauth2" or upstream.oauth is None:
        return None
    endpoint = TokenEndpoint(reactor, upstream.name, grants.resolve(upstream.oauth, upstream.name))
    return UpstreamTokens(cache, endpoint)
