"""What one client can hold of the server's connections. uvicorn accepts every connection and waits for
its first request without a limit: a thousand connections that never send a byte use up the process's
file descriptors, after which nobody else can connect and every failed accept logs a traceback. The
protocol class made here (uvicorn's own, subclassed) closes a connection that has not sent a request's
headers within ``idle_timeout`` (counted from its opening, or from its last response: so a client that
sends its headers a byte at a time is closed too), and answers a connection beyond ``max_connections``
with a 503 and closes it at once. :func:`raise_descriptor_limit` makes room for that many descriptors."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from minivllm.entrypoints.errors import error_body

logger = logging.getLogger(__name__)

DESCRIPTORS_BESIDES_CONNECTIONS = 256  # the engine's files, the listening socket, the tokenizer, ...


def guarded_protocol(max_connections: int, idle_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``http=`` of ``uvicorn.Config``) with the cap and the idle timeout."""
    body = json.dumps(
        error_body(f"the server has {max_connections} connections open, its limit: retry later", 503)
    ).encode()
    refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    last_warning = [0.0]  # one log line per minute at most while the cap holds

    class GuardedProtocol(AutoHTTPProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(refusal)
                transport.close()
                if time.monotonic() - last_warning[0] > 60:
                    last_warning[0] = time.monotonic()
                    logger.warning("%d connections open, the limit (--max-connections): refusing more", max_connections)
                return
            self._watch(None)

        def _watch(self, seen) -> None:
            """Close the connection ``idle_timeout`` from now if no request has begun by then."""
            self.loop.call_later(idle_timeout, self._check_idle, seen)

        def _check_idle(self, seen) -> None:
            if self.transport.is_closing():
                return
            cycle = self.cycle  # the request being answered, or the last one answered
            if cycle is seen and (cycle is None or cycle.response_complete):
                self.transport.close()  # no headers since the last check, and nothing being answered
            else:
                self._watch(cycle)

    return GuardedProtocol


def raise_descriptor_limit(max_connections: int) -> None:
    """Raise the soft limit on open files so that ``max_connections`` fit; refuse to start if the hard
    limit does not allow it (every accept past the limit would fail)."""
    needed = max_connections + DESCRIPTORS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(
                f"--max-connections {max_connections} needs {needed} open files, but the limit is "
                f"{hard} (ulimit -n): lower --max-connections or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
