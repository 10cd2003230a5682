"""Unit tests of gateway/address.py: the RFC 5321 path grammar, its limits and refusals."""

from __future__ import annotations

import pytest

from gateway.smtp import replies
from gateway.smtp.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    Address,
    AddressError,
    _valid_domain,
    parse_path,
)

ACCEPTED = [
    "user@example.com",
    "first.last@example.com",
    "a@b",
    "User+Tag@Sub.Example.COM",
    "o'brien@example.com",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    "u%evil@example.com",
    "bang!path@example.com",
    '"quoted"@example.com',
    '"with space"@example.com',
    '"with \\" escaped quote"@example.com',
    '"a.b..c"@example.com',
    '""@example.com',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@[ipv6:::1]",
    "user@xn--bcher-kva.example",
    "user@a-b.example",
    "user@123.example",
]


@pytest.mark.parametrize("mailbox", ACCEPTED)
def test_accepted_mailbox(mailbox: str) -> None:
    """A mailbox of the RFC 5321 grammar is accepted and kept exactly as written."""
    assert parse_path(f"<{mailbox}>", sender=False) == Address(mailbox)


REFUSED = [
    "",
    "user",
    "@example.com",
    "user@",
    ".user@example.com",
    "user.@example.com",
    "us..er@example.com",
    "us er@example.com",
    "us(er@example.com",
    "us,er@example.com",
    "us<er@example.com",
    "us>er@example.com",
    "us[er@example.com",
    "us\\er@example.com",
    '"unterminated@example.com',
    '"bad\\"@example.com',
    '"tab\there"@example.com',
    "user@-example.com",
    "user@example-.com",
    "user@example..com",
    "user@.example.com",
    "user@example.com.",
    "user@exa_mple.com",
    "user@[192.0.2.256]",
    "user@[192.0.2]",
    "user@[2001:db8::1]",
    "user@[IPv6:192.0.2.1]",
    "user@[IPv6:2001:db8::zz]",
    "user@[tag:content]",
    "user@[192.0.2.1",
    "user@192.0.2.1]",
    "user@exa mple.com",
    "user@example.com\x00",
    "user\r\n@example.com",
]


@pytest.mark.parametrize("mailbox", REFUSED)
def test_refused_mailbox(mailbox: str) -> None:
    """A mailbox outside the grammar is refused with 501 5.1.3."""
    with pytest.raises(AddressError) as raised:
        parse_path(f"<{mailbox}>", sender=False)
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.1.3")


@pytest.mark.parametrize(
    "path", ["user@example.com", "<user@example.com", "user@example.com>", "<", ""]
)
def test_angle_brackets_required(path: str) -> None:
    """A path without both angle brackets is refused."""
    with pytest.raises(AddressError) as raised:
        parse_path(path, sender=False)
    assert raised.value.reply == replies.BAD_ADDRESS


def test_sender_errors_use_sender_code() -> None:
    """A bad reverse-path is refused with 501 5.1.7 (bad sender), not 5.1.3."""
    with pytest.raises(AddressError) as raised:
        parse_path("<not an address>", sender=True)
    assert raised.value.reply == replies.BAD_SENDER


def test_null_sender_accepted_for_mail() -> None:
    """`<>` is the null reverse-path and is accepted as a sender."""
    address = parse_path("<>", sender=True)
    assert address.is_null and address.path() == "<>" and address.domain == ""


def test_null_path_refused_for_recipient() -> None:
    """`<>` is not a forward-path and is refused for RCPT."""
    with pytest.raises(AddressError) as raised:
        parse_path("<>", sender=False)
    assert raised.value.reply == replies.BAD_ADDRESS


@pytest.mark.parametrize(
    "mailbox", ['"a@b"@example.com', '"evil@attacker.example"@good.example', '"@"@example.com']
)
def test_quoted_local_part_with_at_refused(mailbox: str) -> None:
    """A quoted local part containing '@' is refused: no two parsers can disagree on the domain."""
    with pytest.raises(AddressError) as raised:
        parse_path(f"<{mailbox}>", sender=False)
    assert raised.value.reply.code == 501 and "'@'" in raised.value.reply.text


