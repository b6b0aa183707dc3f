"""Acting on the inbox: each new message is matched to its case, read, decided on and recorded.

The mailbox adapters (bot/mailboxes.py) hand messages over; this module turns one message into one
recorded decision and names the folder it goes to. Recording is idempotent by Message-ID, so a
message seen twice (a crash before the move, a UIDVALIDITY resync) is never acted on twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr, parsedate_to_datetime

from bot.cases import HUMAN, Decision, Directory, decide, match, match_thread
from bot.config import Settings
from bot.mailboxes import Incoming
from bot.store import Store
from bot.triage import Classification, classification_json, classify

log = logging.getLogger(__name__)


def build_directory(store: Store) -> Directory:
    by_message_id: dict[str, str] = {}
    by_invoice: dict[str, str] = {}
    by_address: dict[str, str] = {}
    language: dict[str, str] = {}
    contact: dict[str, str] = {}
    invoices: dict[str, set[str]] = {}
    for message_id, customer_id, recipients, lang, invoice_id in store.directory_rows():
        by_message_id[message_id] = customer_id
        by_invoice[invoice_id.upper()] = customer_id
        addresses = json.loads(recipients)
        for address in addresses:
            by_address[address.lower()] = customer_id
        contact[customer_id] = addresses[0] if addresses else ""
        language[customer_id] = lang
        invoices.setdefault(customer_id, set()).add(invoice_id)
    return Directory(by_message_id=by_message_id, by_invoice=by_invoice, by_address=by_address, language=language,
                     invoices={k: frozenset(v) for k, v in invoices.items()}, contact=contact)


@dataclass(slots=True)
class Tally:
    """What an inbox pass did, for the command line, the logs and the metrics."""

    handled: int = 0
    human: int = 0
    unmatched: int = 0
    repeated: int = 0
    own: int = 0
    by_intent: dict[str, int] = field(default_factory=dict)


def _header(headers: object, name: str) -> str:
    value = headers.get(name)  # type: ignore[attr-defined]
    return " ".join(str(value).split()) if value is not None else ""


def _sent_at(date_header: str) -> datetime | None:
    try:
        value = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo else None


class Processor:
    """Turns a message into a recorded decision and the folder it belongs in (None: not ours, leave it)."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self.newest = store.newest_reminder_id()
        self.directory = build_directory(store)
        self.tally = Tally()
        self.loop_marker = f"dunbot@{settings.company.message_id_domain}".lower()

    def refresh(self) -> None:
        """Rebuild the directory, but only when reminders were recorded since it was built."""
        newest = self.store.newest_reminder_id()
        if newest != self.newest:
            self.directory, self.newest = build_directory(self.store), newest

    async def __call__(self, incoming: Incoming) -> str | None:
        return self.handle(incoming.raw, truncated=incoming.truncated)

    def handle(self, raw: bytes, *, truncated: bool = False) -> str | None:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:200_000], headersonly=True)
        message_id = _header(headers, "Message-ID") or f"<{hashlib.sha256(raw).hexdigest()}@dunbot.invalid>"
        if _header(headers, "X-Loop").lower() == self.loop_marker:
            self.tally.own += 1
            return None
        if self.store.reply_seen(message_id):
            self.tally.repeated += 1
            log.info("reply %s was handled before; not acted on again", message_id)
            return self.settings.inbox.handled_folder
        found = self._match(raw, headers)
        if found is None:
            self.refresh()
            found = self._match(raw, headers)
        if found is None:
            self.tally.unmatched += 1
            log.info("message %s matches no case; left in the inbox", message_id)
            return None
        customer_id, by, classification = found
        now = self.clock()
        received = _sent_at(_header(headers, "Date")) or now
        contact = self.directory.contact.get(customer_id, "")
        decision = decide(classification, received, self.settings.company.timezone, contact, self.settings.triage)
        if truncated:
            decision = Decision(action=f"message over {self.settings.inbox.max_bytes} bytes: set aside for a person",
                                folder=HUMAN, escalation="unsure", recommendation="Read the message yourself.")
        self._record(raw, message_id, customer_id, by, headers, received, classification, decision, now)
        return self.settings.inbox.human_folder if decision.folder == HUMAN else self.settings.inbox.handled_folder

    def _match(self, raw: bytes, headers: object) -> tuple[str, str, Classification] | None:
        """Match by thread from the headers alone; only a reply out of thread needs a first reading to match."""
        in_reply_to, references = _header(headers, "In-Reply-To"), _header(headers, "References")
        found = match_thread(self.directory, in_reply_to, references)
        if found is None:
            found = match(self.directory, in_reply_to=in_reply_to, references=references,
                          subject=_header(headers, "Subject"), sender=parseaddr(_header(headers, "From"))[1],
                          classification=self._classify(raw, None))
        if found is None:
            return None
        return found.customer_id, found.by, self._classify(raw, found.customer_id)

    def _classify(self, raw: bytes, customer_id: str | None) -> Classification:
        directory = self.directory
        language = directory.language.get(customer_id or "")
        known = directory.invoices.get(customer_id or "") if customer_id else frozenset(directory.by_invoice)
        return classify(raw, known_language=language, thread_language=language, known_invoices=known or frozenset(),
                        our_domains=frozenset({self.settings.company.message_id_domain,
                                               self.settings.company.email.rpartition("@")[2]}),
                        languages=self.settings.languages, max_bytes=self.settings.inbox.max_bytes)

    def _record(self, raw: bytes, message_id: str, customer_id: str, by: str, headers: object, received: datetime,
                c: Classification, d: Decision, now: datetime) -> None:
        document = classification_json(c, message_id)
        reply = {
            "message_id": message_id, "customer_id": customer_id, "matched_by": by,
            "sender": parseaddr(_header(headers, "From"))[1][:320], "subject": _header(headers, "Subject")[:2000],
            "sent_at": received, "raw": raw, "language": c.language, "intent": c.intent,
            "confidence": float(c.confidence), "escalate": d.folder == HUMAN,
            "classification": json.dumps({**document, "new_text": c.new_text[:5000],
                                          "new_contact": c.new_contact,
                                          "return_date": c.return_date.isoformat() if c.return_date else None},
                                         ensure_ascii=False),
            "action": d.action,
        }
        hold = None if d.hold is None else {"kind": d.hold.kind, "until": d.hold.until, "reason": d.hold.reason,
                                            "amount": d.hold.amount}
        escalation = None if d.escalation is None else {
            "reason": d.escalation, "detail": c.new_text[:1000] or d.action, "invoice_ids": json.dumps(
                sorted(self.directory.invoices.get(customer_id, ()))), "recommendation": d.recommendation or ""}
        flag = None if d.flag is None else {"kind": d.flag, "detail": d.action}
        rid = self.store.record_reply(reply, hold=hold, escalation=escalation, flag=flag,
                                      invalid_contacts=d.invalid_contacts, now=now)
        if rid is None:
            self.tally.repeated += 1
            return
        if d.folder == HUMAN:
            self.tally.human += 1
        else:
            self.tally.handled += 1
        self.tally.by_intent[c.intent] = self.tally.by_intent.get(c.intent, 0) + 1
        log.info("reply %s from customer %s (matched by %s): %s, confidence %.2f, evidence %s -> %s", message_id,
                 customer_id, by, c.intent, c.confidence, list(c.evidence)[:3], d.action)
