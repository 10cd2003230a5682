"""mailgate as the bench runs it: ``mailgate run --config`` in a child process.

The port is read from the daemon's own "listening on" line (the listener binds
port 0); memory and CPU come from /proc; SIGTERM stops it (SIGKILL if it has
not exited in time).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections import deque
from typing import Self

import procfs
from errors import BenchError


def relay_config(
    tmp: str,
    sink_port: int,
    ca_file: str,
    user: str,
    *,
    delivery: str | None = None,
    queue_path: str | None = None,
    max_connections: int | None = None,
    extra: str = "",
    port: int = 0,
    reuse_port: bool = False,
    audit_name: str = "audit.jsonl",
) -> str:
    """A bench config: loopback listener on port 0, every recipient to the sink's STARTTLS port.

    `max_connections` raises the listener's session limits (total and per client: every
    bench session comes from 127.0.0.1) for builds that have them. `port` with `reuse_port`
    puts several instances on one port (SO_REUSEPORT), each with its own `audit_name`."""
    limits = (
        f"max_connections = {max_connections}\nmax_connections_per_client = {max_connections}\n"
        if max_connections
        else ""
    )
    rule_delivery = f'delivery = "{delivery}"\n' if delivery else ""
    if queue_path:
        rule_delivery += f'\n[queue]\npath = "{queue_path}"\n'
    return f"""\
# Written by bench/run.py for one run; see docs/performance.md.
[listener]
listen = "127.0.0.1:{port}"
{"reuse_port = true" if reuse_port else ""}
allowed_clients = ["127.0.0.0/8"]
hostname = "mailgate.bench.test"
max_message_size = 209715200   # 200 MiB: the 100 MiB message must fit
max_recipients = 100
idle_timeout = 600
shutdown_grace = 5
{limits}
[audit]
path = "{tmp}/{audit_name}"

[upstreams.sink]
host = "127.0.0.1"
port = {sink_port}
tls = "starttls"
username = "{user}"
password_env = "MAILGATE_BENCH_PASSWORD"
ca_file = "{ca_file}"
connect_timeout = 10
command_timeout = 60
data_timeout = 120

[[rules]]
name = "all"
action = "relay"
upstream = "sink"
{rule_delivery}{extra}"""


class MailgateProcess:
    def __init__(
        self, binary: str, config_path: str, password: str, cwd: str | None = None
    ) -> None:
        self.binary = binary
        self.cwd = cwd  # relative defaults (a spool path, say) land here, not in the checkout
        self.config_path = config_path
        self.env = dict(os.environ, MAILGATE_BENCH_PASSWORD=password)
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check(self) -> tuple[bool, str]:
        """``mailgate check`` on the config: (accepted, what it said)."""
        done = subprocess.run(
            [self.binary, "check", "--config", self.config_path],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0, (done.stdout + done.stderr).strip()

    def start(self, timeout: float = 30) -> int:
        self.process = subprocess.Popen(
            procfs.tied_to_parent([self.binary, "run", "--config", self.config_path]),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True, name="mailgate-stderr").start()
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise BenchError(
                    f"mailgate did not report listening within {timeout:g} s"
                ) from None
            if line is None:
                code = self.process.wait()
                raise BenchError(
                    f"mailgate exited with {code} before listening: " + " | ".join(self.stderr_tail)
                )
            if "listening on" in line:
                self.port = int(line.rstrip().rpartition(":")[2])
                return self.port

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip())
            self._lines.put(line)
        self._lines.put(None)

    def memory_kib(self) -> dict[str, int]:
        return procfs.memory_kib(self.pid)

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def stop(self, timeout: float = 15) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
