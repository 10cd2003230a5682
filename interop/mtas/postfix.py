"""Postfix 3.7 as a submission server: its own instance (``postfix -c DIR``), never the system's.

Its own config, queue and data folders; Dovecot SASL through the interop Dovecot's auth socket;
``smtpd_tls_security_level = encrypt`` and AUTH only after TLS; ``reject_sender_login_mismatch``;
a 465 wrapper-mode service; delivery into one maildir (virtual(8)); every other transport is an
error, so nothing leaves loopback. One smtpd service per role, each with its own syslog_name so
the log tells them apart:

- starttls / implicit: 587-style STARTTLS and 465 wrapper mode;
- plain: no STARTTLS offered (mailgate must refuse it);
- login_only: ``smtpd_sasl_mechanism_filter = login``;
- limited: ``smtpd_client_connection_rate_limit = 1`` (a 421 greeting from the second connection
  a minute on);
- tls12: TLS 1.2 at most;
- relay: what Dovecot's submission service relays to (trusted by address, no AUTH).
"""

from __future__ import annotations

import os
import re
import shutil

from .common import (
    BOUNCE_SENDER,
    DOMAIN,
    OTHER_SENDER,
    REFUSED,
    SENDER,
    USER,
    Closing,
    Server,
    ServerFailure,
    free_port,
    run,
    wait_until,
    write,
)

ROLES = ("starttls", "implicit", "plain", "login_only", "limited", "relay", "tls12")
VMAIL = "nobody"  # the maildir's owner (virtual(8) delivers with a static uid)


