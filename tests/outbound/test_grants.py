"""gateway.grants: token request forms, JWT assertions, token responses and secret files."""

from __future__ import annotations

import base64
import json
import os
import re
from urllib.parse import quote, quote_plus

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.config.providers import OAuthConfig
from gateway.config.secrets import Secret
from gateway.errors import SecretError
from gateway.outbound import grants
from gateway.outbound.grants import GrantCredentials, TokenError, parse_token_response

URL = "https://login.example/token"


def test_client_credentials_form():
    """client_credentials sends client ID, secret and scope."""
    oauth = OAuthConfig("client_credentials", URL, scope="s", client_id="id")
    form = grants.token_form(GrantCredentials(oauth, client_secret=Secret("sec")), None, 0)
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "id",
        "client_secret": "sec",
        "scope": "s",
    }


def test_refresh_token_form_without_secret_or_scope():
    """refresh_token sends the refresh token; a public client sends no secret, no scope if none is set."""
    oauth = OAuthConfig("refresh_token", URL, client_id="id")
    form = grants.token_form(GrantCredentials(oauth, refresh_token=Secret("rt")), None, 0)
    assert form == {"grant_type": "refresh_token", "client_id": "id", "refresh_token": "rt"}


def test_jwt_assertion_is_rs256_signed_with_the_claims_google_needs():
    """The assertion verifies with the public key and carries iss, sub, scope, aud, iat, exp."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = grants.ServiceAccount("sa@p.iam.gserviceaccount.com", "kid-9", key)
    oauth = OAuthConfig("jwt_bearer", URL, scope="https://mail.google.com/")
    form = grants.token_form(
        GrantCredentials(oauth, service_account=account), "user@corp.example", 1000.7
    )
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    head, claims, signature = form["assertion"].split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    key.public_key().verify(
        decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert json.loads(decode(head)) == {"alg": "RS256", "typ": "JWT", "kid": "kid-9"}
    assert json.loads(decode(claims)) == {
        "iss": "sa@p.iam.gserviceaccount.com",
        "scope": "https://mail.google.com/",
        "aud": URL,
        "iat": 1000,
        "exp": 4600,
        "sub": "user@corp.example",
    }


def test_token_response_gives_token_lifetime_and_rotated_refresh_token():
    """A 200 with access_token, expires_in and refresh_token becomes an AccessToken."""
    body = json.dumps(
        {"access_token": "at", "token_type": "Bearer", "expires_in": "3599", "refresh_token": "rt2"}
    ).encode()
    token = parse_token_response(200, body, now=10, endpoint=URL)
    assert (token.value.reveal(), token.expires_at, token.lifetime) == ("at", 3609, 3599)
    assert token.refresh_token == Secret("rt2")


def test_error_response_carries_error_and_first_line_of_description_redacted():
    """The endpoint's error and description are kept, any secret in them blanked out."""
    body = json.dumps(
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret 'sec-123' provided.\r\nTrace ID: 1",
        }
    ).encode()
    with pytest.raises(TokenError) as caught:
        parse_token_response(401, body, now=0, endpoint=URL, secrets=["sec-123"])
    assert caught.value.reason == (
        f"token endpoint {URL} answered HTTP 401: invalid_client: "
        "AADSTS7000215: Invalid client secret '<secret>' provided."
    )
    assert caught.value.error == "invalid_client"


ECHOED = "cl1ent/secret+Zq8~é"  # characters that every encoding changes


@pytest.mark.parametrize(
    "field,echo",
    [
        ("error", ECHOED),
        ("error", quote_plus(ECHOED)),
        ("error_description", ECHOED),
        ("error_description", quote_plus(ECHOED)),
        ("error_description", re.sub("%..", lambda m: m[0].lower(), quote(ECHOED, safe=""))),
        ("error_description", base64.b64encode(ECHOED.encode()).decode()),
        ("error_description", base64.urlsafe_b64encode(ECHOED.encode()).decode().rstrip("=")),
        ("error_description", json.dumps(ECHOED)),
        ("error_description", json.dumps(ECHOED)[1:-1].replace("/", "\\/")),
        ("error_description", ECHOED[:7] + "\n" + ECHOED[7:]),  # split over two lines
    ],
)
def test_an_echoed_secret_is_cut_from_every_field_in_every_encoding(field, echo):
    """Neither the error code nor the description carries the secret, raw or encoded."""
    answer = {"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"}
    answer[field] = f"you sent {echo} ok" if field == "error_description" else echo
    with pytest.raises(TokenError) as caught:
        parse_token_response(
            401, json.dumps(answer).encode(), now=0, endpoint=URL, secrets=[ECHOED]
        )
    for text in (caught.value.reason, caught.value.error or ""):
        assert echo not in text and ECHOED not in text and ECHOED[:7] not in text
    assert "<secret>" in caught.value.reason


