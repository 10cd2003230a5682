"""`mailgate check` with [cluster]: the password readable; --connect pings Redis."""

from __future__ import annotations

import json

from gateway.cli.main import main
from gateway.testing.redis_server import free_port


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
