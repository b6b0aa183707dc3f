"""A reply written by a salesperson, sent through the bot's own outbox so it joins the case's thread.

The message is composed like a reminder (headers from structured values, the company as sender
and Reply-To, a fresh Message-ID at the company's domain, In-Reply-To and References pointing at
the case's last message), recorded in the outbox as stage "handwritten" before any byte is sent,
and then delivered by `outbox.deliver`, so retries, refusals and crash recovery work as for any
reminder, and the customer's answer is matched to the case by its References.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from bot import outbox
from bot.casebook import event
from bot.config import Settings
from bot.errors import DunbotError
from bot.messages import POLICY
from bot.store import Queued, Store
from bot.transports import make_transport
from bot.users import User
from bot.web.pages import decode_subject
from bot.web.queries import Mail

log = logging.getLogger(__name__)
STAGE = "handwritten"
MAX_BODY = 20_000
MAX_REFERENCES = 20


class ReplyError(DunbotError):
    """A reply that cannot be sent as written (no text, no address)."""


def default_subject(mails: list[Mail], fallback: str) -> str:
    if not mails:
        return fallback
    subject = decode_subject(mails[-1].subject)
    return subject if subject.lower().startswith(("re:", "aw:", "rv:")) else f"Re: {subject}"


def _address(name: str, addr: str) -> Address:
    try:
        return Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError, MessageError) as exc:
        raise ReplyError(f"{addr!r} is not an address the reply can go to") from exc


def compose(case: dict[str, Any], mails: list[Mail], subject: str, body: str, author: User, settings: Settings,
            now: datetime) -> Queued:
    """The reply as the exact bytes to record and send; raises ReplyError for what cannot go out."""
    company = settings.company
    to = str(case.get("contact_email") or "").strip()
    if not to:
        raise ReplyError("the customer has no contact address in the ledger")
    subject = " ".join(subject.split())[:250]
    body = body.replace("\r\n", "\n").strip()
    if not subject:
        raise ReplyError("the reply needs a subject")
    if not body:
        raise ReplyError("the reply is empty: write something before sending")
    if len(body) > MAX_BODY:
        raise ReplyError(f"the reply is {len(body)} characters long; keep it under {MAX_BODY}")
    message_id = f"<dunbot.hand.{secrets.token_hex(16)}@{company.message_id_domain}>"
    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = message_id
    msg["Date"] = format_datetime(now)
    msg["From"] = _address(company.name, company.email)
    msg["Reply-To"] = _address(company.name, company.reply_to)
    msg["To"] = _address(str(case.get("contact_name") or case.get("name") or ""), to)
    msg["Subject"] = subject
    if mails:
        references = list(dict.fromkeys(m.message_id for m in mails))[-MAX_REFERENCES:]
        msg["In-Reply-To"] = mails[-1].message_id
        msg["References"] = " ".join(references)
    msg["X-Dunbot-Stage"] = STAGE
    msg["X-Loop"] = f"dunbot@{company.message_id_domain}"
    signature = "\n".join(line for line in (author.display_name or author.username, company.name, company.phone)
                          if line)
    msg.set_content(f"{body}\n\n-- \n{signature}\n", cte="quoted-printable")
    return Queued(message_id=message_id, customer_id=str(case["customer_id"]), contact=to, track=STAGE, stage=STAGE,
                  language=str(case.get("language") or company.language), sender=company.email, recipients=(to,),
                  subject=subject, raw=msg.as_bytes(), balances=())


def record(store: Store, queued: Queued, body: str, author: User, now: datetime) -> None:
    """Queue the reply and note in the timeline who wrote what, in one transaction.

    It is recorded like a reminder but without invoices: a reply pays nothing off, so the dunning pass
    never withdraws it as stale, and it joins the case's thread like any reminder.
    """
    with store.engine.begin() as c:
        Store.insert_queued(c, queued, now)
        event(c, queued.customer_id, actor=author.username, kind=STAGE, now=now,
              summary=f"reply to {queued.contact}: {queued.subject}",
              detail={"message_id": queued.message_id, "to": queued.contact, "subject": queued.subject,
                      "body": body.strip()})


async def deliver(store: Store, settings: Settings, message_id: str, clock: Callable[[], datetime]) -> None:
    """Send one recorded reply now; run after the page has answered, so errors are logged, never raised."""
    try:
        transport, _workers = make_transport(settings)
        await transport.open()
        try:
            report = await outbox.deliver(store, transport, clock, outbox.Retry.from_settings(settings),
                                          outbox.Report(), only=frozenset({message_id}))
        finally:
            await transport.close()
    except Exception:
        log.exception("hand-written reply %s stays queued for the next dunning pass", message_id)
        return
    if report.sent:
        log.info("hand-written reply %s sent", message_id)
    else:
        log.warning("hand-written reply %s not sent yet (%s)", message_id,
                    report.aborted or "; ".join(report.errors) or "will be retried")
