"""Turns a rendered reminder into the exact bytes that go on the wire (and into the store).

Headers are built from structured values (email.headerregistry), never by pasting strings, so a
name or address from the ledger cannot add a header. The bytes are stored before sending, so a
retry after a crash sends the very same message, Date and Message-ID included.

Auto-Submitted: reminders carry none (the same meaning as "no"). RFC 3834 responders stay silent to
`auto-generated` mail, and their out-of-office reply is how the bot learns when a contact is back.
Loops are prevented on our side instead: the bot never answers mail automatically, and X-Loop marks
its own messages so the inbox can recognise them coming back.

Speed: the email package takes ~2 ms to build one of these messages, most of it parsing and
re-folding headers that need neither. `compose` writes the very same bytes itself wherever the result
is certain (ASCII values that fit on a line, the fixed MIME skeleton, the package's own
quoted-printable encoder and boundary rule) and hands every other header to the email package.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.headerregistry import Address
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from bot.config import Company

if TYPE_CHECKING:  # the daemon delivers and composes notices; planning and rendering run in its child
    from bot.policy import Reminder


@dataclass(frozen=True, slots=True)
class Rendered:
    """A ready message: `subject` is always a single line, safe for a mail header."""

    subject: str
    text: str
    html: str


_MAX = 998
POLICY = SMTP.clone(max_line_length=_MAX)
_WIDTH = len(repr(sys.maxsize - 1))  # as email.generator formats the boundary's number
# Values the email package would write back unchanged: printable ASCII words between single spaces
# ("=?" aside: it reads that as the start of an encoded word), and plain names and addresses.
_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
_MESSAGE_ID = re.compile(r"<[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+>")
_NAME = re.compile(r"[A-Za-z0-9'-]+(?: [A-Za-z0-9'-]+)*")
_ADDR = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TEXT_PART = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
# The email package gives the part it creates for the alternative a MIME-Version of its own.
_HTML_PART = (b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
              b"MIME-Version: 1.0\r\n\r\n")


def address(name: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _fold(name: str, value: Any) -> bytes:
    """One header exactly as the email package writes it (`msg[name] = value`, then the generator)."""
    return POLICY.fold_binary(*POLICY.header_store_parse(name, value))  # type: ignore[no-any-return]


@lru_cache(maxsize=256)
def _fold_repeated(name: str, value: str) -> bytes:
    """Headers that repeat from message to message (Date, X-Loop, ...): folded once."""
    return _fold(name, value)


@lru_cache(maxsize=64)
def _company_address(name: str, display: str, addr: str) -> bytes:
    return _fold(name, address(display, addr))


def _text(name: str, value: str) -> bytes:
    if "=?" not in value and len(name) + len(value) + 2 <= _MAX and _TEXT.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return _fold(name, value)


def _addresses(name: str, pairs: list[tuple[str, str]], many: bool) -> bytes:
    """To or Cc; `many`: the value is a list of addresses (as Cc is set), not one."""
    if all(_ADDR.fullmatch(addr) and (not display or _NAME.fullmatch(display)) for display, addr in pairs):
        line = f"{name}: {', '.join(f'{d} <{a}>' if d else a for d, a in pairs)}"
        if len(line) <= _MAX:
            return f"{line}\r\n".encode("ascii")
    value = [address(d, a) for d, a in pairs] if many else address(*pairs[0])
    return _fold(name, value)


# Characters the body encoding escapes (line ends stay), "=" aside: str.replace does that one, first.
_QP_ESCAPE = re.compile("[" + re.escape("".join(
    chr(c) for c in range(256) if quoprimime.body_check(c) and chr(c) not in "\r\n=")) + "]")


def _qp_escape(match: re.Match[str]) -> str:
    return quoprimime.quote(match.group())


def _body_encode(body: str, maxlinelen: int) -> str:
    """email.quoprimime.body_encode, line for line, but escaping with str.replace and one pattern instead of
    str.translate through a 256-entry table (a slow path in CPython): 5x faster on these bodies."""
    if not body:
        return body
    body = _QP_ESCAPE.sub(_qp_escape, body.replace("=", "=3D"))
    soft_break = "=\n"
    maxlinelen1 = maxlinelen - 1
    encoded_body: list[str] = []
    append = encoded_body.append
    for line in body.splitlines():
        start = 0
        laststart = len(line) - 1 - maxlinelen
        while start <= laststart:
            stop = start + maxlinelen1
            if line[stop - 2] == "=":  # do not break up an escape sequence
                append(line[start:stop - 1])
                start = stop - 2
            elif line[stop - 1] == "=":
                append(line[start:stop])
                start = stop - 1
            else:
                append(line[start:stop] + "=")
                start = stop
        if line and line[-1] in " \t":  # whitespace at the end of a line must be protected
            room = start - laststart
            if room >= 3:
                q = quoprimime.quote(line[-1])
            elif room == 2:
                q = line[-1] + soft_break
            else:
                q = soft_break + quoprimime.quote(line[-1])
            append(line[start:-1] + q)
        else:
            append(line[start:])
    if body[-1] in "\r\n":
        append("")
    return "\n".join(encoded_body)


def _quoted_printable(text: str) -> bytes:
    """What EmailMessage.set_content(text, cte="quoted-printable") stores, written with CRLF."""
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    return _body_encode(body.decode("latin-1"), _MAX).replace("\n", "\r\n").encode("ascii")


def _boundary(parts: bytes) -> bytes:
    """email.generator's boundary: random, and (rarely) made longer until no line of the parts is it."""
    boundary = f"{'=' * 15}{random.randrange(sys.maxsize):0{_WIDTH}d}=="
    candidate, counter = boundary, 0
    while b"--" + candidate.encode() in parts and re.search(
            ("^--" + re.escape(candidate) + "(--)?$").encode(), parts, re.MULTILINE):
        candidate = f"{boundary}.{counter}"
        counter += 1
    return candidate.encode("ascii")


