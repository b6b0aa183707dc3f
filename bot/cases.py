"""A customer's case: which customer a reply belongs to, and what the bot does about what it says.

Pure functions over plain data, like the policy: what the bot sent comes in through a `Lookup` (the store
answers it, bot/directory.py) and the store applies the `Decision`; nothing here reads a server or a file.

The responses follow collection practice: a customer who says they paid is believed for a while
and finance checks the bank; a promise is held to its date; anything that needs judgement
(a dispute, a hardship request, a lawyer, a wrong contact) stops the reminders and goes to a person
with the step a collector would take next.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from bot.config import TriageSettings
from bot.triage import Classification

HANDLED, HUMAN = "handled", "human"

SUGGESTED_STEPS: Mapping[str, str] = {
    "dispute": "Check the documents and the goods with the customer, agree a fix (credit note, replacement, "
               "partial payment of the undisputed part), then resume.",
    "hardship": "Offer part payment now and installments for the rest; agree dates and amounts, and record them "
                "as a payment plan.",
    "request_info": "Send what they ask for (invoice copy, statement, proof of delivery, bank details), then "
                    "resume the reminders.",
    "wrong_contact": "Find the person who can decide: the owner or the finance director; update the contact and "
                     "resume.",
    "legal": "Stop contacting the customer and pass the case to counsel.",
    "unsubscribe": "Call the customer: the debt stands, but agree how and to whom reminders should go.",
    "bounce": "Find another contact: ask the account manager, or look up the finance director.",
    "other": "Read the reply and answer it personally.",
    "unsure": "Read the reply: the bot could not tell what it means.",
    "broken_promises": "Two promises were broken: call the decision-maker, agree a firm date, and consider a "
                       "third-party agency.",
    "age": "Hand the case to a third-party collection agency now; after three months the chance of recovery falls "
           "quickly.",
}
ESCALATING = frozenset({"dispute", "hardship", "request_info", "wrong_contact", "legal", "unsubscribe"})
_INVOICE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.-]{1,63}")


class Lookup(Protocol):
    """What matching a reply asks about the reminders sent (the newest reminder answers first).

    Invoice keys are upper-cased, addresses lower-cased. The store answers with indexed queries
    (bot/directory.py); the tests of the pure matching answer from plain mappings (tests/lookups.py).
    """

    def customer_of_message(self, message_id: str) -> str | None: ...
    def customer_of_invoice(self, invoice: str) -> str | None: ...
    def customer_of_address(self, address: str) -> str | None: ...
    def owners_of_domain(self, domain: str) -> set[str]: ...  # two or more mean "ambiguous"
    def language_of(self, customer_id: str) -> str | None: ...
    def contact_of(self, customer_id: str) -> str: ...
    def invoices_of(self, customer_id: str) -> frozenset[str]: ...

    def known_invoices(self, words: Collection[str], digits: Collection[str], /) -> frozenset[str]:
        """Invoice keys a reply out of thread may name, given its folded words and digit strings (a superset
        will do: triage looks for these keys in the text)."""
        ...


@dataclass(frozen=True, slots=True)
class Match:
    customer_id: str
    by: str  # "thread", "bounce", "invoice", "sender", "domain"


def _message_ids(header: str) -> list[str]:
    return re.findall(r"<[^<>\s]+>", header or "")


def match_thread(directory: Lookup, in_reply_to: str, references: str) -> Match | None:
    for mid in reversed(_message_ids(in_reply_to) + _message_ids(references)):
        customer = directory.customer_of_message(mid)
        if customer is not None:
            return Match(customer, "thread")
    return None


def match(directory: Lookup, *, in_reply_to: str, references: str, subject: str, sender: str,
          classification: Classification) -> Match | None:
    """The customer a reply belongs to: its thread, else an invoice number, else the sender; None if unknown."""
    thread = match_thread(directory, in_reply_to, references)
    if thread is not None:
        return thread
    bounce = classification.bounce
    if bounce and bounce.original_message_id:
        customer = directory.customer_of_message(bounce.original_message_id)
        if customer is not None:
            return Match(customer, "bounce")
    if bounce:
        for address in bounce.recipients:
            customer = directory.customer_of_address(address.lower())
            if customer is not None:
                return Match(customer, "bounce")
    for ref in (*classification.invoice_refs, *_INVOICE_TOKEN.findall(subject)):
        customer = directory.customer_of_invoice(ref.upper())
        if customer:
            return Match(customer, "invoice")
    address = sender.lower()
    customer = directory.customer_of_address(address)
    if customer is not None:
        return Match(customer, "sender")
    owners = directory.owners_of_domain(address.rpartition("@")[2]) if "@" in address else set()
    if len(owners) == 1:
        return Match(owners.pop(), "domain")
    return None


@dataclass(frozen=True, slots=True)
class HoldSpec:
    kind: str  # "payment_reported", "promise", "out_of_office"
    until: datetime
    reason: str
    amount: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one reply; `action` says it in words for the record and the log."""

    action: str
    folder: str
    hold: HoldSpec | None = None
    escalation: str | None = None
    recommendation: str | None = None
    flag: str | None = None
    invalid_contacts: tuple[str, ...] = ()


