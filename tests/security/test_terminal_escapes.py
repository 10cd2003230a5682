"""Client- and server-chosen text never reaches the operator's terminal as something it obeys.

Message-IDs, upstream replies, a token endpoint's error, addresses given to
`explain`, names of files, records of an edited audit file: every ``mailgate``
command shows them with their controls written out (``\\u001b``), never raw. The
oracle here is independent of the escaping code: no character of the output may
be one Unicode classes as control, format, surrogate, private-use, unassigned, or
line/paragraph separator (the newlines between lines excepted).
"""

from __future__ import annotations

import json
import types
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from gateway.audit.log import AuditLog
from gateway.cli import main as cli
from gateway.cli.oauth import run_test
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.grants import TokenError
from gateway.queue.spool import ACTIVE, DEAD, Envelope, RecipientState, Spool, new_id
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.terminal import printable

# What a hostile client or server puts in a field: each one acts on a terminal or hides text.
HOSTILE = [
    "\x1b]0;owned\x07",  # OSC: retitle the window
    "\x1b[2J\x1b[H",  # CSI: clear the screen
    "\x9b31m",  # 8-bit CSI (C1)
    "\x07\x08\x08\x08",  # bell, backspaces over what was printed
    "ok\rFORGED",  # carriage return: overwrite the line
    "line\nforged: line",  # a forged output line
    "\u202emoc.elpmaxe",  # right-to-left override
    "\u2067isolate\u2069",  # bidi isolate
    "zero\u200bwidth\ufeff",  # invisible characters
    "sep\u2028arator\u2029",  # line and paragraph separators
    "tag\U000e0041\U000e0042",  # tag characters (invisible text)
    "\ud800half",  # a lone surrogate (valid in JSON as \\ud800)
    "\x7fdel\x00nul",
]
PAYLOAD = "".join(HOSTILE)
# A file name holds no NUL; an undecodable byte arrives as a surrogate escape (U+DCFF).
FILE_NAME = PAYLOAD.replace("\x00", "").replace("\ud800", "\udcff")
_BAD_CLASSES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def assert_inert(text: str) -> None:
    """No character of `text` (newlines between lines aside) can act on or hide from a terminal."""
    bad = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and _unsafe(c)})
    assert not bad, f"raw characters reached the terminal: {bad}"


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _BAD_CLASSES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


# --- the escaping function itself ---------------------------------------------------------------


def test_every_code_point_comes_out_inert_and_as_valid_json():
    """All of Unicode: what printable() returns is printable, and inside a JSON string means the same."""
    for point in range(0x110000):
        char = chr(point)
        shown = printable(char)
        if char.isprintable():
            assert shown == char
            continue
        assert shown.isprintable() and shown.isascii(), f"U+{point:04X}"
        assert json.loads(f'"{shown}"') == char, f"U+{point:04X}"


# --- mailgate queue -----------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(str(tmp_path / "spool"))
    s.create()
    return s


