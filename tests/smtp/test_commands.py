"""Unit tests of gateway/commands.py: command lines, MAIL FROM and RCPT TO with their parameters."""

from __future__ import annotations

import pytest

from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import (
    Command,
    CommandError,
    MailFrom,
    RcptTo,
    parse_command,
    parse_mail,
    parse_rcpt,
)

# --- parse_command ---------------------------------------------------------------------------


def test_verb_upper_cased_and_argument_split() -> None:
    """The verb is upper-cased and separated from its argument at the first space."""
    assert parse_command(b"mail FROM:<a@b>") == Command("MAIL", "FROM:<a@b>")


def test_verb_alone() -> None:
    """A verb without argument has an empty argument."""
    assert parse_command(b"quit") == Command("QUIT", "")


def test_argument_spaces_trimmed() -> None:
    """Surrounding spaces of the argument are trimmed; inner ones kept."""
    assert parse_command(b"EHLO   client.example  ") == Command("EHLO", "client.example")


def test_argument_case_kept() -> None:
    """The argument's case is kept (addresses are case-preserving)."""
    assert parse_command(b"RCPT TO:<User@Example.COM>").argument == "TO:<User@Example.COM>"


@pytest.mark.parametrize(
    "line",
    [b"MAIL FROM:<a@b>\x00", b"\x00", b"RCPT TO:<a@b>\rDATA", b"RCPT TO:<a@b>\nDATA", b"HELO x\r"],
    ids=["nul", "only-nul", "bare-cr", "bare-lf", "trailing-cr"],
)
def test_nul_cr_lf_refused(line: bytes) -> None:
    """A command line containing NUL, CR or LF is refused with 500 5.5.2."""
    with pytest.raises(CommandError) as raised:
        parse_command(line)
    assert raised.value.reply == replies.NUL_IN_COMMAND


def test_invalid_utf8_does_not_raise() -> None:
    """Bytes that are not UTF-8 are decoded with replacement, never raising UnicodeDecodeError."""
    assert parse_command(b"HELO \xff\xfe").verb == "HELO"


# --- MAIL FROM --------------------------------------------------------------------------------


def test_mail_plain() -> None:
    """`FROM:<a@b>` gives the sender and no parameters."""
    assert parse_mail("FROM:<a@b.example>") == MailFrom(Address("a@b.example"))


def test_mail_keyword_case_insensitive() -> None:
    """The FROM keyword is case-insensitive."""
    assert parse_mail("from:<a@b.example>").sender == Address("a@b.example")


def test_mail_space_after_colon_tolerated() -> None:
    """`MAIL FROM: <a@b>` (a space after the colon) is tolerated, as most servers do."""
    assert parse_mail("FROM: <a@b.example>").sender == Address("a@b.example")


def test_mail_null_sender() -> None:
    """`FROM:<>` is the null sender."""
    assert parse_mail("FROM:<>").sender.is_null


@pytest.mark.parametrize(
    "argument",
    [
        "FROM a@b.example",
        "TO:<a@b.example>",
        "FROM:a@b.example",
        "FROM:<a@b.example",
        "",
        "FROM:",
        "FROM:<a@b.example>SIZE=1",
    ],
    ids=[
        "no-colon",
        "wrong-keyword",
        "no-brackets",
        "unterminated",
        "empty",
        "no-path",
        "no-space",
    ],
)
def test_mail_syntax_error(argument: str) -> None:
    """A MAIL argument not of the form `FROM:<path> [params]` is refused with 501 5.5.4."""
    with pytest.raises(CommandError) as raised:
        parse_mail(argument)
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.5.4")


def test_mail_bad_address() -> None:
    """A bad sender address is refused with the sender code 501 5.1.7."""
    with pytest.raises(CommandError) as raised:
        parse_mail("FROM:<not an address>")
    assert raised.value.reply == replies.BAD_SENDER


def test_mail_quoted_local_part_with_bracket() -> None:
    """A '>' inside a quoted local part does not end the path."""
    assert parse_mail('FROM:<"a>b"@example.com>').sender == Address('"a>b"@example.com')


def test_mail_size() -> None:
    """SIZE=n is parsed as an integer."""
    assert parse_mail("FROM:<a@b.example> SIZE=12345").size == 12345


def test_mail_body_8bitmime() -> None:
    """BODY=8bitmime is accepted, case-insensitively, as 8BITMIME."""
    assert parse_mail("FROM:<a@b.example> body=8bitmime").body == "8BITMIME"


def test_mail_body_7bit() -> None:
    """BODY=7BIT is accepted."""
    assert parse_mail("FROM:<a@b.example> BODY=7BIT").body == "7BIT"


def test_mail_size_and_body_together() -> None:
    """Several parameters, separated by spaces, are all read."""
    assert parse_mail("FROM:<a@b.example> SIZE=10 BODY=8BITMIME") == MailFrom(
        Address("a@b.example"), 10, "8BITMIME"
    )


@pytest.mark.parametrize("value", ["", "-1", "1e3", "ten", "1" * 21])
def test_mail_bad_size(value: str) -> None:
    """A SIZE value that is not 1 to 20 ASCII digits is refused with 501 5.5.4."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> SIZE={value}")
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize("value", ["", "BINARYMIME", "8BIT"])
def test_mail_bad_body(value: str) -> None:
    """A BODY value other than 7BIT or 8BITMIME is refused with 501 5.5.4."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> BODY={value}")
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize("param", ["SMTPUTF8", "AUTH=<>", "RET=FULL", "ENVID=x", "X-CUSTOM=1"])
def test_mail_unknown_parameter(param: str) -> None:
    """A MAIL parameter that is not offered is refused with 555 5.5.4."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> {param}")
    assert raised.value.reply == replies.PARAM_UNKNOWN


@pytest.mark.parametrize("param", ["=1", "SI!ZE=1", "SÏZE=1"])
def test_mail_malformed_parameter_keyword(param: str) -> None:
    """A parameter keyword that is not ASCII letters, digits and hyphens is a syntax error (501)."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> {param}")
    assert raised.value.reply.code == 501