class Postfix(Server):
    sasl_path: str = ""

    def __post_init__(self) -> None:
        self.name = "Postfix"
        self.etc = os.path.join(self.root, "etc")
        self.refusal_code, self.refusal = (
            554,
            "Recipient address rejected: interop: this mailbox is refused by Postfix",
        )
        self.login_logged = "sasl_method=LOGIN"
        self.cannot = {
            "per_connection_limit": "Postfix has no per-connection message limit "
            "(smtpd_client_message_rate_limit counts per client over time, so a fresh "
            "connection is refused too)",
            "enhanced_null": "Postfix sends an enhanced code with every reply (535 5.7.8)",
        }

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "maillog")

    @property
    def maildir(self) -> str:
        return os.path.join(self.root, "mail", "inbox")

    def service(self, role: str) -> str:
        return f"postfix-interop/{role}"

    def main_cf(self) -> str:
        r = self.root
        return f"""\
# Written by interop/mtas/postfix.py: a submission server on loopback, delivering to a maildir.
compatibility_level = 3.6
config_directory = {self.etc}
queue_directory = {r}/queue
data_directory = {r}/data
multi_instance_name = postfix-interop
syslog_name = postfix-interop
maillog_file = {self.log_path}
maillog_file_prefixes = {r}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.interop.test
mydomain = interop.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_transport = error:5.7.1 interop: no local delivery
default_transport = error:5.7.1 interop: mail never leaves loopback
relay_transport = error:5.7.1 interop: mail never leaves loopback
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {r}/mail
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
message_size_limit = 20480000
smtpd_tls_cert_file = {self.cert_file}
smtpd_tls_key_file = {self.key_file}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.sasl_path}
smtpd_sasl_auth_enable = no
smtpd_sender_login_maps = texthash:{self.etc}/senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access texthash:{self.etc}/recipients,
    permit_sasl_authenticated, reject
"""

    def master_cf(self) -> str:
        with open("/etc/postfix/master.cf") as handle:
            packaged = handle.read()
        text, count = re.subn(r"(?m)^smtp\s+inet\s.*\n", "", packaged)
        if count != 1:
            raise ServerFailure("/etc/postfix/master.cf: expected one 'smtp inet' line to replace")
        sub = "-o smtpd_sasl_auth_enable=yes"
        options = {
            "starttls": f"-o smtpd_tls_security_level=encrypt {sub}",
            "implicit": f"-o smtpd_tls_wrappermode=yes {sub}",
            "plain": f"-o smtpd_tls_security_level=none {sub}",
            "login_only": f"-o smtpd_tls_security_level=encrypt {sub} "
            "-o smtpd_sasl_mechanism_filter=login",
            "limited": f"-o smtpd_tls_security_level=encrypt {sub} "
            "-o smtpd_client_connection_rate_limit=1 -o smtpd_client_event_limit_exceptions=",
            "tls12": f"-o smtpd_tls_security_level=encrypt {sub} "
            "-o smtpd_tls_mandatory_protocols=<=TLSv1.2 -o smtpd_tls_protocols=<=TLSv1.2",
            "relay": "-o smtpd_sender_restrictions= "
            "-o smtpd_relay_restrictions=permit_mynetworks,reject "
            f"-o {{ smtpd_recipient_restrictions = check_recipient_access "
            f"texthash:{self.etc}/recipients, permit_mynetworks, reject }}",
        }
        lines = [
            f"127.0.0.1:{self.ports[role]} inet n - n - - smtpd "
            f"-o syslog_name={self.service(role)} {options[role]}"
            for role in ROLES
        ]
        return text + "\n".join(lines) + "\n"

    def configure(self) -> None:
        self.ports = {role: free_port() for role in ROLES}
        for name in ("queue", "data", "mail"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        shutil.chown(os.path.join(self.root, "data"), "postfix")
        shutil.chown(os.path.join(self.root, "mail"), VMAIL, "nogroup")
        write(os.path.join(self.etc, "main.cf"), self.main_cf())
        write(os.path.join(self.etc, "master.cf"), self.master_cf())
        write(os.path.join(self.etc, "vmailbox"), f"@{DOMAIN} inbox/\n")
        write(
            os.path.join(self.etc, "senders"),
            f"{SENDER} {USER}\n{BOUNCE_SENDER} {USER}\n{OTHER_SENDER} nobody\n",
        )
        write(
            os.path.join(self.etc, "recipients"),
            f"{REFUSED} REJECT 5.1.1 interop: this mailbox is refused by Postfix\n",
        )
        done = run("postconf", "-c", self.etc, "-F", "*/*/chroot = n")
        if done.returncode:
            raise ServerFailure(f"postconf -F failed: {done.stderr.strip()}")

    def ready_ports(self) -> dict[str, int]:
        return {r: p for r, p in self.ports.items() if r != "limited"}  # 421 once probed

    def launch(self) -> None:
        done = run("postfix", "-c", self.etc, "start")
        if done.returncode:
            check = run("postfix", "-c", self.etc, "check")
            raise ServerFailure(
                f"postfix -c {self.etc} start: {done.stderr.strip()} {check.stderr.strip()}; "
                f"see {self.log_path}"
            )

    def halt(self) -> None:
        pid_file = os.path.join(self.root, "queue", "pid", "master.pid")
        run("postfix", "-c", self.etc, "stop")

        def gone() -> bool:
            try:
                with open(pid_file) as handle:
                    os.kill(int(handle.read().strip()), 0)
            except (OSError, ValueError):
                return True
            return False

        try:
            wait_until(gone, 20, "postfix master to exit")
        except ServerFailure:
            run("postfix", "-c", self.etc, "abort")

    def version(self) -> str:
        return "Postfix " + run("postconf", "-d", "-h", "mail_version").stdout.strip()

    def role_of(self, port: int) -> str:
        return next(role for role, p in self.ports.items() if p == port)

    def _lines(self, text: str, port: int, needle: str) -> list[str]:
        tag = f"{self.service(self.role_of(port))}/smtpd["
        return [line for line in text.splitlines() if tag in line and needle in line]

    def connections(self, text: str, port: int) -> int:
        return len(self._lines(text, port, ": connect from "))

    def closing_pattern(self) -> str:
        return r": disconnect from "

    def closings(self, text: str, port: int) -> list[Closing]:
        """`disconnect from … quit=1` is a QUIT; `lost connection after …` comes before a
        disconnect without one."""
        ends = self._lines(text, port, ": disconnect from ")
        return [Closing(quit=" quit=1" in line, line=line) for line in ends]

    def lost(self, text: str, port: int) -> list[str]:
        return self._lines(text, port, "lost connection")
