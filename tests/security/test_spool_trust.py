"""The spool is believed only as far as it can be trusted (issue 12, item 12).

Whoever can change the spool chooses what mailgate sends, as whom, with the
upstream's credentials. So: folders others can write are refused at start (and
by `mailgate check` and the queue commands), naming ``queue.path``, the folder and
what was expected; nothing in a message folder is followed through a symbolic
link (a ``body`` linked to a secret file is never read); an envelope is read as
strictly as RCPT input, so no field can inject MAIL/RCPT parameters, a command or
a path; and a message that fails is moved to ``quarantine/`` once, with one audit
event — never retried, never logged again.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from gateway.cli import main as cli
from gateway.config import toml as configuration
from gateway.outbound.pool import UpstreamPool
from gateway.queue import spool as spool_module
from gateway.queue.envelope import EnvelopeInvalid
from gateway.queue.runner import DeliveryRunner
from gateway.queue.spool import (
    ACTIVE,
    DEFERRED,
    FOLDERS,
    QUARANTINE,
    Envelope,
    RecipientState,
    Spool,
    SpoolUnsafe,
    new_id,
    read_headers,
    read_lines,
)
from gateway.queue.writer import SpoolWriter
from gateway.testing.audit import CapturedAudit
from tests.outbound.fakes import RecordingConnector

SECRET = b"upstream-password: hunter2-never-to-be-sent\n"
BODY = b"Subject: x\r\n\r\nbody\r\n"

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def document(path: str) -> dict[str, Any]:
    return {
        "queue": {"path": path, "min_backoff": 60, "max_backoff": 600},
        "upstreams": {"up": {"host": "smtp.example.net"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }


def make_runner(path: str) -> tuple[DeliveryRunner, RecordingConnector, CapturedAudit]:
    config = configuration.parse(document(path), "t.toml")
    connector = RecordingConnector(config.upstreams["up"])
    clock = task.Clock()
    pools = {"up": UpstreamPool(connector, clock)}  # type: ignore[arg-type]
    audit = CapturedAudit()
    runner = DeliveryRunner(
        clock, Spool(path), config, pools.get, audit.log(), clock=lambda: 5000.0
    )
    return runner, connector, audit


def good_envelope(queue_id: str, **fields: Any) -> Envelope:
    return Envelope(
        id=queue_id,
        sender="app@example.com",
        received=1000.0,
        recipients=[RecipientState("ops@example.net", "up", "all", route=["up"])],
        **fields,
    )


def commit(spool: Spool, body: bytes = BODY) -> str:
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(body)
    writer.commit(good_envelope(queue_id))
    return queue_id


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(str(tmp_path / "spool"))
    s.create()
    return s


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "upstream-password"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


# --- folders others can write: refused at start --------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777, 0o720, 0o702])
def test_a_spool_root_others_can_write_is_refused(spool, mode):
    """queue.path itself group- or world-writable (sticky or not): refused, the folder named."""
    os.chmod(spool.path, mode)
    with pytest.raises(SpoolUnsafe) as refused:
        spool.create()
    [problem] = refused.value.problems
    assert problem == (
        f"queue.path: {spool.path}: found mode {mode:04o} (writable by "
        f"{'group and others' if mode & 0o020 and mode & 0o002 else 'group' if mode & 0o020 else 'others'}), "
        f"expected a folder only its owner can write (chmod go-w {spool.path})"
    )


@pytest.mark.parametrize("state", FOLDERS)
def test_each_state_folder_others_can_write_is_refused(spool, state):
    """Any state folder (active/, deferred/, dead/, quarantine/, ...) writable by others: refused."""
    folder = os.path.join(spool.path, state)
    os.chmod(folder, 0o770)
    with pytest.raises(SpoolUnsafe) as refused:
        spool.create()
    assert refused.value.problems == [
        f"queue.path: {folder}: found mode 0770 (writable by group), expected a folder only its "
        f"owner can write (chmod go-w {folder})"
    ]


def test_a_state_folder_that_is_a_link_is_refused(spool, tmp_path):
    """active/ as a symbolic link to a folder elsewhere: refused (someone could swap the target)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    active = os.path.join(spool.path, ACTIVE)
    os.rmdir(active)
    os.symlink(elsewhere, active)
    with pytest.raises(SpoolUnsafe) as refused:
        spool.create()
    assert refused.value.problems[0].startswith(
        f"queue.path: {active}: found a symbolic link, expected a folder"
    )


