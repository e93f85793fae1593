"""Connection limits of the gateway's HTTP server: a request's headers must arrive within a time limit, and a client
may follow only so many streams (and hold only so many long polls) at once.

uvicorn closes a kept-alive connection that idles after a response (``timeout_keep_alive``) but waits forever for the
first request on a connection, and for headers that trickle in: an idle or slow-header client holds its connection
and its memory for good. :func:`header_timeout_protocol` closes such a connection once the limit has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ApiError


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers have not all arrived
    ``timeout_s`` after it opened or after the request began."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.header_timer is None:  # a second request on a kept-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


class StreamLimit:
    """How many followed streams (server-sent events) and long polls each client holds; past ``per_client``, a 429.
    A long poll is counted too: the gateway does not hear a client give up on one, so it waits out its ``wait_s``."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.open: dict[str, int] = {}

    def _take(self, client: Any) -> Callable[[], None]:
        """One more for ``client`` (ApiError 429 if it is at its limit); the function that gives it back, once."""
        host = client.host if client is not None else "?"
        if self.open.get(host, 0) >= self.per_client:
            raise ApiError(429, "TOO_MANY_REQUESTS", f"this client already holds {self.per_client} followed streams "
                                                     f"and long polls (the limit, AIP_MAX_STREAMS_PER_CLIENT); close "
                                                     f"one first")
        self.open[host] = self.open.get(host, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[host] -= 1
                if not self.open[host]:
                    del self.open[host]

        return release

    def follow(self, client: Any, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """``events`` counted against ``client`` while it lasts: ApiError 429 now if the client is at its limit.
        The count is given back when the stream ends, fails, or is dropped unstarted (a client that went away)."""
        release = self._take(client)

        async def counted() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
            finally:
                release()

        stream = counted()
        weakref.finalize(stream, release)
        return stream

    @contextlib.asynccontextmanager
    async def hold(self, client: Any) -> AsyncIterator[None]:
        """A long poll counted against ``client`` while it waits: ApiError 429 now if the client is at its limit."""
        release = self._take(client)
        try:
            yield
        finally:
            release()