def test_an_echo_inside_a_field_that_is_not_a_string_is_cut():
    """An error given as a JSON object or list is scrubbed as its JSON text."""
    tricky = ECHOED + "'\"\\"  # quotes and a backslash: repr() would escape them its own way
    for value in ({"detail": [tricky]}, [tricky], {"n": 1, "why": tricky}):
        answer = {"error": value, "error_description": value}
        with pytest.raises(TokenError) as caught:
            parse_token_response(
                400, json.dumps(answer).encode(), now=0, endpoint=URL, secrets=[tricky]
            )
        assert ECHOED[:6] not in caught.value.reason


def test_a_secret_is_cut_before_the_text_is_shortened():
    """A secret straddling the length limit leaves no prefix of itself behind."""
    for field, limit in (("error", 80), ("error_description", grants.MAX_DESCRIPTION)):
        answer = {"error": "invalid_client", field: "x" * (limit - 6) + ECHOED}
        with pytest.raises(TokenError) as caught:
            parse_token_response(
                401, json.dumps(answer).encode(), now=0, endpoint=URL, secrets=[ECHOED]
            )
        assert ECHOED[:6] not in caught.value.reason


def test_an_echoed_secret_in_the_token_type_is_cut():
    """A token_type that repeats the secret is refused without repeating it."""
    body = json.dumps({"access_token": "at", "token_type": ECHOED}).encode()
    with pytest.raises(TokenError) as caught:
        parse_token_response(200, body, now=0, endpoint=URL, secrets=[ECHOED])
    assert ECHOED[:6] not in caught.value.reason


def test_form_secrets_are_what_each_grant_sends():
    """The secrets of a request are its client secret, refresh token or signed assertion."""
    client = OAuthConfig("client_credentials", URL, scope="s", client_id="id")
    form = grants.token_form(GrantCredentials(client, client_secret=Secret("sec")), None, 0)
    assert grants.form_secrets(form) == ["sec"]
    refresh = OAuthConfig("refresh_token", URL, client_id="id")
    form = grants.token_form(
        GrantCredentials(refresh, client_secret=Secret("s2"), refresh_token=Secret("rt")), None, 0
    )
    assert grants.form_secrets(form) == ["s2", "rt"]
    assert grants.form_secrets({"grant_type": grants.JWT_BEARER, "assertion": "a.b.c"}) == ["a.b.c"]


@pytest.mark.parametrize(
    "status,body,expected",
    [
        (502, b"<html>bad gateway</html>", "answered HTTP 502 without a JSON object"),
        (200, b'{"token_type": "Bearer"}', "without an access_token"),
        (200, b'{"access_token": "x", "token_type": "mac"}', "expected Bearer"),
    ],
)
def test_unusable_responses_are_token_errors(status, body, expected):
    """Non-JSON, missing tokens and non-bearer tokens are refused with a reason."""
    with pytest.raises(TokenError, match=expected):
        parse_token_response(status, body, now=0, endpoint=URL)


def test_service_account_file_must_be_private_and_valid(tmp_path):
    """A key file readable by others, or without a key, is a SecretError naming the file only."""
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"client_email": "sa@x", "private_key": "not a key"}))
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="accessible by group or others"):
        grants.load_service_account(str(path))
    os.chmod(path, 0o600)
    with pytest.raises(SecretError, match="expected Google's JSON key") as caught:
        grants.load_service_account(str(path))
    assert "not a key" not in str(caught.value)


def test_resolve_names_the_upstream_and_variable():
    """A missing client secret variable is reported with the upstream's name."""
    oauth = OAuthConfig(
        "client_credentials",
        URL,
        scope="s",
        client_id="id",
        client_secret_env="MAILGATE_TEST_UNSET_SECRET",
    )
    with pytest.raises(
        SecretError, match="upstreams.m365: environment variable MAILGATE_TEST_UNSET_SECRET"
    ):
        grants.resolve(oauth, "m365")


def test_rotated_refresh_token_goes_to_the_state_directory(tmp_path, monkeypatch):
    """rotate() keeps the new token in memory and in $STATE_DIRECTORY (mode 600), never over
    the operator's file; the next start reads the rotated one."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    path = tmp_path / "rt"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    oauth = OAuthConfig("refresh_token", URL, client_id="c", refresh_token_file=str(path))
    credentials = grants.resolve(oauth, "m365")
    credentials.rotate(Secret("new"))
    assert credentials.refresh_token == Secret("new")
    kept = tmp_path / "state" / "refresh-tokens" / "m365"
    assert kept.read_text() == "new\n" and os.stat(kept).st_mode & 0o777 == 0o600
    assert path.read_text() == "old\n"
    assert grants.resolve(oauth, "m365").refresh_token == Secret("new")


def test_secret_material_is_not_in_reprs():
    """A ServiceAccount's repr names the account, not the key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert repr(grants.ServiceAccount("sa@x", None, key)) == "ServiceAccount('sa@x')"
    assert pem.decode() not in repr(grants.ServiceAccount("sa@x", None, key))
