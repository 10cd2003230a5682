"""What a reload may change: the settings fixed at start are refused by name."""

from __future__ import annotations

from gateway.config import toml
from gateway.config.changes import fixed_changes
from gateway.config.model import Config
from tests.config.documents import queued_document

BASE = {"listener": {"listen": "127.0.0.1:2525"}, "rules": [{"name": "r", "action": "reject"}]}


def parse(**sections: object) -> Config:
    return toml.parse({**BASE, **sections}, "new.toml")


def test_same_fixed_settings_is_no_problem():
    """Rules, limits and upstreams may change freely."""
    assert fixed_changes(parse(), parse(rules=[{"name": "other", "action": "reject"}])) == []


def test_changing_the_listen_address_is_refused_by_key():
    """listener.listen cannot change while the port is bound."""
    [problem] = fixed_changes(parse(), parse(listener={"listen": "127.0.0.1:2526"}))
    assert problem.key == "listener.listen" and problem.source == "new.toml"
    assert "restart" in problem.expected


def test_turning_metrics_on_or_proxy_protocol_on_is_refused():
    """metrics.listen and listener.proxy_protocol are fixed too."""
    listener = {
        "listen": "127.0.0.1:2525",
        "proxy_protocol": True,
        "proxy_trusted": ["10.0.0.2/32"],
    }
    new = parse(metrics={}, listener=listener)
    assert [p.key for p in fixed_changes(parse(), new)] == [
        "listener.proxy_protocol",
        "metrics.listen",
    ]


def test_reload_refuses_a_new_spool_path():
    """queue.path is fixed at start: a reload that changes it is refused, naming the key."""
    running = toml.parse(queued_document(queue={"path": "/srv/a"}), "q.toml")
    new = toml.parse(queued_document(queue={"path": "/srv/b"}), "q.toml")
    assert [p.key for p in fixed_changes(running, new)] == ["queue.path"]


def test_turning_reuse_port_on_is_refused():
    """listener.reuse_port is how the socket was bound: a reload cannot change it."""
    new = parse(listener={"listen": "127.0.0.1:2525", "reuse_port": True})
    assert [p.key for p in fixed_changes(parse(), new)] == ["listener.reuse_port"]


def test_queue_min_free_is_fixed_at_start():
    """queue.min_free is set up with the runner: a reload that changes it is refused, naming it."""
    running = toml.parse(queued_document(queue={"min_free": "100MiB"}), "q.toml")
    new = toml.parse(queued_document(queue={"min_free": "1GiB"}), "q.toml")
    assert [p.key for p in fixed_changes(running, new)] == ["queue.min_free"]
