"""A raw app connection for attacks that pipeline: one payload in, every reply out.

smtplib waits for each reply; these attacks send a whole dialogue at once. The
payload is written by a thread (the gateway may stop reading, or close, part way)
while the test thread reads replies until the gateway closes the connection.
"""

from __future__ import annotations

import socket
import threading
from typing import BinaryIO


def _send(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:  # the gateway closed the connection before taking it all
        pass


def _replies(stream: BinaryIO) -> list[bytes]:
    """The last line of each reply (a multi-line reply counts once), until the connection ends."""
    replies = []
    try:
        for line in stream:
            if line[3:4] != b"-":
                replies.append(line.rstrip(b"\r\n"))
    except ConnectionResetError:
        pass
    return replies


def converse(port: int, payload: bytes) -> tuple[bytes, list[bytes]]:
    """Greeting, then `payload` in one write; the greeting and the replies up to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        stream = sock.makefile("rb")
        greeting = stream.readline().rstrip(b"\r\n")
        sender = threading.Thread(target=_send, args=(sock, payload), daemon=True)
        sender.start()
        replies = _replies(stream)
        sender.join(30)
    return greeting, replies


def dialogue(*commands: bytes) -> bytes:
    """Command lines, each ended by CRLF, as one payload."""
    return b"".join(command + b"\r\n" for command in commands)
