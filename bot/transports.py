"""Hand a finished message to something that delivers it: a local Maildir or an SMTP server.

Every failure is sorted into one of three kinds, because the outbox acts on the kind, not on the text:
TemporaryFailure (retry later), PermanentFailure (this message or these recipients will never
work) and ConfigurationFailure (a person must fix the account; retrying cannot help).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import mailbox
import re
import ssl
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Protocol

import aiosmtplib

from bot.config import Settings, SmtpSettings
from bot.errors import ConfigurationFailure, DeliveryError, PermanentFailure, TemporaryFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str                  # envelope MAIL FROM
    recipients: tuple[str, ...]  # RCPT TO (To + Cc)
    message: bytes               # the complete RFC 5322 message, CRLF line endings
    message_id: str              # "<...@...>", the message's Message-ID header value


@dataclass(frozen=True, slots=True)
class Accepted:
    refused: dict[str, str]      # recipients refused while others were accepted: address -> server reply
    server_reply: str            # the server's final reply to DATA (e.g. "250 2.0.0 Ok: queued as ABC")


class Transport(Protocol):
    """`send` awaits `ready`, when given, just before the point after which the message may be delivered
    (SMTP: the "." that ends DATA), so that the outbox's claim is committed while the transaction goes out;
    if `ready` gives False, nothing is delivered and `send` returns None."""

    async def open(self) -> None: ...
    async def send(self, envelope: Envelope, ready: asyncio.Future[bool] | None = None) -> Accepted | None: ...
    async def close(self) -> None: ...


# ---- Maildir ---------------------------------------------------------------------------------

_HEADER_BYTES = 64 * 1024


def _message_id(raw: bytes) -> str | None:
    head = raw[:_HEADER_BYTES].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("Message-ID")
    return "".join(str(value).split()) if value else None  # unfolded: ids hold no spaces


class MaildirTransport:
    """The embedded default: messages land in a Maildir, for a person or a mail client to pick up.

    Idempotent by Message-ID: if the process dies after the file was written but before the
    outbox recorded it, the retry finds the message already there and does not add a second copy.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box: mailbox.Maildir | None = None
        self._ids: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._box, self._ids = await asyncio.to_thread(self._load)

    def _load(self) -> tuple[mailbox.Maildir, dict[str, str]]:
        try:
            box = mailbox.Maildir(self.path, factory=None, create=True)
        except OSError as exc:
            raise ConfigurationFailure(f"cannot create the Maildir {self.path}: {exc.strerror}") from exc
        ids: dict[str, str] = {}
        for key in box.iterkeys():
            with box.get_file(key) as handle:
                message_id = _message_id(handle.read(_HEADER_BYTES))
            if message_id:
                ids[message_id] = key
        return box, ids

    async def send(self, envelope: Envelope, ready: asyncio.Future[bool] | None = None) -> Accepted | None:
        if self._box is None:
            raise RuntimeError("MaildirTransport.send() before open()")
        if ready is not None and not await ready:
            return None
        async with self._lock:
            key = self._ids.get(envelope.message_id)
            if key is not None:
                log.info("maildir: %s already stored as %s, not adding it again", envelope.message_id, key)
                return Accepted(refused={}, server_reply=f"250 2.0.0 already stored as {key}")
            box = self._box
            try:
                key = await asyncio.to_thread(box.add, self._with_envelope(envelope))
            except OSError as exc:
                raise TemporaryFailure(f"cannot write to the Maildir {self.path}: {exc.strerror}") from exc
            self._ids[envelope.message_id] = key
        return Accepted(refused={}, server_reply=f"250 2.0.0 stored as {key}")

    @staticmethod
    def _with_envelope(envelope: Envelope) -> bytes:
        """Keep the envelope, as a delivering MTA would: the Cc/To headers need not list every RCPT."""
        to = ",\r\n ".join(envelope.recipients)
        trace = f"Return-Path: <{envelope.sender}>\r\nX-Envelope-To: {to}\r\n"
        return trace.encode() + envelope.message

    async def close(self) -> None:
        self._box = None


# ---- SMTP ------------------------------------------------------------------------------------

_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# Replies that mean "the account is wrong", whatever the command: retrying the same way cannot work.
_CONFIG_CODES = {530, 534, 535, 538}
_CONFIG_STATUSES = {
    "5.7.30": "the provider has turned off basic authentication for this account: use OAuth (oauth_token_env)",
    "5.7.57": "the server requires authentication before sending: set username and password_env",
    "5.7.60": "the account may not send as this sender address: fix company.email or the account's rights",
}
# Daily sending quotas (Gmail 550 5.4.5, Microsoft 365 554 5.2.0): the account works again tomorrow.
_QUOTA = {(550, "5.4.5"), (554, "5.2.0")}


