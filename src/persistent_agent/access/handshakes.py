"""Refused TLS handshakes, one log line each, on the servers that refused them.

The sentinel and the issuer serve TLS only, through uvicorn on asyncio. When
a handshake fails (a client speaking plain HTTP or ``ws://`` to the TLS port,
one that does not trust our CA, one offering an old protocol), asyncio drops
the connection and logs nothing unless its debug mode is on: the node that
refused would say nothing at all. :func:`log_refused_handshakes` gives a
server's ``SSLContext`` an ``sslobject_class`` (public since Python 3.7: the
class ``wrap_bio`` instantiates, which is what asyncio's SSL transport uses)
whose handshake reports a failure before passing it on unchanged.

A line names the failure, never the bytes received. OpenSSL's reason is
enough: ``HTTP_REQUEST`` (plain HTTP), ``WRONG_VERSION_NUMBER`` (any other
non-TLS stream), ``TLSV1_ALERT_UNKNOWN_CA`` (the client's own verdict on our
certificate). The peer's address is not in it: an ``SSLObject`` works on
memory buffers and never sees the socket. A flood of bad handshakes is cheap
to send, so the lines are rate-limited (:class:`RefusalLog`): at most
:data:`LINES_PER_WINDOW` per :data:`WINDOW_SECONDS`, then one line counting
those left out.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

PLAINTEXT = "refused a plaintext connection: this port speaks TLS only (use wss:// or https://)"
# OpenSSL's reasons for a first record that is not TLS: an HTTP method (HTTP_REQUEST),
# or anything else (WRONG_VERSION_NUMBER; HTTPS_PROXY_REQUEST for CONNECT).
_PLAINTEXT_REASONS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER"})
LINES_PER_WINDOW = 10
WINDOW_SECONDS = 10.0
# What asyncio's SSL transport treats as "not yet" rather than a failure (sslproto.py).
_NOT_YET = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)


def refusal(error: ssl.SSLError) -> str:
    """The line for a failed server handshake: what went wrong, from OpenSSL's reason
    (``TLSV1_ALERT_UNKNOWN_CA`` reads "alert unknown ca": the client's verdict)."""
    reason = error.reason or type(error).__name__
    if reason in _PLAINTEXT_REASONS:
        return PLAINTEXT
    text = reason.lower().replace("_", " ").removeprefix("tlsv1 ").removeprefix("sslv3 ")
    if reason.endswith("ALERT_UNKNOWN_CA"):
        text += " (the client does not trust the CA of this server's certificate)"
    return f"refused a TLS handshake: {text}"


class RefusalLog:
    """Lines through *emit*, at most *limit* per *window* seconds; the rest are counted
    and reported in one line when the window closes, so a flood cannot fill the disk."""

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        limit: int = LINES_PER_WINDOW,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit, self._limit, self._window, self._clock = emit, limit, window, clock
        self._start = -window  # the first line opens a window
        self._lines = 0
        self._left_out = 0
        self._flush_due: asyncio.TimerHandle | None = None

    def __call__(self, line: str) -> None:
        now = self._clock()
        if now - self._start >= self._window:
            self.flush()
            self._start, self._lines = now, 0
        if self._lines < self._limit:
            self._lines += 1
            self._emit(line)
            return
        self._left_out += 1
        if self._flush_due is None:
            self._schedule_flush(self._start + self._window - now)

    def _schedule_flush(self, delay: float) -> None:
        """Report the count when the window closes, if this runs on an event loop
        (it does, in asyncio's transport); otherwise the next line reports it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_due = loop.call_later(max(delay, 0.0), self.flush)

    def flush(self) -> None:
        """Say how many lines were left out since the last one, if any were."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        if self._left_out:
            count, self._left_out = self._left_out, 0
            self._emit(f"... and {count} more refused TLS handshakes (not logged one by one)")


def log_refused_handshakes(context: ssl.SSLContext, logger: logging.Logger) -> None:
    """Make every server-side handshake through *context* that fails log its one
    line (a warning on *logger*), rate-limited; the failure itself goes on as before."""
    report = RefusalLog(logger.warning)

    class ReportingSSLObject(ssl.SSLObject):
        """An ``SSLObject`` whose failed server handshake is reported."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except _NOT_YET:
                raise
            except ssl.SSLError as error:
                if self.server_side:
                    report(refusal(error))
                raise

    context.sslobject_class = ReportingSSLObject
