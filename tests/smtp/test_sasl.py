"""gateway.sasl: XOAUTH2 and OAUTHBEARER encodings and error challenges."""

from __future__ import annotations

import base64
import json

from gateway.smtp import sasl


def test_xoauth2_initial_response():
    """XOAUTH2 is base64 of user=<u>^Aauth=Bearer <token>^A^A."""
    assert (
        base64.b64decode(sasl.xoauth2_response("a@x.example", "tok"))
        == b"user=a@x.example\x01auth=Bearer tok\x01\x01"
    )


def test_oauthbearer_initial_response_escapes_the_authzid():
    """OAUTHBEARER carries a GS2 header with "," and "=" escaped, host and port (RFC 7628 3.1)."""
    decoded = base64.b64decode(
        sasl.oauthbearer_response("a,b=c@x.example", "tok", "smtp.test", 587)
    )
    assert (
        decoded
        == b"n,a=a=2Cb=3Dc@x.example,\x01host=smtp.test\x01port=587\x01auth=Bearer tok\x01\x01"
    )


def test_error_answers():
    """The answer to an error challenge: empty for XOAUTH2, a single ^A for OAUTHBEARER."""
    assert sasl.error_answer("XOAUTH2") == b""
    assert base64.b64decode(sasl.error_answer("OAUTHBEARER")) == b"\x01"


def test_xoauth2_is_preferred_and_oauthbearer_is_the_fallback():
    """Both offered: XOAUTH2; only OAUTHBEARER: that; neither: None."""
    assert sasl.choose_mechanism({"XOAUTH2", "OAUTHBEARER", "PLAIN"}) == "XOAUTH2"
    assert sasl.choose_mechanism({"OAUTHBEARER"}) == "OAUTHBEARER"
    assert sasl.choose_mechanism({"PLAIN", "LOGIN"}) is None


def test_describe_challenge():
    """A Google-style error challenge is summarised; garbage is said to be undecodable."""
    text = base64.b64encode(
        json.dumps(
            {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}
        ).encode()
    ).decode()
    assert (
        sasl.describe_challenge(text)
        == "error challenge: status 400, schemes Bearer, scope https://mail.google.com/"
    )
    assert sasl.describe_challenge("!!!") == "an undecodable error challenge"