@pytest.mark.parametrize("path", ["<@relay.example:user@example.com>", "<@a,@b:user@example.com>"])
@pytest.mark.parametrize("sender", [True, False])
def test_source_route_refused(path: str, sender: bool) -> None:
    """A source route (`@a,@b:user@c`) is refused with 501 5.1.3, for MAIL and RCPT alike."""
    with pytest.raises(AddressError) as raised:
        parse_path(path, sender=sender)
    assert raised.value.reply == replies.SOURCE_ROUTE


@pytest.mark.parametrize("path", ["<usér@example.com>", "<user@exämple.com>", '<"ü"@example.com>'])
@pytest.mark.parametrize("sender", [True, False])
def test_non_ascii_needs_smtputf8(path: str, sender: bool) -> None:
    """A non-ASCII address is refused with 553 5.6.7 since SMTPUTF8 is not offered."""
    with pytest.raises(AddressError) as raised:
        parse_path(path, sender=sender)
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (553, "5.6.7")


def test_local_part_of_64_accepted() -> None:
    """A local part of exactly 64 octets is accepted."""
    mailbox = "l" * MAX_LOCAL_PART + "@example.com"
    assert parse_path(f"<{mailbox}>", sender=False).text == mailbox


def test_local_part_of_65_refused() -> None:
    """A local part of 65 octets is refused."""
    with pytest.raises(AddressError) as raised:
        parse_path("<" + "l" * (MAX_LOCAL_PART + 1) + "@example.com>", sender=False)
    assert raised.value.reply.code == 501 and "Local part" in raised.value.reply.text


def _domain(length: int) -> str:
    """A valid domain of exactly `length` octets: labels of 59 'd's joined by dots."""
    text = (("d" * 59 + ".") * (length // 60 + 1))[:length]
    return text[:-1] + "d" if text.endswith(".") else text


def test_domain_of_255_accepted() -> None:
    """A domain of 255 octets passes the domain rule (a path, 256 max, could not carry it)."""
    assert len(_domain(MAX_DOMAIN)) == MAX_DOMAIN and _valid_domain(_domain(MAX_DOMAIN))


def test_domain_of_256_refused() -> None:
    """A domain of 256 octets fails the domain rule."""
    assert not _valid_domain(_domain(MAX_DOMAIN + 1))


def test_path_of_256_accepted() -> None:
    """A path of exactly 256 octets, brackets included, is accepted."""
    local = "l" * 64
    domain = _domain(MAX_PATH - 2 - len(local) - 1)
    path = f"<{local}@{domain}>"
    assert len(path) == MAX_PATH
    assert parse_path(path, sender=False).text == path[1:-1]


def test_path_of_257_refused() -> None:
    """A path of 257 octets, brackets included, is refused as too long."""
    local = "l" * 64
    path = f"<{local}@{_domain(MAX_PATH - 2 - len(local))}>"
    assert len(path) == MAX_PATH + 1
    with pytest.raises(AddressError) as raised:
        parse_path(path, sender=False)
    assert raised.value.reply.code == 501 and "too long" in raised.value.reply.text


def test_ipv6_zone_identifier_refused() -> None:
    """An IPv6 literal with a zone identifier (`%eth0`) is not RFC 5321 syntax and is refused."""
    with pytest.raises(AddressError):
        parse_path("<user@[IPv6:fe80::1%eth0]>", sender=False)


def test_domain_is_lower_cased() -> None:
    """Address.domain is the part after the last '@', lower-cased."""
    assert parse_path("<User@Example.COM>", sender=False).domain == "example.com"


def test_text_is_kept_as_written() -> None:
    """The address text is not normalised: case and quoting are what the client sent."""
    address = parse_path('<"Odd Name"@Example.COM>', sender=False)
    assert address.text == '"Odd Name"@Example.COM' and address.path() == '<"Odd Name"@Example.COM>'


def test_for_matching_is_lower_case() -> None:
    """for_matching is the same text, lower-cased, for case-insensitive policy globs."""
    assert Address("Billing@Example.COM").for_matching() == "billing@example.com"


def test_address_error_text_is_reply_text() -> None:
    """str(AddressError) is the text of the reply it carries."""
    error = AddressError(replies.BAD_ADDRESS)
    assert str(error) == replies.BAD_ADDRESS.text
