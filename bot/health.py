"""/healthz and /metrics on a loopback port, served on the daemon's own event loop (no thread, no framework).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class HealthServer:
    """A minimal HTTP/1.0 server on the loop: no thread, no framework, two paths."""

    def __init__(self, host: str, port: int, health: Callable[[], tuple[bool, dict[str, Any]]],
                 metrics: Callable[[], bytes]) -> None:
        self.host, self.port, self.health, self.metrics = host, port, health, metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if parts[:1] not in (["GET"], ["HEAD"]):
                status, kind, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/healthz":
                ok, doc = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                kind, body = "application/json", json.dumps(doc, default=str).encode() + b"\n"
            elif path == "/metrics":
                status, kind, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self.metrics()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"/healthz or /metrics\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + (body if parts[:1] == ["GET"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
