"""Reports are pure: exact figures on hand-made data, boundaries of every bucket and of the DSO period."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal as D

from bot.reports import (
    BUCKETS,
    OpenInvoice,
    PromiseHold,
    ReplySeen,
    aging,
    bucket,
    dso,
    plain,
    promises,
    replies_by_week,
)

TODAY = date(2026, 11, 24)


def inv(owner: str, currency: str, amount: str, balance: str, issued: str, due: str) -> OpenInvoice:
    return OpenInvoice("C", owner, currency, D(amount), D(balance), date.fromisoformat(issued),
                       date.fromisoformat(due))


INVOICES = [
    inv("laura", "EUR", "1000.00", "1000.00", "2026-11-01", "2026-11-30"),  # due in 6 days: current
    inv("laura", "EUR", "500.00", "200.00", "2026-10-25", "2026-11-24"),    # due today: current
    inv("laura", "EUR", "300.00", "300.00", "2026-10-24", "2026-11-23"),    # 1 day: 1-30
    inv("daniel", "EUR", "400.00", "400.00", "2026-09-25", "2026-10-25"),   # 30 days: 1-30
    inv("daniel", "EUR", "250.50", "250.50", "2026-09-24", "2026-10-24"),   # 31 days: 31-60
    inv("laura", "EUR", "600.00", "0.00", "2026-11-10", "2026-12-10"),      # paid: sales only
    inv("daniel", "USD", "900.00", "900.00", "2026-08-27", "2026-09-25"),   # 60 days: 31-60; issued 89 days ago
    inv("laura", "USD", "100.00", "100.00", "2026-08-25", "2026-09-24"),    # 61 days: 61-90
    inv("laura", "USD", "700.00", "700.00", "2026-07-27", "2026-08-26"),    # 90 days: 61-90
    inv("laura", "USD", "50.00", "50.00", "2026-07-26", "2026-08-25"),      # 91 days: 90+
]


def test_bucket_boundaries() -> None:
    assert [bucket(d) for d in (-5, 0, 1, 30, 31, 60, 61, 90, 91, 400)] == [
        "current", "current", "1-30", "1-30", "31-60", "31-60", "61-90", "61-90", "90+", "90+"]


def test_aging_per_currency_and_per_owner() -> None:
    result = aging(INVOICES, TODAY)
    zero = D(0)
    assert result.by_currency == {
        "EUR": {"current": D("1200.00"), "1-30": D("700.00"), "31-60": D("250.50"), "61-90": zero, "90+": zero},
        "USD": {"current": zero, "1-30": zero, "31-60": D("900.00"), "61-90": D("800.00"), "90+": D("50.00")},
    }
    assert result.by_owner == {
        "daniel": {"EUR": {"current": zero, "1-30": D("400.00"), "31-60": D("250.50"), "61-90": zero, "90+": zero},
                   "USD": {"current": zero, "1-30": zero, "31-60": D("900.00"), "61-90": zero, "90+": zero}},
        "laura": {"EUR": {"current": D("1200.00"), "1-30": D("300.00"), "31-60": zero, "61-90": zero, "90+": zero},
                  "USD": {"current": zero, "1-30": zero, "31-60": zero, "61-90": D("800.00"), "90+": D("50.00")}},
    }
    assert result.invoices == {"EUR": {"current": 2, "1-30": 2, "31-60": 1, "61-90": 0, "90+": 0},
                               "USD": {"current": 0, "1-30": 0, "31-60": 1, "61-90": 2, "90+": 1}}
    assert list(result.by_currency["EUR"]) == list(BUCKETS)
    assert aging([], TODAY).by_currency == {}


def test_dso_per_currency_over_the_last_90_days() -> None:
    result = dso(INVOICES, TODAY)
    eur, usd = result["EUR"], result["USD"]
    # EUR: receivables 2150.50; sales 1000 + 500 + 300 + 400 + 250.50 + 600 (paid, still a sale) = 3050.50.
    assert (eur.receivables, eur.credit_sales, eur.period_days) == (D("2150.50"), D("3050.50"), 90)
    assert eur.days == D("63.4")  # 2150.50 / (3050.50 / 90) = 63.447
    # USD: only the invoice issued 89 days ago is in the period; the one of 90 days ago is not.
    assert (usd.receivables, usd.credit_sales, usd.days) == (D("1750.00"), D("900.00"), D("175.0"))
    assert dso(INVOICES[7:], TODAY)["USD"].days is None  # nothing invoiced in the period
    assert dso(INVOICES, TODAY, period_days=30)["EUR"].credit_sales == D("1600.00")


def test_promises_by_outcome() -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    held = [PromiseHold("kept", at), PromiseHold("kept", at), PromiseHold("broken", at), PromiseHold(None, at),
            PromiseHold("lifted by alice", at), PromiseHold("broken", datetime(2026, 9, 1, tzinfo=UTC))]
    result = promises(held)
    assert (result.kept, result.broken, result.running, result.lifted) == (2, 2, 1, 1)
    assert result.kept_rate == D("0.500")
    recent = promises(held, since=datetime(2026, 10, 1, tzinfo=UTC))
    assert (recent.broken, recent.kept_rate) == (1, D("0.667"))
    assert promises([]).kept_rate is None


def test_replies_by_intent_per_iso_week() -> None:
    seen = [ReplySeen(date(2026, 11, 23), "dispute"), ReplySeen(date(2026, 11, 29), "promise_to_pay"),
            ReplySeen(date(2026, 11, 29), "dispute"), ReplySeen(date(2026, 11, 30), "payment_sent"),
            ReplySeen(date(2027, 1, 1), "dispute")]
    assert replies_by_week(seen) == {
        "2026-W48": {"dispute": 2, "payment_sent": 0, "promise_to_pay": 1},
        "2026-W49": {"dispute": 0, "payment_sent": 1, "promise_to_pay": 0},
        "2026-W53": {"dispute": 1, "payment_sent": 0, "promise_to_pay": 0},  # 1 Jan 2027 is in ISO 2026's week 53
    }


def test_plain_is_json_with_exact_amounts() -> None:
    document = json.loads(json.dumps(plain(aging(INVOICES[:1], TODAY))))
    assert document["as_of"] == "2026-11-24"
    assert document["by_currency"]["EUR"]["current"] == "1000.00"
    assert document["by_owner"]["laura"]["EUR"]["90+"] == "0"
