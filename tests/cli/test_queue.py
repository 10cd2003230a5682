"""``mailgate queue ...`` on a spool on disk: what each command prints and which folder it moves."""

from __future__ import annotations

import pytest

from gateway.cli import main as cli
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    TRASH,
    Envelope,
    RecipientState,
    Spool,
    new_id,
)
from gateway.queue.writer import SpoolWriter


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(str(tmp_path / "spool"))
    s.create()
    return s


@pytest.fixture
def config(tmp_path, spool) -> str:
    path = tmp_path / "mailgate.toml"
    path.write_text(
        f'[queue]\npath = "{spool.path}"\n\n[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    return str(path)


def put(
    spool: Spool,
    state: str,
    status: str = "pending",
    reply: str = "451 4.4.1 Upstream unreachable, try again later",
    next_attempt: float = 0.0,
) -> str:
    """A message with one recipient, tried once, in `state`."""
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    recipient = RecipientState(
        "ops@example.net",
        "up",
        "all",
        status=status,
        attempts=1,
        last_reply=reply,
        last_attempt=1.0,
    )
    writer.commit(
        Envelope(
            id=queue_id,
            sender="app@example.com",
            received=1.0,
            attempts=1,
            recipients=[recipient],
            next_attempt=next_attempt,
        )
    )
    if state != ACTIVE:
        spool.move(queue_id, ACTIVE, state)
    return queue_id


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["queue", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_one_line_per_queued_message(spool, config, capsys):
    """list: id, state, age, sender, pending recipients, attempts and last reply; dead letters not listed."""
    deferred = put(spool, DEFERRED)
    put(spool, DEAD, status="failed")
    code, out, err = run(capsys, "list", "--config", config)
    assert code == 0
    [line] = out.splitlines()
    assert line.startswith(f"{deferred}  deferred")
    for part in (
        "<app@example.com>",
        "ops@example.net",
        "attempts=1",
        "451 4.4.1 Upstream unreachable",
    ):
        assert part in line
    assert "1 message(s) queued" in err


def test_list_shows_paced_mail_and_when_it_goes(spool, config, capsys):
    """Mail waiting for a provider budget says paced= and how long until its slot."""
    import time

    paced = put(
        spool,
        DEFERRED,
        reply="451 4.7.1 Upstream up budget pace 30/minute spent for this sender, try again later",
        next_attempt=time.time() + 125,
    )
    code, out, _ = run(capsys, "list", "--config", config)
    [line] = out.splitlines()
    assert code == 0 and line.startswith(paced)
    assert "  paced=2m  " in line and "budget pace 30/minute" in line


def test_dead_lists_dead_letters_with_failed_recipients(spool, config, capsys):
    """dead: the dead-letter area, with the recipients that failed."""
    dead = put(spool, DEAD, status="failed")
    code, out, _ = run(capsys, "dead", "--config", config)
    assert code == 0 and out.startswith(f"{dead}  dead") and "ops@example.net" in out


def test_show_prints_each_recipient(spool, config, capsys):
    """show ID: the envelope and every recipient's state."""
    queue_id = put(spool, DEFERRED)
    code, out, _ = run(capsys, "show", queue_id, "--config", config)
    assert code == 0 and f"id: {queue_id}\nstate: deferred\n" in out
    assert "recipient: <ops@example.net> pending via up attempts=1" in out


def test_show_prints_the_app_tls_of_a_message_queued_over_tls(spool, config, capsys):
    """show ID: the app's TLS version, cipher and certificate, as the envelope recorded them."""
    queue_id = put(spool, ACTIVE)
    envelope = spool.load(ACTIVE, queue_id)
    envelope.client_tls_version, envelope.client_tls_cipher = "TLSv1.3", "TLS_AES_128_GCM_SHA256"
    envelope.client_cert_sha256 = "ef" * 32
    spool.save(ACTIVE, envelope)
    code, out, _ = run(capsys, "show", queue_id, "--config", config)
    assert code == 0
    assert "client_tls_version: TLSv1.3\nclient_tls_cipher: TLS_AES_128_GCM_SHA256\n" in out
    assert f"client_cert_sha256: {'ef' * 32}\n" in out
    plain = run(capsys, "show", put(spool, ACTIVE), "--config", config)[1]
    assert "client_tls" not in plain and "client_cert" not in plain


def test_retry_moves_a_deferred_message_to_active(spool, config, capsys):
    """retry ID makes the message due now (the runner delivers what is in active/)."""
    queue_id = put(spool, DEFERRED)
    assert run(capsys, "retry", queue_id, "--config", config)[0] == 0
    assert spool.locate(queue_id) == ACTIVE


def test_retry_all_moves_every_deferred_message(spool, config, capsys):
    """retry --all makes every deferred message due now."""
    ids = [put(spool, DEFERRED) for _ in range(3)]
    code, out, _ = run(capsys, "retry", "--all", "--config", config)
    assert code == 0 and "3 message(s) due now" in out
    assert spool.ids(ACTIVE) == sorted(ids) and spool.ids(DEFERRED) == []


def test_retry_of_a_dead_letter_points_to_requeue(spool, config, capsys):
    """retry on a dead letter fails and names the command to use."""
    queue_id = put(spool, DEAD, status="failed")
    code, _, err = run(capsys, "retry", queue_id, "--config", config)
    assert code == 1 and f"mailgate queue requeue {queue_id}" in err


def test_delete_moves_the_message_to_trash(spool, config, capsys):
    """delete ID hands the message to the runner through trash/ (it logs and removes it)."""
    queue_id = put(spool, DEFERRED)
    assert run(capsys, "delete", queue_id, "--config", config)[0] == 0
    assert spool.locate(queue_id) == TRASH


def test_requeue_resets_failed_recipients(spool, config, capsys):
    """requeue ID: failed recipients become pending, the age limit restarts, the message is due."""
    queue_id = put(spool, DEAD, status="failed")
    assert run(capsys, "requeue", queue_id, "--config", config)[0] == 0
    envelope = spool.load(ACTIVE, queue_id)
    assert [r.status for r in envelope.recipients] == ["pending"] and envelope.requeued


def test_unknown_or_malformed_id_is_an_error(spool, config, capsys):
    """An id that is not there exits 1; one that is not an id at all exits 2."""
    assert run(capsys, "show", new_id(), "--config", config)[0] == 1
    code, _, err = run(capsys, "show", "../../etc", "--config", config)
    assert code == 2 and "expected a queue id" in err


def test_missing_spool_names_queue_path(tmp_path, capsys):
    """Without a spool folder the error names queue.path and the folder."""
    path = tmp_path / "other.toml"
    path.write_text(f'[queue]\npath = "{tmp_path}/nowhere"\n')
    code, _, err = run(capsys, "list", "--config", str(path))
    assert code == 1 and "queue.path" in err and "nowhere" in err


def test_convert_back_rewrites_every_envelope_in_format_1(spool, config, capsys):
    """`queue convert-back` (a rollback): each envelope becomes one format 1 document, same values."""
    import json
    import os

    ids = {state: put(spool, state) for state in (ACTIVE, DEFERRED, DEAD)}
    before = {state: spool.load(state, queue_id) for state, queue_id in ids.items()}
    before[ACTIVE].recipients[0].in_flight = True
    spool.save(ACTIVE, before[ACTIVE])  # a journal of two lines
    assert cli.main(["queue", "convert-back", "--config", config]) == 0
    assert "converted 3 envelope(s)" in capsys.readouterr().out
    for state, queue_id in ids.items():
        path = os.path.join(spool.folder(state, queue_id), "envelope.json")
        with open(path, "rb") as handle:
            assert json.loads(handle.read())["version"] == 1
        assert spool.load(state, queue_id) == before[state]
