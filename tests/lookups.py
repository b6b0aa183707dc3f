"""A Lookup from plain mappings, for testing the pure matching of bot/cases.py without a store, and as the
reference the store's indexed answers (bot/directory.py) are checked against."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Directory:
    """A Lookup from plain mappings: what the bot has sent, indexed for matching replies to customers."""

    by_message_id: Mapping[str, str] = field(default_factory=dict)
    by_invoice: Mapping[str, str] = field(default_factory=dict)
    by_address: Mapping[str, str] = field(default_factory=dict)
    language: Mapping[str, str] = field(default_factory=dict)
    invoices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    contact: Mapping[str, str] = field(default_factory=dict)

    def customer_of_message(self, message_id: str) -> str | None:
        return self.by_message_id.get(message_id)

    def customer_of_invoice(self, invoice: str) -> str | None:
        return self.by_invoice.get(invoice)

    def customer_of_address(self, address: str) -> str | None:
        return self.by_address.get(address)

    def owners_of_domain(self, domain: str) -> set[str]:
        return {cid for address, cid in self.by_address.items() if address.rpartition("@")[2] == domain}

    def language_of(self, customer_id: str) -> str | None:
        return self.language.get(customer_id)

    def contact_of(self, customer_id: str) -> str:
        return self.contact.get(customer_id, "")

    def invoices_of(self, customer_id: str) -> frozenset[str]:
        return self.invoices.get(customer_id, frozenset())

    def known_invoices(self, _words: Collection[str], _digits: Collection[str], /) -> frozenset[str]:
        return frozenset(self.by_invoice)
