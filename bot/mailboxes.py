"""Watch the mailbox where customers' replies arrive: a real IMAP server, or a local Maildir (the embedded default).

The mailbox classes are synchronous and protocol-faithful. The Watcher drives one of them from a single
dedicated thread (imapclient blocks and is not thread-safe) and awaits the handler on the event loop.
Progress is (UIDVALIDITY, last UID) per folder in the store, advanced after every message, so a restart
neither misses mail nor hands a message over twice (beyond the one in flight, which the handler dedupes).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import mailbox
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import LoginError

from bot.config import ImapSettings, InboxSettings
from bot.errors import DunbotError, StoreError
from bot.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

INBOX = "INBOX"
_SLICE = 0.5          # seconds per idle_check: how soon a stop is noticed (the daemon allows close() 1 s)
_CLOSE_TIMEOUT = 2.0  # LOGOUT is a courtesy: never let it hold up a stop
_MIN_POLL = 0.1       # a zero poll_seconds must not turn IDLE or NOOP into a busy loop
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class Incoming:
    uid: int                          # IMAP UID (Maildir: a number the adapter assigns in arrival order)
    raw: bytes                        # the whole message, or only its headers when truncated
    size: int                         # the real size in bytes
    truncated: bool                   # size > max_bytes: raw holds the headers only; the handler sets it aside
    arrived: datetime | None = None   # INTERNALDATE (Maildir: file time), for the lag metric


Handler = Callable[[Incoming], Awaitable[str | None]]


class MailboxError(DunbotError):
    """The mailbox failed as a whole (unreachable, login refused, folder gone, connection lost): reconnect later."""


class MailboxRefused(MailboxError):
    """The server answered NO/BAD to a command on a live connection (e.g. a MOVE): the connection is still usable."""


def _headers(raw: bytes, limit: int) -> bytes:
    """The header block with its blank line, at most `limit` bytes."""
    end = _HEADER_END.search(raw)
    return (raw[:end.end()] if end else raw)[:limit]


def _message_id(head: bytes) -> str:
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("Message-ID")
    return "".join(str(value).split()) if value else ""  # unfolded: ids hold no spaces


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
            client.socket().settimeout(_CLOSE_TIMEOUT)
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
            result[uid] = _message_id(head or b"")
        return result

    # -- changing --

    def move(self, uid: int, folder: str) -> None:
        """MOVE if offered, else COPY + \\Deleted + UID EXPUNGE of that UID alone (never a bare EXPUNGE:
        in a shared mailbox it would also expunge what a colleague deleted but meant to keep until later)."""
        client = self._connected()
        target = self._server_name(folder)
        if target == self._selected:
            return
        with self._guard(f"move message {uid} to {folder!r}"):
            self._ensure(client, target)
            try:
                self._transfer(client, uid, target)
            except IMAPClient.AbortError:
                raise
            except IMAPClient.Error as exc:
                if "TRYCREATE" not in str(exc):
                    raise
                self._known.discard(target)  # deleted since we created it: once more
                self._ensure(client, target)
                self._transfer(client, uid, target)

    def _transfer(self, client: IMAPClient, uid: int, target: str) -> None:
        if self.has_move:
            client.move([uid], target)
            return
        client.copy([uid], target)
        client.delete_messages([uid], silent=True)
        if self.has_uidplus:
            client.uid_expunge([uid])
        else:
            log.warning("imap %s: no UIDPLUS: message %d copied to %r and flagged \\Deleted, left for the "
                        "mailbox's own expunge", self.where, uid, target)

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
        every = max(self.settings.poll_seconds, _MIN_POLL)
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
            responses = client.idle_check(timeout=min(_SLICE, left))
            self._check_bye(responses)
            news = self._news(responses)
            # On EOF idle_check returns [] at once, forever (imapclient #565): the server hung up.
            quick = quick + 1 if not responses and time.monotonic() - started < min(_SLICE, left) / 2 else 0
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


class MaildirMailbox:
    """The embedded default: replies dropped into a local Maildir, with ImapMailbox's methods and semantics.

    Folders are Maildir++ subfolders of the Maildir ('Dunbot/Handled' -> '.Dunbot.Handled', as Dovecot and
    Courier lay them out); 'INBOX' is the Maildir itself. UIDs are numbered in arrival order and kept, with
    a UIDVALIDITY, in `dunbot-uids.json` in the watched folder: if that file is lost, the new UIDVALIDITY
    makes the watcher resync by Message-ID rather than skip or repeat mail. One watcher per Maildir.
    """

    STATE = "dunbot-uids.json"

    def __init__(self, path: Path, folder: str = INBOX, max_bytes: int = 10_000_000) -> None:
        self.path, self.folder, self.max_bytes = path, folder, max_bytes
        self._root: mailbox.Maildir | None = None
        self._dir = path
        self._state: dict[str, Any] = {}
        self._files: dict[int, Path] = {}

    def connect(self) -> None:
        try:
            self._root = mailbox.Maildir(self.path, factory=None, create=True)
            self._dir = self._folder(self.folder)
        except OSError as exc:
            raise MailboxError(f"cannot open the Maildir {self.path}: {exc.strerror or exc}") from exc
        try:
            self._state = json.loads((self._dir / self.STATE).read_text())
            self._state["uids"] = {str(k): int(v) for k, v in self._state["uids"].items()}
        except FileNotFoundError:
            self._state = {}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("maildir %s: %s is unreadable; numbering anew (the watcher resyncs by Message-ID)",
                        self._dir, self.STATE)
            self._state = {}
        if not self._state:
            self._state = {"uidvalidity": time.time_ns() // 1_000_000, "next": 1, "uids": {}}
            self._save()

    def close(self) -> None:
        self._root = None

    def uidvalidity(self) -> int:
        return int(self._state["uidvalidity"])

    def fetch_after(self, last_uid: int, limit: int | None = None) -> list[Incoming]:
        found = []
        for uid in sorted(u for u in self._refresh() if u > last_uid)[:limit]:
            read = self._read(uid, self.max_bytes + 1)
            if read is None:
                continue  # deleted meanwhile
            raw, size, mtime = read
            truncated = size > self.max_bytes
            found.append(Incoming(uid, _headers(raw, self.max_bytes) if truncated else raw, size, truncated,
                                  datetime.fromtimestamp(mtime, UTC)))
        return found

    def _read(self, uid: int, limit: int) -> tuple[bytes, int, float] | None:
        """(first `limit` bytes, size, mtime); follows a file a mail client moved from new/ to cur/ meanwhile."""
        for attempt in range(2):
            if attempt:
                self._refresh()
            path = self._files.get(uid)
            if path is None:
                return None
            try:
                with path.open("rb") as handle:
                    stat = os.fstat(handle.fileno())
                    return handle.read(limit), stat.st_size, stat.st_mtime
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise MailboxError(f"cannot read {path}: {exc.strerror}") from exc
        return None

    def message_ids(self) -> dict[int, str]:
        result = {}
        for uid in sorted(self._refresh()):
            read = self._read(uid, 64 * 1024)
            if read is not None:
                result[uid] = _message_id(_headers(read[0], 64 * 1024))
        return result

    def move(self, uid: int, folder: str) -> None:
        """One rename(2), keeping new/ or cur/ and the flags: atomic, so a crash never leaves two copies."""
        target = self._folder(folder)
        source = self._files.get(uid)
        if target == self._dir or source is None:
            return
        try:
            os.rename(source, target / source.parent.name / source.name)
        except FileNotFoundError:
            log.warning("maildir %s: message %d was gone before it could be moved to %r", self._dir, uid, folder)
        except OSError as exc:
            raise MailboxRefused(f"cannot move {source} to {folder!r}: {exc.strerror}") from exc

    def wait(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Sleep-poll the folder twice a second; True as soon as a message not yet numbered is there."""
        cancel = cancel or threading.Event()
        deadline = time.monotonic() + seconds
        while not cancel.is_set():
            if any(key not in self._state["uids"] for key in self._scan()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                break
            cancel.wait(min(0.5, left))
        return False

    def _folder(self, name: str) -> Path:
        if name.upper() == INBOX:
            return self.path
        if self._root is None:
            raise MailboxError(f"maildir {self.path}: not connected (call connect() first)")
        parts = name.split("/")
        if any("." in part or not part for part in parts):
            raise MailboxError(f"Maildir++ folder names cannot hold '.' or empty parts: {name!r}")
        self._root.add_folder(".".join(parts))  # creates it, or leaves an existing one as it is
        return self.path / f".{'.'.join(parts)}"

    def _scan(self) -> dict[str, Path]:
        """Unique key -> file for every message in new/ and cur/ (the key survives a client's new/->cur/ move)."""
        files = {}
        try:
            for sub in ("new", "cur"):
                with os.scandir(self._dir / sub) as entries:
                    for entry in entries:
                        if not entry.name.startswith("."):
                            files[entry.name.split(":", 1)[0]] = Path(entry.path)
        except OSError as exc:
            raise MailboxError(f"cannot read the Maildir {self._dir}: {exc.strerror}") from exc
        return files

    def _refresh(self) -> dict[int, Path]:
        """Number newcomers in arrival order, forget what left; returns UID -> file."""
        files = self._scan()
        uids: dict[str, int] = self._state["uids"]
        changed = False
        for key in [k for k in uids if k not in files]:
            del uids[key]
            changed = True
        newcomers = [k for k in files if k not in uids]
        for key in sorted(newcomers, key=lambda k: (_mtime(files[k]), k)):
            uids[key] = self._state["next"]
            self._state["next"] += 1
            changed = True
        if changed:
            self._save()
        self._files = {uid: files[key] for key, uid in uids.items()}
        return self._files

    def _save(self) -> None:
        state = self._dir / self.STATE
        temporary = state.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self._state))
            os.replace(temporary, state)  # atomic: a crash leaves the old numbering or the new, never half
        except OSError as exc:
            raise MailboxError(f"cannot record message numbers in {state}: {exc.strerror}") from exc


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0  # moved meanwhile: any order will do, the next read follows it


