"""`mailgate check` with [cluster]: the password readable; --connect pings Redis."""

from __future__ import annotations

import json

from gateway.cli.main import main
from gateway.testing.redis_server import RedisServer, free_port


def write(tmp_path, url: str, **cluster: str) -> str:
    path = tmp_path / "mailgate.toml"
    lines = [
        '[upstreams.up]\nhost = "smtp.example.com"\n',
        '[[rules]]\nname = "all"\naction = "relay"\nupstream = "up"\nrate = "10/minute"\n',
        f"[cluster]\nredis_url = {json.dumps(url)}\n",
        *(f"{k} = {json.dumps(v)}\n" for k, v in cluster.items()),
    ]
    path.write_text("".join(lines))
    return str(path)


def test_check_connect_pings_redis(tmp_path, redis_server, capsys):
    """--connect with a live Redis: OK."""
    assert main(["check", "--config", write(tmp_path, redis_server.url), "--connect"]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_connect_reports_a_redis_that_does_not_answer(tmp_path, capsys):
    """--connect and nobody listening: a problem naming cluster.redis_url."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["check", "--config", write(tmp_path, url), "--connect"]) == 1
    assert "cluster.redis_url" in capsys.readouterr().err


def test_check_without_connect_does_not_ping(tmp_path):
    """Without --connect, a Redis that is down is not a problem of the file."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["check", "--config", write(tmp_path, url)]) == 0


def test_check_reports_an_unset_password_variable(tmp_path, monkeypatch, capsys):
    """password_env naming an unset variable: a problem naming cluster.password_env."""
    monkeypatch.delenv("MAILGATE_REDIS_PASSWORD", raising=False)
    path = write(tmp_path, "redis://127.0.0.1:6379/0", password_env="MAILGATE_REDIS_PASSWORD")
    assert main(["check", "--config", path]) == 1
    assert "cluster.password_env" in capsys.readouterr().err


def test_check_connect_authenticates_with_the_password(tmp_path, monkeypatch, capsys):
    """A Redis with requirepass: --connect with password_env set to it is OK."""
    server = RedisServer(str(tmp_path), password="s3cret-redis-pw")
    server.start()
    try:
        monkeypatch.setenv("MAILGATE_REDIS_PASSWORD", "s3cret-redis-pw")
        path = write(tmp_path, server.url, password_env="MAILGATE_REDIS_PASSWORD")
        assert main(["check", "--config", path, "--connect"]) == 0
    finally:
        server.stop()


def test_check_connect_names_the_password_key_when_refused(tmp_path, monkeypatch, capsys):
    """A wrong password: the problem names cluster.password_file and never shows the password."""
    server = RedisServer(str(tmp_path), password="the-right-one")
    server.start()
    try:
        secret = tmp_path / "redis.pw"
        secret.write_text("wrong-pw-9f3a\n")
        secret.chmod(0o600)
        path = write(tmp_path, server.url, password_file=str(secret))
        assert main(["check", "--config", path, "--connect"]) == 1
        err = capsys.readouterr().err
        assert "cluster.password_file" in err
        assert "wrong-pw-9f3a" not in err and "the-right-one" not in err
    finally:
        server.stop()


def test_check_connect_names_the_password_key_when_none_is_given(tmp_path, capsys):
    """Redis wants a password and none is configured: the problem says so, naming password_env."""
    server = RedisServer(str(tmp_path), password="needed")
    server.start()
    try:
        assert main(["check", "--config", write(tmp_path, server.url), "--connect"]) == 1
        assert "cluster.password_env" in capsys.readouterr().err
    finally:
        server.stop()
