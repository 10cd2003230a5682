"""OpenSMTPD 7.6 (Debian trixie), unpacked with its own libraries by setup.sh, run chrooted.

Each run copies the unpacked tree into its scratch folder (smtpd's queue and socket paths are
compiled in, so the copy is what keeps two runs apart) and runs ``chroot ROOT smtpd -d -f
/etc/smtpd.conf``: ``tls-require pki … auth <creds>`` on a STARTTLS port, ``smtps`` on a 465-style
one, a ``plain`` port without TLS (no STARTTLS offered), a ``tls12`` one (``protocols "tlsv1.2"``), delivery into one maildir as ``vmail``.
It allows 100 messages per session (``smtp limit max-mails``, left at its default) and answers
``535 Authentication failed`` without an enhanced code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from .common import CACHE, DOMAIN, PASSWORD, REFUSED, USER, Closing, Server, free_port, run, write

UNPACKED = os.path.join(CACHE, "opensmtpd")
ROLES = ("starttls", "implicit", "plain", "tls12")
VMAIL_UID = 2525


class OpenSMTPD(Server):
    def __post_init__(self) -> None:
        self.name = "OpenSMTPD"
        self.chroot = os.path.join(self.root, "root")
        self.refusal_code, self.refusal = 550, "Invalid recipient: <refused@example.net>"
        self.auth_refusal = "Authentication failed"
        self.login_logged = "x"
        self.cannot = {
            "sender_login": "this OpenSMTPD set-up does not check sender ownership (reject_sender_login_mismatch is Postfix's)",
            "login_only": "OpenSMTPD always offers AUTH PLAIN LOGIN",
            "limited": "OpenSMTPD has no connection-rate limit that answers 421 at the greeting",
        }

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "smtpd.log")

    @property
    def maildir(self) -> str:
        return os.path.join(self.chroot, "var", "vmail")

    def conf(self) -> str:
        p = self.ports
        return f"""\
# Written by interop/mtas/opensmtpd.py
pki interop cert "/etc/pki/server.crt"
pki interop key "/etc/pki/server.key"
table creds file:/etc/creds
table vusers file:/etc/vusers
listen on 127.0.0.1 port {p["starttls"]} tls-require pki interop auth <creds> \\
    hostname opensmtpd.interop.test
listen on 127.0.0.1 port {p["implicit"]} smtps pki interop auth <creds> \\
    hostname opensmtpd.interop.test
listen on 127.0.0.1 port {p["plain"]} hostname opensmtpd.interop.test
listen on 127.0.0.1 port {p["tls12"]} tls-require pki interop auth <creds> \\
    protocols "tlsv1.2" hostname opensmtpd.interop.test
action "inbox" maildir "/var/vmail" virtual <vusers>
match auth from any for rcpt-to "{REFUSED}" reject
match auth from any for domain "{DOMAIN}" action "inbox"
"""

    def configure(self) -> None:
        self.ports = {role: free_port() for role in ROLES}
        if os.path.exists(self.chroot):
            shutil.rmtree(self.chroot)
        shutil.copytree(UNPACKED, self.chroot, symlinks=True)
        etc = os.path.join(self.chroot, "etc")
        write(
            os.path.join(etc, "passwd"),
            "root:x:0:0:root:/root:/bin/sh\n"
            "opensmtpd:x:101:101::/var/lib/opensmtpd/empty:/bin/false\n"
            "opensmtpq:x:102:102::/var/lib/opensmtpd/empty:/bin/false\n"
            f"vmail:x:{VMAIL_UID}:{VMAIL_UID}::/var/vmail:/bin/false\n",
        )
        write(
            os.path.join(etc, "group"),
            f"root:x:0:\nopensmtpd:x:101:\nopensmtpq:x:102:\nvmail:x:{VMAIL_UID}:\n",
        )
        write(os.path.join(etc, "hosts"), "127.0.0.1 localhost opensmtpd.interop.test\n")
        write(os.path.join(etc, "mailname"), "opensmtpd.interop.test\n")
        write(os.path.join(etc, "aliases"), "")
        os.makedirs(os.path.join(etc, "pki"), exist_ok=True)
        shutil.copy(self.cert_file, os.path.join(etc, "pki", "server.crt"))
        key = shutil.copy(self.key_file, os.path.join(etc, "pki", "server.key"))
        os.chmod(key, 0o600)
        hashed = run("chroot", self.chroot, "/usr/libexec/opensmtpd/encrypt", PASSWORD).stdout
        write(os.path.join(etc, "creds"), f"{USER} {hashed.strip()}\n", 0o600)
        write(os.path.join(etc, "vusers"), f"@{DOMAIN} vmail\n")
        write(os.path.join(etc, "smtpd.conf"), self.conf())
        for folder in ("", "new", "cur", "tmp"):
            path = os.path.join(self.maildir, folder)
            os.makedirs(path, exist_ok=True)
            os.chown(path, VMAIL_UID, VMAIL_UID)
        tmp = os.path.join(self.chroot, "tmp")
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o1777)
        spool = os.path.join(self.chroot, "var", "spool", "smtpd")
        os.makedirs(spool, exist_ok=True)
        os.chmod(spool, 0o711)
        os.makedirs(os.path.join(self.chroot, "var", "run"), exist_ok=True)
        os.makedirs(os.path.join(etc, "ssl", "certs"), exist_ok=True)
        shutil.copy(self.ca_file, os.path.join(etc, "ssl", "certs", "ca-certificates.crt"))
        dev = os.path.join(self.chroot, "dev")
        os.makedirs(dev, exist_ok=True)
        if not os.path.exists(os.path.join(dev, "null")):
            os.mknod(os.path.join(dev, "null"), 0o666 | 0o020000, os.makedev(1, 3))
            os.chmod(os.path.join(dev, "null"), 0o666)

    def launch(self) -> None:
        self.process = subprocess.Popen(
            ["chroot", self.chroot, "/usr/sbin/smtpd", "-d", "-f", "/etc/smtpd.conf"],
            stdin=subprocess.DEVNULL,
            stdout=open(self.log_path, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def version(self) -> str:
        out = run("chroot", self.chroot, "/usr/sbin/smtpd", "-h").stdout
        out += run("chroot", self.chroot, "/usr/sbin/smtpd", "-h").stderr
        found = re.search(r"version: OpenSMTPD (\S+)", out)
        return f"OpenSMTPD {found.group(1) if found else '?'}"

    def _sessions(self, text: str, port: int) -> list[str]:
        """Session ids of connections on `port` (smtpd logs `smtp event=connected` with the
        listener's address only in verbose mode, so every session in the text counts)."""
        return re.findall(r"(\S+) smtp connected address=", text)

    def connections(self, text: str, port: int) -> int:
        return len(self._sessions(text, port))

    def closing_pattern(self) -> str:
        return r"smtp disconnected"

    def closings(self, text: str, port: int) -> list[Closing]:
        """`smtp disconnected … reason=quit` versus `reason=disconnect` or `io-error`."""
        ends = [line for line in text.splitlines() if "smtp disconnected" in line]
        return [Closing(quit="reason=quit" in line, line=line) for line in ends]