def compose(reminder: Reminder, rendered: Rendered, company: Company, sent_at: datetime) -> bytes:
    customer = reminder.customer
    head = [
        _text("Message-ID", reminder.message_id) if _MESSAGE_ID.fullmatch(reminder.message_id)
        else _fold("Message-ID", reminder.message_id),
        _fold_repeated("Date", format_datetime(sent_at)),
        _company_address("From", company.name, company.email),
        _company_address("Reply-To", company.name, company.reply_to),
        _addresses("To", [(customer.contact_name or customer.name, reminder.to)], many=False),
    ]
    if reminder.cc:
        head.append(_addresses("Cc", [("", a) for a in reminder.cc], many=True))
    head.append(_text("Subject", rendered.subject))
    if reminder.in_reply_to:
        head.append(_text("In-Reply-To", reminder.in_reply_to))
        head.append(_text("References", " ".join(reminder.references)))
    head.append(_text("X-Dunbot-Invoices", ", ".join(reminder.invoice_ids)))
    head.append(_fold_repeated("X-Dunbot-Stage", f"{reminder.track}/{reminder.stage.name}"))
    head.append(_fold_repeated("X-Loop", f"dunbot@{company.message_id_domain}"))
    text = _TEXT_PART + _quoted_printable(rendered.text)
    html = _HTML_PART + _quoted_printable(rendered.html)
    boundary = _boundary(text + b"\r\n" + html)
    head.append(b"MIME-Version: 1.0\r\n")
    head.append(_fold_repeated("Content-Type", f'multipart/alternative; boundary="{boundary.decode()}"')
                if len(boundary) > 36 else
                b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n')
    return b"".join((*head, b"\r\n--", boundary, b"\r\n", text, b"\r\n--", boundary, b"\r\n", html,
                     b"\r\n--", boundary, b"--\r\n"))


def recipients(reminder: Reminder) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for address in (reminder.to, *reminder.cc):
        seen.setdefault(address.lower(), address)
    return tuple(seen.values())
