"""Turns a rendered reminder into the exact bytes that go on the wire (and into the store).

Headers are built from structured values (email.headerregistry), never by pasting strings, so a
name or address from the ledger cannot add a header. The bytes are stored before sending, so a
retry after a crash sends the very same message, Date and Message-ID included.

Auto-Submitted: reminders carry none (the same meaning as "no"). RFC 3834 responders stay silent to
`auto-generated` mail, and their out-of-office reply is how the bot learns when a contact is back.
Loops are prevented on our side instead: the bot never answers mail automatically, and X-Loop marks
its own messages so the inbox can recognise them coming back.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from bot.config import Company
from bot.policy import Reminder
from bot.templates import Rendered

POLICY = SMTP.clone(max_line_length=998)


def _address(name: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def compose(reminder: Reminder, rendered: Rendered, company: Company, sent_at: datetime) -> bytes:
    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = reminder.message_id
    msg["Date"] = format_datetime(sent_at)
    msg["From"] = _address(company.name, company.email)
    msg["Reply-To"] = _address(company.name, company.reply_to)
    msg["To"] = _address(reminder.customer.contact_name or reminder.customer.name, reminder.to)
    if reminder.cc:
        msg["Cc"] = [_address("", a) for a in reminder.cc]
    msg["Subject"] = rendered.subject
    if reminder.in_reply_to:
        msg["In-Reply-To"] = reminder.in_reply_to
        msg["References"] = " ".join(reminder.references)
    msg["X-Dunbot-Invoices"] = ", ".join(reminder.invoice_ids)
    msg["X-Dunbot-Stage"] = f"{reminder.track}/{reminder.stage.name}"
    msg["X-Loop"] = f"dunbot@{company.message_id_domain}"
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def recipients(reminder: Reminder) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for address in (reminder.to, *reminder.cc):
        seen.setdefault(address.lower(), address)
    return tuple(seen.values())