def test_a_state_that_is_a_file_is_refused(spool):
    """A file where a state folder belongs: refused, named."""
    dead = os.path.join(spool.path, "dead")
    os.rmdir(dead)
    Path(dead).write_text("")
    with pytest.raises(OSError):  # the gateway's start says `queue.path: cannot use ...`
        spool.create()
    with pytest.raises(SpoolUnsafe) as refused:
        spool.check()  # as `mailgate check` and the queue commands look at it
    assert refused.value.problems == [
        f"queue.path: {dead}: found something else, expected a folder"
    ]


def test_a_folder_above_the_spool_others_can_write_is_refused_unless_sticky(tmp_path):
    """Someone who can write the folder above could rename the spool and put theirs in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    spool = Spool(str(shared / "spool"))
    with pytest.raises(SpoolUnsafe) as refused:
        spool.create()
    assert refused.value.problems == [
        f"queue.path: {shared} (above the spool): found mode 0777 (writable by group and others), "
        f"expected a folder only its owner can write, or one with the sticky bit (chmod go-w {shared})"
    ]
    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename what is ours
    spool.create()


def test_the_spool_reached_through_a_link_is_checked_where_it_really_is(tmp_path):
    """queue.path may be a symbolic link; the folder it leads to is what must be safe."""
    real = tmp_path / "real"
    real.mkdir(mode=0o777)
    os.chmod(real, 0o777)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SpoolUnsafe) as refused:
        Spool(str(tmp_path / "link")).create()
    assert refused.value.problems[0].startswith(f"queue.path: {real}: found mode 0777")


@as_root
def test_a_state_folder_owned_by_someone_else_is_refused(spool):
    """Owned by another user (who could chmod it back at will): refused, with the uids."""
    folder = os.path.join(spool.path, DEFERRED)
    os.chown(folder, 54321, -1)
    with pytest.raises(SpoolUnsafe) as refused:
        spool.create()
    assert refused.value.problems == [
        f"queue.path: {folder}: found owner uid 54321, expected "
        f"{'root' if spool.owner == 0 else f'uid {spool.owner} (the user mailgate runs as) or root'}"
    ]


def test_the_runner_does_not_start_on_an_unsafe_spool(spool):
    """DeliveryRunner.start (the gateway's start) refuses before reading anything."""
    queue_id = commit(spool)
    os.chmod(os.path.join(spool.path, ACTIVE), 0o777)
    runner, connector, audit = make_runner(spool.path)
    with pytest.raises(SpoolUnsafe):
        runner.start()
    assert connector.opens == [] and audit.named("queue.started") == []
    assert spool.locate(queue_id) == ACTIVE


def test_mailgate_run_stops_naming_queue_path_the_folder_and_what_was_expected(tmp_path):
    """`mailgate run` with a world-writable spool: exit 1, one clear message, no traceback."""
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    config = tmp_path / "mailgate.toml"
    config.write_text(
        '[listener]\nlisten = "127.0.0.1:0"\n\n'
        f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n\n'
        f'[queue]\npath = "{spool}"\n\n[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(
        f"mailgate: queue.path: {spool}: found mode 0777 (writable by group and others), "
        "expected a folder only its owner can write"
    )


def test_mailgate_check_and_the_queue_commands_report_an_unsafe_spool(spool, tmp_path, capsys):
    """`mailgate check` lists the problem; `mailgate queue list` refuses to read such a spool."""
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'[queue]\npath = "{spool.path}"\n\n[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    assert cli.main(["check", "--config", str(config)]) == 0
    os.chmod(os.path.join(spool.path, "dead"), 0o757)
    capsys.readouterr()
    assert cli.main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: queue.path: {spool.path}/dead: found mode 0757 (writable by others)" in err
    assert cli.main(["queue", "list", "--config", str(config)]) == 1
    assert capsys.readouterr().err.startswith(f"mailgate: queue.path: {spool.path}/dead: found")


# --- nothing in a message folder is followed through a link --------------------------------


def replace_with_link(folder: str, name: str, target: Path) -> None:
    os.remove(os.path.join(folder, name))
    os.symlink(target, os.path.join(folder, name))


def test_a_body_linked_to_a_secret_is_never_read_or_sent(spool, secret):
    """The review's case: body -> the upstream password file. Quarantined, no connection made."""
    queue_id = commit(spool)
    replace_with_link(spool.folder(ACTIVE, queue_id), "body", secret)
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    assert connector.opens == []
    assert spool.locate(queue_id) == QUARANTINE
    [event] = audit.named("message.quarantined")
    assert event["queue_id"] == queue_id and event["state"] == ACTIVE
    assert event["problems"] == [f"active/{queue_id}/body: a symbolic link, never followed"]
    assert SECRET.decode().strip() not in "".join(audit.lines)
    assert secret.read_bytes() == SECRET


def test_a_body_swapped_for_a_link_after_loading_is_not_followed_either(spool, secret):
    """Between the checks and the read (a race): reading the body refuses the link itself."""
    queue_id = commit(spool)
    path = spool.body_path(ACTIVE, queue_id)
    replace_with_link(spool.folder(ACTIVE, queue_id), "body", secret)
    with pytest.raises(OSError, match="symbolic link"):
        list(read_lines(path))
    with pytest.raises(OSError, match="symbolic link"):
        read_headers(path)


def test_a_message_folder_that_is_a_link_is_not_followed(spool, tmp_path, secret):
    """active/ID -> a folder elsewhere holding a plausible envelope and body: not followed."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    queue_id = new_id()
    (outside / "envelope.json").write_bytes(good_envelope(queue_id).to_json())
    (outside / "body").symlink_to(secret)
    os.symlink(outside, spool.folder(ACTIVE, queue_id))
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    assert connector.opens == [] and spool.locate(queue_id) == QUARANTINE
    assert os.path.islink(spool.folder(QUARANTINE, queue_id))  # the link moved, not its target
    assert sorted(os.listdir(outside)) == ["body", "envelope.json"]


@pytest.mark.parametrize(
    "kind",
    [
        "envelope link",
        "hard link",
        "fifo",
        "folder",
        "missing",
        "other owner",
        "writable",
        "writable folder",
        "not a folder",
    ],
)
def test_message_files_that_are_not_what_mailgate_writes_are_quarantined(spool, secret, kind):
    """Links, a hard link to someone's file, a FIFO (would block), a folder, a missing file,
    another owner, group-writable: each refused at load, never read."""
    if kind == "other owner" and os.geteuid() != 0:
        pytest.skip("changing owners needs root")
    queue_id = commit(spool)
    folder = spool.folder(ACTIVE, queue_id)
    body = os.path.join(folder, "body")
    if kind == "envelope link":
        replace_with_link(folder, "envelope.json", secret)
    elif kind == "hard link":
        os.remove(body)
        os.link(secret, body)
    elif kind == "fifo":
        os.remove(body)
        os.mkfifo(body, 0o600)
    elif kind == "folder":
        os.remove(body)
        os.mkdir(body)
    elif kind == "missing":
        os.remove(body)
    elif kind == "other owner":
        os.chown(body, 54321, -1)
    elif kind == "writable folder":
        os.chmod(folder, 0o770)  # others could swap its files
    elif kind == "not a folder":
        shutil.rmtree(folder)
        Path(folder).write_bytes(good_envelope(queue_id).to_json())
    else:
        os.chmod(body, 0o620)
    with pytest.raises(EnvelopeInvalid):
        spool.load(ACTIVE, queue_id)
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    assert connector.opens == [] and spool.locate(queue_id) == QUARANTINE
    assert len(audit.named("message.quarantined")) == 1


def test_an_envelope_update_never_writes_through_a_planted_link(spool, secret):
    """envelope.json.tmp planted as a link (a format 1 envelope is converted through it): the
    save fails, the link's target is untouched."""
    queue_id = commit(spool)
    envelope = spool.load(ACTIVE, queue_id)
    folder = spool.folder(ACTIVE, queue_id)
    Path(folder, "envelope.json").write_bytes(envelope.to_json())  # format 1: rewritten on save
    os.symlink(secret, os.path.join(folder, "envelope.json.tmp"))
    with pytest.raises(OSError):
        spool.save(ACTIVE, envelope)
    assert secret.read_bytes() == SECRET


def test_a_journal_append_never_writes_through_a_planted_link(spool, secret):
    """envelope.json (format 2, appended to) swapped for a link after loading: the append
    refuses the link, the link's target is untouched."""
    queue_id = commit(spool)
    envelope = spool.load(ACTIVE, queue_id)
    replace_with_link(spool.folder(ACTIVE, queue_id), "envelope.json", secret)
    with pytest.raises(OSError, match="symbolic link"):
        spool.save(ACTIVE, envelope)
    assert secret.read_bytes() == SECRET


# --- envelopes are read as strictly as RCPT input ------------------------------------------

# field path -> hostile value; each must be refused, naming the field
HOSTILE_FIELDS: list[tuple[str, Any]] = [
    ("sender", "app@example.com> SIZE=1 AUTH=<forged@example.com>"),
    ("sender", "app@example.com>\r\nRCPT TO:<victim@example.org"),
    ("sender", "app @example.com"),
    ("sender", "<app@example.com>"),
    ("sender", "app@example.com\x00"),
    ("sender", "appé@example.com"),
    ("sender", "@relay.example:app@example.com"),
    ("sender", 5),
    ("sender", None),
    ("sender", ["app@example.com"]),
    ("recipients.0.address", "ops@example.net> NOTIFY=SUCCESS ORCPT=rfc822;x@y"),
    ("recipients.0.address", "ops@example.net>\r\nDATA"),
    ("recipients.0.address", "ops@example.net\t"),
    ("recipients.0.address", ""),
    ("recipients.0.address", '"a@b"@example.net'),
    ("recipients.0.address", {"text": "ops@example.net"}),
    ("recipients.0.upstream", ""),
    ("recipients.0.upstream", 7),
    ("recipients.0.upstream", "up\r\nRSET"),
    ("recipients.0.route", "up"),
    ("recipients.0.route", ["up", 3]),
    ("recipients.0.rule", ["all"]),
    ("recipients.0.status", "sent"),
    ("recipients.0.attempts", "1"),
    ("recipients.0.attempts", -1),
    ("recipients.0.attempts", True),
    ("recipients.0.in_flight", "no"),
    ("recipients.0.last_attempt", "yesterday"),
    ("recipients.0.last_reply", 250),
    ("recipients", []),
    ("recipients", "ops@example.net"),
    ("recipients", ["ops@example.net"]),
    ("mail_body", "8BITMIME SMTPUTF8"),
    ("mail_body", "8BITMIME\r\nRSET"),
    ("mail_body", "BINARYMIME"),
    ("mail_body", 8),
    ("size", "1 AUTH=<forged@example.com>"),
    ("size", -1),
    ("size", 1.5),
    ("size", True),
    ("attempts", "x"),
    ("attempts", None),
    ("received", "yesterday"),
    ("received", None),
    ("next_attempt", "soon"),
    ("next_attempt", float("nan")),
    ("next_attempt", float("inf")),
    ("requeued", "now"),
    ("sha256", "zz"),
    ("bounce_of", "../../etc"),
    ("id", "../../../etc"),
    ("id", "0123456789abcdef01234567"),
    ("id", 12345678),
    ("extra", ["x"]),
    ("message_id", ["<m@x>"]),
    ("helo", 3),
    ("client_tls_version", "TLSv1.3\r\nRSET"),
    ("client_tls_version", "SSLv3"),
    ("client_tls_version", "tlsv1.3"),
    ("client_tls_version", 1.3),
    ("client_tls_cipher", "TLS_AES_256_GCM_SHA384\x1b[2J"),
    ("client_tls_cipher", "TLS_AES_256_GCM_SHA384\r\nRSET"),
    ("client_tls_cipher", "AES 256"),
    ("client_tls_cipher", "A" * 65),
    ("client_tls_cipher", ""),
    ("client_tls_cipher", ["TLS_AES_256_GCM_SHA384"]),
    ("client_cert_sha256", "AB" * 32),
    ("client_cert_sha256", "ab" * 31),
    ("client_cert_sha256", "ab" * 32 + "\n"),
    ("client_cert_sha256", 0),
]


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value


def plant(spool: Spool, state: str, change: Any) -> str:
    """A committed message whose envelope.json is then changed by `change(data)`."""
    queue_id = commit(spool)
    path = os.path.join(spool.folder(ACTIVE, queue_id), "envelope.json")
    data = json.loads(Path(path).read_bytes())
    change(data)
    Path(path).write_text(json.dumps(data))
    if state != ACTIVE:
        spool.move(queue_id, ACTIVE, state)
    return queue_id


@pytest.mark.parametrize(("field", "value"), HOSTILE_FIELDS)
def test_a_hostile_envelope_field_is_refused_naming_it(spool, field, value):
    """Every field that reaches SMTP or a path, of the wrong type or with a parameter in it."""
    queue_id = plant(spool, ACTIVE, lambda d: _set(d, field, value))
    with pytest.raises(EnvelopeInvalid) as refused:
        spool.load(ACTIVE, queue_id)
    named = field.replace(".0.", "[0].") if field.count(".") == 2 else field
    assert any(p.startswith(f"{named}") for p in refused.value.problems), refused.value.problems


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("sender"),
        lambda d: d.pop("recipients"),
        lambda d: d["recipients"][0].pop("address"),
        lambda d: d["recipients"][0].pop("upstream"),
        lambda d: d.update(smuggled="RSET"),
        lambda d: d["recipients"][0].update(notify="SUCCESS"),
        lambda d: d.update(version=3),
        lambda d: d.clear(),
    ],
    ids=[
        "no sender",
        "no recipients",
        "no address",
        "no upstream",
        "unknown field",
        "unknown recipient field",
        "version 3",
        "empty object",
    ],
)
def test_missing_and_unknown_fields_are_refused(spool, change):
    """What mailgate does not write is not read: missing fields, extra fields, other versions."""
    queue_id = plant(spool, ACTIVE, change)
    with pytest.raises(EnvelopeInvalid):
        spool.load(ACTIVE, queue_id)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"client_tls_version": "TLSv1.3"}, "client_tls_version, client_tls_cipher: found one"),
        ({"client_tls_cipher": "TLS_AES_128_GCM_SHA256"}, "client_tls_version, client_tls_cipher"),
        ({"client_cert_sha256": "ab" * 32}, "client_cert_sha256: found a client certificate"),
    ],
    ids=["version alone", "cipher alone", "certificate without TLS"],
)
def test_the_app_tls_facts_that_cannot_go_together_are_refused(spool, fields, problem):
    """A TLS version comes with its cipher, a client certificate only with both."""
    queue_id = plant(spool, ACTIVE, lambda d: d.update(fields))
    with pytest.raises(EnvelopeInvalid) as refused:
        spool.load(ACTIVE, queue_id)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'{"version": 1',
        b"\xff\xfe",
        b'{"version": 1, "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # too deep to parse
    ],
)
def test_an_envelope_that_is_not_a_json_object_is_refused(spool, raw):
    """Not JSON at all, or not an object."""
    queue_id = commit(spool)
    Path(spool.folder(ACTIVE, queue_id), "envelope.json").write_bytes(raw)
    with pytest.raises(EnvelopeInvalid):
        spool.load(ACTIVE, queue_id)


