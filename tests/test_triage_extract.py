"""Facts from the customer's words: promised dates (relative to the Date header), amounts, invoices, contacts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from bot.triage import classify
from bot.triage.dates import find_dates
from bot.triage.extract import find_amounts, find_contact, find_invoices, parse_amount
from bot.triage.phrases import languages

TUE_18_NOV = date(2025, 11, 18)


def reply(body: str, when: str = "Tue, 18 Nov 2025 10:00:00 +0000") -> bytes:
    head = f"From: Ana <ana@customer.example>\nTo: ar@dunbot.example\nSubject: Re: Invoice INV-1042\nDate: {when}\n"
    return (head + "Content-Type: text/plain; charset=utf-8\n\n" + body + "\n").encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("We will pay next Friday.", date(2025, 11, 21)),
        ("We will pay on Friday.", date(2025, 11, 21)),
        ("We will pay on Tuesday.", date(2025, 11, 25)),  # said on a Tuesday: the next one
        ("We will pay Friday next week.", date(2025, 11, 28)),
        ("We will pay tomorrow.", date(2025, 11, 19)),
        ("We will pay today.", date(2025, 11, 18)),
        ("We will pay on the 15th.", date(2025, 12, 15)),  # past this month: next month
        ("We will pay on the 25th.", date(2025, 11, 25)),
        ("We will pay by the end of the month.", date(2025, 11, 30)),
        ("We will pay at the end of next month.", date(2025, 12, 31)),
        ("We will pay next week.", date(2025, 11, 28)),  # convention: the Friday
        ("We will pay by the end of next week.", date(2025, 11, 28)),
        ("We will pay in two weeks.", date(2025, 12, 2)),
        ("We will pay within 10 days.", date(2025, 11, 28)),
        ("We will pay on December 15th.", date(2025, 12, 15)),
        ("We will pay on 15 December 2025.", date(2025, 12, 15)),
        ("We will pay on January 5th.", date(2026, 1, 5)),  # year wrap
        ("We will pay on 12/5.", date(2025, 12, 5)),  # US month/day
        ("We will pay on 15/12.", date(2025, 12, 15)),  # day first when the month would be 15
        ("Le pagamos el viernes.", date(2025, 11, 21)),
        ("Le pagamos el próximo lunes.", date(2025, 11, 24)),
        ("Le pagamos el lunes de la semana que viene.", date(2025, 11, 24)),
        ("Le pagamos mañana.", date(2025, 11, 19)),
        ("Le pagamos manana sin falta.", date(2025, 11, 19)),
        ("Le pagamos pasado mañana.", date(2025, 11, 20)),
        ("Le pagamos a fin de mes.", date(2025, 11, 30)),
        ("Le pagamos a finales del mes que viene.", date(2025, 12, 31)),
        ("Le pagamos la semana que viene.", date(2025, 11, 28)),
        ("Le pagamos el 15/12.", date(2025, 12, 15)),
        ("Le pagamos el día 22 de este mes.", date(2025, 11, 22)),
        ("Le pagamos el 3 de enero.", date(2026, 1, 3)),
        ("Le pagamos en 15 días.", date(2025, 12, 3)),
        ("Le pagamos el jueves 4.", date(2025, 12, 4)),
    ],
)
def test_promised_date(text: str, expected: date) -> None:
    c = classify(reply(text))
    assert c.intent == "promise_to_pay"
    assert c.promised_date == expected


@pytest.mark.parametrize(
    ("when", "text", "expected"),
    [
        ("Fri, 28 Nov 2025 09:00:00 +0100", "Pagaremos a fin de mes.", date(2025, 11, 30)),
        ("Sun, 30 Nov 2025 09:00:00 +0100", "Pagaremos a fin de mes.", date(2025, 11, 30)),
        ("Mon, 29 Dec 2025 09:00:00 +0100", "We will pay on the 5th.", date(2026, 1, 5)),  # month and year wrap
        ("Mon, 29 Dec 2025 09:00:00 +0100", "Le pagamos el 2/1.", date(2026, 1, 2)),
        ("Wed, 31 Dec 2025 09:00:00 +0100", "We will pay tomorrow.", date(2026, 1, 1)),
        ("Fri, 30 Jan 2026 09:00:00 +0100", "We will pay on the 30th of next month.", date(2026, 2, 28)),
        ("Tue, 18 Nov 2025 09:00:00 +0100", "Le pagamos el 5 del mes que viene.", date(2025, 12, 5)),
        ("Fri, 21 Nov 2025 09:00:00 +0100", "We will pay next Friday.", date(2025, 11, 28)),
    ],
)
def test_dates_wrap_months_and_years(when: str, text: str, expected: date | None) -> None:
    assert classify(reply(text, when)).promised_date == expected


@pytest.mark.parametrize(
    "text",
    [
        "We will pay. We received your reminder on 10/11.",  # past: not a promise date
        "We will pay on 15 April 2026.",  # beyond the 120-day horizon
        "We will pay, may I ask which account?",  # "may" is no month
    ],
)
def test_no_promised_date_from_noise(text: str) -> None:
    assert classify(reply(text)).promised_date is None


def test_a_date_elsewhere_is_not_the_promise() -> None:
    c = classify(reply("I passed it to our controller today and it will be paid."))
    assert (c.intent, c.promised_date) == ("promise_to_pay", None)


def test_dates_never_read_the_clock() -> None:
    no_date = b"From: a@b.example\nSubject: Re: x\n\nWe will pay tomorrow.\n"
    assert classify(no_date).promised_date is None
    assert classify(no_date, today=date(2025, 3, 3)).promised_date == date(2025, 3, 4)


def test_weekday_names_are_not_found_inside_words() -> None:
    found = find_dates("We sent the money; Wednesday's shipment is on hold.", TUE_18_NOV, [languages()["en"]])
    assert [f.text for f in found] == ["Wednesday"]


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("1.234,56", Decimal("1234.56")),
        ("1,234.56", Decimal("1234.56")),
        ("1 234,56", Decimal("1234.56")),
        ("12.480,00", Decimal("12480.00")),
        ("58,400.00", Decimal("58400.00")),
        ("1.234", Decimal("1234")),
        ("1,5", Decimal("1.5")),
        ("2340", Decimal("2340")),
        ("1.234.567,8", Decimal("1234567.8")),
    ],
)
def test_amount_notations(number: str, expected: Decimal) -> None:
    assert parse_amount(number) == expected


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Transferimos 1.234,56 € ayer.", "es", Decimal("1234.56")),
        ("We paid $1,234.56 yesterday.", "en", Decimal("1234.56")),
        ("We paid USD 12,480.00.", "en", Decimal("12480.00")),
        ("Pagamos 3.200 pesos.", "es", Decimal("3200")),
        ("Le pagamos 4.950,00 mañana.", "es", Decimal("4950.00")),  # no currency, but thousands and cents
        ("We paid invoice 1042 on 12.11.", "en", None),  # numbers that are no money
    ],
)
def test_amount_in_text(text: str, lang: str, expected: Decimal | None) -> None:
    amounts = find_amounts(text, [languages()[lang]])
    assert (amounts[0][1] if amounts else None) == expected


def test_amount_belongs_to_the_payment_statement() -> None:
    c = classify(
        reply("We sent $2,500.00 today as a partial payment. The remaining $2,340.00 will follow on December 12.")
    )
    assert (c.intent, c.amount, c.promised_date) == ("promise_to_pay", Decimal("2340.00"), date(2025, 12, 12))
    price = classify(reply("The unit price is $14.20 but our PO says $12.80, please correct the invoice."))
    assert (price.intent, price.amount) == ("dispute", None)


@pytest.mark.parametrize(
    ("text", "known", "expected"),
    [
        ("We paid INV-1042 and INV-2025-0133.", frozenset(), ("INV-1042", "INV-2025-0133")),
        ("Pagamos la F-5521 y la factura nº 7788.", frozenset(), ("F-5521", "7788")),
        ("Paid invoice 1042 yesterday.", frozenset({"INV-1042"}), ("INV-1042",)),
        ("Paid ACME/77 yesterday.", frozenset({"ACME/77"}), ("ACME/77",)),
        ("inv-1042 was paid", frozenset(), ("INV-1042",)),
        ("No references here, just 2025 and 15/12.", frozenset(), ()),
    ],
)
def test_invoice_references(text: str, known: frozenset[str], expected: tuple[str, ...]) -> None:
    assert find_invoices(text, languages().values(), known) == expected


def test_invoice_references_come_from_the_customers_words_only() -> None:
    c = classify(
        reply("Paid yesterday.\n\nOn Mon, Nov 17, 2025 at 9:02 AM AR <ar@dunbot.example> wrote:\n> INV-9999 is overdue")
    )
    assert c.invoice_refs == ()


def test_replacement_contact() -> None:
    text = (
        "I am not the right person. Please write to ap@customer.example (cc ana@customer.example, ar@dunbot.example)."
    )
    assert find_contact(text, "ana@customer.example", frozenset({"dunbot.example"})) == "ap@customer.example"
    c = classify(reply(text), our_domains=frozenset({"dunbot.example"}))
    assert (c.intent, c.new_contact) == ("wrong_contact", "ap@customer.example")
    assert find_contact("Write to ana@customer.example.", "ana@customer.example", frozenset()) is None
