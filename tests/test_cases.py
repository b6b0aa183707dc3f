"""Matching replies to cases and deciding what to do: pure, every intent and every matching route."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from lookups import Directory

from bot.cases import HANDLED, HUMAN, SUGGESTED_STEPS, decide, match
from bot.config import TriageSettings
from bot.triage import INTENTS, Bounce, Classification

RECEIVED = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
SETTINGS = TriageSettings(payment_pause_days=10, promise_grace_days=3, broken_promises_to_escalate=2,
                          min_confidence=0.6)
DIRECTORY = Directory(
    by_message_id={"<r1@northwind.example>": "C1", "<r2@northwind.example>": "C2"},
    by_invoice={"INV-1042": "C1", "F-77": "C2"},
    by_address={"ap@lumen.test": "C1", "pagos@sol.test": "C2", "boss@sol.test": "C2"},
    contact={"C1": "ap@lumen.test", "C2": "pagos@sol.test"},
)


def reply(intent: str = "other", **changes: object) -> Classification:
    base = Classification(intent=intent, confidence=0.9, evidence=(), language="en", promised_date=None, amount=None,
                          invoice_refs=(), escalate=False, new_contact=None, return_date=None, bounce=None,
                          automatic=None, new_text="", attachments=(), malformed=None)
    return replace(base, **changes)  # type: ignore[arg-type]


def find(c: Classification | None = None, *, in_reply_to: str = "", references: str = "", subject: str = "",
         sender: str = "someone@else.test") -> tuple[str, str] | None:
    found = match(DIRECTORY, in_reply_to=in_reply_to, references=references, subject=subject, sender=sender,
                  classification=c or reply())
    return (found.customer_id, found.by) if found else None


def test_match_by_thread_first() -> None:
    assert find(in_reply_to="<r2@northwind.example>", sender="ap@lumen.test") == ("C2", "thread")
    assert find(references="<x@y> <r1@northwind.example> <zz@q>") == ("C1", "thread")


def test_match_a_bounce_by_the_original_message() -> None:
    bounce = reply("bounce", bounce=Bounce(("gone@sol.test",), True, "5.1.1", "<r2@northwind.example>"),
                   automatic="dsn")
    assert find(bounce, sender="mailer-daemon@mx.test") == ("C2", "bounce")
    by_recipient = reply("bounce", bounce=Bounce(("boss@sol.test",), True, "5.1.1", None), automatic="dsn")
    assert find(by_recipient, sender="mailer-daemon@mx.test") == ("C2", "bounce")


def test_match_by_invoice_number_in_subject_or_text() -> None:
    assert find(subject="Re: Invoice INV-1042 is now 7 days overdue") == ("C1", "invoice")
    assert find(reply(invoice_refs=("F-77",))) == ("C2", "invoice")


def test_match_by_sender_then_unique_domain() -> None:
    assert find(sender="AP@Lumen.test") == ("C1", "sender")
    assert find(sender="director@lumen.test") == ("C1", "domain")
    assert find(sender="stranger@unknown.test") is None


def test_payment_sent_pauses_and_flags_for_finance() -> None:
    d = decide(reply("payment_sent", amount=Decimal("1200.00")), RECEIVED, "Europe/Madrid", "ap@lumen.test",
               SETTINGS)
    assert d.folder == HANDLED and d.escalation is None and d.flag == "verify_payment"
    assert d.hold is not None and d.hold.kind == "payment_reported" and d.hold.amount == "1200.00"
    assert d.hold.until == RECEIVED + timedelta(days=10)


def test_promise_to_pay_holds_until_the_date_plus_grace() -> None:
    d = decide(reply("promise_to_pay", promised_date=date(2026, 12, 15)), RECEIVED, "Europe/Madrid",
               "ap@lumen.test", SETTINGS)
    assert d.folder == HANDLED and d.hold is not None and d.hold.kind == "promise"
    assert d.hold.until.isoformat() == "2026-12-19T00:00:00+01:00"
    undated = decide(reply("promise_to_pay"), RECEIVED, "Europe/Madrid", "ap@lumen.test", SETTINGS)
    assert undated.hold is not None and undated.hold.until == RECEIVED + timedelta(days=10)


def test_out_of_office_waits_for_the_return_date_without_escalating() -> None:
    d = decide(reply("out_of_office", automatic="Auto-Submitted", return_date=date(2026, 12, 2)), RECEIVED,
               "Europe/Madrid", "ap@lumen.test", SETTINGS)
    assert d.folder == HANDLED and d.escalation is None
    assert d.hold is not None and d.hold.until.isoformat() == "2026-12-02T00:00:00+01:00"
    no_date = decide(reply("out_of_office", automatic="subject"), RECEIVED, "UTC", "ap@lumen.test", SETTINGS)
    assert no_date.hold is None and no_date.escalation is None


def test_bounces_permanent_and_transient() -> None:
    permanent = reply("bounce", automatic="dsn", bounce=Bounce(("ap@lumen.test",), True, "5.1.1", None))
    d = decide(permanent, RECEIVED, "UTC", "ap@lumen.test", SETTINGS)
    assert d.escalation == "bounce" and d.invalid_contacts == ("ap@lumen.test",) and d.folder == HUMAN
    transient = reply("bounce", automatic="dsn", bounce=Bounce(("ap@lumen.test",), False, "4.4.1", None))
    d = decide(transient, RECEIVED, "UTC", "ap@lumen.test", SETTINGS)
    assert d.escalation is None and d.invalid_contacts == () and d.folder == HANDLED


@pytest.mark.parametrize("intent", ["dispute", "hardship", "request_info", "legal", "unsubscribe"])
def test_intents_that_need_a_person_stop_and_escalate(intent: str) -> None:
    d = decide(reply(intent), RECEIVED, "UTC", "ap@lumen.test", SETTINGS)
    assert d.escalation == intent and d.folder == HUMAN and d.recommendation == SUGGESTED_STEPS[intent]


def test_wrong_contact_marks_the_old_address() -> None:
    d = decide(reply("wrong_contact", new_contact="cuentas@lumen.test"), RECEIVED, "UTC", "ap@lumen.test", SETTINGS)
    assert d.escalation == "wrong_contact" and d.invalid_contacts == ("ap@lumen.test",)
    assert "cuentas@lumen.test" in d.action


def test_low_confidence_and_malformed_go_to_a_person() -> None:
    assert decide(reply("payment_sent", confidence=0.4), RECEIVED, "UTC", "a@b.test", SETTINGS).escalation == "unsure"
    assert decide(reply("other", malformed="bad MIME"), RECEIVED, "UTC", "a@b.test", SETTINGS).escalation == "unsure"


def test_bare_thanks_needs_nobody_but_a_question_mark_does() -> None:
    thanks = decide(reply("other", escalate=False), RECEIVED, "UTC", "a@b.test", SETTINGS)
    assert thanks.folder == HANDLED and thanks.escalation is None and thanks.hold is None
    question = decide(reply("other", escalate=True), RECEIVED, "UTC", "a@b.test", SETTINGS)
    assert question.folder == HUMAN and question.escalation == "other"


@pytest.mark.parametrize("intent", INTENTS)
def test_every_intent_has_a_decision(intent: str) -> None:
    c = reply(intent, automatic="x" if intent in ("out_of_office", "bounce") else None)
    d = decide(c, RECEIVED, "UTC", "a@b.test", SETTINGS)
    assert d.action and d.folder in (HANDLED, HUMAN)
    if d.escalation:
        assert d.recommendation == SUGGESTED_STEPS[d.escalation]
