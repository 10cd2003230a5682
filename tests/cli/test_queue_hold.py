"""``mailgate queue hold | release`` on a spool made by the real writer: folders moved, files written,
what list/show/status say, and the exit codes of the other queue commands."""

from __future__ import annotations

import os

import pytest

from gateway.queue import holds
from gateway.queue.spool import ACTIVE, DEAD, DEFERRED, HOLD, Spool
from tests.cli.test_queue import put, run


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
        '[upstreams.other]\nhost = "mx.example.org"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    return str(path)


def test_hold_moves_a_deferred_or_active_message_to_hold(spool, config, capsys):
    """hold ID: deferred/ID or active/ID becomes hold/ID (mode 0700 folder); exit 0."""
    for state in (DEFERRED, ACTIVE):
        queue_id = put(spool, state)
        code, out, _ = run(capsys, "hold", queue_id, "--config", config)
        assert code == 0 and f"{queue_id}: held (was {state})" in out
        assert spool.locate(queue_id) == HOLD
    assert os.stat(spool.folder(HOLD)).st_mode & 0o777 == 0o700


def test_hold_works_on_a_spool_made_before_holds(spool, config, capsys):
    """A spool without hold/ (an older release made it): the folder is created, 0700."""
    os.rmdir(spool.folder(HOLD))
    queue_id = put(spool, DEFERRED)
    assert run(capsys, "hold", queue_id, "--config", config)[0] == 0
    assert spool.locate(queue_id) == HOLD


def test_release_moves_a_held_message_to_active(spool, config, capsys):
    """release ID: hold/ID becomes active/ID, delivered at once."""
    queue_id = put(spool, DEFERRED)
    run(capsys, "hold", queue_id, "--config", config)
    code, out, _ = run(capsys, "release", queue_id, "--config", config)
    assert code == 0 and "released" in out
    assert spool.locate(queue_id) == ACTIVE


def test_holding_twice_and_releasing_what_is_not_held_say_so(spool, config, capsys):
    """Idempotent: already held / not held, exit 0, nothing moved."""
    queue_id = put(spool, DEFERRED)
    run(capsys, "hold", queue_id, "--config", config)
    assert "already held" in run(capsys, "hold", queue_id, "--config", config)[1]
    other = put(spool, DEFERRED)
    code, out, _ = run(capsys, "release", other, "--config", config)
    assert code == 0 and "not held (deferred)" in out and spool.locate(other) == DEFERRED


def test_hold_of_a_dead_letter_or_unknown_id_fails_and_a_bad_id_is_a_usage_error(
    spool, config, capsys
):
    """Exit 1 for a dead letter or no such message, 2 for a malformed id (as the other commands)."""
    dead = put(spool, DEAD, status="failed")
    code, _, err = run(capsys, "hold", dead, "--config", config)
    assert code == 1 and "not queued" in err and spool.locate(dead) == DEAD
    assert run(capsys, "hold", "0" * 24, "--config", config)[0] == 1
    assert run(capsys, "hold", "../etc", "--config", config)[0] == 2
    assert run(capsys, "hold", "--config", config)[0] == 2  # neither ID nor --upstream


def test_retry_of_a_held_message_points_to_release(spool, config, capsys):
    """retry ID of a held message fails (exit 1) and names `queue release`."""
    queue_id = put(spool, DEFERRED)
    run(capsys, "hold", queue_id, "--config", config)
    code, _, err = run(capsys, "retry", queue_id, "--config", config)
    assert code == 1 and f"mailgate queue release {queue_id}" in err


def test_hold_and_release_an_upstream(spool, config, capsys):
    """hold --upstream NAME writes held-upstreams; release --upstream NAME takes it back."""
    code, out, _ = run(capsys, "hold", "--upstream", "other", "--config", config)
    assert code == 0 and "upstream other: held" in out
    assert holds.held(spool) == {"other"}
    code, out, _ = run(capsys, "release", "--upstream", "other", "--config", config)
    assert code == 0 and "upstream other: released" in out
    assert holds.held(spool) == frozenset()


