"""The real servers of `make interop`, each in a scratch folder of its own under one root."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .common import Server, ServerFailure
from .dovecot import Dovecot
from .exim import Exim
from .opensmtpd import OpenSMTPD
from .postfix import Postfix

__all__ = ["Server", "ServerFailure", "start_all", "stop_all"]


def start_all(root: str, ca_file: str, cert_file: str, key_file: str) -> dict[str, Server]:
    """Configure and start Postfix, Dovecot, Exim and OpenSMTPD in parallel; wait until each
    greets on every port. Postfix authenticates through Dovecot; Dovecot relays to Postfix."""
    pki = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    folders = {
        name: os.path.join(root, name.lower())
        for name in ("Postfix", "Dovecot", "Exim", "OpenSMTPD")
    }
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    dovecot = Dovecot(folders["Dovecot"], **pki)
    postfix = Postfix(folders["Postfix"], **pki)
    postfix.sasl_path = dovecot.auth_socket
    postfix.configure()
    dovecot.relay_port = postfix.ports["relay"]
    dovecot.relay_maildir = postfix.maildir
    dovecot.configure()
    servers: dict[str, Server] = {
        "Postfix": postfix,
        "Dovecot": dovecot,
        "Exim": Exim(folders["Exim"], **pki),
        "OpenSMTPD": OpenSMTPD(folders["OpenSMTPD"], **pki),
    }

    def bring_up(server: Server) -> None:
        if not server.ports:
            server.configure()
        server.launch()
        server.wait_ready()

    with ThreadPoolExecutor(len(servers)) as pool:
        futures = [pool.submit(bring_up, s) for s in servers.values()]
        failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        stop_all(servers)
        raise ServerFailure("; ".join(str(f) for f in failures))
    return servers


def stop_all(servers: dict[str, Server]) -> None:
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.halt(), servers.values()))
