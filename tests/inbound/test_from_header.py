"""Unit tests of gateway/inbound/from_header.py: apps.<name>.check_from_header."""

from __future__ import annotations

import pytest

from gateway.config.model import App
from gateway.inbound.from_header import from_allowed

CHECKED = App("billing", "hash", senders=("*@billing.example.com",), check_from_header=True)


def test_no_app_or_no_check_allows_any_from():
    """Without an authenticated app, or with the check off, any From: (or none) passes."""
    assert from_allowed(None, "ceo@other.example")
    assert from_allowed(App("billing", "hash", senders=("*@billing.example.com",)), None)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("invoices@billing.example.com", True),
        ('"Billing" <invoices@billing.example.com>', True),
        ("INVOICES@Billing.Example.com", True),
        ("ceo@other.example", False),
        ("invoices@billing.example.com, ceo@other.example", False),
        ("", False),
        (None, False),
    ],
)
def test_every_from_address_must_be_owned(header, allowed):
    """With the check on, the From: header must name addresses, each one owned by the app."""
    assert from_allowed(CHECKED, header) is allowed