def _status(message: str) -> str:
    match = _STATUS.match(message)
    return match.group(1) if match else ""


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


class _Stale(Exception):
    """A reused connection turned out to be dead before the server took anything: safe to redo once."""


class _RateLimiter:
    """Evenly spaced sends (a token bucket of one), shared by every connection of the pool."""

    def __init__(self, per_minute: int) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class SmtpTransport:
    """A small pool of long-lived SMTP connections; a new TLS connection costs more than a message."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._where = f"{settings.host}:{settings.port}"
        self._tls: ssl.SSLContext | None = None
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.connections)
        self._limiter = _RateLimiter(settings.rate_per_minute)
        self._opened = False

    # -- lifecycle --

    async def open(self) -> None:
        s = self.settings
        if s.security == "none" and not _is_loopback(s.host):
            raise ConfigurationFailure(
                f"[transport.smtp] security = 'none' would send mail and password in clear to {s.host}; "
                "it is only for test servers on this machine: use 'starttls' (port 587) or 'tls' (port 465)"
            )
        if (s.password is not None or s.oauth_token is not None) and not s.username:
            raise ConfigurationFailure("[transport.smtp] a password or OAuth token is set but username is empty")
        if s.security != "none":
            self._tls = await asyncio.to_thread(self._tls_context)
        self._opened = True

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationFailure(
                    f"[transport.smtp] ca_file {self.settings.ca_file} cannot be loaded as PEM certificates: {exc}"
                ) from exc
        if not self.settings.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def close(self) -> None:
        """Wait for sends in flight, then say QUIT on every connection."""
        self._opened = False
        for _ in range(self.settings.connections):
            await self._slots.acquire()
        try:
            for client in self._idle:
                transport = client.transport
                if client.is_connected:
                    try:
                        await client.quit(timeout=self.settings.timeout)
                    except (aiosmtplib.SMTPException, OSError):
                        log.debug("smtp %s: QUIT failed; closing anyway", self._where)
                _drop(client, transport)
            self._idle.clear()
        finally:
            for _ in range(self.settings.connections):
                self._slots.release()

    # -- sending --

    async def send(self, envelope: Envelope, ready: asyncio.Future[bool] | None = None) -> Accepted | None:
        if not self._opened:
            raise RuntimeError("SmtpTransport.send() before open() or after close()")
        await self._limiter.wait()
        async with self._slots:
            client = self._idle.pop() if self._idle else self._client()
            try:
                return await self._send_on(client, envelope, ready)
            finally:
                self._idle.append(client)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=False,  # done by hand in _connect, so a missing STARTTLS is an error, not clear text
            tls_context=self._tls,
        )

    async def _send_on(self, client: aiosmtplib.SMTP, envelope: Envelope,
                       ready: asyncio.Future[bool] | None) -> Accepted | None:
        reused = client.is_connected
        if not reused:
            await self._connect(client)
        try:
            return await self._transaction(client, envelope, reused, ready)
        except _Stale:
            log.info("smtp %s: idle connection was closed by the server; reconnecting", self._where)
            await self._connect(client)
            return await self._transaction(client, envelope, False, ready)

    async def _connect(self, client: aiosmtplib.SMTP) -> None:
        s, t = self.settings, self.settings.timeout
        try:
            await client.connect(timeout=t)
            if s.security == "starttls":
                await client.ehlo(timeout=t)
                if not client.supports_extension("starttls"):
                    raise ConfigurationFailure(
                        f"the SMTP server at {self._where} does not offer STARTTLS, and security = 'starttls' "
                        "forbids sending in clear: check host and port, or use security = 'tls' (port 465)"
                    )
                await client.starttls(timeout=t)
            if s.username:
                await client.ehlo(timeout=t)
                await self._login(client)
        except DeliveryError:
            _drop(client)
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            _drop(client)
            raise self._connect_failure(exc) from exc
        log.info("smtp %s: connected (%s%s)", self._where, s.security,
                 f", as {s.username}" if s.username else "")

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        s, t = self.settings, self.settings.timeout
        if s.oauth_token is not None:
            if "xoauth2" not in client.server_auth_methods:
                raise ConfigurationFailure(
                    f"the SMTP server at {self._where} does not offer XOAUTH2: remove oauth_token_env "
                    "or use the provider's OAuth endpoint (smtp.gmail.com, smtp.office365.com)"
                )
            await client.auth_xoauth2(s.username, s.oauth_token.reveal(), timeout=t)
            return
        # One mechanism, one attempt: aiosmtplib's login() would retry a wrong password once per
        # mechanism, and providers lock accounts after a few failures.
        password = s.password.reveal() if s.password is not None else ""
        offered = client.server_auth_methods
        if "plain" in offered:
            await client.auth_plain(s.username, password, timeout=t)
        elif "login" in offered:
            await client.auth_login(s.username, password, timeout=t)
        else:
            raise ConfigurationFailure(
                f"the SMTP server at {self._where} offers no password login (AUTH PLAIN or LOGIN; it offers "
                f"{', '.join(offered) or 'none'}): check host, port and security, or remove username"
            )

    def _connect_failure(self, exc: BaseException) -> DeliveryError:
        """Classify what went wrong before a message could be offered: network, TLS, greeting or login."""
        s, where = self.settings, self._where
        for cause in _chain(exc):
            if isinstance(cause, ssl.SSLEOFError):  # hung up mid-handshake: overload as often as not
                return TemporaryFailure(f"{where} closed the connection during the TLS handshake")
            if isinstance(cause, ssl.SSLCertVerificationError):
                return ConfigurationFailure(
                    f"the TLS certificate of {where} failed verification ({cause.verify_message}): set "
                    "[transport.smtp] ca_file to the CA that signed it, or fix the server's certificate"
                )
            if isinstance(cause, ssl.SSLError):
                return ConfigurationFailure(
                    f"TLS with {where} failed ({cause.reason or cause}): check [transport.smtp] security "
                    "and port (465 = 'tls', 587 = 'starttls')"
                )
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            if 400 <= exc.code < 500:
                return TemporaryFailure(f"{where} could not check the login right now: {exc.code} {exc.message}")
            return ConfigurationFailure(
                f"{where} refused the login as {s.username!r}: {exc.code} {exc.message}; check "
                "[transport.smtp] username and password_env (Gmail and Microsoft 365 want an app "
                "password or OAuth)"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            failure = self._reply_failure(exc.code, exc.message, "the connection", ())
            if isinstance(failure, PermanentFailure):  # a 5xx before any message: it is us, not the message
                return ConfigurationFailure(f"{failure}; check [transport.smtp] host, port and security")
            return failure
        if isinstance(exc, TimeoutError):
            return TemporaryFailure(f"timed out after {s.timeout:g}s talking to {where}")
        if isinstance(exc, OSError):  # refused, reset, unreachable, disconnected (all ConnectionError)
            return TemporaryFailure(f"cannot reach {where}: {exc}")
        # Anything else from aiosmtplib is a mismatch between settings and server (no AUTH offered...).
        return ConfigurationFailure(f"{where}: {exc}")

    def _reply_failure(self, code: int, message: str, stage: str, recipients: tuple[str, ...]) -> DeliveryError:
        """Classify a server's refusal by code and enhanced status, never by its (any-language) text."""
        status = _status(message)
        reply = f"{code} {message}"
        if (code, status) in _QUOTA:
            return TemporaryFailure(f"{self._where}: daily sending quota reached ({reply}); "
                                    "sending resumes when the provider's quota resets")
        if code in _CONFIG_CODES or status in _CONFIG_STATUSES:
            hint = _CONFIG_STATUSES.get(status, "check [transport.smtp] username and password_env")
            return ConfigurationFailure(f"{self._where} refused {stage}: {reply}; {hint}")
        if 400 <= code < 500:
            return TemporaryFailure(f"{self._where} deferred {stage}: {reply}")
        return PermanentFailure(f"{self._where} refused {stage}: {reply}", recipients)

    async def _transaction(self, client: aiosmtplib.SMTP, envelope: Envelope, reused: bool,
                           ready: asyncio.Future[bool] | None) -> Accepted | None:
        t = self.settings.timeout
        options, encoding = self._mail_options(client, envelope)
        try:
            try:
                await client.mail(envelope.sender, options=options, encoding=encoding, timeout=t)
            except aiosmtplib.SMTPServerDisconnected as exc:
                if reused:
                    raise _Stale from exc
                raise
            except aiosmtplib.SMTPSenderRefused as exc:
                await self._reset(client)
                raise self._reply_failure(exc.code, exc.message, f"the sender {envelope.sender}", ()) from exc
            refused: dict[str, tuple[int, str]] = {}
            for recipient in envelope.recipients:
                try:
                    await client.rcpt(recipient, encoding=encoding, timeout=t)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused[recipient] = (exc.code, exc.message)
            if len(refused) == len(envelope.recipients):
                await self._reset(client)
                raise self._all_refused(refused)
            try:
                if ready is None:
                    response = await client.data(envelope.message, timeout=t)
                else:
                    answer = await self._data_when_ready(client, envelope, ready)
                    if answer is None:
                        return None
                    response = answer
            except aiosmtplib.SMTPDataError as exc:
                raise self._reply_failure(exc.code, exc.message, "the message", ()) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            _drop(client)
            raise TemporaryFailure(f"lost the connection to {self._where} while sending "
                                   f"{envelope.message_id}: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:  # e.g. 421 to RCPT
            raise self._reply_failure(exc.code, exc.message, "the message", ()) from exc
        deferred = [f"{address} ({code} {text})" for address, (code, text) in refused.items() if code < 500]
        if deferred:
            # Not in `refused`: the outbox treats those addresses as dead, and a 4xx (greylisting, a
            # full mailbox) says nothing of the sort. The others already have the message: no retry.
            log.warning("smtp %s: %s accepted, but deferred and not retried for %s", self._where,
                        envelope.message_id, "; ".join(deferred))
        return Accepted(
            refused={address: f"{code} {text}" for address, (code, text) in refused.items() if code >= 500},
            server_reply=f"{response.code} {response.message}",
        )

    def _all_refused(self, refused: dict[str, tuple[int, str]]) -> DeliveryError:
        """No recipient accepted: one deferral is enough to retry the lot, else the worst refusal decides."""
        addresses = tuple(refused)
        failures = [self._reply_failure(code, text, f"recipient {address}", addresses)
                    for address, (code, text) in refused.items()]
        for kind in (ConfigurationFailure, TemporaryFailure):
            for failure in failures:
                if isinstance(failure, kind):
                    return failure
        replies = "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())
        return PermanentFailure(f"{self._where} refused every recipient: {replies}", addresses)

    def _mail_options(self, client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[list[str], str]:
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(envelope.message)}")
        if not envelope.message.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        addresses = (envelope.sender, *envelope.recipients)
        if all(address.isascii() for address in addresses):
            return options, "ascii"
        if not client.supports_extension("smtputf8"):
            raise PermanentFailure(f"{self._where} does not accept non-ASCII addresses (no SMTPUTF8)",
                                   tuple(a for a in envelope.recipients if not a.isascii()))
        return [*options, "SMTPUTF8"], "utf-8"

    async def _data_when_ready(self, client: aiosmtplib.SMTP, envelope: Envelope,
                               ready: asyncio.Future[bool]) -> aiosmtplib.SMTPResponse | None:
        """DATA and the message go out at once; the final "." (RFC 5321 4.1.1.4: the server may accept the
        message only then) waits for the caller's go. Without it (False, or its failure), the connection is
        dropped: a transaction cut before its "." is discarded by the server, and no RSET can end DATA."""
        t = self.settings.timeout
        start = await client.execute_command(b"DATA", timeout=t)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        if client.protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        client.protocol.write(_transparent(envelope.message))
        try:
            go = await ready
        except BaseException:
            _drop(client)
            raise
        if not go:
            _drop(client)
            return None
        response = await client.execute_command(b".", timeout=t)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """Abandon the transaction so the connection can carry the next message; drop it if RSET fails."""
        try:
            await client.rset(timeout=self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError):
            _drop(client)


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _transparent(message: bytes) -> bytes:
    """The message as DATA carries it, without the final ".": CRLF line ends, leading dots doubled (RFC 5321
    4.5.2), as aiosmtplib's data() would send it."""
    message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_DOT.sub(b"..", message)


def _drop(client: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None = None) -> None:
    """Close at once. A polite TLS shutdown goes on in the background and can outlive the event loop,
    which then leaks the socket; after QUIT, or after a failure, there is nothing left to say."""
    transport = transport or client.transport
    client.close()
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_transport(settings: Settings) -> tuple[Transport, int]:
    """The configured transport, and how many messages it can carry at once."""
    t = settings.transport
    if t.kind == "smtp":
        assert t.smtp is not None
        return SmtpTransport(t.smtp), t.smtp.connections
    assert t.maildir is not None
    return MaildirTransport(t.maildir), 1
