"""One dunning pass: what the store knows plus what the ledger says, turned into reminders sent.

The order matters: holds that ran out are reviewed first (a broken promise moves the customer up a
stage), reminders still queued for invoices that changed are withdrawn, and only then is the plan
made, recorded and delivered. The command line and the daemon both run exactly this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from bot import outbox
from bot.casebook import CaseBook
from bot.cases import SUGGESTED_STEPS
from bot.config import Settings
from bot.ledger import Invoice
from bot.ledger_check import LedgerCheck, check_ledger
from bot.policy import History, Hold, Plan, plan
from bot.store import Store
from bot.templates import Templates
from bot.transports import Transport

log = logging.getLogger(__name__)


def load_history(store: Store, now: datetime) -> History:
    last_sent = store.last_sent()
    holds: dict[str, Hold] = {}
    for row in store.active_holds(now):
        current = holds.get(row["customer_id"])
        if current is None or current.until is None or row["until"] > current.until:
            holds[row["customer_id"]] = Hold(row["reason"], row["until"])
    bump = frozenset(cid for cid, broken in store.broken_promises().items()
                     if cid not in last_sent or broken[-1] > last_sent[cid])
    return History(
        stages_sent=store.stages_sent(),
        last_sent=last_sent,
        thread=store.threads(),
        holds=holds,
        invalid_contacts=store.invalid_contacts(),
        escalated=store.escalated_customers(),
        bump=bump,
    )


def review_holds(store: Store, open_invoices: Mapping[str, Invoice], now: datetime, settings: Settings) -> None:
    """End the holds whose time is up: a promise still unpaid is broken, and enough broken promises escalate."""
    owing = {invoice.customer.customer_id for invoice in open_invoices.values()}
    for hold in store.expired_holds(now):
        cid = hold["customer_id"]
        if cid not in owing:
            outcome = "kept" if hold["kind"] == "promise" else "paid"
        else:
            outcome = "broken" if hold["kind"] == "promise" else "resumed"
        store.end_hold(hold["id"], outcome, now)
        log.info("hold %d on customer %s (%s) ended: %s", hold["id"], cid, hold["reason"], outcome)
        if outcome != "broken":
            continue
        broken = len(store.broken_promises().get(cid, []))
        if broken >= settings.triage.broken_promises_to_escalate and store.escalate(
                cid, "broken_promises", f"{broken} broken promises to pay", [], SUGGESTED_STEPS["broken_promises"],
                now):
            log.warning("escalated customer %s: %d broken promises", cid, broken)


def cancel_stale(store: Store, open_invoices: Mapping[str, Invoice], report: outbox.Report) -> None:
    """Withdraw queued reminders whose invoices were paid, changed or left the ledger since queueing."""
    for rid, balances in store.queued_balances().items():
        stale = sorted(inv for inv, balance in balances.items()
                       if inv not in open_invoices or str(open_invoices[inv].balance) != balance)
        if stale:
            store.withdraw(rid)
            log.warning("withdrew unsent reminder %d: invoices %s were paid, changed or left the ledger since it was "
                        "queued", rid, ", ".join(stale))
            report.cancelled += 1


def with_installments(invoices: list[Invoice], agreed: Mapping[str, list[dict[str, Any]]]) -> list[Invoice]:
    """Replace the invoices of customers on a payment plan by their unpaid installments.

    What the customer has paid since the plan began (the drop in the ledger's balance) pays the
    installments in order; each unpaid one becomes an invoice of its own, with its own stages.
    """
    if not agreed:
        return invoices
    kept: list[Invoice] = []
    owed: dict[str, list[Invoice]] = {}
    for invoice in invoices:
        if invoice.customer.customer_id in agreed:
            owed.setdefault(invoice.customer.customer_id, []).append(invoice)
        else:
            kept.append(invoice)
    for cid, group in owed.items():
        parts = agreed[cid]
        currency = parts[0]["currency"]
        balance = sum((i.balance for i in group if i.currency == currency), Decimal(0))
        paid = Decimal(parts[0]["start_balance"]) - balance
        cumulative = Decimal(0)
        for part in parts:
            amount = Decimal(part["amount"])
            cumulative += amount
            left = min(amount, cumulative - paid)
            if left > 0:
                kept.append(Invoice(f"{cid}-P{part['plan']}-{part['seq']}/{len(parts)}", group[0].customer, currency,
                                    amount, left, part["due_date"] - timedelta(days=30), part["due_date"], 0))
        kept.extend(i for i in group if i.currency != currency)
    return kept


def prepare(store: Store, invoices: list[Invoice], now: datetime, settings: Settings,
            report: outbox.Report, *, check: LedgerCheck | None = None) -> Plan:
    """Check the ledger's sanity, refresh the customer snapshot, review holds, close paid cases, withdraw stale
    reminders, then plan. A suspect ledger raises LedgerSuspect before anything is changed."""
    check_ledger(store, invoices, now, check)
    today = now.astimezone(ZoneInfo(settings.company.timezone)).date()
    CaseBook(store, settings).refresh_customers(invoices, today, now)
    by_id = {invoice.invoice_id: invoice for invoice in invoices}
    review_holds(store, by_id, now, settings)
    store.close_paid({invoice.customer.customer_id for invoice in invoices}, now)
    cancel_stale(store, by_id, report)
    return plan_from_store(store, invoices, now, settings)


def plan_from_store(store: Store, invoices: list[Invoice], now: datetime, settings: Settings) -> Plan:
    """The plan as the store stands, changing nothing: what `dunbot plan` shows and `dunbot send` acts on."""
    return plan(with_installments(invoices, store.active_installments()), load_history(store, now), now, settings)


async def send_pass(store: Store, invoices: list[Invoice], transport: Transport, workers: int,
                    clock: Callable[[], datetime], settings: Settings, templates: Templates,
                    *, retry_for: float = 0.0, check: LedgerCheck | None = None) -> tuple[Plan, outbox.Report]:
    report = outbox.Report()
    result = prepare(store, invoices, clock(), settings, report, check=check)
    await outbox.send_plan(result, store, templates, settings, transport, clock, report, workers=workers,
                           retry_for=retry_for)
    return result, report
