"""The config's value syntaxes: ``HOST:PORT``, ``COUNT/UNIT`` rates, sizes, client networks. Pure.

Each parser takes the text as written in the file and returns the model value,
or None (`parse_network`: ValueError) when the text is not of that form; the
reader turns that into a problem naming the key.
"""

from __future__ import annotations

import ipaddress

from gateway.config.model import Endpoint, ListenEntry, Network, Rate

# The hash formats listener AUTH verifies (gateway.policy.passwords): argon2, bcrypt, scrypt.
HASH_PREFIXES = ("$argon2", "$2a$", "$2b$", "$2y$", "$scrypt$")
SHA256_EXPECTED = "64 hex digits (SHA-256 of the DER certificate), colons optional"
_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
SIZE_EXPECTED = 'a size in bytes: a whole number, or a string such as "100MiB", "1GiB" or "500MB"'


def parse_rate(text: str) -> Rate | None:
    """``"100/minute"`` to a `Rate` (units: second, minute, hour, day; plural allowed)."""
    count, slash, unit = text.partition("/")
    unit = unit.strip().lower().removesuffix("s")
    if not slash or not count.strip().isdigit() or int(count) < 1 or unit not in _RATE_UNITS:
        return None
    return Rate(int(count), _RATE_UNITS[unit], text)


def parse_size(value: object) -> int | None:
    """A size in bytes: an integer, or ``"100MiB"``, ``"1 GiB"``, ``"500MB"``, ``"0"`` (KiB/MiB/
    GiB/TiB are powers of 1024, kB/MB/GB/TB of 1000, case ignored); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(text.rstrip("abcdefghijklmnopqrstuvwxyz")) :]
    if not (digits.isascii() and digits.isdigit()) or unit not in _SIZE_UNITS:
        return None
    return int(digits) * _SIZE_UNITS[unit]


def parse_endpoint(text: str) -> Endpoint | None:
    """``"127.0.0.1:2525"``, ``"[::1]:2525"`` or ``"localhost:2525"`` to an `Endpoint`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            return None
    return Endpoint(host, int(port))


def parse_listen_entry(text: str) -> ListenEntry | None:
    """``"HOST:PORT"`` (plain), ``"starttls://HOST:PORT"`` or ``"smtps://HOST:PORT"``."""
    scheme, sep, rest = text.partition("://")
    tls = scheme.lower() if sep else "plain"
    if tls not in ("starttls", "smtps"):
        if sep:
            return None
        rest = text
    endpoint = parse_endpoint(rest)
    return None if endpoint is None else ListenEntry(endpoint, tls)


def parse_sha256(text: str) -> str | None:
    """A certificate fingerprint: 64 hex digits, colons and case as you like, to lower-case hex."""
    digits = text.replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return digits


def parse_network(text: str) -> Network:
    """A CIDR network (host bits allowed); raise ValueError when `text` is not one.

    An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) is read as the IPv4
    network it maps (10.0.0.0/8): clients arrive as IPv4, mapped addresses unmapped.
    """
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network
