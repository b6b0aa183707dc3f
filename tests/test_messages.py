"""compose() writes its bytes itself for speed: they must be exactly what the email package would write."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import Company, Stage
from bot.ledger import Customer, Invoice
from bot.messages import POLICY, Rendered, _body_encode, compose
from bot.policy import Line, Reminder

COMPANY = Company(name="Northwind Trading S.L.", email="accounts@northwind.example", reply_to="ar@northwind.example",
                  language="en", country="ES", timezone="Europe/Madrid", message_id_domain="northwind.example")
SENT_AT = datetime(2026, 11, 24, 11, 30, tzinfo=ZoneInfo("Europe/Madrid"))


def reference(reminder: Reminder, rendered: Rendered, company: Company, sent_at: datetime) -> bytes:
    """The email package building the message, as compose() did before it wrote the bytes itself."""

    def address(name: str, addr: str) -> Address:
        local, _, domain = addr.rpartition("@")
        return Address(display_name=name, username=local, domain=domain)

    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = reminder.message_id
    msg["Date"] = format_datetime(sent_at)
    msg["From"] = address(company.name, company.email)
    msg["Reply-To"] = address(company.name, company.reply_to)
    msg["To"] = address(reminder.customer.contact_name or reminder.customer.name, reminder.to)
    if reminder.cc:
        msg["Cc"] = [address("", a) for a in reminder.cc]
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


def reminder(name: str, to: str, cc: tuple[str, ...], invoices: int, thread: int, message_id: str) -> Reminder:
    customer = Customer("C1", "Customer One", name, to, cc, "en", "ES", "", "Laura", "")
    lines = tuple(Line(Invoice(f"INV-{n}", customer, "EUR", Decimal("10.00"), Decimal("10.00"), date(2026, 10, 1),
                               date(2026, 11, 1), n + 2), 23) for n in range(invoices))
    references = tuple(f"<m{n}@northwind.example>" for n in range(thread))
    return Reminder(customer=customer, track="standard", stage=Stage("third", 14, "third_reminder", cc=True),
                    language="en", locale="en_GB", timezone="Europe/Madrid", lines=lines, to=to, cc=cc,
                    local_date=date(2026, 11, 24), deadline=date(2026, 12, 4), message_id=message_id,
                    in_reply_to=references[-1] if references else None, references=references[-10:])


NAMES = ["Ana Ruiz", "", "O'Brien", "Jean-Luc", "José Ramírez", "Dr. Who", 'Ann "AP" Lee', "Ann  Lee", " Ann",
         "Müller, Jörg", "=?utf-8?q?x?=", "a" * 1100, "日本", "Ann (AP)"]
ADDRESSES = ["ap@cust.test", "First.Last@Example.COM", "a+b@x.test", "we'ird@x.test", "a..b@x.test", "ñ@x.test"]
SUBJECTS = ["Reminder: invoice INV-1", "Recordatorio – 1.250,00 €", "=?utf-8?q?Hola?=", "two  spaces", " lead",
            "trail ", "tab\there", "x" * 1200, "word " * 300, "Re: =? odd", ""]
BODIES = ["Dear Ana,\n\nPlease pay.\n", "Línea con acentos y € \n\ttab end\t\n", "x" * 3000, "", "a=b\r\nc\rd",
          "From the start\n.\n", "--===============1==\n"]


@pytest.mark.parametrize("seed", range(40))
def test_compose_writes_what_the_email_package_writes(seed: int) -> None:
    rng = random.Random(seed)
    for n in range(25):
        r = reminder(rng.choice(NAMES), rng.choice(ADDRESSES),
                     tuple(rng.sample(ADDRESSES, rng.randint(0, 3))) if rng.random() < 0.8
                     else tuple(f"c{k}@x.test" for k in range(120)),
                     rng.choice([1, 2, 100]), rng.choice([0, 1, 12]),
                     rng.choice(["<dunbot.0123abcd@northwind.example>", "<odd id@x>", "<a@b>"]))
        rendered = Rendered(rng.choice(SUBJECTS), rng.choice(BODIES), rng.choice(BODIES))
        company = COMPANY if n % 2 else replace(COMPANY, name="Northwind")
        random.seed(seed * 100 + n)  # the MIME boundary is random: the same draw for both
        try:
            expected: bytes | str = reference(r, rendered, company, SENT_AT + timedelta(minutes=n))
        except ValueError as exc:
            expected = repr(exc)
        random.seed(seed * 100 + n)
        try:
            got: bytes | str = compose(r, rendered, company, SENT_AT + timedelta(minutes=n))
        except ValueError as exc:
            got = repr(exc)
        assert got == expected, (seed, n)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from([chr(c) for c in range(256)] + [" ", "\t", "\n", "\r", "=", "a"] * 8),
               max_size=300),
       st.sampled_from([4, 5, 6, 10, 76, 998]))
def test_quoted_printable_matches_the_standard_library(body: str, width: int) -> None:
    assert _body_encode(body, width) == quoprimime.body_encode(body, width)
