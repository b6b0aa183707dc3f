"""Reads the customer's receivables ledger (CSV), read-only: the ledger is their source of truth.

Bad rows are reported with file, line and reason and skipped; the good rows go on. Only a file
that cannot be read at all raises. Rows are validated strictly enough that nothing in them can
reach a mail header unchecked (control characters, malformed addresses).

Speed and memory matter (a million rows is a real ledger): repeated values such as dates,
currencies and customers are parsed once and shared.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
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
_NUMERIC_DATE = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})$")
_LANG = re.compile(r"^[a-z]{2}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ID = re.compile(r"^[^\x00-\x1f\x7f\s<>]{1,64}$")


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


class _Parser:
    """Turns raw CSV cells into typed values, caching what repeats (dates, zones, customers)."""

    def __init__(self, settings: LedgerSettings) -> None:
        self.dmy = settings.date_order == "dmy"
        self.dates: dict[str, date] = {}
        self.zones: dict[str, bool] = {}
        self.customers: dict[tuple[str, ...], Customer] = {}
        self.amounts: dict[str, Decimal] = {}

    def date(self, name: str, raw: str) -> date:
        try:
            return self.dates[raw]
        except KeyError:
            pass
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
        if len(self.dates) < 100_000:
            self.dates[raw] = value
        return value

    def amount(self, name: str, raw: str) -> Decimal:
        try:
            return self.amounts[raw]
        except KeyError:
            pass
        text = raw.strip().replace(" ", "")
        if not _AMOUNT.match(text):
            raise _RowError(f"{name} {raw!r} is not an amount (digits with '.' as decimal point)")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise _RowError(f"{name} {raw!r} is not an amount") from exc
        if len(self.amounts) < 200_000:
            self.amounts[raw] = value
        return value

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

    def customer(self, cells: tuple[str, ...]) -> Customer:
        cached = self.customers.get(cells)
        if cached is not None:
            return cached
        customer_id, name, contact_name, email, cc, language, country, tz, manager, tier = cells
        if not _ID.match(customer_id):
            raise _RowError(f"customer_id {customer_id!r} is empty, too long or has spaces or control characters")
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
        ccs = tuple(a.strip() for a in re.split(r"[;,]", cc) if a.strip())
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
        customer = Customer(customer_id, name.strip(), contact_name.strip(), email, ccs, language, country,
                            tz, manager.strip(), tier.strip().lower())
        self.customers[cells] = customer
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


def iter_rows(settings: LedgerSettings) -> Iterator[tuple[int, list[str]]]:
    """Yield (line, cells) for every data row; raise LedgerError when the file cannot be read at all."""
    path = settings.path
    try:
        handle = path.open(newline="", encoding=settings.encoding)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot open the ledger ({exc.strerror})") from exc
    with handle:
        reader = csv.reader(handle, delimiter=settings.delimiter)
        try:
            try:
                header = next(reader)
            except StopIteration:
                raise LedgerError(f"{path}: the ledger is empty: no header row") from None
            yield 0, header
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
            raise LedgerError(f"{path}: line {reader.line_num + 1} is not {settings.encoding} text "
                              f"(byte {exc.object[exc.start]:#04x}); set [ledger] encoding") from exc


def read_ledger(settings: LedgerSettings) -> Ledger:
    path = settings.path
    file = str(path)
    rows = iter_rows(settings)
    _, header = next(rows)
    index = _header_index(header, settings, path)
    width = len(header)
    parser = _Parser(settings)
    ledger = Ledger(path=path)
    problems = ledger.problems
    seen: dict[str, int] = {}
    duplicated: set[str] = set()
    opt = [(index.get(name, -1)) for name in ("contact_name", "cc_emails", "language", "country", "timezone",
                                               "account_manager", "tier")]
    i_inv, i_cust, i_name, i_email = (index[k] for k in ("invoice_id", "customer_id", "customer_name",
                                                           "contact_email"))
    i_cur, i_amount, i_balance, i_issue, i_due = (index[k] for k in ("currency", "amount", "balance",
                                                                      "issue_date", "due_date"))
    i_cname, i_cc, i_lang, i_country, i_tz, i_mgr, i_tier = opt
    for line, cells in rows:
        if len(cells) == 1 and cells[0].startswith("\x00csv: "):
            problems.append(Problem(file, line, f"unreadable CSV row ({cells[0][6:]})"))
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != width:
            problems.append(Problem(file, line, f"has {len(cells)} fields, the header has {width}"))
            continue
        try:
            invoice_id = cells[i_inv].strip()
            if not _ID.match(invoice_id):
                raise _RowError(f"invoice_id {invoice_id!r} is empty, too long or has spaces or control characters")
            customer = parser.customer((
                cells[i_cust].strip(), cells[i_name], cells[i_cname] if i_cname >= 0 else "", cells[i_email],
                cells[i_cc] if i_cc >= 0 else "", cells[i_lang] if i_lang >= 0 else "",
                cells[i_country] if i_country >= 0 else "", cells[i_tz] if i_tz >= 0 else "",
                cells[i_mgr] if i_mgr >= 0 else "", cells[i_tier] if i_tier >= 0 else "",
            ))
            currency = cells[i_cur].strip().upper()
            if currency not in CURRENCIES:
                raise _RowError(f"currency {cells[i_cur]!r} is not an ISO 4217 code")
            amount = parser.amount("amount", cells[i_amount])
            balance = parser.amount("balance", cells[i_balance])
            if balance < 0:
                raise _RowError(f"balance {cells[i_balance]!r} is negative (a credit is not dunned)")
            if amount < 0:
                raise _RowError(f"amount {cells[i_amount]!r} is negative (a credit note is not dunned)")
            issue_date = parser.date("issue_date", cells[i_issue])
            due_date = parser.date("due_date", cells[i_due])
            if due_date < issue_date:
                raise _RowError(f"due_date {due_date} is before issue_date {issue_date}")
        except _RowError as exc:
            problems.append(Problem(file, line, str(exc)))
            continue
        if invoice_id in seen:
            duplicated.add(invoice_id)
            problems.append(Problem(file, line, f"duplicate invoice_id {invoice_id!r} (first on line "
                                                f"{seen[invoice_id]}); neither row is used"))
            continue
        seen[invoice_id] = line
        if balance == 0:
            ledger.paid += 1
            continue
        ledger.open_invoices.append(Invoice(invoice_id, customer, currency, amount, balance, issue_date,
                                            due_date, line))
    if duplicated:
        kept = []
        for invoice in ledger.open_invoices:
            if invoice.invoice_id in duplicated:
                problems.append(Problem(file, invoice.line, f"duplicate invoice_id {invoice.invoice_id!r}; "
                                                            "neither row is used"))
            else:
                kept.append(invoice)
        ledger.open_invoices = kept
    problems.sort(key=lambda p: p.line)
    return ledger
