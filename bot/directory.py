"""The reply directory in the store: what the bot sent, looked up by what a reply names, one indexed query at a time.

The inbox used to hold every reminder ever sent in memory to match replies (~11,000 reminders and ~50,000
invoice links after a month of a 50,000-invoice ledger): the daemon's memory grew with history. Here each
question the matching asks (cases.Lookup) is one query on an index, so memory stays flat, and the answers
are always current: a reminder recorded a second ago is found without a rebuild.

The store writes the keys with each reminder (`insert_reply_keys`, in the reminder's transaction), folded in
Python as the matching folds them; migration 0006 wrote them for the reminders recorded before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.schema import reminder_addresses, reminder_invoice_keys, reminder_invoices, reminders

if TYPE_CHECKING:
    from bot.store import Queued, Store

_CHUNK = 500  # bound parameters per IN (): SQLite before 3.32 allows 999


def invoice_key(invoice_id: str) -> dict[str, Any]:
    """The key columns of one invoice id: upper-cased, its digits, and whether it folds to key.lower()."""
    key = invoice_id.upper()
    return {"key": key, "digits": re.sub(r"\D", "", key) or None, "plain": key.isascii() and "`" not in key}


def insert_reply_keys(c: Connection, recorded: Sequence[tuple[int, Queued]]) -> None:
    """Record what replies to these reminders (with their new ids) can be matched by, in the caller's transaction."""
    address_rows, key_rows = [], []
    for rid, item in recorded:
        for address in dict.fromkeys(a.lower() for a in item.recipients):
            address_rows.append({"reminder_id": rid, "address": address, "domain": address.rpartition("@")[2],
                                 "customer_id": item.customer_id})
        keys = {columns["key"]: columns for columns in (invoice_key(invoice_id) for invoice_id, _ in item.balances)}
        key_rows += [{"reminder_id": rid, **columns, "customer_id": item.customer_id} for columns in keys.values()]
    if address_rows:
        c.execute(reminder_addresses.insert(), address_rows)
    if key_rows:
        c.execute(reminder_invoice_keys.insert(), key_rows)


def _chunks(values: Collection[str]) -> Iterable[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start:start + _CHUNK]


class StoreDirectory:
    """cases.Lookup answered by the store. Where several reminders give an answer, the newest wins."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _scalar(self, query: sa.Select[Any]) -> Any:
        with self.store.transaction() as c:
            return c.execute(query).scalar()

    def customer_of_message(self, message_id: str) -> str | None:
        about_invoices = sa.exists().where(reminder_invoices.c.reminder_id == reminders.c.id)
        return self._scalar(sa.select(reminders.c.customer_id)
                            .where(reminders.c.message_id == message_id).where(about_invoices))

    def customer_of_invoice(self, invoice: str) -> str | None:
        k = reminder_invoice_keys.c
        return self._scalar(sa.select(k.customer_id).where(k.key == invoice).order_by(k.reminder_id.desc()).limit(1))

    def customer_of_address(self, address: str) -> str | None:
        a = reminder_addresses.c
        return self._scalar(sa.select(a.customer_id).where(a.address == address)
                            .order_by(a.reminder_id.desc()).limit(1))

    def owners_of_domain(self, domain: str) -> set[str]:
        """The customers of the domain's addresses, each address counted for its newest customer; at most two."""
        a = reminder_addresses.alias("a")
        b = reminder_addresses.alias("b")
        newest = sa.select(sa.func.max(b.c.reminder_id)).where(b.c.address == a.c.address).scalar_subquery()
        query = (sa.select(a.c.customer_id).where(a.c.domain == domain).where(a.c.reminder_id == newest)
                 .distinct().limit(2))
        with self.store.transaction() as c:
            return set(c.execute(query).scalars())

    def _newest_reminder(self, customer_id: str) -> tuple[str, str] | None:
        about_invoices = sa.exists().where(reminder_invoices.c.reminder_id == reminders.c.id)
        with self.store.transaction() as c:
            row = c.execute(sa.select(reminders.c.language, reminders.c.recipients)
                            .where(reminders.c.customer_id == customer_id).where(about_invoices)
                            .order_by(reminders.c.id.desc()).limit(1)).first()
        return None if row is None else (row[0], row[1])

    def language_of(self, customer_id: str) -> str | None:
        newest = self._newest_reminder(customer_id)
        return None if newest is None else newest[0]

    def contact_of(self, customer_id: str) -> str:
        newest = self._newest_reminder(customer_id)
        addresses = json.loads(newest[1]) if newest is not None else []
        return addresses[0] if addresses else ""

    def invoices_of(self, customer_id: str) -> frozenset[str]:
        with self.store.transaction() as c:
            return frozenset(c.execute(sa.select(reminder_invoices.c.invoice_id).distinct()
                                       .where(reminder_invoices.c.customer_id == customer_id)).scalars())

    def known_invoices(self, words: Collection[str], digits: Collection[str], /) -> frozenset[str]:
        """Every invoice key a text with these words (folded) and digit strings could name, as triage finds them:
        by a word (a plain key folds to key.lower()), by digits alone, and every key that folds otherwise."""
        k = reminder_invoice_keys.c
        found: set[str] = set()
        with self.store.transaction() as c:
            found.update(c.execute(sa.select(k.key).distinct().where(k.plain.is_(False))).scalars())
            for chunk in _chunks({w.upper() for w in words}):
                found.update(c.execute(sa.select(k.key).distinct().where(k.key.in_(chunk))).scalars())
            for chunk in _chunks(set(digits)):
                found.update(c.execute(sa.select(k.key).distinct().where(k.digits.in_(chunk))).scalars())
        return frozenset(found)
