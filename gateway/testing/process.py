"""`mailgate` as a real child process, for tests of signals, crashes and what it prints.

Both output streams are read by threads as they come (so the child never blocks on a
full pipe) and can be waited on line by line — an event, never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


class MailgateProcess:
    """``python -m gateway ARGS`` as a child process (e.g. ``"run", "--config", FILE``)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.terminated = False
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.process.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.process.stderr, self.stderr), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[bytes]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                into.append(line)
                self._changed.notify_all()
        with self._changed:
            into.append(b"")  # end of stream
            self._changed.notify_all()

    def wait_for(
        self, lines: list[bytes], needle: bytes, timeout: float = 30, *, after: int = 0
    ) -> bytes:
        """Block until a line containing `needle` arrives on `lines` (from index `after`); return it."""

        def found() -> bytes | None:
            return next((line for line in lines[after:] if needle in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None or b"" in lines, timeout):
                raise TimeoutError(f"no line with {needle!r} within {timeout} s")
            line = found()
        assert line is not None, f"mailgate ended without {needle!r}: {b''.join(self.stderr)!r}"
        return line

    @property
    def port(self) -> int:
        """The listening port, once `mailgate run` says it is listening."""
        line = self.wait_for(self.stderr, b"mailgate: listening on ")
        return int(line.strip().rsplit(b":", 1)[1])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def terminate(self) -> None:
        """One SIGTERM: a second may land after the reactor restored the default handler."""
        if not self.terminated and self.process.poll() is None:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> tuple[int, bytes, bytes]:
        """SIGTERM (once), wait for the exit and both streams; return (status, stdout, stderr)."""
        self.terminate()
        code = self.process.wait(30)
        for reader in self._readers:
            reader.join(30)
        return code, b"".join(self.stdout), b"".join(self.stderr)

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MAILGATE_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(extra)
    return env
