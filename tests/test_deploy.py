"""The deploy/ artifacts stay valid: the sample config checks clean and documents every key."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import model as configuration
from gateway.config import toml
from gateway.config.providers import UPSTREAM_KEYS

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SAMPLE = DEPLOY / "mailgate.toml"


def test_sample_config_passes_check(monkeypatch, capsys):
    """`mailgate check --config deploy/mailgate.toml` is OK with its password variable set."""
    monkeypatch.setenv("MAILGATE_UPSTREAM_PASSWORD", "not-a-real-password")
    assert main(["check", "--config", str(SAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def keys_of(cls: type, *, skip: tuple[str, ...] = ("name",)) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name not in skip}


def test_sample_config_documents_every_key():
    """Each key of each section appears in the sample, set or commented out (``key =``)."""
    text = SAMPLE.read_text()
    written = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", text, re.MULTILINE))
    expected = (
        keys_of(configuration.ListenerConfig)
        | keys_of(configuration.AuditConfig)
        | keys_of(configuration.MetricsConfig)
        | keys_of(configuration.UpstreamConfig, skip=("name", "oauth"))
        | keys_of(configuration.App)
        | keys_of(configuration.Rule, skip=("upstreams", "headers"))
        | {"upstream"}
        | UPSTREAM_KEYS  # the OAuth keys, held in UpstreamConfig.oauth
        | {"rewrite_from", "strip_headers"}  # held in Rule.headers
    )
    assert sorted(expected - written) == []


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_sample_is_valid():
    """deploy/haproxy.cfg passes `haproxy -c`."""
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_systemd_file_limit_fits_the_sample_max_connections():
    """LimitNOFILE leaves room for two descriptors per app connection, the pools and the rest."""
    unit = (DEPLOY / "systemd" / "mailgate.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    config = toml.load(str(SAMPLE))
    pools = sum(u.max_connections for u in config.upstreams.values())
    assert int(limit) >= 2 * config.listener.max_connections + pools + 32 + 150