def test_every_problem_is_listed_at_once(spool):
    """One look says everything wrong, each with what was found and what was expected."""
    queue_id = plant(
        spool, ACTIVE, lambda d: d.update(size="1 AUTH=<x>", sender="a@b.c> X=1", attempts=None)
    )
    with pytest.raises(EnvelopeInvalid) as refused:
        spool.load(ACTIVE, queue_id)
    assert refused.value.problems == [
        "sender: found 'a@b.c> X=1', expected an address as MAIL FROM accepts it "
        "(Bad sender address syntax)",
        "size: found '1 AUTH=<x>', expected a size in octets (a whole number of at least 0)",
        "attempts: found null, expected a whole number of at least 0",
    ]


@pytest.mark.parametrize("state", [ACTIVE, DEFERRED])
def test_a_refused_envelope_is_quarantined_once_with_one_event(spool, state):
    """Wrong field types used to log gateway.error every second forever: now one move, one event."""
    queue_id = plant(spool, state, lambda d: d["recipients"][0].update(attempts="1"))
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    for _ in range(5):
        runner.scan()
    assert connector.opens == [] and spool.locate(queue_id) == QUARANTINE
    names = [e["event"] for e in audit.events]
    assert names.count("message.quarantined") == 1
    assert "gateway.error" not in names and "queue.unreadable" not in names
    [event] = audit.named("message.quarantined")
    assert event["problems"] == [
        "recipients[0].attempts: found '1', expected a whole number of at least 0"
    ]
    assert sorted(os.listdir(spool.folder(QUARANTINE, queue_id))) == ["body", "envelope.json"]


