"""Facts in the customer's words besides dates: amounts, invoice references, a replacement contact."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache

from bot.triage.phrases import Language, common, fold

_NUMBER = r"\d{1,3}(?:[.,  ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_BARE_MONEY = re.compile(r"(?<![\w.,])\d{1,3}(?:[.,]\d{3})+[.,]\d{2}(?![\w.,]*\d)")
"""Without a currency, only a number with thousands groups and cents is taken for money ("1.234,56")."""

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)


@cache
def _money_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    signs = "|".join(re.escape(s) for s in sorted(common().currency_signs, key=len, reverse=True))
    after = "|".join([signs, *words])
    return re.compile(
        rf"(?:(?<![\w])(?:{signs}) ?(?P<n1>{_NUMBER}))|(?:(?<![\w.,])(?P<n2>{_NUMBER}) ?(?:{after})(?![a-z]))",
        re.IGNORECASE,
    )


def parse_amount(number: str) -> Decimal | None:
    """ "1.234,56" and "1,234.56" alike: the last separator is decimal if 1-2 digits follow it."""
    digits = re.sub(r"[  ]", "", number)
    last = max(digits.rfind(","), digits.rfind("."))
    if last >= 0 and len(digits) - last - 1 in (1, 2):
        whole, cents = digits[:last], digits[last + 1 :]
    else:
        whole, cents = digits, ""
    whole = re.sub(r"[.,]", "", whole)
    try:
        return Decimal(f"{whole}.{cents}" if cents else whole)
    except InvalidOperation:
        return None


def find_amounts(text: str, langs: Iterable[Language]) -> list[tuple[int, Decimal]]:
    """Every sum of money in ``text`` with its offset, in reading order."""
    words = tuple(w for lang in langs for w in lang.currency_words)
    found: dict[int, Decimal] = {}
    for match in _money_pattern(words).finditer(text):
        number = match.group("n1") or match.group("n2")
        amount = parse_amount(number)
        if amount is not None:
            found.setdefault(match.start("n1") if match.group("n1") else match.start("n2"), amount)
    for match in _BARE_MONEY.finditer(text):
        amount = parse_amount(match.group())
        if amount is not None and not any(abs(match.start() - at) <= 4 for at in found):
            found[match.start()] = amount
    return sorted(found.items())


def find_invoices(text: str, langs: Iterable[Language], known: frozenset[str]) -> tuple[str, ...]:
    """Invoice references in reading order: known ids, common shapes, and "invoice 1042" phrases."""
    by_digits = _by_digits(known)
    folded = fold(text)
    found: list[tuple[int, str]] = []
    if known:
        ids = _folded_ids(known)
        for m in _TOKEN.finditer(folded):
            token = m.group()
            for candidate in (token, *token.split("/"), token.rstrip("./")):
                if candidate in ids:
                    found.append((m.start() + (token.find(candidate) if candidate != token else 0), ids[candidate]))
                    break
    for shape in common().invoice_shapes:
        found += [(m.start(), m.group().upper()) for m in shape.finditer(text)]
    for lang in langs:
        for pattern in lang.invoice:
            for m in pattern.finditer(folded):
                ref = m.group("ref").upper()
                found.append((m.start("ref"), by_digits.get(re.sub(r"\D", "", ref), ref)))
    refs: list[str] = []
    for _, ref in sorted(found):
        if not any(ref in r or _same(ref, r) for r in refs):
            refs.append(ref)
    return tuple(refs)


# A word that could be an invoice number: letters, digits and the separators numbers use inside.
_TOKEN = re.compile(r"(?<![\w-])\w[\w/.-]*")


@lru_cache(maxsize=32)
def _folded_ids(known: frozenset[str]) -> dict[str, str]:
    """Known invoice ids by their folded form: one dictionary look-up per word, whatever the ledger's size."""
    return {fold(ref): ref for ref in known}


@lru_cache(maxsize=32)
def _by_digits(known: frozenset[str]) -> dict[str, str]:
    return {re.sub(r"\D", "", k): k for k in known if re.search(r"\d", k)}


def _same(a: str, b: str) -> bool:
    return re.sub(r"\W", "", a).upper() == re.sub(r"\W", "", b).upper()


def find_contact(text: str, sender: str, our_domains: frozenset[str]) -> str | None:
    """First e-mail address in the customer's words that is neither theirs nor ours."""
    for match in _EMAIL.finditer(text):
        address = match.group().strip(".").lower()
        domain = address.rsplit("@", 1)[-1]
        if address != sender and not any(domain == d or domain.endswith("." + d) for d in our_domains):
            return address
    return None
