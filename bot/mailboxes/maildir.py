"""The embedded default: replies dropped into a local Maildir, with the same methods as IMAP."""

from __future__ import annotations

import json
import logging
import mailbox
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.mailboxes.common import (
    INBOX,
    Incoming,
    MailboxError,
    MailboxRefused,
    header_block,
    message_id_of,
)

log = logging.getLogger(__name__)



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
            found.append(Incoming(uid, header_block(raw, self.max_bytes) if truncated else raw, size, truncated,
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
                result[uid] = message_id_of(header_block(read[0], 64 * 1024))
        return result

    def move(self, uids: Sequence[int], folder: str) -> None:
        """One rename(2) each, keeping new/ or cur/ and the flags: atomic, so a crash never leaves two copies.

        A refused rename stops the batch: the messages not yet moved stay, as IMAP leaves a refused MOVE's.
        """
        target = self._folder(folder)
        if target == self._dir:
            return
        for uid in uids:
            source = self._files.pop(uid, None)  # moved once: a retry of the batch elsewhere passes it over
            if source is None:
                continue
            try:
                os.rename(source, target / source.parent.name / source.name)
            except FileNotFoundError:
                log.warning("maildir %s: message %d was gone before it could be moved to %r", self._dir, uid, folder)
            except OSError as exc:
                self._files[uid] = source
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


