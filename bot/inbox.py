"""Acting on the inbox: each new message is matched to its case, read, decided on and recorded.

The mailbox adapters (bot/mailboxes.py) hand messages over; this module turns one message into one
recorded decision and names the folder it goes to. Recording is idempotent by Message-ID, so a
message seen twice (a crash before the move, a UIDVALIDITY resync) is never acted on twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr, parsedate_to_datetime

from bot.cases import HUMAN, Decision, Lookup, decide, match, match_thread
from bot.config import Settings
from bot.directory import StoreDirectory
from bot.mailboxes import Incoming
from bot.store import Store
from bot.triage import Classification, classification_json, classify
from bot.triage.phrases import fold

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w[\w/.-]*")


def mentions(text: str, refs: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """The folded words of a reply's text (with their parts, as triage tries them) and the digit strings of its
    words and of the invoice references read without known invoices: what a known invoice could be named by."""
    words: set[str] = set()
    for word in _WORD.findall(fold(text)):
        words.update((word, *word.split("/"), word.rstrip("./")))
    digits = {re.sub(r"\D", "", value) for value in (*words, *refs)}
    return words, digits - {""}


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
        self.directory: Lookup = StoreDirectory(store)
        self.tally = Tally()
        self.loop_marker = f"dunbot@{settings.company.message_id_domain}".lower()

    async def __call__(self, incoming: Incoming) -> str | None:
        return self.handle(incoming.raw, truncated=incoming.truncated)

    def handle(self, raw: bytes, *, truncated: bool = False) -> str | None:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:200_000], headersonly=True)
        message_id = _header(headers, "Message-ID") or f"<{hashlib.sha256(raw).hexdigest()}@dunbot.invalid>"
        if _header(headers, "X-Loop").lower() == self.loop_marker:
            self.tally.own += 1
            return None
        escalated = self.store.reply_escalated(message_id)
        if escalated is not None:
            self.tally.repeated += 1
            log.info("reply %s was handled before; not acted on again", message_id)
            return self.settings.inbox.human_folder if escalated else self.settings.inbox.handled_folder
        found = self._match(raw, headers)
        if found is None:
            self.tally.unmatched += 1
            log.info("message %s matches no case; left in the inbox", message_id)
            return None
        customer_id, by, classification = found
        now = self.clock()
        received = _sent_at(_header(headers, "Date")) or now
        contact = self.directory.contact_of(customer_id)
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
        """Read the reply knowing its customer's invoices; out of thread, knowing every invoice it could name:
        a first reading without them gives its words, and the store the invoices those words can be."""
        if customer_id is not None:
            language = self.directory.language_of(customer_id)
            return self._read(raw, language, self.directory.invoices_of(customer_id))
        first = self._read(raw, None, frozenset())
        known = self.directory.known_invoices(*mentions(first.new_text, first.invoice_refs))
        return self._read(raw, None, known) if known else first

    def _read(self, raw: bytes, language: str | None, known: frozenset[str]) -> Classification:
        return classify(raw, known_language=language, thread_language=language, known_invoices=known,
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
                sorted(self.directory.invoices_of(customer_id))), "recommendation": d.recommendation or ""}
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
