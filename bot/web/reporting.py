"""The figures of bot.reports shaped for the reports page and the queue's summary, with their charts.

`reports.gather` reads every customer, promise and reply: on a large store that costs more than a
page may. So the data is read once (at start-up, in the background), kept, and read again in the
background when it is older than `ttl` seconds; meanwhile pages show the figures they have. They lag
the store by at most `ttl` plus one read, which is plenty for aging and DSO. The figures derived for
each owner are kept with the data they came from. Amounts are never added across currencies: each
currency gets its own aging chart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from bot import reports
from bot.web.charts import bar_chart
from bot.web.pages import label, money

if TYPE_CHECKING:
    from bot.web.app import Web

log = logging.getLogger(__name__)
WEEKS = 12


class Reports:
    """Report data for the whole store, refreshed in the background, cut down to one owner where that makes sense."""

    def __init__(self, web: Web, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.web, self.ttl, self.clock = web, ttl, clock
        self._lock = threading.Lock()  # guards the four fields below
        self._data: reports.ReportData | None = None
        self._at = float("-inf")
        self._refreshing = False
        self._derived: dict[tuple[Any, ...], Any] = {}
        self._reading = threading.Lock()  # one store read at a time

    def warm(self) -> None:
        """Read the data in the background, so that not even the first page waits for it."""
        threading.Thread(target=self._read, name="dunbot-reports", daemon=True).start()

    def data(self) -> reports.ReportData:
        with self._lock:
            data, stale = self._data, self.clock() - self._at > self.ttl
            if data is not None and stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._read, name="dunbot-reports", daemon=True).start()
        return data if data is not None else self._read()

    def _read(self) -> reports.ReportData:
        with self._reading:
            with self._lock:
                if self._data is not None and self.clock() - self._at <= self.ttl:
                    return self._data  # another thread has just read it
            try:
                data = reports.gather(self.web.store, self.web.settings)
            except Exception:
                log.exception("could not read the report figures; keeping the previous ones")
                with self._lock:
                    self._refreshing = False
                    if self._data is not None:
                        return self._data
                raise
            with self._lock:
                self._data, self._at, self._refreshing, self._derived = data, self.clock(), False, {}
            return data

    def _derive(self, key: tuple[Any, ...], make: Callable[[reports.ReportData], Any]) -> Any:
        data = self.data()
        key = (*key, self.web.today())
        with self._lock:
            if self._data is data and key in self._derived:
                return self._derived[key]
        value = make(data)
        with self._lock:
            if self._data is data:
                self._derived[key] = value
        return value

    def summary(self, owner: str | None) -> dict[str, Any]:
        """The queue's strip: open balance per currency, how much of it is over 90 days, and DSO."""
        return self._derive(("summary", owner), lambda data: self._summary(data, owner))

    def page(self, owner: str | None) -> dict[str, Any]:
        return self._derive(("page", owner), lambda data: self._page(data, owner))

    def _summary(self, data: reports.ReportData, owner: str | None) -> dict[str, Any]:
        today = self.web.today()
        invoices = _owned(data, owner)
        aging = reports.aging(invoices, today)
        dso = reports.dso(invoices, today)
        return {"currencies": [{"currency": currency, "total": sum(buckets.values(), Decimal(0)),
                                "over_90": buckets["90+"], "dso": dso[currency].days if currency in dso else None}
                               for currency, buckets in aging.by_currency.items()]}

    def _page(self, data: reports.ReportData, owner: str | None) -> dict[str, Any]:
        today = self.web.today()
        invoices = _owned(data, owner)
        aging = reports.aging(invoices, today)
        charts: list[tuple[str, Markup]] = []
        for currency, buckets in aging.by_currency.items():
            charts.append((currency, bar_chart(
                reports.BUCKETS, [(f"{currency} open", [float(v) for v in buckets.values()])],
                title=f"Open balance by days overdue, {currency}", fmt=lambda v, c=currency: money(v, c))))
        kept = reports.promises(data.promises)
        promise_chart = bar_chart(("kept", "broken", "running", "lifted"),
                                  [("promises", [kept.kept, kept.broken, kept.running, kept.lifted])],
                                  title="Promises to pay by outcome", whole=True, fmt=lambda v: f"{v:.0f}")
        since = today - timedelta(weeks=WEEKS - 1, days=today.weekday())
        weeks = reports.replies_by_week(r for r in data.replies if r.received >= since)
        intents = sorted({i for counts in weeks.values() for i, n in counts.items() if n})
        reply_chart = bar_chart([w.split("-")[1] for w in weeks],
                                [(label(i), [float(weeks[w].get(i, 0)) for w in weeks]) for i in intents],
                                title=f"Replies by intent per week, last {WEEKS} weeks", stacked=True,
                                whole=True, fmt=lambda v: f"{v:.0f}")
        return {"today": today, "aging": aging, "buckets": reports.BUCKETS, "aging_charts": charts,
                "dso": reports.dso(invoices, today), "promises": kept, "promise_chart": promise_chart,
                "reply_chart": reply_chart, "weeks": weeks, "intents": intents}


def _owned(data: reports.ReportData, owner: str | None) -> list[reports.OpenInvoice]:
    return [i for i in data.invoices if owner is None or i.owner == owner]
