"""The daemon's jobs, each a coroutine on its loop fired by APScheduler: the dunning pass, the outbox retry worker,
hold review, escalation notices and the digest; the work that touches the outbox runs one job at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import html
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot import notify, offload, outbox
from bot.config import Settings
from bot.daemon_settings import DaemonSettings, previous_fire
from bot.errors import DeliveryError, DunbotError
from bot.ledger_check import LedgerSuspect
from bot.messages import Rendered
from bot.metrics import Metrics
from bot.schema import cases, customers, escalations, ledger_checks, notifications, users
from bot.status import write_status
from bot.store import QUEUED, SENDING, Store
from bot.transports import make_transport
from bot.users import all_users

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_arenas() -> None:
    """glibc gives every thread that allocates an arena of its own, which keeps what a pass freed: two are enough
    for a process whose work runs on one loop (same as MALLOC_ARENA_MAX=2, which the systemd unit also sets)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(-8, 2)  # M_ARENA_MAX


def trim_memory() -> None:
    """After a pass over a big ledger, give the freed memory back so the idle daemon stays small."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


@dataclass(slots=True)
class JobState:
    last_start: datetime | None = None
    last_end: datetime | None = None
    outcome: str = ""
    error: str | None = None
    runs: int = 0


@dataclass(slots=True)
class JobStates:
    state: dict[str, JobState] = field(default_factory=dict)

    def get(self, name: str) -> JobState:
        return self.state.setdefault(name, JobState())


class Jobs:
    """The daemon's scheduled work: the job table, catch-up, each job's bookkeeping, and the jobs themselves.

    A part of `Daemon` (bot/daemon.py), which owns the state declared here, sets it up in its constructor, and
    provides the heartbeat job (it reports on the daemon as a whole).
    """

    settings: Settings
    options: DaemonSettings
    clock: Clock
    metrics: Metrics
    problems: dict[str, str]
    errors: deque[dict[str, str]]
    jobs: JobStates
    store: Store | None
    open_store: Callable[[str], Store]
    scheduler: AsyncIOScheduler | None
    _work: asyncio.Lock
    _stopping: asyncio.Event
    _running: set[asyncio.Task[Any]]
    _table: dict[str, tuple[str, Callable[[], Awaitable[None]], Any]]
    _notices_left: tuple[Any, ...] | None
    _heartbeat: Callable[[], Awaitable[None]]

    def _job_table(self) -> dict[str, tuple[str, Callable[[], Awaitable[None]], Any]]:
        """id -> (name, coroutine, trigger), from the current options; a schedule 'off' is left out."""
        o, tz = self.options, ZoneInfo(self.settings.company.timezone)
        table: dict[str, tuple[str, Callable[[], Awaitable[None]], Any]] = {
            "retry": ("outbox retry worker", self._retry, IntervalTrigger(seconds=o.retry_seconds, timezone=tz)),
            "notify": ("escalation notices", self._notify, IntervalTrigger(seconds=o.notify_seconds, timezone=tz)),
            "heartbeat": ("heartbeat", self._heartbeat, IntervalTrigger(seconds=o.heartbeat_seconds, timezone=tz)),
        }
        for job_id, name, fn, expr in (("pass", "dunning pass", self._pass, o.pass_schedule),
                                       ("holds", "hold review", self._holds, o.holds_schedule),
                                       ("digest", "daily digest", self._digest, o.digest_schedule)):
            if expr != "off":
                table[job_id] = (name, fn, CronTrigger.from_crontab(expr, timezone=tz))
        return table

    def _schedule(self) -> None:
        assert self.scheduler is not None
        self._table = self._job_table()
        for job in self.scheduler.get_jobs():
            if job.id not in self._table:
                job.remove()
        for job_id, (name, _fn, trigger) in self._table.items():
            self.scheduler.add_job(self._job, trigger, args=(job_id,), id=job_id, name=name, replace_existing=True)

    def _catch_up(self) -> None:
        """One run now for each cron job whose last scheduled time passed since it last completed (downtime)."""
        if not self.options.catch_up or self.scheduler is None:
            return
        now = self.clock()
        for job_id in ("pass", "digest"):
            entry = self._table.get(job_id)
            if entry is None:
                continue
            due = previous_fire(entry[2], now)
            done = self.jobs.get(job_id).last_end
            if due is not None and (done is None or done < due):
                log.info("catching up: the %s due at %s was missed; running it once now", entry[0],
                         due.isoformat(timespec="minutes"))
                self.scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))

    async def _job(self, job_id: str) -> None:
        """Every scheduled run goes through here: state, metrics, and no exception reaches the scheduler."""
        if self._stopping.is_set() or job_id not in self._table:
            return
        task = asyncio.current_task()
        if task is not None:
            task.set_name(job_id)
            self._running.add(task)
        job = self.jobs.get(job_id)
        job.last_start, job.runs = self.clock(), job.runs + 1
        outcome, error = "ok", None
        try:
            await self._table[job_id][1]()
        except asyncio.CancelledError:
            outcome, error = "abandoned", "stopped mid-way"
            raise
        except LedgerSuspect as exc:
            outcome, error = "ledger_suspect", str(exc)
        except DunbotError as exc:
            outcome, error = "failed", str(exc)
            log.error("%s failed: %s", self._table[job_id][0], exc)
        except Exception as exc:
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("%s failed unexpectedly", self._table[job_id][0])
        finally:
            if task is not None:
                self._running.discard(task)
            job.outcome, job.error = outcome, error
            if outcome != "abandoned":
                job.last_end = self.clock()
            self.metrics.jobs.labels(job_id, outcome).inc()
            if job_id != "heartbeat":
                self._set_problem(f"job:{job_id}", error if outcome == "failed" else None)

    async def _pass(self) -> None:
        """The dunning pass: ledger -> sanity check -> prepare -> plan -> outbox -> SMTP, exactly as `dunbot send`.

        All but the SMTP part run in a child process (bot/offload.py): its memory goes when it ends."""
        async with self._work:
            if self._stopping.is_set():
                return
            settings = self.settings
            report = (await self._ledger_work(offload.PASS, settings)).report
            await self._deliver(settings, report)
            summary = {"at": self.clock(), "queued": report.queued, "sent": report.sent, "failed": report.failed,
                       "retrying": report.retrying, "withdrawn": report.cancelled, "escalated": report.escalated,
                       "aborted": report.aborted, "errors": report.errors[:5]}
            self.metrics.last_pass.set(time.time())
            log.info("pass done: queued %d, sent %d, failed %d, waiting for retry %d, withdrawn %d, escalated %d%s",
                     report.queued, report.sent, report.failed, report.retrying, report.cancelled, report.escalated,
                     f"; stopped: {report.aborted}" if report.aborted else "")
            self._record("last_pass", summary)
        await asyncio.to_thread(trim_memory)

    def _child_opens(self, settings: Settings) -> bool:
        """Whether a child process can open the daemon's store: not one in memory, nor one from another opener
        (tests, embedding); their work stays in the daemon's process."""
        return self.open_store == Store.open and not settings.store_url.endswith(":memory:")

    async def _offload(self, kind: str, settings: Settings) -> offload.Outcome:
        """The job's work in a child process when the child can open the same store (bot/offload.py)."""
        request = offload.Request(kind, settings, self.clock(), self.options.ledger_check,
                                  logging.getLogger("bot").getEffectiveLevel())
        if self._child_opens(settings):
            return await offload.run(request)
        return offload.result(await asyncio.to_thread(offload.work, request, self.store))

    async def _ledger_work(self, kind: str, settings: Settings) -> offload.Outcome:
        """The job's work over the ledger; an unreadable or suspect ledger stops sending and says so."""
        try:
            outcome = await self._offload(kind, settings)
        except offload.LedgerUnreadable as exc:
            self._set_problem("ledger", f"cannot read the ledger, nothing is sent: {exc}")
            self.metrics.ledger_ok.set(0)
            raise
        except LedgerSuspect as exc:
            await self._ledger_suspect(exc, settings)
            raise
        self._ledger_ok()
        return outcome

    def _ledger_ok(self) -> None:
        self._set_problem("ledger", None)
        self.metrics.ledger_ok.set(1)

    async def _ledger_suspect(self, exc: LedgerSuspect, settings: Settings) -> None:
        """Stop, say so everywhere: ERROR log (done by the check), status, metric, and a notice to the default owner."""
        self._set_problem("ledger", str(exc))
        self.metrics.ledger_ok.set(0)
        await asyncio.to_thread(self._queue_ledger_alert, exc, settings)
        await self._send_notifications(settings)

    def _queue_ledger_alert(self, exc: LedgerSuspect, settings: Settings) -> None:
        """One alert per incident: its Message-ID is that of the last good ledger, so restarts do not repeat it."""
        store = self.store
        assert store is not None
        owner = settings.cases.default_owner
        user = next((u for u in all_users(store) if u.username == owner), None)
        if user is None or "@" not in user.email:
            log.warning("ledger alert not emailed: the default owner %r is not a user with an email "
                        "(`dunbot users add %s --email ...`)", owner, owner)
            return
        with store.transaction() as c:
            baseline = c.execute(sa.select(sa.func.max(ledger_checks.c.id))
                                 .where(ledger_checks.c.invoice_ids.is_not(None))).scalar() or 0
        domain = settings.company.message_id_domain
        token = hashlib.sha256(f"{settings.store_url}:{baseline}".encode()).hexdigest()[:16]
        message_id = f"<dunbot.alert.ledger.{baseline}.{token}@{domain}>"
        text = (f"Dunbot stopped sending reminders.\n\n{exc}\n\nLedger: {settings.ledger.path}\n"
                f"Open invoices at the last good pass: {exc.previous}; now: {exc.current}; vanished: "
                f"{exc.vanished}.\n\nFix the export and the next pass resumes by itself; if the drop is real, run "
                f"`dunbot ledger accept --config {settings.source}`.\n")
        subject = f"Dunbot stopped: the ledger lost {exc.vanished} of {exc.previous} open invoices"
        rendered = Rendered(subject=subject, text=text, html=f"<pre>{html.escape(text)}</pre>")
        now = self.clock()
        raw = notify.compose(message_id, user, rendered, settings, now, "alert")
        if notify.queue_notification(store, message_id, "alert", owner, user, None, raw, now):
            log.warning("ledger alert queued for %s <%s>", owner, user.email)

    async def _deliver(self, settings: Settings, report: outbox.Report) -> None:
        """Open a transport for this run only (an idle SMTP connection would be closed by the server anyway)."""
        transport, workers = make_transport(settings)
        try:
            await transport.open()
        except DeliveryError as exc:
            report.aborted = f"sending is misconfigured, nothing more is sent until it is fixed: {exc}"
            log.error("%s", report.aborted)
        else:
            try:
                await outbox.deliver(self.store, transport, self.clock,  # type: ignore[arg-type]
                                     outbox.Retry.from_settings(settings), report, workers=workers,
                                     stop=self._stopping)
            finally:
                await transport.close()
        self._set_problem("delivery", report.aborted)

    async def _retry(self) -> None:
        """Deliver what is due for a retry; nothing while the ledger is suspect (a queued reminder may be paid)."""
        if "ledger" in self.problems or self._stopping.is_set():
            return
        store = self.store
        assert store is not None
        now = self.clock()
        due = await asyncio.to_thread(lambda: bool(store.due(now, limit=1)) or SENDING in store.counts())
        if not due:
            return
        async with self._work:
            if self._stopping.is_set():
                return
            report = outbox.Report()
            await self._deliver(self.settings, report)
            if report.sent or report.failed:
                log.info("retry worker: sent %d, failed %d, waiting for retry %d", report.sent, report.failed,
                         report.retrying)
            self._record("last_retry", {"at": self.clock(), "sent": report.sent, "failed": report.failed,
                                        "retrying": report.retrying, "aborted": report.aborted})

    async def _holds(self) -> None:
        """Promises and pauses that ran out, between passes (weekends too): kept, broken, resumed (in a child)."""
        async with self._work:
            if self._stopping.is_set():
                return
            await self._ledger_work(offload.HOLDS, self.settings)

    async def _notify(self) -> None:
        """Escalation notices: queued in a child (rendering them would stay in the daemon) when one is due and
        something it depends on changed since a child last left it unqueued (owner not a user, template error)."""
        async with self._work:
            if self._stopping.is_set():
                return
            settings = self.settings
            due = await asyncio.to_thread(self._notices_due, settings)
            if due is not None and due != self._notices_left:
                await self._offload(offload.NOTICES, settings)
                self._notices_left = await asyncio.to_thread(self._notices_due, settings)
            await self._send_notifications(settings)

    def _notices_due(self, settings: Settings) -> tuple[Any, ...] | None:
        """None when every open escalation has its notice (as notify.queue_escalation_notices decides); else what
        queueing the missing ones depends on: them and their owners, the users, the newest template file."""
        store = self.store
        assert store is not None
        domain = settings.company.message_id_domain
        with store.transaction() as c:
            rows = {notify.notice_message_id(r.id, r.customer_id, domain): tuple(r) for r in c.execute(
                sa.select(escalations.c.id, escalations.c.customer_id, cases.c.owner, customers.c.owner)
                .select_from(escalations.outerjoin(cases, cases.c.customer_id == escalations.c.customer_id)
                             .outerjoin(customers, customers.c.customer_id == escalations.c.customer_id))
                .where(escalations.c.resolved_at.is_(None)))}
            ids = list(rows)
            for chunk in range(0, len(ids), 500):
                for done in c.execute(sa.select(notifications.c.message_id)
                                      .where(notifications.c.message_id.in_(ids[chunk:chunk + 500]))).scalars():
                    rows.pop(done, None)
            if not rows:
                return None
            people = tuple(c.execute(sa.select(users.c.username, users.c.email, users.c.language)
                                     .order_by(users.c.username)))
        newest = max((f.stat().st_mtime_ns for f in settings.templates_dir.rglob("*") if f.is_file()), default=0)
        return tuple(sorted(rows.values())), people, newest

    async def _digest(self) -> None:
        async with self._work:
            if self._stopping.is_set():
                return
            await self._offload(offload.DIGEST, self.settings)  # reads every open case: in a child
            await self._send_notifications(self.settings)

    async def _send_notifications(self, settings: Settings) -> None:
        store = self.store
        assert store is not None
        now = self.clock()

        def pending() -> bool:
            with store.transaction() as c:
                return c.execute(sa.select(notifications.c.id).where(notifications.c.status.in_((QUEUED, SENDING)))
                                 .where(sa.or_(notifications.c.next_attempt_at.is_(None),
                                               notifications.c.next_attempt_at <= now)).limit(1)).first() is not None

        if not await asyncio.to_thread(pending):
            return
        transport, _workers = make_transport(settings)
        try:
            await transport.open()
            result = await notify.deliver_notifications(store, transport, self.clock,
                                                        outbox.Retry.from_settings(settings))
        except DeliveryError as exc:
            self._set_problem("notifications", f"cannot send notifications: {exc}")
            return
        finally:
            await transport.close()
        self._set_problem("notifications", result.aborted)

    def _record(self, key: str, value: dict[str, Any]) -> None:
        if self.store is None:
            return
        try:
            write_status(self.store, {key: value}, self.clock())
        except DunbotError as exc:
            self._set_problem("store", f"the store cannot be written: {exc}")

    def _set_problem(self, component: str, message: str | None) -> None:
        if message:
            if self.problems.get(component) != message:
                self.errors.append({"at": self.clock().isoformat(timespec="seconds"), "component": component,
                                    "error": message})
            self.problems[component] = message
        elif self.problems.pop(component, None) is not None:
            log.info("%s: working again", component)
        self.metrics.healthy.set(0 if self.problems else 1)