def test_mail_source_route() -> None:
    """A source route in MAIL is refused with 501 5.1.3."""
    with pytest.raises(CommandError) as raised:
        parse_mail("FROM:<@relay.example:a@b.example>")
    assert raised.value.reply == replies.SOURCE_ROUTE


# --- RCPT TO ----------------------------------------------------------------------------------


def test_rcpt_plain() -> None:
    """`TO:<a@b>` gives the recipient."""
    assert parse_rcpt("TO:<a@b.example>") == RcptTo(Address("a@b.example"))


def test_rcpt_space_after_colon_tolerated() -> None:
    """`RCPT TO: <a@b>` is tolerated."""
    assert parse_rcpt("TO: <a@b.example>").recipient == Address("a@b.example")


def test_rcpt_null_path_refused() -> None:
    """`TO:<>` is refused with 501 5.1.3."""
    with pytest.raises(CommandError) as raised:
        parse_rcpt("TO:<>")
    assert raised.value.reply == replies.BAD_ADDRESS


def test_rcpt_wrong_keyword() -> None:
    """`RCPT FROM:<a@b>` is a syntax error."""
    with pytest.raises(CommandError) as raised:
        parse_rcpt("FROM:<a@b.example>")
    assert raised.value.reply == replies.SYNTAX_ARGS


@pytest.mark.parametrize("param", ["NOTIFY=NEVER", "ORCPT=rfc822;a@b.example", "SIZE=1"])
def test_rcpt_parameters_refused(param: str) -> None:
    """RCPT takes no parameters: any is refused with 555 5.5.4."""
    with pytest.raises(CommandError) as raised:
        parse_rcpt(f"TO:<a@b.example> {param}")
    assert raised.value.reply == replies.PARAM_UNKNOWN


def test_rcpt_non_ascii_needs_smtputf8() -> None:
    """A non-ASCII recipient is refused with 553 5.6.7."""
    with pytest.raises(CommandError) as raised:
        parse_rcpt("TO:<usér@example.com>")
    assert raised.value.reply == replies.NEED_SMTPUTF8


def test_command_error_text_is_reply_text() -> None:
    """str(CommandError) is its reply's text."""
    assert str(CommandError(replies.SYNTAX_ARGS)) == replies.SYNTAX_ARGS.text


@pytest.mark.parametrize(
    "value", ["\u00b2", "\u0661\u0662", "\uff11"], ids=["superscript", "arabic", "fullwidth"]
)
def test_mail_non_ascii_digits_in_size_refused(value: str) -> None:
    """SIZE with Unicode digits is 501 5.5.4, not an escaping ValueError or a silent number."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> SIZE={value}")
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize(
    "blank",
    ["\t", "\r", "\x0b", "\x1c", "\x85", "\xa0", "\u2003"],
    ids=["tab", "cr", "vt", "fs", "nel", "nbsp", "em-space"],
)
def test_mail_parameters_separated_by_space_only(blank: str) -> None:
    """MAIL parameters are separated by SP only: another blank makes them malformed (501)."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> SIZE=1{blank}BODY=7BIT")
    assert raised.value.reply.code == 501


@pytest.mark.parametrize("blank", ["\t", "\x1c", "\u2003"], ids=["tab", "fs", "em-space"])
def test_rcpt_trailing_blank_other_than_space_refused(blank: str) -> None:
    """A blank other than SP after the RCPT path is not silently ignored."""
    with pytest.raises(CommandError):
        parse_rcpt(f"TO:<a@b.example> {blank}")


def test_mail_several_spaces_between_parameters_tolerated() -> None:
    """Runs of spaces between parameters are tolerated."""
    assert parse_mail("FROM:<a@b.example>  SIZE=1   BODY=7BIT ").size == 1


@pytest.mark.parametrize(
    "params",
    ["BODY=\x1f BODY=7BIT", "SIZE=x SIZE=1", "SIZE=1 size=2"],
    ids=["bad-then-good-body", "bad-then-good-size", "case-variant"],
)
def test_mail_repeated_parameter_refused(params: str) -> None:
    """A parameter given twice is 501 5.5.4: a later value must not hide a bad earlier one."""
    with pytest.raises(CommandError) as raised:
        parse_mail(f"FROM:<a@b.example> {params}")
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize(
    "verb", ["maıl", "ſtarttls", "rſet"], ids=["dotless-i", "long-s", "long-s-inner"]
)
def test_non_ascii_verb_never_becomes_an_smtp_verb(verb: str) -> None:
    """A verb with a non-ASCII lookalike (ı, ſ upper-case to I, S) is not read as MAIL/STARTTLS/RSET."""
    assert parse_command(f"{verb} FROM:<a@b.example>".encode()).verb == verb


@pytest.mark.parametrize(
    "argument",
    ["\u2003FROM:<a@b.example>", "FROM\t:<a@b.example>", "\x0bFROM:<a@b.example>"],
    ids=["em-space-before", "tab-before-colon", "vt-before"],
)
def test_mail_keyword_blanks_other_than_space_refused(argument: str) -> None:
    """Only spaces are tolerated around the FROM keyword; other blanks are a syntax error (501)."""
    with pytest.raises(CommandError) as raised:
        parse_mail(argument)
    assert raised.value.reply == replies.SYNTAX_ARGS
