"""The daemon's work over the whole ledger or every case, done in a child process, so its memory goes when it ends.

A pass over a 50,000-invoice ledger takes ~45 MB at its peak. Freed, most of it stays with the daemon: a few
thousand objects that outlive the pass (caches of the policy, SQLAlchemy, holidays) pin the allocator's
arenas, and malloc_trim cannot return them (measured: 67 MB before the first pass, 100-110 MB after, with
0.7 MB of live Python objects more; the digest over every open escalation left 6 MB). So the pass job
reads the ledger, plans and queues in a child (`child_main`), the hold review reads the ledger and reviews
there, the digest job queues the digests there, and the notices job its escalation notices when one is due
(rendering them left ~3 MB: Jinja2's compiled templates, Babel's locale data); the daemon delivers from the store
as before. The template check at start and on reload (every stage rendered: ~4.6 MB that would stay) runs there
too. The child imports the modules of its work in `work`, so the daemon does not import them for it.

Every guarantee stays with the daemon: the child changes the store only through the same transactions as the
daemon would (a child killed mid-way is a crash: nothing half-recorded, the next pass carries on); it dies
with the daemon (PR_SET_PDEATHSIG), so it never outlives the instance lock; it ignores SIGINT (the daemon
decides when to stop, and terminates it past its stop timeout); its log records go to the daemon's handlers
(text or JSON, the metrics' decision counter) as if logged there; a suspect ledger or a failure comes back as
the same exception.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from bot import children, outbox
from bot.config import Settings
from bot.errors import DunbotError
from bot.ledger_check import LedgerCheck, LedgerSuspect, check_ledger
from bot.store import Store

log = logging.getLogger(__name__)
PASS, HOLDS, DIGEST, NOTICES, CHECK, MIGRATE = "pass", "holds", "digest", "notices", "check", "migrate"


@dataclass(frozen=True, slots=True)
class Request:
    kind: str  # PASS, HOLDS, DIGEST, NOTICES, CHECK or MIGRATE
    settings: Settings
    now: datetime
    check: LedgerCheck
    level: int  # the daemon's level for the `bot` logger


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the child did; `failure` is (kind, message, fields): "ledger" (unreadable), "suspect" or "error";
    `problems` are those the template check found."""

    report: outbox.Report
    failure: tuple[str, str, tuple[int, ...]] | None = None
    problems: tuple[str, ...] = ()


class LedgerUnreadable(DunbotError):
    """The child could not read the ledger (the message says why)."""


class _Forward(logging.Handler):
    """Sends each record to the daemon, its arguments kept (the decision counter reads them) when they pickle."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        doc = children.portable(record)
        self.acquire()
        try:
            children.write(self.stream, ("log", doc))
        finally:
            self.release()


def work(request: Request, store: Store | None) -> Outcome:
    """The job's work, the same in the child as in the daemon's own process (the check needs no store)."""
    from bot import dunning, notify, templates
    from bot.ledger import read_ledger

    if request.kind == CHECK:
        found = (*templates.check(request.settings), *notify.check_templates(request.settings))
        return Outcome(outbox.Report(), problems=tuple(str(p) for p in found))
    assert store is not None
    if request.kind == MIGRATE:  # opening the store migrated it: Alembic stays in this process, not the daemon's
        return Outcome(outbox.Report())
    if request.kind in (NOTICES, DIGEST):
        queue, what = ((notify.queue_escalation_notices, "escalation notices") if request.kind == NOTICES
                       else (notify.queue_digests, "digests"))
        try:
            queued = queue(store, request.settings, request.now)
        except DunbotError as exc:
            return Outcome(outbox.Report(), failure=("error", str(exc), ()))
        if queued:
            log.info("queued %d %s", queued, what)
        return Outcome(outbox.Report())
    settings, now, report = request.settings, request.now, outbox.Report()
    try:
        ledger = read_ledger(settings.ledger)
    except DunbotError as exc:
        return Outcome(report, failure=("ledger", str(exc), ()))
    if ledger.problems:
        log.warning("%d ledger rows skipped (see `dunbot ledger check`); first: %s", len(ledger.problems),
                    ledger.problems[0])
    invoices = ledger.open_invoices
    try:
        if request.kind == PASS:
            plan = dunning.prepare(store, invoices, now, settings, report, check=request.check)
            outbox.enqueue(plan, store, templates.Templates(settings.templates_dir, settings.languages,
                                                            settings.company.language), settings, report)
            for r in plan.reminders:
                log.info("queued reminder %s for customer %s: %s/%s in %s to %s (invoices %s)", r.message_id,
                         r.customer.customer_id, r.track, r.stage.name, r.language, r.to, ", ".join(r.invoice_ids))
        else:
            check_ledger(store, invoices, now, request.check)
            dunning.review_holds(store, {invoice.invoice_id: invoice for invoice in invoices}, now, settings)
    except LedgerSuspect as exc:
        return Outcome(report, failure=("suspect", str(exc), (exc.previous, exc.current, exc.vanished)))
    except DunbotError as exc:
        return Outcome(report, failure=("error", str(exc), ()))
    return Outcome(report)


def child_main() -> None:
    """The child: one Request on stdin; log records, then the Outcome, on stdout."""
    stdin, out = children.become_child()
    request: Request = pickle.loads(stdin.read())
    root = logging.getLogger()
    root.handlers[:] = [_Forward(out)]
    root.setLevel(logging.WARNING)
    logging.getLogger("bot").setLevel(request.level)
    try:
        if request.kind == CHECK:
            outcome = work(request, None)
        else:
            store = Store.open(request.settings.store_url)
            try:
                outcome = work(request, store)
            finally:
                store.close()
    except DunbotError as exc:
        outcome = Outcome(outbox.Report(), failure=("error", str(exc), ()))
    except Exception as exc:
        log.exception("the %s work failed in its child process", request.kind)
        outcome = Outcome(outbox.Report(), failure=("error", f"{type(exc).__name__}: {exc}", ()))
    children.write(out, ("done", outcome))


async def run(request: Request, grace: float = 1.0) -> Outcome:
    """Run `request` in a child and replay its log records here; cancelled, the child is terminated, then killed.

    Raises what the daemon's own run would have: LedgerUnreadable, LedgerSuspect, DunbotError.
    """
    child = await children.spawn("bot.offload:child_main")
    assert child.stdin is not None and child.stdout is not None
    outcome: Outcome | None = None
    try:
        child.stdin.write(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        await child.stdin.drain()
        child.stdin.close()
        while outcome is None:
            try:
                kind, payload = await children.receive(child.stdout)
            except asyncio.IncompleteReadError:
                break
            if kind == "log":
                record = logging.makeLogRecord(payload)
                logging.getLogger(record.name).handle(record)
            else:
                outcome = payload
        code = await child.wait()
    finally:
        await children.stop(child, grace)
    if outcome is None:
        raise DunbotError(f"the {request.kind} work's child process ended without an answer (exit {code})")
    return result(outcome)


def result(outcome: Outcome) -> Outcome:
    """The outcome, or the exception the work would have raised in the daemon's process."""
    if outcome.failure is not None:
        what, message, fields = outcome.failure
        if what == "ledger":
            raise LedgerUnreadable(message)
        if what == "suspect":
            raise LedgerSuspect(message, *fields)
        raise DunbotError(message)
    return outcome