@pytest.fixture
def config(tmp_path: Path, spool: Spool) -> str:
    path = tmp_path / "mailgate.toml"
    path.write_text(
        f'[queue]\npath = "{spool.path}"\n\n[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    return str(path)


def hostile_message(spool: Spool, state: str, status: str) -> str:
    """A message whose Message-ID (the app's header) and last reply (the upstream's) are hostile."""
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    recipient = RecipientState(
        "ops@example.net",
        "up",
        "all",
        status=status,
        attempts=1,
        last_reply=f"550 5.1.1 {PAYLOAD}",
        last_attempt=1.0,
    )
    writer.commit(
        Envelope(
            id=queue_id,
            sender="app@example.com",
            received=1.0,
            attempts=1,
            recipients=[recipient],
            message_id=f"<{PAYLOAD}@example.com>",
            helo=PAYLOAD,
            client_ip=PAYLOAD,
            session_id=PAYLOAD,
        )
    )
    if state != ACTIVE:
        spool.move(queue_id, ACTIVE, state)
    return queue_id


@pytest.mark.parametrize(
    ("command", "state", "status"),
    [("list", ACTIVE, "pending"), ("dead", DEAD, "failed"), ("show", ACTIVE, "pending")],
)
def test_queue_commands_show_hostile_fields_inert(spool, config, capsys, command, state, status):
    """queue list / dead / show: Message-IDs and upstream replies are printed escaped."""
    queue_id = hostile_message(spool, state, status)
    argv = ["queue", command, *([queue_id] if command == "show" else []), "--config", config]
    code, output = run(capsys, *argv)
    assert code == 0 and queue_id in output
    assert_inert(output)
    assert "\\u001b]0;owned\\u0007" in output  # shown, so the operator sees what was sent


# --- mailgate oauth test ------------------------------------------------------------------------


def _connector(token_error: str | None = None, open_error: UpstreamFailure | None = None) -> Any:
    async def token(user: str) -> Any:
        if token_error is not None:
            raise TokenError(token_error)
        return types.SimpleNamespace(lifetime=3600.0)

    def open_(sender: str | None) -> defer.Deferred[Any]:
        assert open_error is not None
        return defer.fail(open_error)

    upstream = types.SimpleNamespace(
        name="m365",
        host="smtp.example.net",
        port=587,
        tls="starttls",
        username="relay@example.com",
        oauth=types.SimpleNamespace(grant="client_credentials", token_url="https://t", scope=None),
    )
    tokens = types.SimpleNamespace(
        token=token, endpoint=types.SimpleNamespace(grant=types.SimpleNamespace(client="c"))
    )
    return types.SimpleNamespace(config=upstream, tokens=tokens, open=open_)


def _oauth_output(connector: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import io

    out = io.StringIO()
    result: list[int] = []
    d = defer.Deferred.fromCoroutine(run_test(connector, None, out))
    d.addCallback(result.append)
    assert result, "run_test did not finish"
    return result[0], out.getvalue()


def test_oauth_test_shows_the_token_endpoints_error_inert(capsys):
    """A token endpoint's error text (the server's) is printed escaped."""
    code, output = _oauth_output(_connector(token_error=f"endpoint said {PAYLOAD}"), capsys)
    assert code == 1 and "1. token: FAILED: endpoint said" in output
    assert_inert(output)


def test_oauth_test_shows_the_upstreams_reply_inert(capsys):
    """The upstream's refusal (reason and its own reply) is printed escaped."""
    failure = UpstreamFailure(
        replies.UPSTREAM_UNREACHABLE,
        f"m365: AUTH refused: {PAYLOAD}",
        upstream_reply=replies.Reply(535, "5.7.8", PAYLOAD),
    )
    code, output = _oauth_output(_connector(open_error=failure), capsys)
    assert code == 1 and "the upstream said: 535" in output
    assert_inert(output)


# --- mailgate explain, and errors -----------------------------------------------------------


def test_explain_shows_a_hostile_address_inert(config, capsys):
    """explain --to with controls: refused at RCPT, and the address is shown escaped."""
    code, output = run(
        capsys,
        *("explain", "--config", config, "--client", "127.0.0.1", "--from", "app@example.com"),
        *("--to", f"x{PAYLOAD}@example.net", "--to", "ops@example.net"),
    )
    assert code == 0 and "refused at RCPT" in output
    assert_inert(output)


def test_an_error_naming_a_hostile_file_name_is_inert(tmp_path, capsys):
    """An error quoting a path (or anything else) goes through the same escaping."""
    code, output = run(capsys, "audit", "search", str(tmp_path / f"a{FILE_NAME}.jsonl"))
    assert code == 1 and output.startswith("mailgate: ") and "cannot open" in output
    assert_inert(output)


def test_check_problems_quoting_the_config_are_inert(tmp_path, capsys):
    """mailgate check prints found values from the file: escaped."""
    path = tmp_path / "bad.toml"
    path.write_text(f"[listener]\nhostname = {json.dumps(PAYLOAD)}\nnonsense = 1\n")
    code, output = run(capsys, "check", "--config", str(path))
    assert code == 1 and "problem(s)" in output
    assert_inert(output)


# --- mailgate audit on an edited file ----------------------------------------------------------


@pytest.fixture
def edited_log(tmp_path: Path) -> Path:
    """A real audit file, then one record edited to hold raw C1 and bidi characters."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    bound = log.bind(session_id="5e55105e55105e55")
    bound.info("session.opened", client_ip="127.0.0.1", client_port=1, allowed=True)
    bound.info(
        "message.result",
        client_ip="127.0.0.1",
        sender="app@example.com",
        recipients=[{"address": "ops@example.net", "result": "relayed", "reply": "250 ok"}],
        outcome="relayed",
        reply="250 ok",
        message_id="<m@example.com>",
    )
    log.close()
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("<m@example.com>", "<m\u009b2J\u202e@example.com>")
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ("search", "--json"),
        ("search",),
        ("show", "5e55105e"),
        ("show", "--json", "5e55105e"),
        ("summary",),
        ("verify",),
    ],
)
def test_audit_commands_on_an_edited_file_print_nothing_raw(edited_log, capsys, argv):
    """Raw characters put into the file by hand are escaped by every audit command."""
    code, output = run(capsys, "audit", *argv, str(edited_log))
    assert_inert(output)
    if "--json" in argv:  # still JSON, with the same values: only the bytes on screen changed
        for line in output.splitlines():
            assert json.loads(line)["event"] in ("session.opened", "message.result")
        assert "<m\u009b2J\u202e@example.com>" in {
            json.loads(line).get("message_id") for line in output.splitlines()
        }