def _start_of(day: date, zone: str) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=ZoneInfo(zone))


def _escalate(reason: str, action: str, invalid: Iterable[str] = ()) -> Decision:
    return Decision(action=action, folder=HUMAN, escalation=reason, recommendation=SUGGESTED_STEPS[reason],
                    invalid_contacts=tuple(invalid))


def decide(c: Classification, received: datetime, zone: str, contact: str, settings: TriageSettings) -> Decision:
    """Map a classification to an action. `contact` is the address the bot writes to for this customer."""
    automatic = c.automatic is not None
    if c.intent == "bounce":
        failed = c.bounce.recipients if c.bounce and c.bounce.recipients else (contact,)
        if c.bounce is not None and not c.bounce.permanent:
            return Decision(action=f"transient delivery delay for {', '.join(failed)}; logged only", folder=HANDLED)
        return _escalate("bounce", f"permanent bounce: {', '.join(failed)} marked invalid; reminders stop", failed)
    if c.intent == "out_of_office" and automatic:
        if c.return_date is None:
            return Decision(action="automatic reply without a return date; nothing changes", folder=HANDLED)
        until = _start_of(c.return_date, zone)
        return Decision(action=f"out of office: no reminder before {c.return_date.isoformat()}", folder=HANDLED,
                        hold=HoldSpec("out_of_office", until, f"out of office until {c.return_date.isoformat()}"))
    if c.intent == "wrong_contact":
        new = f"; new contact given: {c.new_contact}" if c.new_contact else ""
        return _escalate("wrong_contact", f"wrong contact{new}; reminders stop until a person updates it",
                         (contact,) if contact else ())
    if c.malformed or (not automatic and c.confidence < settings.min_confidence):
        return _escalate("unsure", f"unsure ({c.intent}, confidence {c.confidence:.2f}); reminders stop")
    if c.intent in ESCALATING:
        return _escalate(c.intent, f"{c.intent.replace('_', ' ')}: reminders stop, a person takes over")
    amount = str(c.amount) if c.amount is not None else None
    if c.intent == "payment_sent":
        until = received + timedelta(days=settings.payment_pause_days)
        return Decision(action=f"customer reports payment: reminders paused until {until.date().isoformat()}, "
                               "finance to verify the money arrived", folder=HANDLED,
                        hold=HoldSpec("payment_reported", until, "customer reports payment", amount),
                        flag="verify_payment")
    if c.intent == "promise_to_pay":
        if c.promised_date is None:
            until = received + timedelta(days=7 + settings.promise_grace_days)
            reason = "promise to pay without a date"
        else:
            until = _start_of(c.promised_date + timedelta(days=settings.promise_grace_days + 1), zone)
            reason = f"promised to pay on {c.promised_date.isoformat()}"
        return Decision(action=f"{reason}: reminders paused until {until.date().isoformat()}", folder=HANDLED,
                        hold=HoldSpec("promise", until, reason, amount))
    if c.escalate:
        return _escalate("other", "needs a person to read it; reminders stop")
    return Decision(action="nothing to do", folder=HANDLED)
