"""Reading the ``[cluster]`` table: where the shared Redis is and what to do without it. Pure.

The URL is ``redis://`` or ``rediss://`` (TLS, the server's name verified) with a host, an
optional port and an optional database number; a password in it is refused (it would show in
every place the URL is printed): name a variable (``password_env``) or a file (``password_file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.config.model import ON_UNAVAILABLE, ClusterConfig
from gateway.config.reader import Reader

KNOWN = {
    "redis_url",
    "password_env",
    "password_file",
    "ca_file",
    "on_unavailable",
    "instance",
    "timeout",
}
URL_EXPECTED = 'a Redis URL such as "redis://127.0.0.1:6379/0" or "rediss://HOST:PORT/DB"'


def url_problem(url: str) -> tuple[str, str] | None:
    """What is wrong with `url` (shown instead of it, expected), or None when it is usable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "a URL that cannot be parsed", URL_EXPECTED
    if parts.scheme not in ("redis", "rediss"):
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"a URL with {scheme}", "redis:// or rediss:// (TLS): " + URL_EXPECTED
    if parts.password is not None:
        return (
            "a URL with a password in it",
            "the URL without its password, and the password in cluster.password_env"
            " or cluster.password_file",
        )
    if not parts.hostname:
        return "a URL without a host", URL_EXPECTED
    database = parts.path.lstrip("/")
    if database and not (database.isdigit() and int(database) < 16384):
        return f"a URL with database {database!r}", "a database number such as /0"
    if parts.query or parts.fragment or (port is not None and port == 0):
        return "a URL with a query, fragment or port 0", URL_EXPECTED
    return None


def read_cluster(reader: Reader, document: Mapping[str, Any]) -> ClusterConfig | None:
    """The ``[cluster]`` table, or None when there is none (every limit is this instance's)."""
    if "cluster" not in document:
        return None
    table = document["cluster"]
    if not isinstance(table, dict):
        reader.problem("cluster", table, "a table")
        return None
    reader.unknown_keys(table, "cluster", KNOWN)
    url = table.get("redis_url")
    if not isinstance(url, str) or not url:
        found = "nothing" if url is None else url
        reader.problem("cluster.redis_url", found, URL_EXPECTED, raw=url is None)
        url = ""
    else:
        wrong = url_problem(url)
        if wrong is not None:
            reader.problem("cluster.redis_url", wrong[0], wrong[1], raw=True)
    password_env = reader.string(table, "cluster.password_env", None)
    password_file = reader.string(table, "cluster.password_file", None)
    if password_env and password_file:
        reader.problem(
            "cluster.password_file", password_file, "only one of password_env and password_file"
        )
    ca_file = reader.string(table, "cluster.ca_file", None)
    if ca_file and url.startswith("redis://"):
        reader.problem(
            "cluster.ca_file", ca_file, "a rediss:// redis_url (a CA file is for TLS only)"
        )
    return ClusterConfig(
        redis_url=url,
        password_env=password_env,
        password_file=password_file,
        ca_file=ca_file,
        on_unavailable=reader.string(
            table, "cluster.on_unavailable", "local", choices=ON_UNAVAILABLE
        )
        or "local",
        instance=reader.string(table, "cluster.instance", None),
        timeout=reader.number(table, "cluster.timeout", 0.25, 0.01, 10),
    )
