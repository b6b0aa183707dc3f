"""Figures for the people who run collections: aging, DSO, promises kept, replies by intent.

Pure functions over plain data (dataclasses of str, date, int and Decimal), so the web page can chart
them and the tests can check them to the cent; `gather` is the one place that reads the store.
Amounts are never added across currencies.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.config import Settings
from bot.schema import cases, customers, feedback, holds, replies
from bot.store import Store

BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")
DSO_PERIOD = 90


@dataclass(frozen=True, slots=True)
class OpenInvoice:
    """One invoice as the last ledger read left it, with the person who owns its customer's case."""

    customer_id: str
    owner: str
    currency: str
    amount: Decimal
    balance: Decimal
    issue_date: date
    due_date: date


@dataclass(frozen=True, slots=True)
class PromiseHold:
    """A promise to pay: `outcome` is "kept", "broken", "lifted by <user>" or None while it runs."""

    outcome: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReplySeen:
    received: date
    intent: str  # a person's correction when there is one, else the bot's reading


@dataclass(frozen=True, slots=True)
class ReportData:
    invoices: tuple[OpenInvoice, ...]
    promises: tuple[PromiseHold, ...]
    replies: tuple[ReplySeen, ...]


# ---- Aging ------------------------------------------------------------------------------------------------


def bucket(days_overdue: int) -> str:
    """Not yet due (or due today) is current; then 1-30, 31-60, 61-90 and over 90 days past the due date."""
    if days_overdue <= 0:
        return "current"
    if days_overdue <= 30:
        return "1-30"
    if days_overdue <= 60:
        return "31-60"
    if days_overdue <= 90:
        return "61-90"
    return "90+"


def _empty() -> dict[str, Decimal]:
    return {name: Decimal(0) for name in BUCKETS}


@dataclass(frozen=True, slots=True)
class Aging:
    """Open balances by bucket: per currency, and per owner and currency. Every bucket is present, zero or not."""

    as_of: date
    by_currency: dict[str, dict[str, Decimal]]
    by_owner: dict[str, dict[str, dict[str, Decimal]]]
    invoices: dict[str, dict[str, int]]  # currency -> bucket -> how many invoices


