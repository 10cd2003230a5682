"""OAuth 2.0 grants: the secrets an upstream's token requests need, the request
forms, the RS256 assertion of the JWT bearer grant, and token responses.

Three grants (RFC 6749, RFC 7523):

- ``client_credentials``: the app's own identity (Microsoft 365 SMTP.SendAsApp);
- ``refresh_token``: a long-lived refresh token a user consented to once;
- ``jwt_bearer``: a Google service account with domain-wide delegation,
  signing a JWT whose ``sub`` is the mailbox to act as.

Secrets are `Secret` values and never part of an error text: an endpoint's
``error`` and ``error_description`` are passed on with any secret they might echo
(raw, URL-encoded, base64, JSON-escaped) blanked out.
Pure apart from reading the secret files once.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.config import secrets as credentials
from gateway.config.providers import OAuthConfig
from gateway.config.secrets import Secret
from gateway.errors import MailgateError, SecretError
from gateway.outbound.scrub import Scrubber

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # seconds; Google's maximum
DEFAULT_LIFETIME = 300  # seconds assumed when a token response has no expires_in
MAX_DESCRIPTION = 300


class TokenError(MailgateError):
    """No access token could be obtained; `reason` names the endpoint and its error, never a secret."""

    def __init__(self, reason: str, *, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = (
            error  # the endpoint's OAuth error code (invalid_client, ...), when it gave one
        )


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    key_id: str | None
    private_key: rsa.RSAPrivateKey

    def __repr__(self) -> str:
        return f"ServiceAccount({self.client_email!r})"


@dataclass(frozen=True)
class AccessToken:
    value: Secret
    expires_at: float  # on the clock of the cache that fetched it
    lifetime: float
    refresh_token: Secret | None = None  # a rotated refresh token, when the endpoint sent one

    @property
    def refresh_at(self) -> float:
        """When to fetch the next one: ahead of expiry by a fifth of the lifetime, at most 5 minutes."""
        return self.expires_at - min(300.0, self.lifetime / 5)


class GrantCredentials:
    """The resolved secrets of one upstream's grant. The refresh token may rotate."""

    def __init__(
        self,
        oauth: OAuthConfig,
        client_secret: Secret | None = None,
        refresh_token: Secret | None = None,
        service_account: ServiceAccount | None = None,
        rotated_file: str | None = None,
    ) -> None:
        self.oauth = oauth
        self.rotated_file = rotated_file  # where a rotated refresh token is kept (state dir)
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.service_account = service_account

    @property
    def client(self) -> str:
        """Who asks for tokens: the client ID, or the service account's e-mail address."""
        if self.service_account is not None:
            return self.service_account.client_email
        return self.oauth.client_id or ""

    def rotate(self, refresh_token: Secret) -> None:
        """Keep a new refresh token, in memory and (best effort) in the state directory's file
        (`rotated_file`) -- never over the operator's ``refresh_token_file``, which the shipped
        systemd unit passes read-only as a credential."""
        if refresh_token == self.refresh_token:
            return
        self.refresh_token = refresh_token
        if self.rotated_file:
            try:
                os.makedirs(os.path.dirname(self.rotated_file), mode=0o700, exist_ok=True)
            except OSError:
                return  # no state directory to write: the new token is used from memory
            _replace_file(self.rotated_file, refresh_token.reveal())


def _replace_file(path: str, value: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".refresh-token-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp creates it with mode 600
            handle.write(value + "\n")
        os.replace(temporary, path)
    except OSError:
        pass  # read-only folder: the new token is still used from memory until restart


def resolve(oauth: OAuthConfig, upstream: str) -> GrantCredentials:
    """Read the secrets `oauth` refers to; `SecretError` names the key and file, never a value."""
    try:
        client_secret = None
        if oauth.client_secret_env:
            client_secret = credentials.from_env(oauth.client_secret_env)
        elif oauth.client_secret_file:
            client_secret = credentials.from_file(oauth.client_secret_file)
        refresh_token = None
        rotated = rotated_path(upstream)
        if oauth.grant == "refresh_token" and oauth.refresh_token_file:
            refresh_token = credentials.from_file(oauth.refresh_token_file)
            if _newer(rotated, oauth.refresh_token_file):  # rotated since the operator wrote it
                refresh_token = credentials.from_file(rotated)
        account = None
        if oauth.grant == "jwt_bearer" and oauth.service_account_file:
            account = load_service_account(oauth.service_account_file)
    except SecretError as exc:
        raise SecretError(f"upstreams.{upstream}: {exc}") from None
    return GrantCredentials(oauth, client_secret, refresh_token, account, rotated)


def state_directory() -> str:
    """Where the service may write: systemd's ``$STATE_DIRECTORY`` (its first), else ./var/state."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return given or os.path.join(".", "var", "state")


def rotated_path(upstream: str) -> str:
    """The file a rotated refresh token of `upstream` is kept in (mode 600, folder 700)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in upstream)
    return os.path.join(state_directory(), "refresh-tokens", safe)


