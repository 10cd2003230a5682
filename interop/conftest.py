"""The interop suite's fixtures: the four real servers (session-scoped, started in parallel), a
gateway in this process (the fixtures of tests/conftest.py: a reactor thread, `start_gateway`),
and the results file `make interop` turns into the README's "Tested against" table.

Every test that takes `server` runs once per server (ids `[Postfix]`, `[Dovecot]`, `[Exim]`,
`[OpenSMTPD]`); `expressible(server, CHECK)` skips, with the server's own reason, a check the
server cannot express.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository: gateway.testing, tests.conftest

from mtas import Server, start_all, stop_all  # noqa: E402
from mtas.common import PASSWORD, USER  # noqa: E402

from gateway.testing.pki import ThrowawayCA  # noqa: E402
from tests.conftest import reactor, start_gateway  # noqa: E402, F401  (fixtures)

NAMES = ("Postfix", "Dovecot", "Exim", "OpenSMTPD")
RESULTS = os.environ.get("MAILGATE_INTEROP_RESULTS", os.path.join(HERE, "results.json"))
PASSWORD_ENV = "MAILGATE_TEST_PASSWORD"  # what tests/conftest.py's start_gateway sets
_versions: dict[str, str] = {}
_outcomes: list[dict[str, str]] = []
_docs: dict[str, str] = {}


@pytest.fixture(scope="session")
def interop_root() -> Iterator[str]:
    """A scratch folder every server user can traverse (pytest's own tmp is root-only)."""
    root = tempfile.mkdtemp(prefix="mailgate-interop-")
    os.chmod(root, 0o755)
    yield root
    if not os.environ.get("MAILGATE_INTEROP_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(interop_root: str) -> dict[str, str]:
    """A throwaway CA; the servers' certificate names localhost only (so 127.0.0.1 is a wrong
    name), and a second certificate for another name."""
    folder = os.path.join(interop_root, "pki")
    os.makedirs(folder)
    ca = ThrowawayCA(folder)
    cert = ca.issue("server", "localhost")
    return {"ca_file": ca.ca_file, "cert_file": cert.cert_file, "key_file": cert.key_file}


@pytest.fixture(scope="session")
def servers(interop_root: str, pki: dict[str, str]) -> Iterator[dict[str, Server]]:
    running = start_all(interop_root, pki["ca_file"], pki["cert_file"], pki["key_file"])
    try:
        for name, server in running.items():
            _versions[name] = server.version()
        yield running
    finally:
        stop_all(running)


@pytest.fixture(params=NAMES)
def server(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Server:
    return servers[request.param]


def expressible(server: Server, check: str) -> None:
    """Skip (with the server's reason) a check this server cannot express."""
    if check in server.cannot:
        pytest.skip(f"{server.name}: {server.cannot[check]}")


def upstream(
    server: Server, ca_file: str, role: str = "starttls", **overrides: Any
) -> dict[str, Any]:
    """An [upstreams.NAME] table for the server's port of `role`."""
    table: dict[str, Any] = {
        "host": "localhost" if role not in server.addresses else server.addresses[role],
        "port": server.ports[role],
        "tls": "implicit" if role == "implicit" else "starttls",
        "username": USER,
        "password_env": PASSWORD_ENV,
        "ca_file": ca_file,
        "connect_timeout": 5,
        "command_timeout": 15,
        "data_timeout": 30,
    }
    table.update(overrides)
    return table


def relay_document(*tables: dict[str, Any], **listener: Any) -> dict[str, Any]:
    """A config document: loopback listener, every recipient relayed to the tables in order."""
    names = [f"up{n}" for n in range(len(tables))]
    return {
        "listener": {
            "listen": "127.0.0.1:0",
            "hostname": "mailgate.interop.test",
            "shutdown_grace": 5,
            **listener,
        },
        "upstreams": dict(zip(names, tables, strict=True)),
        "rules": [
            {"name": "all", "action": "relay", "upstream": names if len(names) > 1 else names[0]}
        ],
    }


assert PASSWORD == "s3cret-Pa55word-never-logged", "the servers know tests/conftest.py's PASSWORD"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        name, _, param = report.nodeid.rpartition("::")[2].partition("[")
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _outcomes.append(
            {
                "test": name,
                "server": param.rstrip("]"),
                "outcome": report.outcome,
                "reason": reason,
                "doc": "",
            }
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    docs = {}
    for item in items:
        function = getattr(item, "function", None)
        docs[item.name.partition("[")[0]] = (function.__doc__ or "").strip().splitlines()[0:1]
    _docs.update({name: lines[0] if lines else "" for name, lines in docs.items()})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for outcome in _outcomes:
        outcome["doc"] = _docs.get(outcome["test"], "")
    with open(RESULTS, "w") as handle:
        json.dump({"versions": _versions, "results": _outcomes}, handle, indent=1)
        handle.write("\n")