def aging(invoices: Iterable[OpenInvoice], today: date) -> Aging:
    by_currency: dict[str, dict[str, Decimal]] = {}
    by_owner: dict[str, dict[str, dict[str, Decimal]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for inv in invoices:
        if inv.balance <= 0:
            continue
        name = bucket((today - inv.due_date).days)
        by_currency.setdefault(inv.currency, _empty())[name] += inv.balance
        by_owner.setdefault(inv.owner, {}).setdefault(inv.currency, _empty())[name] += inv.balance
        counts.setdefault(inv.currency, dict.fromkeys(BUCKETS, 0))[name] += 1
    return Aging(
        as_of=today,
        by_currency={c: by_currency[c] for c in sorted(by_currency)},
        by_owner={o: {c: by_owner[o][c] for c in sorted(by_owner[o])} for o in sorted(by_owner)},
        invoices={c: counts[c] for c in sorted(counts)},
    )


# ---- DSO --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dso:
    """Days sales outstanding in one currency; `days` is None when nothing was invoiced in the period."""

    currency: str
    receivables: Decimal
    credit_sales: Decimal
    period_days: int
    days: Decimal | None


def dso(invoices: Iterable[OpenInvoice], today: date, period_days: int = DSO_PERIOD) -> dict[str, Dso]:
    """DSO = receivables / (credit sales in the period / days in the period), per currency, to 0.1 day.

    receivables:  every open balance on `today`, whatever its age.
    credit sales: the invoiced amounts (not balances) of the invoices issued in the `period_days` days
                  up to and including `today`.
    The ledger export lists open invoices only, so invoices issued and fully paid within the period are
    missing from the sales: from that data the figure is an upper bound, exact when the caller passes
    the paid invoices too (balance 0). Its trend is what matters: a rising DSO means cash comes in slower.
    """
    receivables: dict[str, Decimal] = {}
    sales: dict[str, Decimal] = {}
    for inv in invoices:
        receivables[inv.currency] = receivables.get(inv.currency, Decimal(0)) + max(inv.balance, Decimal(0))
        sales.setdefault(inv.currency, Decimal(0))
        if 0 <= (today - inv.issue_date).days < period_days:
            sales[inv.currency] += inv.amount
    result = {}
    for currency in sorted(receivables):
        sold = sales[currency]
        days = (receivables[currency] * period_days / sold).quantize(Decimal("0.1")) if sold > 0 else None
        result[currency] = Dso(currency, receivables[currency], sold, period_days, days)
    return result


# ---- Promises and replies ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Promises:
    """Promises to pay by outcome; `kept_rate` = kept / (kept + broken), None before any was decided."""

    kept: int
    broken: int
    running: int
    lifted: int  # a person acted before the date (a plan, a pause, a resolution)
    kept_rate: Decimal | None


def promises(held: Iterable[PromiseHold], since: datetime | None = None) -> Promises:
    kept = broken = running = lifted = 0
    for promise in held:
        if since is not None and promise.created_at < since:
            continue
        if promise.outcome is None:
            running += 1
        elif promise.outcome == "kept":
            kept += 1
        elif promise.outcome == "broken":
            broken += 1
        else:
            lifted += 1
    rate = (Decimal(kept) / (kept + broken)).quantize(Decimal("0.001")) if kept + broken else None
    return Promises(kept, broken, running, lifted, rate)


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def replies_by_week(seen: Iterable[ReplySeen]) -> dict[str, dict[str, int]]:
    """ISO week ("2026-W48") -> intent -> count; weeks in order, every intent present in every week."""
    weeks: dict[str, dict[str, int]] = {}
    intents: set[str] = set()
    for reply in seen:
        week = weeks.setdefault(iso_week(reply.received), {})
        week[reply.intent] = week.get(reply.intent, 0) + 1
        intents.add(reply.intent)
    return {w: {i: weeks[w].get(i, 0) for i in sorted(intents)} for w in sorted(weeks)}


# ---- Reading the store, and plain JSON -----------------------------------------------------------------------


def gather(store: Store, settings: Settings) -> ReportData:
    """The data every report needs: the customers snapshot's invoices (owner: the case's, else the routed
    one), every promise hold, and every reply with its corrected intent, dated in the company's time zone."""
    zone = ZoneInfo(settings.company.timezone)
    q = (sa.select(customers.c.customer_id, customers.c.owner, customers.c.invoices, cases.c.owner.label("case_owner"))
         .select_from(customers.outerjoin(cases, cases.c.customer_id == customers.c.customer_id)))
    found: list[OpenInvoice] = []
    with store.engine.begin() as c:
        for row in c.execute(q):
            owner = row.case_owner or row.owner or ""
            for i in json.loads(row.invoices or "[]"):
                found.append(OpenInvoice(row.customer_id, owner, i["currency"], Decimal(i["amount"]),
                                         Decimal(i["balance"]), date.fromisoformat(i["issue_date"]),
                                         date.fromisoformat(i["due_date"])))
        held = [PromiseHold(r.outcome, r.created_at) for r in c.execute(
            sa.select(holds.c.outcome, holds.c.created_at).where(holds.c.kind == "promise").order_by(holds.c.id))]
        corrected = dict(c.execute(sa.select(feedback.c.reply_id, feedback.c.intent)).all())
        seen = [ReplySeen((r.sent_at or r.created_at).astimezone(zone).date(), corrected.get(r.id, r.intent))
                for r in c.execute(sa.select(replies.c.id, replies.c.intent, replies.c.sent_at, replies.c.created_at)
                                   .order_by(replies.c.id))]
    return ReportData(tuple(found), tuple(held), tuple(seen))


def plain(value: Any) -> Any:
    """Dataclasses, Decimals and dates as JSON-ready dicts and strings (amounts as exact decimal strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value
