"""Reads the customer's receivables ledger (CSV), read-only: the ledger is their source of truth.

Bad rows are reported with file, line and reason and skipped; the good rows go on. Only a file
that cannot be read at all raises. Rows are validated strictly enough that nothing in them can
reach a mail header unchecked (control characters, malformed addresses).

Speed and memory matter (a million rows is a real ledger): repeated values such as dates,
currencies and customers are parsed once and shared.
"""

from __future__ import annotations

import _csv
import csv
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.numbers import list_currencies

from bot.config import LEDGER_FIELDS, LedgerSettings
from bot.errors import LedgerError

REQUIRED = ("invoice_id", "customer_id", "customer_name", "contact_email", "currency", "amount", "balance",
            "issue_date", "due_date")
OPTIONAL = tuple(f for f in LEDGER_FIELDS if f not in REQUIRED)
CURRENCIES = frozenset(list_currencies())
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]")
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_AMOUNT = re.compile(r"^-?\d+(?:\.\d+)?$")
_PLAIN_AMOUNT = re.compile(r"\d+(?:\.\d+)?")  # a non-negative amount needing no cleaning: the fast path
_NUMERIC_DATE = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})$")
_LANG = re.compile(r"^[a-z]{2}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ID = re.compile(r"^[^\x00-\x1f\x7f\s<>]{1,64}$")
_CC_SPLIT = re.compile(r"[;,]").split


@dataclass(frozen=True, slots=True)
class Customer:
    """Who to write to. Shared by all of a contact's invoices, so one reminder goes out per contact."""

    customer_id: str
    name: str
    contact_name: str
    contact_email: str
    cc_emails: tuple[str, ...]
    language: str
    country: str
    timezone: str
    account_manager: str
    tier: str


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    customer: Customer
    currency: str
    amount: Decimal
    balance: Decimal
    issue_date: date
    due_date: date
    line: int


class _NewInvoice:
    """Same slots as Invoice, plain stores: the reader builds each of a million invoices as one of these and
    then makes it an Invoice (`__class__` assignment, allowed between identical layouts), at a third of the
    cost of the frozen dataclass's __init__, which sets every field through object.__setattr__. The
    result is an ordinary, frozen Invoice."""

    __slots__ = Invoice.__slots__

    def __init__(self, invoice_id: str, customer: Customer, currency: str, amount: Decimal, balance: Decimal,
                 issue_date: date, due_date: date, line: int) -> None:
        self.invoice_id = invoice_id
        self.customer = customer
        self.currency = currency
        self.amount = amount
        self.balance = balance
        self.issue_date = issue_date
        self.due_date = due_date
        self.line = line


@dataclass(frozen=True, slots=True)
class Problem:
    """A row the bot will not act on, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(slots=True)
class Ledger:
    """What a read produced: the open invoices, how many rows were paid, and every bad row."""

    path: Path
    open_invoices: list[Invoice] = field(default_factory=list)
    paid: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.open_invoices) + self.paid + len(self.problems)


class _RowError(ValueError):
    pass


_ZERO = Decimal(0)
# Distinct amounts are mostly unique, so their cache only pays for repeats (fixed fees) and stays small.
_AMOUNT_CACHE = 20_000
_DATE_CACHE = 100_000
# Joins a row's customer cells into one cache key. No cell of a valid customer contains NUL (every
# field rejects it), so two rows share a key only when their cells are identical.
_SEP = "\x00"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause cyclic GC while a million long-lived objects are built, then file them as old.

    Each collection their allocations trigger walks all of them and frees nothing (a fifth of a read).
    Re-enabling alone would only defer that: the first allocation after it walks the young generation
    (now everything), then the middle one does. freeze() + unfreeze() instead moves every tracked object
    straight to the oldest generation in constant time; anything young there is collected with it later.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


class _Parser:
    """Turns raw CSV cells into typed values, caching what repeats (dates, zones, currencies, customers).

    The caches hold only valid values (amounts: non-negative ones), so a hit needs no further check.
    """

    def __init__(self, settings: LedgerSettings) -> None:
        self.dmy = settings.date_order == "dmy"
        self.dates: dict[str, date] = {}
        self.zones: dict[str, bool] = {}
        self.customers: dict[str, Customer] = {}
        self.amounts: dict[str, Decimal] = {}
        self.currencies: dict[str, str] = {}
        self.shared: dict[str, str] = {}

    def date(self, name: str, raw: str) -> date:
        cached = self.dates.get(raw)
        if cached is not None:
            return cached
        text = raw.strip()
        value: date | None = None
        try:
            value = date.fromisoformat(text)
        except ValueError:
            m = _NUMERIC_DATE.match(text)
            if m:
                a, b, year = int(m[1]), int(m[2]), int(m[3])
                day, month = (a, b) if self.dmy else (b, a)
                try:
                    value = date(year, month, day)
                except ValueError:
                    value = None
        if value is None or not 1990 <= value.year <= 2200:
            order = "DD/MM/YYYY" if self.dmy else "MM/DD/YYYY"
            raise _RowError(f"{name} {raw!r} is not a date (YYYY-MM-DD or {order})")
        if len(self.dates) < _DATE_CACHE:
            self.dates[raw] = value
        return value

    def amount(self, name: str, raw: str) -> Decimal:
        cached = self.amounts.get(raw)
        if cached is not None:
            return cached
        text = raw.strip().replace(" ", "")
        if not _AMOUNT.match(text):
            raise _RowError(f"{name} {raw!r} is not an amount (digits with '.' as decimal point)")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise _RowError(f"{name} {raw!r} is not an amount") from exc
        if len(self.amounts) < _AMOUNT_CACHE and value >= _ZERO:
            self.amounts[raw] = value
        return value

    def currency(self, raw: str) -> str:
        cached = self.currencies.get(raw)
        if cached is not None:
            return cached
        currency = raw.strip().upper()
        if currency not in CURRENCIES:
            raise _RowError(f"currency {raw!r} is not an ISO 4217 code")
        self.currencies[raw] = currency  # one shared string per spelling, not one per row
        return currency

    def timezone(self, raw: str) -> str:
        known = self.zones.get(raw)
        if known is None:
            try:
                ZoneInfo(raw)
                known = True
            except (ZoneInfoNotFoundError, ValueError):
                known = False
            self.zones[raw] = known
        if not known:
            raise _RowError(f"timezone {raw!r} is not a known IANA time zone")
        return raw

    def customer(self, key: str, cells: tuple[str, ...]) -> Customer:
        cached = self.customers.get(key)
        if cached is not None:
            return cached
        customer_id, name, contact_name, email, cc, language, country, tz, manager, tier = cells
        customer_id = customer_id.strip()
        if not _ID.match(customer_id):
            raise _RowError(f"customer_id {customer_id!r} is empty, too long or has spaces or control characters")
        # isprintable() is false for every character _CONTROL matches (and some it allows): only then look closer.
        if not (name.isprintable() and contact_name.isprintable() and manager.isprintable() and tier.isprintable()):
            for label, value in (("customer_name", name), ("contact_name", contact_name),
                                 ("account_manager", manager), ("tier", tier)):
                if _CONTROL.search(value):
                    raise _RowError(f"{label} contains a control character (line break or similar)")
        if not name.strip():
            raise _RowError("customer_name is empty")
        email = email.strip()
        if not email:
            raise _RowError("contact_email is empty")
        if not EMAIL.match(email):
            raise _RowError(f"contact_email {email!r} is not a valid address")
        ccs = tuple(a.strip() for a in _CC_SPLIT(cc) if a.strip()) if cc else ()
        for address in ccs:
            if not EMAIL.match(address):
                raise _RowError(f"cc_emails entry {address!r} is not a valid address")
        language = language.strip().lower()
        if language and not _LANG.match(language):
            raise _RowError(f"language {language!r} is not an ISO 639-1 code such as 'en'")
        country = country.strip().upper()
        if country and not _COUNTRY.match(country):
            raise _RowError(f"country {country!r} is not an ISO 3166 code such as 'ES'")
        tz = tz.strip()
        if tz:
            self.timezone(tz)
        manager, tier = manager.strip(), tier.strip().lower()
        share = self.shared.setdefault  # few distinct values over many customers: keep one string of each
        customer = Customer(customer_id, name.strip(), contact_name.strip(), email, ccs, share(language, language),
                            share(country, country), share(tz, tz), share(manager, manager), share(tier, tier))
        self.customers[key] = customer
        return customer


def _header_index(header: list[str], settings: LedgerSettings, path: Path) -> dict[str, int]:
    names = [h.strip() for h in header]
    index: dict[str, int] = {}
    missing = []
    for ours in LEDGER_FIELDS:
        theirs = settings.columns[ours]
        if theirs in names:
            index[ours] = names.index(theirs)
        elif ours in REQUIRED:
            missing.append(theirs if theirs == ours else f"{theirs} (for {ours})")
    if missing:
        raise LedgerError(f"{path}: the header has no column {', '.join(missing)}; "
                          "map other names in [ledger.columns]")
    return index


def _open(settings: LedgerSettings) -> TextIO:
    try:
        return settings.path.open(newline="", encoding=settings.encoding)
    except OSError as exc:
        raise LedgerError(f"{settings.path}: cannot open the ledger ({exc.strerror})") from exc


def _first_row(reader: _csv.Reader, path: Path) -> list[str]:
    try:
        return next(reader)
    except StopIteration:
        raise LedgerError(f"{path}: the ledger is empty: no header row") from None


def _not_text(settings: LedgerSettings, line: int, exc: UnicodeDecodeError) -> LedgerError:
    return LedgerError(f"{settings.path}: line {line + 1} is not {settings.encoding} text "
                       f"(byte {exc.object[exc.start]:#04x}); set [ledger] encoding")


def iter_rows(settings: LedgerSettings) -> Iterator[tuple[int, list[str]]]:
    """Yield (line, cells) for every data row; raise LedgerError when the file cannot be read at all."""
    with _open(settings) as handle:
        reader = csv.reader(handle, delimiter=settings.delimiter)
        try:
            yield 0, _first_row(reader, settings.path)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield reader.line_num, [f"\x00csv: {exc}"]
                    continue
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise _not_text(settings, reader.line_num, exc) from exc


def read_ledger(settings: LedgerSettings) -> Ledger:
    with _open(settings) as handle, gc_paused():
        reader = csv.reader(handle, delimiter=settings.delimiter)
        try:
            return _read(reader, settings)
        except UnicodeDecodeError as exc:
            raise _not_text(settings, reader.line_num, exc) from exc


class _Columns:
    """Where each field sits in a row, and how to pull a row's customer cells out in one call."""

    def __init__(self, index: dict[str, int]) -> None:
        self.index = index
        present = [index[name] for name in _CUSTOMER_FIELDS if name in index]
        self.customer_cells = itemgetter(*present)
        self.complete = len(present) == len(_CUSTOMER_FIELDS)

    def customer(self, cells: list[str]) -> tuple[str, ...]:
        """All ten customer cells, "" for a column the ledger does not have."""
        if self.complete:
            return self.customer_cells(cells)  # type: ignore[no-any-return]
        return tuple(cells[self.index[name]] if name in self.index else "" for name in _CUSTOMER_FIELDS)


_CUSTOMER_FIELDS = ("customer_id", "customer_name", "contact_name", "contact_email", "cc_emails", "language",
                    "country", "timezone", "account_manager", "tier")


def _validate(cells: list[str], columns: _Columns, parser: _Parser) -> tuple[
        str, Customer, str, Decimal, Decimal, date, date]:
    """Every check of a row, in the order that decides which reason a bad row gets; raises _RowError."""
    ix = columns.index
    invoice_id = cells[ix["invoice_id"]].strip()
    if not _ID.match(invoice_id):
        raise _RowError(f"invoice_id {invoice_id!r} is empty, too long or has spaces or control characters")
    customer = parser.customer(_SEP.join(columns.customer_cells(cells)), columns.customer(cells))
    currency = parser.currency(cells[ix["currency"]])
    amount = parser.amount("amount", cells[ix["amount"]])
    balance = parser.amount("balance", cells[ix["balance"]])
    if balance < 0:
        raise _RowError(f"balance {cells[ix['balance']]!r} is negative (a credit is not dunned)")
    if amount < 0:
        raise _RowError(f"amount {cells[ix['amount']]!r} is negative (a credit note is not dunned)")
    issue_date = parser.date("issue_date", cells[ix["issue_date"]])
    due_date = parser.date("due_date", cells[ix["due_date"]])
    if due_date < issue_date:
        raise _RowError(f"due_date {due_date} is before issue_date {issue_date}")
    return invoice_id, customer, currency, amount, balance, issue_date, due_date


class _FirstLines:
    """Where each invoice_id was first seen, worked out only when a duplicate needs saying so."""

    def __init__(self, open_invoices: list[Invoice]) -> None:
        self.open_invoices = open_invoices
        self.paid: dict[str, int] = {}
        self.index: dict[str, int] = {}

    def of(self, invoice_id: str) -> int:
        for invoice in self.open_invoices[len(self.index):]:  # open invoice ids are unique until filtered
            self.index[invoice.invoice_id] = invoice.line
        return self.index.get(invoice_id) or self.paid[invoice_id]


def _read(reader: _csv.Reader, settings: LedgerSettings) -> Ledger:
    """The row loop. A million rows pass through it, so the common case (every value already seen and
    valid: the caches hold only valid values) is inlined; anything else takes `_validate`, which runs
    every check in order, so a bad row gets exactly the reason it always got."""
    path = settings.path
    file = str(path)
    header = _first_row(reader, path)
    columns = _Columns(_header_index(header, settings, path))
    width = len(header)
    parser = _Parser(settings)
    ledger = Ledger(path=path)
    problems = ledger.problems
    open_invoices = ledger.open_invoices
    paid = 0
    seen: set[str] = set()  # a set, not id -> line: a duplicate is rare, its first line is looked up then
    first_lines = _FirstLines(open_invoices)
    duplicated: set[str] = set()
    ix = columns.index
    i_inv, i_cur, i_amount, i_balance, i_issue, i_due = (
        ix[k] for k in ("invoice_id", "currency", "amount", "balance", "issue_date", "due_date"))
    customer_cells, join = columns.customer_cells, _SEP.join
    customers, currencies, amounts, dates = (parser.customers.get, parser.currencies.get, parser.amounts.get,
                                             parser.dates.get)
    amount_cache, plain, remember = parser.amounts, _PLAIN_AMOUNT.fullmatch, seen.add
    new_invoice, append = _NewInvoice, open_invoices.append
    while True:
        try:
            for cells in reader:
                line = reader.line_num
                if len(cells) != width or width == 1:
                    if len(cells) == 1 and cells[0].startswith("\x00csv: "):
                        problems.append(Problem(file, line, f"unreadable CSV row ({cells[0][6:]})"))
                        continue
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    if len(cells) != width:
                        problems.append(Problem(file, line, f"has {len(cells)} fields, the header has {width}"))
                        continue
                invoice_id = cells[i_inv].strip()
                key = join(customer_cells(cells))
                customer = customers(key)
                currency = currencies(cells[i_cur])
                raw_amount, raw_balance = cells[i_amount], cells[i_balance]
                amount = amounts(raw_amount)
                if amount is None and plain(raw_amount):
                    amount = Decimal(raw_amount)
                    if len(amount_cache) < _AMOUNT_CACHE:
                        amount_cache[raw_amount] = amount
                if raw_balance == raw_amount:  # unpaid in full: share the Decimal
                    balance = amount
                else:
                    balance = amounts(raw_balance)
                    if balance is None and plain(raw_balance):
                        balance = Decimal(raw_balance)
                issue_date, due_date = dates(cells[i_issue]), dates(cells[i_due])
                # The fast path's invoice_id test implies _ID's (printable excludes controls and \s but
                # the space); whatever it refuses, _validate decides with the pattern itself.
                if (currency is None or amount is None or balance is None
                        or issue_date is None or due_date is None or due_date < issue_date
                        or not 0 < len(invoice_id) <= 64 or not invoice_id.isprintable()
                        or " " in invoice_id or "<" in invoice_id or ">" in invoice_id):
                    try:
                        invoice_id, customer, currency, amount, balance, issue_date, due_date = _validate(
                            cells, columns, parser)
                    except _RowError as exc:
                        problems.append(Problem(file, line, str(exc)))
                        continue
                elif customer is None:  # a customer seen for the first time; the rest of the row is good
                    try:
                        customer = parser.customer(key, columns.customer(cells))
                    except _RowError as exc:
                        problems.append(Problem(file, line, str(exc)))
                        continue
                if invoice_id in seen:
                    duplicated.add(invoice_id)
                    problems.append(Problem(file, line, f"duplicate invoice_id {invoice_id!r} (first on line "
                                                        f"{first_lines.of(invoice_id)}); neither row is used"))
                    continue
                remember(invoice_id)
                if not balance:
                    paid += 1
                    first_lines.paid[invoice_id] = line
                    continue
                fresh = new_invoice(invoice_id, customer, currency, amount, balance, issue_date, due_date, line)
                fresh.__class__ = Invoice  # type: ignore[assignment]
                append(fresh)  # type: ignore[arg-type]
        except csv.Error as exc:
            problems.append(Problem(file, reader.line_num, f"unreadable CSV row ({exc})"))
            continue
        break
    ledger.paid = paid
    if duplicated:
        kept = []
        for invoice in open_invoices:
            if invoice.invoice_id in duplicated:
                problems.append(Problem(file, invoice.line, f"duplicate invoice_id {invoice.invoice_id!r}; "
                                                            "neither row is used"))
            else:
                kept.append(invoice)
        ledger.open_invoices = kept
    problems.sort(key=lambda p: p.line)
    return ledger
