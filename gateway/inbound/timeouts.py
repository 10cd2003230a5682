"""The time limits of one app connection, as the listener protocol keeps them.

One timer per connection; arming it for one limit cancels the other:

- ``listener.idle_timeout`` while the gateway waits for a command. It is armed after each reply
  and cancelled only by a complete command line, so a client dripping a byte at a time cannot
  hold a session;
- ``listener.data_timeout`` while a body streams in, re-armed by every read, and
  ``listener.min_data_rate``, enforced after `MIN_RATE_GRACE` seconds of DATA: a body trickled
  below it is abandoned (the upstream never sees the final dot) and the app gets ``421 4.4.2``;
- ``listener.tls_handshake_timeout``, armed by `gateway.inbound.handshake`;
- the close grace on a TLS connection: an app that never answers our close_notify is cut
  off `TLS_CLOSE_GRACE` seconds after the close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.smtp import replies
from gateway.smtp.replies import DATA_TOO_SLOW
from gateway.timer import MovableTimer

if TYPE_CHECKING:
    from gateway.inbound.listener import SMTPServerProtocol

MIN_RATE_GRACE = 30.0  # seconds of DATA before min_data_rate is enforced
TLS_CLOSE_GRACE = 10.0  # seconds a TLS app has to answer our close_notify before the abort


class Timeouts:
    """The timer of one listener connection and what each expiry does.

    One `gateway.timer.MovableTimer` serves every limit: arming moves it and `cancel` only
    forgets what it was for, so a command costs no new timer; an expiry with nothing
    armed does nothing. `stop` (the connection is gone) really cancels it.
    """

    def __init__(self, protocol: SMTPServerProtocol) -> None:
        self._protocol = protocol
        self._timer: MovableTimer | None = None  # made on first use: the host's clock
        self._data_started = 0.0

    def _movable(self) -> MovableTimer:
        if self._timer is None:
            self._timer = MovableTimer(self._protocol.host.reactor)
        return self._timer

    def arm(self, timeout: float, expired: Callable[[], None]) -> None:
        """Call `expired` in `timeout` seconds, instead of what was armed (not once closing)."""
        if self._protocol._closing:
            self.stop()
            return
        self._movable().arm(timeout, expired)

    def cancel(self) -> None:
        """Nothing is armed (the timer is kept, to be moved by the next `arm`)."""
        if self._timer is not None:
            self._timer.disarm()

    def stop(self) -> None:
        """The connection is gone, or closing: no timer left behind."""
        if self._timer is not None:
            self._timer.stop()

    def idle(self) -> None:
        """Waiting for the next command: ``listener.idle_timeout``."""
        self.arm(self._protocol._limits.idle_timeout, self._idle_expired)

    def data_started(self) -> None:
        """354 went out: the DATA timeout runs, and the data rate counts from now."""
        self._data_started = self._protocol.host.reactor.seconds()
        self.data_progress()

    def data_progress(self) -> None:
        """Body bytes arrived: cut off a body below ``listener.min_data_rate``, else wait again."""
        protocol = self._protocol
        listener = protocol._limits
        elapsed = protocol.host.reactor.seconds() - self._data_started
        reader = protocol._reader
        if listener.min_data_rate and elapsed > MIN_RATE_GRACE and reader is not None:
            if reader.received / elapsed < listener.min_data_rate:
                try:
                    _abandon_data(protocol)
                finally:
                    protocol._close("data rate below listener.min_data_rate", DATA_TOO_SLOW)
                return
        self.arm(listener.data_timeout, self._data_expired)

    def close_grace(self) -> None:
        """A TLS connection is closing: abort it if the app does not finish the close in time."""
        self.stop()
        self._movable().arm(TLS_CLOSE_GRACE, self._protocol.transport.abortConnection)

    def _idle_expired(self) -> None:
        self._protocol._close("idle timeout", replies.IDLE_TIMEOUT)

    def _data_expired(self) -> None:
        try:
            _abandon_data(self._protocol)
        finally:
            self._protocol._close("data timeout", replies.IDLE_TIMEOUT)


def _abandon_data(protocol: SMTPServerProtocol) -> None:
    """The body will not be finished: the session's delivery must never send the final dot."""
    if protocol._reader is not None and protocol.session is not None:
        protocol.session.data_failed(DATA_TOO_SLOW)
