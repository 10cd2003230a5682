"""Unit tests of gateway/inbound/from_header.py: apps.<name>.check_from_header."""

from __future__ import annotations

import pytest

from gateway.config.model import App
from gateway.inbound.from_header import from_allowed, from_problem, mailboxes

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


@pytest.mark.parametrize(
    ("header", "count", "truncated", "problem"),
    [
        ("invoices@billing.example.com", 2, False, "more than one From field"),
        (None, 0, False, "no From field"),
        ("invoices@billing.example.com", 1, True, "too long"),
        ("invoices@billing.example.com (ceo", 1, False, "not a well-formed address list"),
        ("undisclosed-recipients:;", 1, False, "names no address"),
        ("G: invoices@billing.example.com, ceo@other.example;", 1, False, "1 address(es) outside"),
        ("invoices@billing.example.com)<ceo@other.example>", 1, False, "not a well-formed"),
        ("Billing: invoices@billing.example.com;", 1, False, None),
    ],
)
def test_from_problem_says_why(header, count, truncated, problem):
    """Exactly one From field, parsable, naming only owned addresses; else the reason."""
    found = from_problem(CHECKED, header, count, truncated)
    assert found is None if problem is None else problem in (found or "")


def test_mailboxes_reads_strictly_and_leniently():
    """Both readings' addresses are returned; a defect makes the value unparsable."""
    assert mailboxes("a@x.example, B <b@y.example>") == ["a@x.example", "b@y.example"]
    assert mailboxes("G: a@x.example;") == ["a@x.example"]
    assert mailboxes("a@x.example (c") is None
    assert mailboxes("Jürgen@x.example") == ["Jürgen@x.example"]  # SMTPUTF8 local part