def test_holding_an_upstream_the_config_does_not_name_is_a_usage_error(spool, config, capsys):
    """--upstream must be an upstream of the config (exit 2, naming the ones it has)."""
    code, _, err = run(capsys, "hold", "--upstream", "nope", "--config", config)
    assert code == 2 and "expected an upstream of" in err and "other, up" in err
    assert holds.held(spool) == frozenset()


def test_release_all_releases_every_held_message_and_upstream(spool, config, capsys):
    """release --all: hold/ emptied into active/, held-upstreams removed."""
    ids = [put(spool, DEFERRED) for _ in range(2)]
    for queue_id in ids:
        run(capsys, "hold", queue_id, "--config", config)
    run(capsys, "hold", "--upstream", "up", "--config", config)
    code, out, _ = run(capsys, "release", "--all", "--config", config)
    assert code == 0 and "2 message(s) released; upstreams released: up" in out
    assert [spool.locate(q) for q in ids] == [ACTIVE, ACTIVE]
    assert holds.held(spool) == frozenset()


def test_list_show_and_status_say_what_is_held(spool, config, capsys):
    """list marks held messages and mail waiting for a held upstream; show says held; status counts."""
    held = put(spool, DEFERRED)
    waiting = put(spool, DEFERRED)
    run(capsys, "hold", held, "--config", config)
    run(capsys, "hold", "--upstream", "up", "--config", config)
    code, out, err = run(capsys, "list", "--config", config)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and lines[held].split()[1] == "hold"
    assert "held-upstream=up" in lines[waiting]
    assert "1 message(s) queued, 1 held; upstreams held: up" in err
    out = run(capsys, "show", held, "--config", config)[1]
    assert (
        "state: hold" in out
        and f"held: yes, not delivered until `mailgate queue release {held}`" in out
    )
    assert "held upstream: up" in run(capsys, "show", waiting, "--config", config)[1]
    assert "held 1" in run(capsys, "status", "--config", config)[1]


def test_delete_of_a_held_message_moves_it_to_trash(spool, config, capsys):
    """A held message can be deleted like any other."""
    queue_id = put(spool, DEFERRED)
    run(capsys, "hold", queue_id, "--config", config)
    assert run(capsys, "delete", queue_id, "--config", config)[0] == 0
    assert spool.locate(queue_id) == "trash"


def test_check_warns_when_the_spool_is_below_min_free(spool, tmp_path, capsys):
    """mailgate check: a floor above the free space is a warning naming queue.min_free (exit 0)."""
    from gateway.cli import main as cli

    config = tmp_path / "floor.toml"
    body = (
        '[upstreams.up]\nhost = "smtp.example.net"\n\n'
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\ndelivery = "queue"\n'
    )
    config.write_text(f'[queue]\npath = "{spool.path}"\nmin_free = "1000000TiB"\n\n' + body)
    assert cli.main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {config}: queue.min_free: " in err and "below the floor of" in err
    config.write_text(f'[queue]\npath = "{spool.path}"\nmin_free = 0\n\n' + body)
    assert cli.main(["check", "--config", str(config)]) == 0
    assert "min_free" not in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_hold_as_root_on_a_spool_made_before_holds_gives_hold_to_the_spool_user(
    spool, config, capsys
):
    """sudo mailgate queue hold ID on an old spool: hold/ is made for the daemon's user (it lists
    it and renames out of it), 0700."""
    os.rmdir(spool.folder(HOLD))
    queue_id = put(spool, DEFERRED)
    os.chown(spool.path, 4321, 4321)
    assert run(capsys, "hold", queue_id, "--config", config)[0] == 0
    info = os.stat(spool.folder(HOLD))
    assert (info.st_uid, info.st_mode & 0o777) == (4321, 0o700)
    assert spool.locate(queue_id) == HOLD
