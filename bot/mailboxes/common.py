"""What every mailbox adapter hands over, and the errors they raise."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from bot.errors import DunbotError

INBOX = "INBOX"
IDLE_SLICE = 0.5          # seconds per idle_check: how soon a stop is noticed (the daemon allows close() 1 s)
CLOSE_TIMEOUT = 2.0  # LOGOUT is a courtesy: never let it hold up a stop
MIN_POLL = 0.1       # a zero poll_seconds must not turn IDLE or NOOP into a busy loop
HEADER_END = re.compile(rb"\r?\n\r?\n")


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


def header_block(raw: bytes, limit: int) -> bytes:
    """The header block with its blank line, at most `limit` bytes."""
    end = HEADER_END.search(raw)
    return (raw[:end.end()] if end else raw)[:limit]


def message_id_of(head: bytes) -> str:
    value = BytesHeaderParser(policy=compat32).parsebytes(head).get("Message-ID")
    return "".join(str(value).split()) if value else ""  # unfolded: ids hold no spaces


