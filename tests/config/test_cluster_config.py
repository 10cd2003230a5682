"""Unit tests of the [cluster] section: the Redis URL, its secret, and what to do without it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.changes import fixed_changes
from gateway.config.model import ClusterConfig
from gateway.config.toml import parse
from gateway.errors import ConfigError

SOURCE = "/etc/mailgate/test.toml"


def document(cluster: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstreams": {"provider": {"host": "smtp.example.com"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "provider", "rate": "10/minute"}],
    }
    if cluster is not None:
        doc["cluster"] = cluster
    return doc


def problems(cluster: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(document(cluster), SOURCE)
    return [str(p) for p in caught.value.problems]


def test_no_section_no_cluster():
    """Without [cluster] every limit is this instance's own."""
    assert parse(document(), SOURCE).cluster is None


def test_full_section_is_read():
    """Every key of the issue's example is read into ClusterConfig."""
    cluster = parse(
        document(
            {
                "redis_url": "rediss://redis.internal:6380/2",
                "password_env": "MAILGATE_REDIS_PASSWORD",
                "ca_file": "/etc/mailgate/redis-ca.pem",
                "on_unavailable": "defer",
                "instance": "mg-1",
            }
        ),
        SOURCE,
    ).cluster
    assert cluster == ClusterConfig(
        redis_url="rediss://redis.internal:6380/2",
        password_env="MAILGATE_REDIS_PASSWORD",
        ca_file="/etc/mailgate/redis-ca.pem",
        on_unavailable="defer",
        instance="mg-1",
    )


def test_defaults():
    """on_unavailable defaults to local, the timeout to 0.25 s, the instance to the hostname."""
    cluster = parse(document({"redis_url": "redis://127.0.0.1:6379/0"}), SOURCE).cluster
    assert cluster is not None
    assert (cluster.on_unavailable, cluster.timeout, cluster.instance) == ("local", 0.25, None)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "unix:///run/redis.sock", "127.0.0.1:6379", "redis+tls://h"]
)
def test_url_that_is_not_redis_or_rediss_is_refused(url):
    """Only redis:// and rediss:// are accepted, and the problem names cluster.redis_url."""
    [problem] = problems({"redis_url": url})
    assert problem.startswith(f"{SOURCE}: cluster.redis_url:") and "rediss://" in problem


def test_password_in_the_url_is_refused_and_not_shown():
    """redis://:PASSWORD@host is refused pointing at password_env; the password is not echoed."""
    [problem] = problems({"redis_url": "redis://:hunter2-secret@127.0.0.1:6379/0"})
    assert "cluster.redis_url" in problem and "cluster.password_env" in problem
    assert "hunter2-secret" not in problem


def test_missing_url_is_refused():
    """A [cluster] table without redis_url names the key."""
    [problem] = problems({"on_unavailable": "local"})
    assert "cluster.redis_url" in problem


def test_bad_database_and_on_unavailable_and_unknown_key():
    """A database that is not a number, an unknown on_unavailable and a typo: each named."""
    found = problems({"redis_url": "redis://127.0.0.1/db1", "on_unavailable": "wait", "timout": 1})
    assert any("cluster.redis_url" in p and "database" in p for p in found)
    assert any("cluster.on_unavailable" in p and '"local", "defer"' in p for p in found)
    assert any("cluster.timout" in p for p in found)


def test_ca_file_needs_rediss_and_one_password_source():
    """ca_file with redis://, and password_env with password_file, are refused."""
    found = problems(
        {
            "redis_url": "redis://127.0.0.1:6379/0",
            "ca_file": "/etc/ca.pem",
            "password_env": "A",
            "password_file": "/etc/pw",
        }
    )
    assert any("cluster.ca_file" in p and "rediss://" in p for p in found)
    assert any("cluster.password_file" in p for p in found)


def test_changing_cluster_on_reload_is_refused():
    """[cluster] is set up at start: a reload that changes it is refused, naming cluster."""
    running = parse(document({"redis_url": "redis://127.0.0.1:6379/0"}), SOURCE)
    new = parse(document({"redis_url": "redis://127.0.0.1:6380/0"}), SOURCE)
    assert [p.key for p in fixed_changes(running, new)] == ["cluster"]
