"""IMAP with imapclient: synchronous, used from one dedicated thread (see watcher.py)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import LoginError

from bot.config import ImapSettings
from bot.mailboxes.common import (
    CLOSE_TIMEOUT,
    IDLE_SLICE,
    INBOX,
    MIN_POLL,
    Incoming,
    MailboxError,
    MailboxRefused,
    message_id_of,
)

log = logging.getLogger(__name__)



def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _keepalive(sock: socket.socket) -> None:
    """Notice a silently dead peer (NAT timeout, pulled cable) within ~2 min, not at the next IDLE renewal."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _uid_set(uids: Sequence[int]) -> str:
    """UIDs for a log line: '7', or '7-31 (25)' for a batch."""
    return str(uids[0]) if len(uids) == 1 else f"{min(uids)}-{max(uids)} ({len(uids)})"


# ---- IMAP ------------------------------------------------------------------------------------


class ImapMailbox:
    """One IMAP connection with one folder selected. Synchronous: use it from one thread only.

    `use_idle` / `use_move` = False ignore those capabilities (servers that advertise them but break them;
    tests of the fallbacks).
    """

    def __init__(self, settings: ImapSettings, folder: str, max_bytes: int, *,
                 use_idle: bool = True, use_move: bool = True) -> None:
        self.settings, self.folder, self.max_bytes = settings, folder, max_bytes
        self.where = f"{settings.host}:{settings.port}"
        self.has_idle = self.has_move = self.has_uidplus = False
        self._use_idle, self._use_move = use_idle, use_move
        self._client: IMAPClient | None = None
        self._delimiter, self._prefix = "/", ""
        self._selected = ""
        self._uidvalidity = 0
        self._known: set[str] = set()

    # -- connection --

    def connect(self) -> None:
        s = self.settings
        if s.security == "none" and not _is_loopback(s.host):
            raise MailboxError(f"[inbox.imap] security = 'none' would send the password in clear to {s.host}; "
                               "it is only for test servers on this machine: use 'tls' (993) or 'starttls' (143)")
        try:
            with self._guard("connect"):
                context = self._tls_context() if s.security != "none" else None
                self._client = client = IMAPClient(
                    s.host, port=s.port, ssl=s.security == "tls", ssl_context=context,
                    timeout=SocketTimeout(connect=s.timeout, read=s.timeout))
                client.normalise_times = False  # aware INTERNALDATEs
                _keepalive(client.socket())
                if s.security == "starttls":
                    if not client.has_capability("STARTTLS"):
                        raise MailboxError(f"the IMAP server at {self.where} does not offer STARTTLS, and "
                                           "security = 'starttls' forbids clear text: check host, port and security")
                    client.starttls(context)
                self._login(client)
                self.has_idle = self._use_idle and client.has_capability("IDLE")
                self.has_move = self._use_move and client.has_capability("MOVE")
                self.has_uidplus = client.has_capability("UIDPLUS")
                self._delimiter, self._prefix = self._hierarchy(client)
                self._selected = self._server_name(self.folder)
                try:
                    selected = client.select_folder(self._selected)
                except IMAPClient.AbortError:
                    raise
                except IMAPClient.Error as exc:
                    text = self._text(exc)
                    why = "does not exist" if "NONEXISTENT" in text or "exist" in text else "cannot be opened"
                    raise MailboxError(f"the folder {self.folder!r} {why} on {self.where} (deleted or renamed?): "
                                       f"{text}") from exc
                self._uidvalidity = int(selected[b"UIDVALIDITY"])
        except BaseException:
            self.close()
            raise
        log.info("imap %s: watching %r as %s (%s)", self.where, self.folder, s.username,
                 ", ".join(n for n, on in (("IDLE", self.has_idle), ("MOVE", self.has_move),
                                            ("UIDPLUS", self.has_uidplus)) if on) or "no extensions")

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context()
        if s.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(s.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise MailboxError(f"[inbox.imap] ca_file {s.ca_file} cannot be loaded as PEM: {exc}") from exc
        if not s.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _login(self, client: IMAPClient) -> None:
        s = self.settings
        if s.oauth_token is not None:
            if not client.has_capability("AUTH=XOAUTH2"):
                raise MailboxError(f"the IMAP server at {self.where} does not offer XOAUTH2: remove "
                                   "oauth_token_env or use the provider's OAuth endpoint")
            client.oauth2_login(s.username, s.oauth_token.reveal())
        else:
            client.login(s.username, s.password.reveal() if s.password is not None else "")

    @staticmethod
    def _hierarchy(client: IMAPClient) -> tuple[str, str]:
        """(delimiter, personal prefix): our '/' names become e.g. 'INBOX.Dunbot.Handled' on Courier."""
        if client.has_capability("NAMESPACE"):
            personal = client.namespace().personal
            if personal:
                prefix, delimiter = personal[0]
                return delimiter or "/", prefix
        listing = client.list_folders("", "")
        delimiter = listing[0][1] if listing else None
        if isinstance(delimiter, bytes):
            delimiter = delimiter.decode()
        return delimiter or "/", ""

    def _server_name(self, name: str) -> str:
        if name.upper() == INBOX:
            return INBOX
        name = name.replace("/", self._delimiter)
        return name if name.startswith(self._prefix) else self._prefix + name

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.socket().settimeout(CLOSE_TIMEOUT)
            client.logout()
        except Exception:  # already broken: just drop the socket
            with suppress(Exception):
                client.shutdown()

    # -- reading --

    def uidvalidity(self) -> int:
        self._connected()
        return self._uidvalidity

    def fetch_after(self, last_uid: int, limit: int | None = None) -> list[Incoming]:
        """Messages with UID > last_uid (at most `limit`, the oldest first), never marking them \\Seen."""
        client = self._connected()
        with self._guard("fetch new messages"):
            for _ in range(3):
                self._pending(client).clear()
                # `UID n:*` always matches the last message, even when its UID is below n (RFC 3501 6.4.8).
                uids = sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)[:limit]
                # Dovecot runs a SEARCH on its view as of the last command, then announces the mail that came
                # since (`* SEARCH` then `* 1 EXISTS` in one reply): look again, now that the view includes it.
                if uids or "EXISTS" not in self._pending(client):
                    break
            if not uids:
                return []
            meta = client.fetch(uids, ["RFC822.SIZE", "INTERNALDATE"])
            small = [u for u in uids if u in meta and meta[u][b"RFC822.SIZE"] <= self.max_bytes]
            big = [u for u in uids if u in meta and meta[u][b"RFC822.SIZE"] > self.max_bytes]
            bodies = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
            heads = client.fetch(big, ["BODY.PEEK[HEADER]"]) if big else {}
        found = []
        for uid in uids:  # a UID missing from a response was expunged meanwhile by someone else
            if uid in bodies:
                raw, truncated = bodies[uid][b"BODY[]"], False
            elif uid in heads:
                raw, truncated = heads[uid][b"BODY[HEADER]"][:self.max_bytes], True
            else:
                continue
            found.append(Incoming(uid, raw, meta[uid][b"RFC822.SIZE"], truncated, meta[uid].get(b"INTERNALDATE")))
        return found

    def message_ids(self) -> dict[int, str]:
        """UID -> Message-ID ('' when absent) for every message in the folder: the resync after a UIDVALIDITY change."""
        client = self._connected()
        with self._guard("read Message-IDs"):
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
        result = {}
        for uid in sorted(fetched):
            head = next((v for k, v in fetched[uid].items() if k.startswith(b"BODY[HEADER.FIELDS")), b"")
            result[uid] = message_id_of(head or b"")
        return result

    # -- changing --

    def move(self, uids: Sequence[int], folder: str) -> None:
        """One UID MOVE for all of `uids` if offered, else COPY + \\Deleted + UID EXPUNGE of those UIDs alone
        (never a bare EXPUNGE: in a shared mailbox it would also expunge what a colleague deleted but meant to
        keep until later). One command per batch: each costs a round trip and more the fuller the folder."""
        client = self._connected()
        target = self._server_name(folder)
        if target == self._selected or not uids:
            return
        with self._guard(f"move messages {_uid_set(uids)} to {folder!r}"):
            self._ensure(client, target)
            try:
                self._transfer(client, uids, target)
            except IMAPClient.AbortError:
                raise
            except IMAPClient.Error as exc:
                if "TRYCREATE" not in str(exc):
                    raise
                self._known.discard(target)  # deleted since we created it: once more
                self._ensure(client, target)
                self._transfer(client, uids, target)

    def _transfer(self, client: IMAPClient, uids: Sequence[int], target: str) -> None:
        if self.has_move:
            client.move(list(uids), target)
            return
        client.copy(list(uids), target)
        client.delete_messages(list(uids), silent=True)
        if self.has_uidplus:
            client.uid_expunge(list(uids))
        else:
            log.warning("imap %s: no UIDPLUS: messages %s copied to %r and flagged \\Deleted, left for the "
                        "mailbox's own expunge", self.where, _uid_set(uids), target)

    def _ensure(self, client: IMAPClient, name: str) -> None:
        if name in self._known:
            return
        if not client.folder_exists(name):
            try:
                client.create_folder(name)
                log.info("imap %s: created folder %r", self.where, name)
            except IMAPClient.AbortError:
                raise
            except IMAPClient.Error:
                if not client.folder_exists(name):  # not just a concurrent creation by another client
                    raise
            with suppress(IMAPClient.Error):
                client.subscribe_folder(name)  # most mail clients show only subscribed folders
        self._known.add(name)

    # -- waiting --

    def wait(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Up to `seconds` for new mail; True when the server reported some. Returns within ~0.5 s of `cancel`.

        With IDLE, renewed every poll_seconds: Dovecot 2.3 never announces, during IDLE, mail that landed
        between the previous command and the IDLE (only the DONE's reply does), and a hung IDLE (Office 365)
        shows up as a DONE left unanswered. Without IDLE: sleep min(seconds, poll_seconds), NOOP, True.
        """
        client = self._connected()
        cancel = cancel or threading.Event()
        if "EXISTS" in self._pending(client):
            return True  # arrived while our last SEARCH ran: announced in its reply, an IDLE would not repeat it
        every = max(self.settings.poll_seconds, MIN_POLL)
        if not self.has_idle:
            cancel.wait(min(seconds, every))
            with self._guard("poll with NOOP"):
                client.noop()
            return True
        deadline = time.monotonic() + seconds
        with self._guard("wait in IDLE"):
            while not cancel.is_set() and (now := time.monotonic()) < deadline:
                if self._idle(client, min(deadline, now + every), cancel):
                    return True
        return False

    def _idle(self, client: IMAPClient, until: float, cancel: threading.Event) -> bool:
        """One IDLE command, checked every half second, until news, `until` or `cancel`."""
        news, quick = False, 0
        client.idle()
        while not news and not cancel.is_set() and (left := until - time.monotonic()) > 0:
            started = time.monotonic()
            responses = client.idle_check(timeout=min(IDLE_SLICE, left))
            self._check_bye(responses)
            news = self._news(responses)
            # On EOF idle_check returns [] at once, forever (imapclient #565): the server hung up.
            quick = quick + 1 if not responses and time.monotonic() - started < min(IDLE_SLICE, left) / 2 else 0
            if quick >= 2:
                raise MailboxError(f"the IMAP server at {self.where} closed the connection during IDLE")
        _done, responses = client.idle_done()  # answered within the read timeout, or the connection is dead
        self._check_bye(responses)
        return news or self._news(responses)

    @staticmethod
    def _news(responses: list[Any]) -> bool:
        return any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)

    def _check_bye(self, responses: list[Any]) -> None:
        for r in responses:
            if r and r[0] == b"BYE":
                text = " ".join(p.decode(errors="replace") if isinstance(p, bytes) else str(p) for p in r[1:])
                raise MailboxError(f"the IMAP server at {self.where} ended the session: {text.rstrip('.')}")

    # -- helpers --

    @staticmethod
    def _pending(client: IMAPClient) -> dict[str, list[Any]]:
        """imaplib's stash of untagged responses that came with earlier replies (EXISTS, EXPUNGE, FETCH...).

        A server may announce new mail with any reply (RFC 3501 7); imapclient leaves those in this stash, which
        also grows without end on a connection that lives for weeks: fetch_after() empties it before each SEARCH.
        """
        return client._imap.untagged_responses  # type: ignore[no-any-return]

    def _connected(self) -> IMAPClient:
        if self._client is None:
            raise MailboxError(f"imap {self.where}: not connected (call connect() first)")
        return self._client

    def _text(self, exc: BaseException) -> str:
        """An exception's text with any secret blanked out, whatever the server or library echoed."""
        text = str(exc)
        for secret in (self.settings.password, self.settings.oauth_token):
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "**********")
        return text

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn library and socket errors into MailboxError with a message that says what to fix."""
        s, where = self.settings, self.where
        try:
            yield
        except MailboxError:
            raise
        except LoginError as exc:
            raise MailboxError(f"the IMAP server at {where} refused the login of {s.username!r}: {self._text(exc)}; "
                               "check [inbox.imap] username and password_env / oauth_token_env") from exc
        except IMAPClient.AbortError as exc:
            raise MailboxError(f"lost the connection to {where} while trying to {doing}: {self._text(exc)}") from exc
        except IMAPClient.Error as exc:
            raise MailboxRefused(f"the IMAP server at {where} refused to {doing}: {self._text(exc)}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise MailboxError(f"the TLS certificate of {where} failed verification ({exc.verify_message}): "
                               "set [inbox.imap] ca_file to the CA that signed it, or fix the server's certificate"
                               ) from exc
        except TimeoutError as exc:
            raise MailboxError(f"{where} did not answer within {s.timeout:g} s while trying to {doing}") from exc
        except OSError as exc:
            raise MailboxError(f"cannot {doing} at {where}: {exc.strerror or repr(exc)}") from exc


# ---- Maildir ---------------------------------------------------------------------------------


