"""Several `mailgate run` processes on one port: ``[listener] reuse_port`` (SO_REUSEPORT), real processes.

Each instance greets with its own ``listener.hostname``, so the client sees which one took
each connection.
"""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess, clean_env
from tests.conftest import PASSWORD, relay_all, upstream_table

MAX_CONNECTIONS = (
    200  # the kernel spreads by a hash of the client's port: both get some well before
)


def instance_config(
    tmp_path: Path, name: str, upstream, ca_file: str, port: int, **listener
) -> str:
    document = relay_all(
        upstream_table(upstream, ca_file),
        listen=f"127.0.0.1:{port}",
        hostname=f"{name}.mailgate.test",
        **listener,
    )
    document["audit"] = {"path": str(tmp_path / f"audit-{name}.jsonl")}
    return write_toml(document, str(tmp_path / f"{name}.toml"))


def start(config: str) -> MailgateProcess:
    return MailgateProcess(
        "run", "--config", config, env=clean_env(MAILGATE_TEST_PASSWORD=PASSWORD)
    )


def greeter(port: int) -> str:
    """The hostname in the greeting of one new connection to `port`."""
    client = smtplib.SMTP(timeout=30)
    try:
        _, greeting = client.connect("127.0.0.1", port)
        return greeting.split()[0].decode()
    finally:
        client.quit()


def test_two_instances_share_a_port_with_reuse_port(make_upstream, ca, tmp_path):
    """With reuse_port on both, two `mailgate run` bind one port and both answer connections."""
    upstream = make_upstream()
    first = start(instance_config(tmp_path, "a", upstream, ca.ca_file, 0, reuse_port=True))
    try:
        port = first.port
        second = start(instance_config(tmp_path, "b", upstream, ca.ca_file, port, reuse_port=True))
        try:
            assert second.port == port
            seen: set[str] = set()
            for _ in range(MAX_CONNECTIONS):
                seen.add(greeter(port))
                if len(seen) == 2:
                    break
            assert seen == {"a.mailgate.test", "b.mailgate.test"}
        finally:
            code_b, _, _ = second.stop()
    finally:
        code_a, _, _ = first.stop()
    assert code_a == code_b == 0
    for name in ("a", "b"):
        assert '"event":"session.opened"' in (tmp_path / f"audit-{name}.jsonl").read_text()


def test_second_instance_without_reuse_port_fails_to_start_clearly(make_upstream, ca, tmp_path):
    """reuse_port off (the default): a second instance on a taken port exits 1 naming the key."""
    upstream = make_upstream()
    first = start(instance_config(tmp_path, "a", upstream, ca.ca_file, 0))
    try:
        port = first.port
        second = start(instance_config(tmp_path, "b", upstream, ca.ca_file, port))
        second.process.wait(30)  # it ends by itself; stop() then only collects its output
        code, _, stderr = second.stop()
        assert greeter(port) == "a.mailgate.test"  # the first one is unharmed
    finally:
        first.stop()
    assert code == 1
    assert f"listener.listen: cannot listen on 127.0.0.1:{port}: address in use".encode() in stderr
    assert b"listener.reuse_port = true" in stderr


def test_reuse_port_instance_cannot_join_a_port_bound_without_it(make_upstream, ca, tmp_path):
    """reuse_port on the newcomer only: the kernel refuses, and the error says every instance needs it."""
    upstream = make_upstream()
    first = start(instance_config(tmp_path, "a", upstream, ca.ca_file, 0))
    try:
        port = first.port
        second = start(instance_config(tmp_path, "b", upstream, ca.ca_file, port, reuse_port=True))
        second.process.wait(30)  # it ends by itself; stop() then only collects its output
        code, _, stderr = second.stop()
    finally:
        first.stop()
    assert code == 1
    assert b"every instance sharing it needs listener.reuse_port = true" in stderr


def test_cluster_instance_names_every_audit_event(make_upstream, ca, tmp_path):
    """`[cluster] instance` is the `instance` of every audit event (Redis need not be up)."""
    upstream = make_upstream()
    config = instance_config(tmp_path, "a", upstream, ca.ca_file, 0)
    text = Path(config).read_text()
    text += '\n[cluster]\nredis_url = "redis://127.0.0.1:9/0"\ninstance = "mg-7"\n'
    Path(config).write_text(text)
    process = start(config)
    try:
        greeter(process.port)
    finally:
        code, _, _ = process.stop()
    assert code == 0
    events = [json.loads(line) for line in (tmp_path / "audit-a.jsonl").read_text().splitlines()]
    assert events and {e["instance"] for e in events} == {"mg-7"}
