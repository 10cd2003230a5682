"""Dovecot 2.3: the SASL service Postfix authenticates against, and its own submission service.

One instance (``dovecot -F -c FILE``) in its own folder: a passwd-file passdb, AUTH only after TLS
(``disable_plaintext_auth``), submission on a STARTTLS port and a 465-style ``ssl = yes`` port
(and, on 127.0.0.2, where a ``local`` block says ``ssl = no``, a port without STARTTLS),
relaying to the interop Postfix's ``relay`` service, whose maildir is where its mail arrives.
"""

from __future__ import annotations

import os
import subprocess

from .common import PASSWORD, USER, Closing, Server, free_port, run, write


class Dovecot(Server):
    relay_port: int = 0
    relay_maildir: str = ""
    relay_log: str = ""

    def __post_init__(self) -> None:
        self.name = "Dovecot"
        self.refusal_code, self.refusal = (
            554,
            "Recipient address rejected: interop: this mailbox is refused by Postfix",
        )
        self.login_logged = "method=LOGIN"
        self.cannot = {
            "sender_login": "Dovecot submission relays to Postfix's trusted relay service, which checks no sender login",
            "login_only": "auth_mechanisms is one setting for the whole instance, "
            "which Postfix's SASL shares",
            "per_connection_limit": "Dovecot submission has no per-connection message limit",
            "enhanced_null": "Dovecot sends an enhanced code with every reply (535 5.7.8)",
            "tls12": "ssl_min_protocol is one setting for the whole instance (2.3 has no maximum)",
            "limited": "Dovecot has no connection-rate limit that answers 421 at the greeting",
        }

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "dovecot.log")

    @property
    def maildir(self) -> str:
        return self.relay_maildir

    @property
    def auth_socket(self) -> str:
        return os.path.join(self.root, "run", "auth-postfix")

    def conf(self) -> str:
        r = self.root
        return f"""\
# Written by interop/mtas/dovecot.py
base_dir = {r}/run
state_dir = {r}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = submission
listen = 127.0.0.1
hostname = dovecot.interop.test
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
mail_location = maildir:~/Maildir
auth_mechanisms = plain login
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={r}/home
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {self.relay_port}
submission_relay_trusted = yes
submission_relay_ssl = no
submission_max_mail_size = 20M
service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {self.ports["starttls"]}
  }}
  inet_listener plain {{
    address = 127.0.0.2
    port = {self.ports["plain"]}
  }}
  inet_listener submissions {{
    address = 127.0.0.1
    port = {self.ports["implicit"]}
    ssl = yes
  }}
}}
local 127.0.0.2 {{
  ssl = no
}}
# No growing auth penalty per IP (everything comes from 127.0.0.1): a wrong password is answered
# after auth_failure_delay (2 s), not up to 15 s, which could outlast mailgate's command_timeout.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
"""

    def configure(self) -> None:
        self.ports = {role: free_port() for role in ("starttls", "implicit", "plain")}
        self.addresses = {"plain": "127.0.0.2"}  # `local 127.0.0.2 { ssl = no }`: no STARTTLS
        for name in ("run", "state", "home"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        os.chmod(os.path.join(self.root, "run"), 0o755)
        write(os.path.join(self.root, "passwd"), f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", 0o644)
        write(os.path.join(self.root, "dovecot.conf"), self.conf())

    def launch(self) -> None:
        self.process = subprocess.Popen(
            ["dovecot", "-F", "-c", os.path.join(self.root, "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.root, "stdout"), "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def version(self) -> str:
        return "Dovecot " + run("dovecot", "--version").stdout.split()[0]

    def _lines(self, text: str, needle: str) -> list[str]:
        return [line for line in text.splitlines() if needle in line]

    def connections(self, text: str, port: int) -> int:
        """Logins (submission-login `Login: user=` lines; Dovecot logs no port, so the suite reads
        the log of one test at a time)."""
        return len(
            [line for line in self._lines(text, "submission-login: ") if "Login: user=" in line]
        )

    def closing_pattern(self) -> str:
        return r"Disconnected"

    def closings(self, text: str, port: int) -> list[Closing]:
        """After login: `Disconnected: Logged out` (QUIT) or `Disconnected: Connection closed`
        (reset or close); before it, submission-login's `Disconnected: Aborted login by logging
        out` (QUIT) or `Disconnected (…)` / `Connection closed` (no QUIT)."""
        ends = self._lines(text, "Disconnected")
        return [
            Closing(quit="Logged out" in line or "logging out" in line, line=line) for line in ends
        ]
