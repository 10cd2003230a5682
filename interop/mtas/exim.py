"""Exim 4.96, unpacked from Debian's .debs by setup.sh (the package conflicts with Postfix).

``exim4 -C FILE -bdf`` as root in its own folder (spool, logs, maildir). STARTTLS on one port,
``tls_on_connect_ports`` for 465; PLAIN and LOGIN authenticators advertised only once TLS is up;
``smtp_accept_max_per_connection`` is 5 on the ``per_connection`` port; on the ``limited`` port
``smtp_accept_max_per_host`` is 1, so a second connection from 127.0.0.1 gets a 421 greeting; the ``plain`` port does not offer STARTTLS; the
``login_only`` port advertises LOGIN alone; the ``tls12`` port speaks TLS 1.2 at most. Exim (GnuTLS) answers without enhanced codes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from .common import CACHE, DOMAIN, PASSWORD, REFUSED, USER, Closing, Server, free_port, run, write

EXIM = os.path.join(CACHE, "exim", "usr", "sbin", "exim4")
ROLES = ("starttls", "implicit", "plain", "login_only", "per_connection", "limited", "tls12")
PER_CONNECTION = 5


class Exim(Server):
    def __post_init__(self) -> None:
        self.name = "Exim"
        self.refusal_code, self.refusal = 550, "interop: this mailbox is refused by Exim"
        self.auth_refusal = "Incorrect authentication data"
        self.login_logged = "A=login:"
        self.cannot = {
            "sender_login": "this Exim set-up does not check sender ownership (reject_sender_login_mismatch is Postfix's)",
        }

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "log", "mainlog")

    @property
    def maildir(self) -> str:
        return os.path.join(self.root, "mail")

    def conf(self) -> str:
        r, p = self.root, self.ports
        auth_ok = "${if def:tls_in_cipher}"
        plain_ok = (
            f"${{if and{{{{def:tls_in_cipher}}{{!eq{{$received_port}}{{{p['login_only']}}}}}}}}}"
        )
        return f"""\
# Written by interop/mtas/exim.py
primary_hostname = exim.interop.test
exim_path = {EXIM}
spool_directory = {r}/spool
log_file_path = {r}/log/%slog
log_selector = +smtp_connection +incoming_interface +incoming_port +tls_cipher \\
    +smtp_protocol_error +smtp_syntax_error +smtp_no_mail +tls_peerdn
local_interfaces = 127.0.0.1
daemon_smtp_ports = {" : ".join(str(p[role]) for role in ROLES)}
tls_on_connect_ports = {p["implicit"]}
tls_advertise_hosts = ${{if eq{{$received_port}}{{{p["plain"]}}}{{}}{{*}}}}
tls_certificate = {r}/pki/server.crt
tls_privatekey = {r}/pki/server.key
tls_require_ciphers = ${{if eq{{$received_port}}{{{p["tls12"]}}}{{NORMAL:-VERS-TLS1.3}}{{NORMAL}}}}
smtp_accept_max_per_connection = ${{if eq{{$received_port}}{{{p["per_connection"]}}}{{{PER_CONNECTION}}}{{1000}}}}
message_size_limit = 20M
domainlist local_domains = {DOMAIN}
smtp_accept_max_per_host = ${{if eq{{$received_port}}{{{p["limited"]}}}{{1}}{{1000}}}}
acl_smtp_rcpt = acl_rcpt
never_users = root
host_lookup =
rfc1413_hosts =

begin acl

acl_rcpt:
  deny recipients = {REFUSED}
       message = interop: this mailbox is refused by Exim
  accept authenticated = *
         domains = +local_domains
  deny message = interop: relay not permitted

begin routers

inbox:
  driver = accept
  domains = +local_domains
  transport = inbox

begin transports

inbox:
  driver = appendfile
  directory = {r}/mail
  maildir_format
  create_directory
  user = Debian-exim
  group = Debian-exim
  mode = 0640
  delivery_date_add
  envelope_to_add
  return_path_add

begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if and{{{{eq{{$auth2}}{{{USER}}}}}{{eq{{$auth3}}{{{PASSWORD}}}}}}}}}
  server_set_id = $auth2
  server_advertise_condition = {plain_ok}

login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_condition = ${{if and{{{{eq{{$auth1}}{{{USER}}}}}{{eq{{$auth2}}{{{PASSWORD}}}}}}}}}
  server_set_id = $auth1
  server_advertise_condition = {auth_ok}
"""

    def configure(self) -> None:
        self.ports = {role: free_port() for role in ROLES}
        for name in ("spool", "log", "mail", "pki"):
            folder = os.path.join(self.root, name)
            os.makedirs(folder, exist_ok=True)
            shutil.chown(folder, "Debian-exim", "Debian-exim")
        shutil.copy(self.cert_file, os.path.join(self.root, "pki", "server.crt"))
        key = shutil.copy(self.key_file, os.path.join(self.root, "pki", "server.key"))
        os.chmod(key, 0o600)
        shutil.chown(key, "Debian-exim", "Debian-exim")  # GnuTLS reads it after setuid
        write(os.path.join(self.root, "exim.conf"), self.conf())

    def ready_ports(self) -> dict[str, int]:
        return {r: p for r, p in self.ports.items() if r != "limited"}

    def launch(self) -> None:
        self.process = subprocess.Popen(
            [EXIM, "-C", os.path.join(self.root, "exim.conf"), "-bdf", "-q1m"],
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.root, "stdout"), "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def version(self) -> str:
        out = run(EXIM, "-C", os.path.join(self.root, "exim.conf"), "-bV").stdout
        found = re.search(r"Exim version (\S+)", out)
        return f"Exim {found.group(1) if found else '?'}"

    def tls_alert_logged(self, text: str) -> bool:
        """GnuTLS logs the alert OpenSSL's client sends under TLS 1.3 (in the clear, before it
        switched to handshake keys) as `Decryption has failed`, under TLS 1.2 as `Certificate is
        bad`; a reset is `Error in the pull function`, a close without alert `The TLS connection
        was non-properly terminated` (both measured with a plain client)."""
        return bool(
            re.search(r"\(gnutls_handshake\): (Decryption has failed|Certificate is bad)", text)
        )

    def _lines(self, text: str, port: int, needle: str) -> list[str]:
        local = f"I=[127.0.0.1]:{port}"
        return [line for line in text.splitlines() if local in line and needle in line]

    def connections(self, text: str, port: int) -> int:
        return len(self._lines(text, port, "(TCP/IP connection count"))

    def closing_pattern(self) -> str:
        return r"closed by QUIT|unexpected disconnection|lost|closed|dropped|TLS error"

    def closings(self, text: str, port: int) -> list[Closing]:
        """`SMTP connection from … closed by QUIT` versus `unexpected disconnection while
        reading SMTP command` (the client closed without QUIT) and TLS errors."""
        ends = [
            line
            for line in self._lines(text, port, "")
            if re.search(r"closed by QUIT|unexpected disconnection|connection lost", line)
        ]
        return [Closing(quit="closed by QUIT" in line, line=line) for line in ends]
