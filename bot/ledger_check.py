"""The ledger sanity check.

An export cut short, emptied by mistake or rewritten while being read looks exactly like "those customers
paid": the pass would close their cases, withdraw their queued reminders and write to the wrong ones. So
before it changes anything, a pass compares the open invoices with those of the last ledger that passed,
kept in the store, and stops (LedgerSuspect) when too many vanished at once. The baseline moves only on a
ledger that passes, or one an operator accepts (`dunbot ledger accept`).

A module of its own so that the daemon, which reports and configures the check but runs passes in a child
process, does not load the planner, the templates and the ledger reader to do so.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bot.errors import DunbotError
from bot.schema import ledger_checks
from bot.store import Store

if TYPE_CHECKING:
    from bot.ledger import Invoice

log = logging.getLogger(__name__)

_KEEP_CHECKS = 200  # rows of history kept in ledger_checks (only the newest good one keeps its invoice ids)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """Suspect: more than `max_vanished` (a fraction) of the last good ledger's open invoices gone at once, and
    at least `min_vanished` of them, so a small ledger's ordinary payments pass. An empty ledger after a
    non-empty one is always suspect."""

    max_vanished: float = 0.5
    min_vanished: int = 10


class LedgerSuspect(DunbotError):
    """The ledger lost too many open invoices at once: nothing is sent, closed or withdrawn until it is fixed
    or accepted."""

    def __init__(self, message: str, previous: int, current: int, vanished: int) -> None:
        super().__init__(message)
        self.previous, self.current, self.vanished = previous, current, vanished


def _pack(ids: set[str]) -> bytes:
    return zlib.compress("\n".join(sorted(ids)).encode(), 6)


def _unpack(blob: bytes) -> set[str]:
    text = zlib.decompress(blob).decode()
    return set(text.split("\n")) if text else set()


def _baseline(store: Store) -> set[str] | None:
    with store.transaction() as c:
        blob = c.execute(sa.select(ledger_checks.c.invoice_ids).where(ledger_checks.c.invoice_ids.is_not(None))
                         .order_by(ledger_checks.c.id.desc()).limit(1)).scalar()
    return None if blob is None else _unpack(blob)


def _record_check(store: Store, now: datetime, verdict: str, ids: set[str], vanished: int, detail: str) -> None:
    """One row per check; a good ledger (or an accepted one) becomes the baseline, older ids are dropped."""
    with store.transaction() as c:
        keep_ids = verdict in ("ok", "accepted")
        if keep_ids:
            c.execute(ledger_checks.update().where(ledger_checks.c.invoice_ids.is_not(None)).values(invoice_ids=None))
        new_id = c.execute(ledger_checks.insert().values(
            at=now, verdict=verdict, open_count=len(ids), vanished=vanished, detail=detail[:2000],
            invoice_ids=_pack(ids) if keep_ids else None)).inserted_primary_key[0]
        c.execute(ledger_checks.delete().where(ledger_checks.c.id <= new_id - _KEEP_CHECKS))


def check_ledger(store: Store, invoices: list[Invoice], now: datetime, check: LedgerCheck | None = None) -> int:
    """Compare with the last good ledger; record the verdict; raise LedgerSuspect, else return how many vanished."""
    check = check or LedgerCheck()
    ids = {invoice.invoice_id for invoice in invoices}
    previous = _baseline(store)
    if previous is None:
        _record_check(store, now, "ok", ids, 0, "first ledger: taken as the baseline")
        return 0
    vanished = len(previous - ids)
    share = vanished / len(previous) if previous else 0.0
    if previous and (not ids or (share > check.max_vanished and vanished >= check.min_vanished)):
        detail = (f"the ledger lists {len(ids)} open invoices; {vanished} of the {len(previous)} open at the last "
                  f"good pass ({share:.0%}) vanished at once (limit {check.max_vanished:.0%}). A truncated, "
                  "emptied or half-written export looks like everyone paying: nothing is sent, no case is closed "
                  "as paid and no reminder is withdrawn until the ledger is complete again, or `dunbot ledger "
                  "accept` takes it as it is")
        _record_check(store, now, "stopped", ids, vanished, detail)
        log.error("ledger suspect: %s", detail)
        raise LedgerSuspect(f"ledger suspect: {detail}", len(previous), len(ids), vanished)
    _record_check(store, now, "ok", ids, vanished, f"{vanished} of {len(previous)} open invoices gone since the "
                  "last good pass")
    return vanished


def accept_ledger(store: Store, invoices: list[Invoice], now: datetime, who: str) -> int:
    """An operator vouches for the ledger as it is (the drop was real): it becomes the baseline."""
    ids = {invoice.invoice_id for invoice in invoices}
    previous = _baseline(store) or set()
    vanished = len(previous - ids)
    _record_check(store, now, "accepted", ids, vanished, f"accepted by {who}: {len(ids)} open invoices, "
                  f"{vanished} gone since the last good pass")
    log.warning("ledger accepted by %s: %d open invoices, %d gone since the last good pass", who, len(ids),
                vanished)
    return vanished


def last_ledger_check(store: Store) -> dict[str, Any] | None:
    """The newest verdict (for `dunbot status` and the health endpoint)."""
    with store.transaction() as c:
        row = c.execute(sa.select(ledger_checks.c.at, ledger_checks.c.verdict, ledger_checks.c.open_count,
                                  ledger_checks.c.vanished, ledger_checks.c.detail)
                        .order_by(ledger_checks.c.id.desc()).limit(1)).first()
    return dict(row._mapping) if row else None
