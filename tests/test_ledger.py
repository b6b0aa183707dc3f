"""Reading the ledger: good rows go on, bad rows are reported with file, line and reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import LEDGER_FIELDS, LedgerSettings, load_settings
from bot.errors import LedgerError
from bot.ledger import read_ledger

ROOT = Path(__file__).resolve().parent.parent
HEADER = ",".join(LEDGER_FIELDS)
GOOD = "INV-1,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100.00,60.00,2026-01-05,2026-02-04,Laura,"


def settings_for(path: Path, **changes: object) -> LedgerSettings:
    base = load_settings(ROOT / "config.toml").ledger
    return replace(base, path=path, **changes)


def write(tmp_path: Path, *rows: str, header: str = HEADER, encoding: str = "utf-8") -> Path:
    path = tmp_path / "ledger.csv"
    path.write_bytes(("\n".join((header, *rows)) + "\n").encode(encoding))
    return path


def test_sample_ledger_reads_clean() -> None:
    settings = load_settings(ROOT / "config.toml")
    ledger = read_ledger(settings.ledger)
    assert ledger.problems == []
    assert ledger.paid == 1 and len(ledger.open_invoices) == 13


def test_good_row_is_typed(tmp_path: Path) -> None:
    ledger = read_ledger(settings_for(write(tmp_path, GOOD)))
    (inv,) = ledger.open_invoices
    assert inv.amount == Decimal("100.00") and isinstance(inv.balance, Decimal) and inv.balance == Decimal("60.00")
    assert inv.due_date == date(2026, 2, 4) and inv.customer.country == "GB" and inv.line == 2


@pytest.mark.parametrize(("row", "reason"), [
    ("INV-2,C1,Acme Ltd,Ann,,,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,", "contact_email is empty"),
    ("INV-2,C1,Acme Ltd,Ann,not-an-address,,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,", "not a valid address"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,1OO,100,2026-01-05,2026-02-04,,", "amount '1OO'"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,12.5.0,2026-01-05,2026-02-04,,", "balance '12.5.0'"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,100,2026-13-45,2026-02-04,,", "issue_date"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,100,2026-01-05,yesterday,,", "due_date 'yesterday'"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,XYZ,100,100,2026-01-05,2026-02-04,,", "ISO 4217"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,-5,2026-01-05,2026-02-04,,", "negative"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,Mars/Olympus,GBP,100,100,2026-01-05,2026-02-04,,", "time zone"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,x@,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,", "cc_emails"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,english,GB,,GBP,100,100,2026-01-05,2026-02-04,,", "ISO 639-1"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,100,2026-03-05,2026-02-04,,", "before issue_date"),
    ("INV-2,C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,100", "has 12 fields"),
    (",C1,Acme Ltd,Ann,ap@acme.test,,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,", "invoice_id"),
])
def test_bad_rows_are_reported_and_skipped(tmp_path: Path, row: str, reason: str) -> None:
    path = write(tmp_path, GOOD, row, GOOD.replace("INV-1", "INV-3"))
    ledger = read_ledger(settings_for(path))
    assert [i.invoice_id for i in ledger.open_invoices] == ["INV-1", "INV-3"]
    (problem,) = ledger.problems
    assert problem.line == 3 and reason in problem.reason
    assert str(problem).startswith(f"{path}:3: ")


def test_duplicate_invoice_ids_use_neither_row(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, GOOD.replace("INV-1", "INV-2"), GOOD.replace("60.00", "10.00"))
    ledger = read_ledger(settings_for(path))
    assert [i.invoice_id for i in ledger.open_invoices] == ["INV-2"]
    assert sorted(p.line for p in ledger.problems) == [2, 4]
    assert all("duplicate invoice_id 'INV-1'" in p.reason for p in ledger.problems)


@pytest.mark.parametrize("field", ["customer_name", "contact_name"])
def test_header_injection_is_refused(tmp_path: Path, field: str) -> None:
    name = '"Acme\r\nBcc: victim@evil.test"'
    row = (f"INV-2,C1,{name},Ann,ap@acme.test,,en,GB,,GBP,100,100,2026-01-05,2026-02-04,," if field == "customer_name"
           else f"INV-2,C1,Acme,{name},ap@acme.test,,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,")
    ledger = read_ledger(settings_for(write(tmp_path, row)))
    assert ledger.open_invoices == []
    assert f"{field} contains a control character" in ledger.problems[0].reason


def test_address_with_header_injection_is_refused(tmp_path: Path) -> None:
    row = 'INV-2,C1,Acme,Ann,"ap@acme.test\nBcc: x@evil.test",,en,GB,,GBP,100,100,2026-01-05,2026-02-04,,'
    ledger = read_ledger(settings_for(write(tmp_path, row)))
    assert ledger.open_invoices == [] and "not a valid address" in ledger.problems[0].reason


def test_paid_rows_are_counted_not_dunned(tmp_path: Path) -> None:
    ledger = read_ledger(settings_for(write(tmp_path, GOOD.replace(",60.00,", ",0.00,"))))
    assert ledger.open_invoices == [] and ledger.paid == 1 and ledger.problems == []


@pytest.mark.parametrize(("order", "text", "expected"), [
    ("dmy", "05/03/2026", date(2026, 3, 5)),
    ("mdy", "05/03/2026", date(2026, 5, 3)),
    ("dmy", "5.3.2026", date(2026, 3, 5)),
    ("mdy", "2026-05-03", date(2026, 5, 3)),
])
def test_date_orders(tmp_path: Path, order: str, text: str, expected: date) -> None:
    row = GOOD.replace("2026-02-04", text).replace("2026-01-05", "2026-01-01")
    ledger = read_ledger(settings_for(write(tmp_path, row), date_order=order))
    assert ledger.open_invoices[0].due_date == expected


def test_column_mapping_reads_an_accounting_export(tmp_path: Path) -> None:
    header = HEADER.replace("invoice_id", "Invoice No.").replace("contact_email", "E-mail")
    path = write(tmp_path, GOOD, header=header)
    base = settings_for(path)
    columns = dict(base.columns, invoice_id="Invoice No.", contact_email="E-mail")
    ledger = read_ledger(replace(base, columns=columns))
    assert ledger.open_invoices[0].invoice_id == "INV-1"
    with pytest.raises(LedgerError, match=r"no column Invoice No\. \(for invoice_id\)"):
        read_ledger(settings_for(write(tmp_path, GOOD), columns=columns))


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    required = ["invoice_id", "customer_id", "customer_name", "contact_email", "currency", "amount", "balance",
                "issue_date", "due_date"]
    path = write(tmp_path, "INV-1,C1,Acme,ap@acme.test,EUR,10,10,2026-01-01,2026-01-31", header=",".join(required))
    (inv,) = read_ledger(settings_for(path)).open_invoices
    assert inv.customer.language == "" and inv.customer.cc_emails == ()


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "cannot open the ledger"),
    ("empty", "no header row"),
    ("latin1", "is not utf-8-sig text"),
    ("no-header", "the header has no column"),
])
def test_unreadable_files_raise_one_clear_error(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "ledger.csv"
    if setup == "empty":
        path.write_bytes(b"")
    elif setup == "latin1":
        write(tmp_path, GOOD.replace("Acme Ltd", "Café Ñandú"), encoding="latin-1")
    elif setup == "no-header":
        path.write_text(GOOD + "\n")
    with pytest.raises(LedgerError, match=message) as info:
        read_ledger(settings_for(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_invoices_are_ordinary_frozen_invoices(tmp_path: Path) -> None:
    """The reader builds invoices through a faster path; what comes out must not differ in any way."""
    from dataclasses import FrozenInstanceError

    from bot.ledger import Invoice

    (inv,) = read_ledger(settings_for(write(tmp_path, GOOD))).open_invoices
    assert type(inv) is Invoice
    assert inv == Invoice(inv.invoice_id, inv.customer, "GBP", Decimal("100.00"), Decimal("60.00"),
                          date(2026, 1, 5), date(2026, 2, 4), 2)
    assert hash(inv) == hash(replace(inv))
    with pytest.raises(FrozenInstanceError):
        inv.balance = Decimal(0)  # type: ignore[misc]


def test_repeated_values_take_the_fast_path_and_bad_ones_still_get_their_reason(tmp_path: Path) -> None:
    rows = [GOOD.replace("INV-1", f"INV-{n}") for n in range(1, 4)]
    rows.append(GOOD.replace("INV-1", "INV-4").replace(",100.00,60.00,", ",100.00,-1,"))
    rows.append(GOOD.replace("INV-1", "INV 5"))
    rows.append(GOOD.replace("INV-1", "INV-2"))
    ledger = read_ledger(settings_for(write(tmp_path, *rows)))
    assert [i.invoice_id for i in ledger.open_invoices] == ["INV-1", "INV-3"]
    assert [(p.line, p.reason.split(" (")[0]) for p in ledger.problems] == [
        (3, "duplicate invoice_id 'INV-2'; neither row is used"), (5, "balance '-1' is negative"),
        (6, "invoice_id 'INV 5' is empty, too long or has spaces or control characters"),
        (7, "duplicate invoice_id 'INV-2'")]
    assert ledger.open_invoices[0].customer is ledger.open_invoices[1].customer