def test_a_quarantine_name_already_taken_is_logged_once_not_retried_silently(spool):
    """quarantine/ID exists (a copy put back by hand): the message stays, logged once, not sent."""
    queue_id = plant(spool, ACTIVE, lambda d: d.update(size="1 AUTH=<x>"))
    os.mkdir(spool.folder(QUARANTINE, queue_id))
    Path(spool.folder(QUARANTINE, queue_id), "keep").write_text("")
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    for _ in range(3):
        runner.scan()
    assert connector.opens == [] and spool.locate(queue_id) == ACTIVE
    names = [e["event"] for e in audit.events]
    assert names.count("queue.unreadable") == 1 and "message.quarantined" not in names


def test_a_quarantined_message_stays_out_after_a_restart(spool):
    """A new runner (a restart) neither retries nor logs it again."""
    queue_id = plant(spool, ACTIVE, lambda d: d.update(sender="x@y.z> SIZE=1"))
    make_runner(spool.path)[0].start()
    runner, connector, audit = make_runner(spool.path)
    runner.start()
    runner.scan()
    assert connector.opens == [] and audit.named("message.quarantined") == []
    assert spool.locate(queue_id) == QUARANTINE


def test_the_queue_commands_show_quarantine_and_refused_envelopes_without_a_traceback(
    spool, tmp_path, capsys
):
    """queue quarantine lists them with the reason; show names the problem; list marks bad ones."""
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'[queue]\npath = "{spool.path}"\n\n[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    bad = plant(spool, ACTIVE, lambda d: d.update(size="9 AUTH=<x>"))
    assert cli.main(["queue", "show", bad, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mailgate: queue: {bad} (active): its envelope or files cannot be used")
    assert cli.main(["queue", "list", "--config", str(config)]) == 0
    assert f"{bad}  active    (unreadable envelope: size: found" in capsys.readouterr().out
    make_runner(spool.path)[0].start()
    assert cli.main(["queue", "quarantine", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(bad) and "size: found '9 AUTH=<x>'" in out
    assert err == "-- 1 message(s) in quarantine\n"
    assert cli.main(["queue", "retry", bad, "--config", str(config)]) == 1
    assert "is in quarantine" in capsys.readouterr().err


# --- what mailgate writes still reads back ----------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [
        lambda i: good_envelope(i),
        lambda i: good_envelope(
            i,
            mail_body="8BITMIME",
            size=12,
            sha256="a" * 64,
            message_id="<m\x1b@x>",
            helo="h\r\n",
            client_ip="::1",
            session_id="s",
            attempts=3,
            next_attempt=1.5,
            requeued=2000.0,
            app="printer",
            client_tls_version="TLSv1.2",
            client_tls_cipher="ECDHE-RSA-AES256-GCM-SHA384",
            client_cert_sha256="0f" * 32,
        ),
        lambda i: Envelope(
            id=i,
            sender="",
            received=1.0,
            bounce_of=new_id(),
            recipients=[RecipientState("app@example.com", "up", None)],
        ),
        lambda i: Envelope(
            id=i,
            sender='"odd local"@[192.0.2.1]',
            received=1,
            recipients=[
                RecipientState(
                    "x@[IPv6:2001:db8::1]",
                    "up",
                    "r",
                    status="failed",
                    attempts=2,
                    last_reply="550 5.1.1 no",
                    last_attempt=3.0,
                    in_flight=True,
                    bounced=True,
                    expired=True,
                    route=["up", "backup"],
                )
            ],
        ),
    ],
    ids=["plain", "every field", "a DSN", "literals and states"],
)
def test_what_mailgate_writes_reads_back_unchanged(spool, envelope):
    """The strict reader accepts every envelope the writer produces, value for value."""
    queue_id = new_id()
    written = envelope(queue_id)
    writer = SpoolWriter(spool, queue_id)
    writer.write(BODY)
    writer.commit(written)
    assert spool.load(ACTIVE, queue_id) == written


def test_the_spool_folders_are_created_private(tmp_path):
    """Created 0700 whatever the umask, so a new spool passes its own check."""
    old = os.umask(0)
    try:
        spool = Spool(str(tmp_path / "spool"))
        spool.create()
    finally:
        os.umask(old)
    for state in FOLDERS:
        assert stat.S_IMODE(os.stat(spool.folder(state)).st_mode) == 0o700
    assert spool_module.QUARANTINE in FOLDERS


# --- over real sockets: a queued message whose body is swapped for a link to a secret ---------


@pytest.fixture
def upstream(server_cert: Any) -> Any:
    from tests.integration.queueing import Upstream

    up = Upstream(server_cert)
    yield up
    up.down()


def test_a_deferred_message_whose_body_becomes_a_link_sends_nothing(
    upstream, start_gateway, ca, tmp_path, secret
):
    """Queued while the upstream is down, body swapped for a link to the password file; when
    the upstream is back the message is quarantined, the upstream gets nothing, the audit
    never holds the secret."""
    from tests.integration.queueing import message, queue_document, send

    path = str(tmp_path / "spool")
    upstream.down()
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), path))
    code, text = send(gw.port, message(1))
    assert code == 250
    queue_id = text.split()[-1].decode()
    gw.audit.wait_for("message.deferred")
    replace_with_link(os.path.join(path, DEFERRED, queue_id), "body", secret)
    server = upstream.back()
    [event] = gw.audit.wait_for("message.quarantined")
    assert event["queue_id"] == queue_id
    assert event["problems"] == [f"active/{queue_id}/body: a symbolic link, never followed"]
    gw.stop()
    assert server.messages == [] and sorted(os.listdir(os.path.join(path, QUARANTINE))) == [
        queue_id
    ]
    assert "hunter2" not in "".join(gw.audit.lines)
    assert [e["event"] for e in gw.audit.events].count("gateway.error") == 0
