"""A throwaway Postfix null client: smtpd on a free loopback port, relayhost = the sink.

Its own config_directory, queue_directory and data_directory under the bench's
temporary folder; ``inet_interfaces = loopback-only``; no local delivery; the
default queue; ``smtp_tls_security_level = secure`` against the bench CA, and
SASL AUTH with a password map. Started with ``postfix -c DIR start``, stopped
with ``postfix -c DIR stop`` (then ``abort`` and SIGKILL of its master if it
lingers). It never touches /etc/postfix or port 25.

With `tls_connection_reuse`, ``smtp_tls_connection_reuse = yes`` (Postfix >= 3.4,
through tlsproxy(8)) lets it deliver several messages per TLS connection: a tuned
Postfix, shown beside the default one for information.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import procfs
from errors import BenchError

SINK_NAME = "sink.bench.test"  # the name on the sink's certificate that Postfix must match


def free_port() -> int:
    """A port the kernel just gave out on 127.0.0.1 (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main_cf(root: str, sink_port: int, ca_file: str, *, tls_connection_reuse: bool = False) -> str:
    reuse = "smtp_tls_connection_reuse = yes\n" if tls_connection_reuse else ""
    return f"""\
# Written by bench/postfix.py: a null client relaying everything to the bench sink.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = {SINK_NAME}
smtp_tls_CAfile = {ca_file}
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{root}/etc/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
{reuse}"""


def master_cf(listen_port: int, *, tls_connection_reuse: bool = False) -> str:
    """The packaged master.cf with its port-25 smtpd line replaced by our loopback port
    (and its tlsproxy service enabled when TLS connections are to be reused)."""
    with open("/etc/postfix/master.cf") as handle:
        text = handle.read()
    if tls_connection_reuse:
        text = re.sub(r"(?m)^#(tlsproxy\s+unix\s)", r"\1", text)
    replaced, count = re.subn(
        r"(?m)^smtp\s+inet\s.*$", f"127.0.0.1:{listen_port} inet n - n - - smtpd", text
    )
    if count != 1:
        raise BenchError("/etc/postfix/master.cf: expected one 'smtp inet' line to replace")
    return replaced


class PostfixInstance:
    def __init__(
        self,
        root: str,
        sink_port: int,
        ca_file: str,
        user: str,
        password: str,
        *,
        tls_connection_reuse: bool = False,
    ) -> None:
        self.root = root
        self.etc = os.path.join(root, "etc")
        self.port = free_port()
        os.makedirs(self.etc)
        for name in ("queue", "data"):
            os.makedirs(os.path.join(root, name))
        shutil.chown(os.path.join(root, "data"), "postfix")
        with open(os.path.join(self.etc, "main.cf"), "w") as handle:
            handle.write(
                main_cf(root, sink_port, ca_file, tls_connection_reuse=tls_connection_reuse)
            )
        with open(os.path.join(self.etc, "master.cf"), "w") as handle:
            handle.write(master_cf(self.port, tls_connection_reuse=tls_connection_reuse))
        secrets = os.path.join(self.etc, "sasl_passwd")
        with open(os.open(secrets, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(f"[127.0.0.1]:{sink_port} {user}:{password}\n")
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", self.etc, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 30) -> int:
        done = self._postfix("start")
        if done.returncode != 0:
            raise BenchError(
                f"postfix -c {self.etc} start failed: {self._diagnose() or done.stderr.strip()}"
                f"; see {self.root}/maillog"
            )
        self.started = True
        deadline = time.monotonic() + timeout
        while True:  # master binds asynchronously: poll the port, bounded
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    if sock.recv(512).startswith(b"220"):
                        return self.port
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"postfix did not answer on 127.0.0.1:{self.port} within {timeout:g} s; "
                    f"see {self.root}/maillog"
                )
            time.sleep(0.05)

    def _diagnose(self) -> str:
        """Postfix prints a fatal error only to syslog or a terminal: re-run the check on a pty."""
        if not shutil.which("script"):
            return ""
        done = subprocess.run(
            ["script", "-qc", f"postfix -c {self.etc} check", "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout.strip()

    def master_pid(self) -> int | None:
        try:
            with open(os.path.join(self.root, "queue", "pid", "master.pid")) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def cpu_seconds(self) -> float:
        pid = self.master_pid()
        return procfs.tree_cpu_seconds(pid) if pid else 0.0

    def stop(self, timeout: float = 20) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self._postfix("stop")
        deadline = time.monotonic() + timeout
        while pid and procfs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and procfs.alive(pid):
            self._postfix("abort")
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.started = False
