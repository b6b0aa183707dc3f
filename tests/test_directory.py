"""Matching replies against the store (bot/directory.py) on real SQLite and PostgreSQL: the indexed queries answer
exactly what the in-memory directory of every reminder answered, including after migration 0006 fills the keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from lookups import Directory
from stores import BACKENDS, store_url

from bot.config import load_settings
from bot.directory import StoreDirectory
from bot.inbox import Processor
from bot.schema import reminder_invoices, reminders
from bot.store import MIGRATIONS, Queued, Store
from bot.triage import classify

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as opened:
        yield opened


def queued(mid: str, customer: str, invoices: tuple[str, ...], recipients: tuple[str, ...], stage: str = "first",
           language: str = "en") -> Queued:
    return Queued(message_id=mid, customer_id=customer, contact=recipients[0] if recipients else "",
                  track="standard", stage=stage, language=language, sender="ar@us.test", recipients=recipients,
                  subject="s", raw=b"raw\r\n", balances=tuple((i, "10.00") for i in invoices))


def history(store: Store) -> None:
    """Reminders whose answers differ by route: shared domains, an address moving to another customer, invoice
    ids in lower case, with accents, a backtick, digits alone, a Cc, a message without invoices, a withdrawal."""
    store.enqueue([queued("<1@us>", "C1", ("inv-1042", "F/2026/7"), ("AP@Lumen.test", "boss@lumen.test")),
                   queued("<2@us>", "C2", ("Fáct-77", "A`1"), ("pagos@sol.test",), language="es"),
                   queued("<3@us>", "C3", ("X-3042",), ("shared@big.test",)),
                   queued("<4@us>", "C4", ("Y-9",), ("other@big.test",)),
                   queued("<5@us>", "C5", ("Z-5",), ("gone@old.test",))], NOW)
    store.enqueue([queued("<6@us>", "C2", ("inv-2001",), ("shared@big.test", "cc@sol.test"), stage="second",
                          language="fr"),
                   queued("<7@us>", "C6", (), ("nobody@none.test",))], NOW)
    withdrawn = next(r for r in store.due(NOW) if r.message_id == "<5@us>")
    store.withdraw(withdrawn.id)


def old_directory(store: Store) -> Directory:
    """The directory as the inbox built it in memory before it asked the store (every reminder, newest last)."""
    by_message_id: dict[str, str] = {}
    by_invoice: dict[str, str] = {}
    by_address: dict[str, str] = {}
    language: dict[str, str] = {}
    contact: dict[str, str] = {}
    invoices: dict[str, set[str]] = {}
    q = (sa.select(reminders.c.message_id, reminders.c.customer_id, reminders.c.recipients, reminders.c.language,
                   reminder_invoices.c.invoice_id)
         .join(reminder_invoices, reminder_invoices.c.reminder_id == reminders.c.id).order_by(reminders.c.id))
    with store.engine.connect() as c:
        for message_id, customer_id, recipients, lang, invoice_id in c.execute(q):
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


def assert_same_answers(old: Directory, new: StoreDirectory) -> None:
    for mid in ("<1@us>", "<2@us>", "<5@us>", "<6@us>", "<7@us>", "<none@us>", ""):
        assert new.customer_of_message(mid) == old.customer_of_message(mid), mid
    for key in ("INV-1042", "inv-1042", "F/2026/7", "FÁCT-77", "FACT-77", "A`1", "X-3042", "Z-5", "INV-2001", ""):
        assert new.customer_of_invoice(key) == old.customer_of_invoice(key), key
    for address in ("ap@lumen.test", "AP@Lumen.test", "boss@lumen.test", "shared@big.test", "cc@sol.test",
                    "gone@old.test", "nobody@none.test", ""):
        assert new.customer_of_address(address) == old.customer_of_address(address), address
    for domain in ("lumen.test", "sol.test", "big.test", "old.test", "none.test", "unknown.test"):
        expected, got = old.owners_of_domain(domain), new.owners_of_domain(domain)
        assert got == expected if len(expected) <= 2 else (len(got) == 2 and got <= expected), domain
    for customer in ("C1", "C2", "C3", "C5", "C6", "C9"):
        assert new.language_of(customer) == old.language_of(customer), customer
        assert new.contact_of(customer) == old.contact_of(customer), customer
        assert new.invoices_of(customer) == old.invoices_of(customer), customer


def test_the_store_answers_as_the_directory_in_memory_did(url: str) -> None:
    store = Store.open(url)
    try:
        history(store)
        old, new = old_directory(store), StoreDirectory(store)
        assert new.customer_of_address("shared@big.test") == "C2"  # its newest reminder went to C2
        assert new.owners_of_domain("big.test") == {"C2", "C4"} and new.owners_of_domain("lumen.test") == {"C1"}
        assert new.customer_of_message("<7@us>") is None and new.customer_of_message("<5@us>") is None
        assert_same_answers(old, new)
    finally:
        store.close()


def test_migration_0006_fills_the_keys_of_reminders_recorded_before(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    store = Store.open(url)
    history(store)
    old = old_directory(store)
    with store.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
        assert not sa.inspect(connection).has_table("reminder_addresses")
    store.close()
    store = Store.open(url)
    try:
        assert_same_answers(old, StoreDirectory(store))
    finally:
        store.close()


def reply(body: str, subject: str = "Question") -> bytes:
    return (f"From: Someone <someone@elsewhere.test>\r\nTo: ar@us.test\r\nSubject: {subject}\r\n"
            "Message-ID: <q1@elsewhere.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


@pytest.mark.parametrize("body", [
    "We paid inv-1042 yesterday.",
    "Regarding invoice 1042, we need a copy.",
    "La factura FACT-77 está pagada.",
    "Invoice F/2026/7: the amount is wrong.",
    "About A`1 and inv-2001, please call.",
    "Nothing about any invoice here.",
])
def test_a_reply_out_of_thread_reads_the_invoices_it_names_as_with_every_invoice_known(url: str, body: str) -> None:
    settings = load_settings(ROOT / "config.toml")
    store = Store.open(url)
    try:
        history(store)
        processor = Processor(store, settings, lambda: NOW)
        every = frozenset(old_directory(store).by_invoice)
        raw = reply(body)
        ours = frozenset({settings.company.message_id_domain, settings.company.email.rpartition("@")[2]})
        expected = classify(raw, known_invoices=every, our_domains=ours, languages=settings.languages,
                            max_bytes=settings.inbox.max_bytes)
        assert processor._classify(raw, None).invoice_refs == expected.invoice_refs
    finally:
        store.close()
