"""A payment plan: the bot reminds per installment with the usual stages, and the ledger's payments pay them off."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from sample import row, write_config, write_ledger

from bot.casebook import CaseBook
from bot.cli import main
from bot.config import load_settings
from bot.store import Store


def plan_at(config: Path, now: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["plan", "--config", str(config), "--now", now, "--json"])
    return json.loads(result.output)


def send(config: Path, now: str) -> str:
    result = CliRunner().invoke(main, ["send", "--config", str(config), "--now", now])
    assert result.exit_code == 0, result.output
    return result.output


def test_installments_are_dunned_one_by_one_and_paid_from_the_ledger(tmp_path: Path) -> None:
    ledger = write_ledger(tmp_path / "ledger.csv", [row("INV-1", "C1", "ap@c1.test", balance="900.00",
                                                        days_overdue=20)])
    config = write_config(tmp_path, ledger)
    send(config, "2026-11-24T11:00:00+01:00")
    settings = load_settings(config)
    store = Store.open(settings.store_url)
    book = CaseBook(store, settings)
    parts = [(date(2026, 12, 3), Decimal("300.00")), (date(2026, 12, 15), Decimal("300.00")),
             (date(2027, 1, 5), Decimal("300.00"))]
    book.set_plan("C1", parts, "EUR", "laura", datetime(2026, 11, 24, 12, tzinfo=UTC))
    assert book.case("C1")["state"] == "payment_plan"

    # Before the first installment is due, only its courtesy notice; the invoice itself is not chased.
    early = plan_at(config, "2026-11-30T11:00:00+01:00")["reminders"]
    assert [(r["stage"], [i["invoice_id"] for i in r["invoices"]]) for r in early] == [("courtesy", ["C1-P1-1/3"])]

    # The customer pays the first installment: the ledger's balance drops to 600.
    write_ledger(ledger, [row("INV-1", "C1", "ap@c1.test", balance="600.00", days_overdue=20)])
    after_payment = plan_at(config, "2026-12-04T11:00:00+01:00")["reminders"]
    assert after_payment == []  # installment 1 paid, installment 2 not due for a courtesy notice yet

    # Installment 2 goes unpaid: it gets its own first reminder the day after its date.
    late = plan_at(config, "2026-12-16T11:00:00+01:00")["reminders"]
    assert [(r["stage"], r["invoices"][0]["invoice_id"], r["invoices"][0]["balance"]) for r in late] == [
        ("first", "C1-P1-2/3", "300.00")]

    # A partial payment of installment 2 shows as its remaining balance.
    write_ledger(ledger, [row("INV-1", "C1", "ap@c1.test", balance="450.00", days_overdue=20)])
    partial = plan_at(config, "2026-12-16T11:00:00+01:00")["reminders"]
    assert partial[0]["invoices"][0]["balance"] == "150.00"

    # Everything paid: the case closes itself. (Another customer keeps the ledger from looking emptied.)
    write_ledger(ledger, [row("INV-1", "C1", "ap@c1.test", balance="0.00", days_overdue=20),
                          row("INV-9", "C9", "ap@c9.test", days_overdue=-30)])
    send(config, "2027-01-06T11:00:00+01:00")
    assert book.case("C1")["state"] == "resolved"