def _newer(path: str, than: str) -> bool:
    try:
        return os.stat(path).st_mtime_ns >= os.stat(than).st_mtime_ns
    except OSError:
        return False


def load_service_account(path: str) -> ServiceAccount:
    """A Google service account JSON key (``client_email``, ``private_key``, ``private_key_id``)."""
    text = credentials.from_file(path).reveal()
    try:
        data = json.loads(text)
        email, pem = data["client_email"], data["private_key"]
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, KeyError, TypeError):
        raise SecretError(
            f"service account file {path}: expected Google's JSON key with client_email "
            "and an unencrypted RSA private_key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SecretError(f"service account file {path}: private_key is not an RSA key")
    key_id = data.get("private_key_id")
    return ServiceAccount(str(email), str(key_id) if key_id else None, key)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_assertion(
    account: ServiceAccount, *, audience: str, scope: str, subject: str | None, now: float
) -> str:
    """An RS256-signed JWT for the JWT bearer grant (RFC 7523 section 3)."""
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if account.key_id:
        header["kid"] = account.key_id
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": account.client_email,
        "scope": scope,
        "aud": audience,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    if subject:
        claims["sub"] = subject
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = account.private_key.sign(
        signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{_b64url(signature)}"


def token_form(grant: GrantCredentials, subject: str | None, now: float) -> dict[str, str]:
    """The form fields of one token request. Contains secrets: never log it."""
    oauth = grant.oauth
    form: dict[str, str] = {}
    if oauth.grant == "jwt_bearer":
        assert grant.service_account is not None and oauth.scope
        form["grant_type"] = JWT_BEARER
        form["assertion"] = jwt_assertion(
            grant.service_account,
            audience=oauth.token_url,
            scope=oauth.scope,
            subject=subject,
            now=now,
        )
        return form
    form["grant_type"] = oauth.grant
    form["client_id"] = oauth.client_id or ""
    if grant.client_secret is not None:
        form["client_secret"] = grant.client_secret.reveal()
    if oauth.grant == "refresh_token":
        assert grant.refresh_token is not None
        form["refresh_token"] = grant.refresh_token.reveal()
    if oauth.scope:
        form["scope"] = oauth.scope
    return form


def subject_for(oauth: OAuthConfig, user: str) -> str:
    """Whose token it is: the mailbox for a delegated service account, else the app itself ("")."""
    return user if oauth.grant == "jwt_bearer" else ""


def form_secrets(form: Mapping[str, str]) -> list[str]:
    """The secrets a token request form carries: what the endpoint's answer must not repeat."""
    return [form[key] for key in ("client_secret", "refresh_token", "assertion") if form.get(key)]


def _text(value: object) -> str:
    """A field of the answer as text: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_token_response(
    status: int, body: bytes, *, now: float, endpoint: str, secrets: Sequence[str] = ()
) -> AccessToken:
    """A token endpoint's answer to an `AccessToken`, or `TokenError` with its error and description.

    Every text taken from the answer is scrubbed of `secrets` (in every encoding we
    send them in, see `gateway.outbound.scrub`) before it is cut to length.
    """
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, Mapping):
        raise TokenError(f"token endpoint {endpoint} answered HTTP {status} without a JSON object")
    scrub = Scrubber(secrets, "<secret>")
    if status != 200 or "error" in data:
        error = scrub(_text(data.get("error", "no error code"))).replace("\n", " ")[:80]
        description = scrub(_text(data.get("error_description", ""))).splitlines()
        text = (description[0] if description else "")[:MAX_DESCRIPTION]
        detail = f"{error}: {text}" if text else error
        raise TokenError(f"token endpoint {endpoint} answered HTTP {status}: {detail}", error=error)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError(f"token endpoint {endpoint} answered HTTP 200 without an access_token")
    kind = scrub(_text(data.get("token_type", "Bearer")))
    if kind.lower() != "bearer":
        raise TokenError(f"token endpoint {endpoint} issued a {kind[:20]!r} token, expected Bearer")
    try:
        lifetime = float(data.get("expires_in", DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    lifetime = max(lifetime, 1.0)
    rotated = data.get("refresh_token")
    return AccessToken(
        Secret(token),
        now + lifetime,
        lifetime,
        Secret(rotated) if isinstance(rotated, str) and rotated else None,
    )
