"""An aiosmtpd server on 127.0.0.1 that misbehaves on cue: the failures a healthy Postfix will not produce.

Each test writes a `Script` (refuse the first connections, fail DATA, drop mid-DATA, refuse
recipients, offer an untrusted certificate, demand credentials) and reads back what the server
accepted. The server runs in its own thread and event loop, so client code under test can use
`asyncio.run` freely.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 5.0


@dataclass
class Script:
    """What the server does; lists are used up one item per connection or message, then it behaves."""

    greetings: list[str] = field(default_factory=list)  # instead of 220, e.g. "421 4.3.2 busy"; then hang up
    data_replies: list[str] = field(default_factory=list)  # instead of 250 after DATA, e.g. "451 4.3.0 later"
    drop_in_data: int = 0  # hang up mid-DATA on this many messages
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply, e.g. "550 5.1.1 unknown"
    starttls: bool = False  # offer STARTTLS, with a certificate that no test CA signed
    credentials: tuple[str, str] | None = None  # require AUTH with these; anything else gets 535
    oauth_token: str | None = None  # also accept XOAUTH2 for credentials' user with this token


@dataclass(frozen=True, slots=True)
class Received:
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    login: str | None


class _Handler:
    def __init__(self, server: ScriptedSMTP) -> None:
        self.server = server

    async def handle_RCPT(
        self, _smtp: SMTP, _session: Session, envelope: Envelope, address: str, _options: list[str]
    ) -> str:
        refusal = self.server.script.refuse.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, _smtp: SMTP, session: Session, envelope: Envelope) -> str:
        script = self.server.script
        reply = script.data_replies.pop(0) if script.data_replies else None
        if reply is not None and not reply.startswith("2"):
            return reply
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        received = Received(
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            login=login,
        )
        self.server.messages.append(received)
        return reply or f"250 2.0.0 Ok: queued as S{len(self.server.messages)}"

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        """RFC-less but widespread (Gmail, Microsoft): base64 of user=U^Aauth=Bearer T^A^A."""
        script = self.server.script
        try:
            fields = dict(
                part.split("=", 1) for part in base64.b64decode(args[1]).decode().split("\x01") if part
            )
        except (IndexError, ValueError):
            await smtp.push("501 5.5.2 Cannot decode XOAUTH2 response")
            return AuthResult(success=False, handled=True)
        good = (
            script.credentials is not None
            and script.oauth_token is not None
            and fields.get("user") == script.credentials[0]
            and fields.get("auth") == f"Bearer {script.oauth_token}"
        )
        if not good:
            return AuthResult(success=False, handled=False, message="535 5.7.8 Username and token not accepted")
        return AuthResult(success=True, auth_data=LoginPassword(fields["user"].encode(), b""))


class _ScriptedProtocol(SMTP):
    def __init__(self, server: ScriptedSMTP, **kwargs: Any) -> None:
        self.scripted = server
        super().__init__(_Handler(server), **kwargs)

    async def _handle_client(self) -> None:
        self.scripted.connections += 1
        greetings = self.scripted.script.greetings
        if greetings:
            await self.push(greetings.pop(0))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str) -> None:
        self.scripted.commands.append("MAIL")
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.scripted.commands.append("RCPT")
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.scripted.commands.append("RSET")
        await super().smtp_RSET(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self.scripted.commands.append("DATA")
        script = self.scripted.script
        if script.drop_in_data and self.envelope is not None and self.envelope.rcpt_tos:
            script.drop_in_data -= 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await asyncio.wait_for(self._reader.readuntil(b"\r\n"), STARTUP_TIMEOUT)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_DATA(arg)


class ScriptedSMTP:
    """The server; `connections` counts TCP connections, `messages` holds what was accepted, `commands` the
    transaction commands received (MAIL, RCPT, DATA, RSET), in order."""

    host = HOST

    def __init__(self, script: Script, untrusted_cert: tuple[Path, Path] | None = None) -> None:
        self.script = script
        self.connections = 0
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.port = 0
        self._tls: ssl.SSLContext | None = None
        if script.starttls:
            if untrusted_cert is None:
                raise ValueError("Script(starttls=True) needs a certificate and key")
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*untrusted_cert)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-smtp", daemon=True)
        self._server: asyncio.Server | None = None
        self._protocols: list[_ScriptedProtocol] = []

    def _protocol(self) -> _ScriptedProtocol:
        creds = self.script.credentials
        protocol = _ScriptedProtocol(
            self,
            hostname="scripted.test",
            tls_context=self._tls,
            auth_required=creds is not None,
            auth_require_tls=creds is None,  # a test may demand AUTH on a plain connection
            authenticator=self._authenticate,
            timeout=30,
            loop=self._loop,
        )
        self._protocols.append(protocol)
        return protocol

    def _authenticate(
        self, _smtp: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        creds = self.script.credentials
        ok = (
            creds is not None
            and isinstance(data, LoginPassword)
            and (data.login, data.password) == (creds[0].encode(), creds[1].encode())
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def start(self) -> ScriptedSMTP:
        self._thread.start()
        create = self._loop.create_server(self._protocol, HOST, 0)
        self._server = asyncio.run_coroutine_threadsafe(create, self._loop).result(STARTUP_TIMEOUT)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def hang_up(self) -> None:
        """Close every open client connection, as a server does to idle clients after its timeout."""

        async def close_all() -> None:
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(STARTUP_TIMEOUT)

    def stop(self) -> None:
        """Hang up on every client still connected, then stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(STARTUP_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STARTUP_TIMEOUT)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        await self._server.wait_closed()
        await asyncio.sleep(0.01)  # let connection_lost run for the transports just closed
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