def mailbox_opener(settings: InboxSettings) -> Callable[[], ImapMailbox | MaildirMailbox]:
    """What a Watcher calls for each (re)connection, from [inbox] in config.toml."""
    if settings.imap is not None:
        imap = settings.imap
        return lambda: ImapMailbox(imap, settings.folder, settings.max_bytes)
    if settings.maildir is not None:
        path = settings.maildir
        return lambda: MaildirMailbox(path, settings.folder, settings.max_bytes)
    raise MailboxError("[inbox] names neither an [inbox.imap] table nor a maildir path")


# ---- the watcher -----------------------------------------------------------------------------


class Watcher:
    """Runs a mailbox in its own thread and hands each new message to the handler on the event loop.

    Every (re)connection calls `open_mailbox()` for a fresh mailbox. A handler error sets that one message
    aside in `human_folder`; a StoreError from the handler is not about the message, so the pass stops and
    the message is tried again later. Use poll() or watch(), one at a time; close() at the end.
    """

    BATCH = 25  # messages fetched at once: bounds memory to BATCH * max_bytes

    def __init__(self, open_mailbox: Callable[[], ImapMailbox | MaildirMailbox], store: Store, folder: str,
                 clock: Callable[[], datetime], *, idle_seconds: float = 540, backoff_initial: float = 1,
                 backoff_max: float = 300, human_folder: str = "Dunbot/Needs human") -> None:
        self.open_mailbox, self.store, self.folder, self.clock = open_mailbox, store, folder, clock
        self.idle_seconds, self.backoff_initial, self.backoff_max = idle_seconds, backoff_initial, backoff_max
        self.human_folder = human_folder
        self.lag = 0.0                        # seconds from the newest handled message's arrival to its handling
        self.handled = 0                      # messages handed over since start
        self.last_error: str | None = None    # the current failure, None while the mailbox works
        self._box: ImapMailbox | MaildirMailbox | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mailbox-{folder}")
        self._cancel = threading.Event()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _mailbox(self) -> ImapMailbox | MaildirMailbox:
        if self._box is None:
            box = self.open_mailbox()
            try:
                await self._call(box.connect)
            except BaseException:
                self._executor.submit(box.close)  # if we were cancelled mid-connect, the thread still connects
                raise
            self._box = box
        return self._box

    async def _drop(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            await self._call(box.close)

    async def close(self) -> None:
        self._cancel.set()
        await self._drop()
        self._executor.shutdown(wait=False)

    async def poll(self, handler: Handler) -> int:
        """One pass: connect if needed, hand over every message after the stored position; returns how many.

        A mailbox failure does not raise: it is logged and kept in `last_error` (None after a clean pass), and
        the next call reconnects. Store errors and bugs do raise.
        """
        before = self.handled
        try:
            await self._pass(handler)
            self.last_error = None
        except MailboxError as exc:
            self.last_error = str(exc)
            log.warning("mailbox %s: %s", self.folder, exc)
        return self.handled - before

    async def _pass(self, handler: Handler) -> None:
        try:
            await self._catch_up(await self._mailbox(), handler)
        except MailboxError:
            await self._drop()
            raise

    async def _catch_up(self, box: ImapMailbox | MaildirMailbox, handler: Handler) -> None:
        uidvalidity = await self._call(box.uidvalidity)
        position = self.store.inbox_position(self.folder)
        last, stored = 0, position
        skip: frozenset[int] = frozenset()
        if position is not None and position[0] == uidvalidity:
            last = position[1]
        elif position is not None:
            log.warning("mailbox %s: UIDVALIDITY changed from %d to %d (folder recreated or server restored): "
                        "resyncing by Message-ID", self.folder, position[0], uidvalidity)
            ids = await self._call(box.message_ids)
            skip = frozenset(uid for uid, mid in ids.items() if mid and self.store.reply_seen(mid))
        while not self._cancel.is_set():  # until a fetch comes back empty: a MOVE's reply may announce new mail
            batch = await self._call(box.fetch_after, last, self.BATCH)
            if not batch:
                break
            for message in batch:
                if message.uid not in skip:
                    await self._handle(box, message, handler)
                    self.handled += 1
                last, stored = message.uid, (uidvalidity, message.uid)
                self.store.set_inbox_position(self.folder, uidvalidity, last, self.clock())
                if self._cancel.is_set():
                    break
        if stored != (uidvalidity, last):  # first run, or a resync that found nothing to hand over
            self.store.set_inbox_position(self.folder, uidvalidity, last, self.clock())

    async def _handle(self, box: ImapMailbox | MaildirMailbox, message: Incoming, handler: Handler) -> None:
        try:
            target = await handler(message)
        except StoreError:
            raise
        except Exception:
            log.exception("mailbox %s: the handler failed on message %d; setting it aside in %r",
                          self.folder, message.uid, self.human_folder)
            target = self.human_folder
        if target is not None:
            await self._move(box, message.uid, target)
        if message.arrived is not None:
            with suppress(TypeError):  # a naive clock cannot be compared: no metric, no crash
                self.lag = max(0.0, (self.clock() - message.arrived).total_seconds())

    async def _move(self, box: ImapMailbox | MaildirMailbox, uid: int, target: str) -> None:
        """A refused move sets the message aside for a person; if even that is refused it stays where it is."""
        for folder in dict.fromkeys((target, self.human_folder)):
            try:
                await self._call(box.move, uid, folder)
                log.debug("mailbox %s: message %d moved to %r", self.folder, uid, folder)
                return
            except MailboxRefused as exc:
                log.error("mailbox %s: %s", self.folder, exc)
        log.error("mailbox %s: message %d left in place", self.folder, uid)

    async def watch(self, handler: Handler, stop: asyncio.Event) -> None:
        """Until `stop`: catch up, IDLE (renewed every idle_seconds), catch up on every wake and reconnect.

        Failures are logged and retried with exponential backoff; nothing but cancellation escapes.
        """
        self._cancel.clear()
        relay = asyncio.create_task(self._relay(stop))
        delay, failures = self.backoff_initial, 0
        try:
            while not stop.is_set():
                try:
                    await self._pass(handler)
                    if failures:
                        log.info("mailbox %s: working again after %d failed attempts", self.folder, failures)
                    delay, failures, self.last_error = self.backoff_initial, 0, None
                    box = await self._mailbox()
                    await self._call(box.wait, self.idle_seconds, self._cancel)
                except Exception as exc:
                    failures += 1
                    self.last_error = str(exc) if isinstance(exc, DunbotError) else f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, MailboxError):
                        log.warning("mailbox %s: %s; retrying in %.3g s (attempt %d)", self.folder,
                                    self.last_error, delay, failures)
                    else:
                        log.exception("mailbox %s: unexpected failure; retrying in %.3g s (attempt %d)",
                                      self.folder, delay, failures)
                    await self._drop()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, self.backoff_max)
        finally:
            relay.cancel()
            self._cancel.set()  # frees the thread if we leave by cancellation mid-IDLE
            await self._drop()
            self._cancel.clear()
        log.info("mailbox %s: stopped watching", self.folder)

    async def _relay(self, stop: asyncio.Event) -> None:
        """The thread cannot await an asyncio.Event: mirror it into a threading.Event it checks every half second."""
        await stop.wait()
        self._cancel.set()
