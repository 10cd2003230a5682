"""A real ``redis-server`` (Debian's package) on a loopback port, for the ``[cluster]`` tests.

Redis cannot be told to pick its own port, so one is chosen by binding port 0 and releasing it.
The server keeps nothing on disk (``--save ""``), so `restart` brings it back empty on the same
port. Start-up is waited for on its log line "Ready to accept connections", never a sleep.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

from gateway.testing.pki import ServerCert


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1; with `tls`, TLS only (``rediss://``); with `password`, AUTH required."""

    def __init__(
        self, folder: str, tls: ServerCert | None = None, password: str | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.tls = tls
        self.password = password  # --requirepass: clients must AUTH with it
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", self.folder, "--protected-mode", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", self.tls.cert_file, "--tls-key-file", self.tls.key_file]
            args += ["--tls-ca-cert-file", self.tls.ca_file, "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        ready = threading.Event()
        log: list[bytes] = []

        def read(stream: object) -> None:
            for line in stream:  # type: ignore[attr-defined]
                log.append(line)
                if b"Ready to accept connections" in line:
                    ready.set()
            ready.set()  # it ended

        threading.Thread(target=read, args=(self.process.stdout,), daemon=True).start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"redis-server did not start: {b''.join(log)[-2000:]!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Stop it and start it again on the same port, holding nothing (an empty Redis)."""
        self.stop()
        self.start()
