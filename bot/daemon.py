"""`dunbot run`: the one long-lived process that does everything on its own schedule, for months.

One asyncio process. An AsyncIOScheduler (APScheduler 3.11) fires a few idempotent jobs, each a coroutine on
the loop: the dunning pass (cron, company time zone), the outbox retry worker (interval), hold review
(cron), escalation notices (interval), the digest (cron) and a heartbeat. The inbox watcher is not a job:
it is a long-running task holding one IMAP connection in IDLE. Everything the daemon decides is in the
store, so every job can be run again after a crash, and the jobs that touch the outbox run one at a time
(two deliveries at once would each "recover" the other's sends in flight).

Misfires (the machine slept, the loop was busy) are coalesced into one late run; downtime is caught up by
one pass at start when a scheduled pass was missed. One daemon per store: a lock (fcntl beside an SQLite
file, an advisory lock held on a dedicated PostgreSQL connection). SIGTERM/SIGINT stop taking work, let the
SMTP transaction in flight finish (or abandon it after `stop_timeout`: the outbox resends it on restart and
says so), close IMAP and exit; SIGHUP reloads config.toml and the templates, keeping the old ones when the
new ones do not check out. State for `dunbot status` goes to the `daemon_status` table; /healthz and
/metrics are served on a loopback port.

Here: the lifecycle, the heartbeat, the inbox watcher and reload. The jobs are in bot/jobs.py, the `[daemon]`
table in bot/daemon_settings.py, the lock in bot/instance_lock.py, the status table in bot/status.py and the
HTTP endpoint in bot/health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import ledger_check, offload
from bot.config import Settings, load_settings
from bot.daemon_settings import load_daemon_settings
from bot.errors import ConfigError, DunbotError
from bot.health import HealthServer
from bot.inbox import Processor
from bot.instance_lock import InstanceLock
from bot.jobs import Clock, Jobs, JobStates, limit_arenas, trim_memory
from bot.mailboxes import Incoming, Watcher, watcher_for
from bot.metrics import DecisionCounter, Metrics
from bot.schema import escalations
from bot.status import outbox_state, parse_time, read_status, write_status
from bot.store import Store, engine_safe

log = logging.getLogger(__name__)


class Daemon(Jobs):
    """Lifecycle: start() (lock, store, jobs, watcher, health), then run until request_stop(), then shutdown().

    `now` starts the daemon's clock at that moment (tests, demos); it then moves with real time. The
    scheduler fires on real time; the decisions (send windows, ages, backoff) use the clock.
    """

    def __init__(self, config: Path, *, settings: Settings | None = None, now: datetime | None = None,
                 open_store: Callable[[str], Store] = Store.open) -> None:
        self.config = Path(config)
        self.settings = settings or load_settings(self.config)
        self.options = load_daemon_settings(self.settings)
        zone = ZoneInfo(self.settings.company.timezone)
        if now is None:
            self.clock: Clock = lambda: datetime.now(zone)
        else:
            started = time.monotonic()
            self.clock = lambda: now + timedelta(seconds=time.monotonic() - started)
        self.open_store = open_store
        self.metrics = Metrics()
        self.state = "new"
        self.exit_code = 0
        self.problems: dict[str, str] = {}
        self.errors: deque[dict[str, str]] = deque(maxlen=10)
        self.jobs = JobStates()
        self.started_at: datetime | None = None
        self.store: Store | None = None
        self.processor: Processor | None = None
        self.watcher: Watcher | None = None
        self.health: HealthServer | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._lock = InstanceLock(self.settings.store_url)
        self._work = asyncio.Lock()
        self._stop = asyncio.Event()
        self._stopping = asyncio.Event()
        self._watch_stop = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self._counter = DecisionCounter(self.metrics)
        self._escalations_seen = 0
        self._hup_task: asyncio.Task[bool] | None = None
        self._notices_left: tuple[Any, ...] | None = None

    # -- lifecycle --

    async def run(self) -> int:
        """Start, serve until a stop is requested, shut down; returns the exit code."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
        return self.exit_code

    def request_stop(self, code: int = 0) -> None:
        if not self._stop.is_set():
            log.info("stop requested: finishing the work in flight")
            self.exit_code = code
            self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: reload in a task (the template check renders every stage, ~0.1 s)."""
        if self._hup_task is None or self._hup_task.done():
            self._hup_task = asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def start(self) -> None:
        self.state = "starting"
        limit_arenas()
        problems = await self._template_problems(self.settings)
        if problems:
            raise ConfigError(f"{len(problems)} template problems (run `dunbot templates check`); first: "
                              f"{problems[0]}")
        self._lock.acquire()
        try:
            url = self.settings.store_url
            if self._child_opens(self.settings) and await asyncio.to_thread(Store.migration_due, url):
                await self._offload(offload.MIGRATE, self.settings)
            self.store = await asyncio.to_thread(self.open_store, self.settings.store_url)
            self.processor = await asyncio.to_thread(Processor, self.store, self.settings, self.clock)
            with self.store.transaction() as c:
                self._escalations_seen = int(c.execute(sa.select(sa.func.max(escalations.c.id))).scalar() or 0)
            previous = read_status(self.store).get("jobs", {})
            for name, values in previous.items():
                job = self.jobs.get(name)
                job.last_end = parse_time(values.get("last_end"))
                job.outcome = values.get("outcome", "")
            bot_log = logging.getLogger("bot")
            bot_log.addHandler(self._counter)
            if bot_log.getEffectiveLevel() > logging.INFO:
                bot_log.setLevel(logging.INFO)  # the decisions are logged at INFO: the metrics count them
            self.started_at = self.clock()
            if self.options.health_port:
                self.health = HealthServer(self.options.health_host, self.options.health_port, self.healthz,
                                           self.metrics.render)
                await self.health.start()
            self._start_watcher()
            self.scheduler = AsyncIOScheduler(timezone=ZoneInfo(self.settings.company.timezone), job_defaults={
                "coalesce": True, "max_instances": 1, "misfire_grace_time": self.options.misfire_grace_seconds})
            self._schedule()
            self.scheduler.start()
            self.state = "running"
            await self._heartbeat()
            self._catch_up()
            await asyncio.to_thread(trim_memory)  # start-up garbage (template check, migrations)
        except BaseException:
            await self.shutdown()
            raise
        log.info("dunbot daemon running (pid %d) on the store %s; jobs: %s", os.getpid(),
                 engine_safe(self.settings.store_url), ", ".join(self._job_summary()))

    async def shutdown(self) -> None:
        if self.state in ("stopped", "new"):
            self._lock.release()
            return
        self.state = "stopping"
        self._stopping.set()
        self._watch_stop.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.pause()  # no new runs; shutdown() would cancel the runs in flight, so it comes last
        budget = self.options.stop_timeout
        waiting = [t for t in (*self._running, self._watch_task) if t is not None and not t.done()]
        if waiting:
            _done, pending = await asyncio.wait(waiting, timeout=budget)
            if pending:
                names = ", ".join(t.get_name() for t in pending)
                log.warning("abandoning %s after %.3g s: a reminder caught mid-send is sent again at the next start, "
                            "and named in the log then", names, budget)
                for task in pending:
                    task.cancel()
                _done, pending = await asyncio.wait(pending, timeout=1.0)
                for task in pending:  # a second cancel interrupts a QUIT stuck in a `finally`
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=0.5)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.watcher.close(), 1.0)
        if self.health is not None:
            await self.health.stop()
        if self.store is not None:
            with contextlib.suppress(DunbotError):
                write_status(self.store, {"daemon": {**self._daemon_doc(), "state": "stopped",
                                                     "stopped_at": self.clock()}, "jobs": self._jobs_doc()},
                             self.clock())
            self.store.close()
        logging.getLogger("bot").removeHandler(self._counter)
        self._lock.release()
        self.state = "stopped"
        log.info("dunbot daemon stopped")

    # -- heartbeat and health --

    async def _heartbeat(self) -> None:
        """Every few seconds: the state `dunbot status` reads, the gauges, and a check that the lock still holds."""
        store = self.store
        if store is None:
            return
        if not self._lock.verify():
            log.error("lost the connection holding the daemon lock; stopping so two daemons never run at once")
            self.request_stop(1)
            return
        now = self.clock()
        watcher = self.watcher
        if watcher is not None:
            self._set_problem("inbox", watcher.last_error)
            self.metrics.inbox_up.set(0 if watcher.last_error else 1)
            self.metrics.inbox_lag.set(watcher.lag)
        try:
            doc = await asyncio.to_thread(self._collect, store, now)
            await asyncio.to_thread(write_status, store, doc, now)
        except DunbotError as exc:
            self._set_problem("store", f"the store cannot be read or written: {exc}")
            return
        self._set_problem("store", None)

    def _collect(self, store: Store, now: datetime) -> dict[str, Any]:
        box = outbox_state(store, now)
        for status in ("queued", "sending", "sent", "failed"):
            self.metrics.outbox.labels(status).set(box["counts"].get(status, 0))
        self.metrics.outbox_age.set(box["oldest_queued_seconds"])
        with store.transaction() as c:
            newest = int(c.execute(sa.select(sa.func.max(escalations.c.id))).scalar() or 0)
            open_count = int(c.execute(sa.select(sa.func.count()).select_from(escalations)
                                       .where(escalations.c.resolved_at.is_(None))).scalar() or 0)
        if newest > self._escalations_seen:
            self.metrics.escalations.inc(newest - self._escalations_seen)
            self._escalations_seen = newest
        self.metrics.open_escalations.set(open_count)
        watcher, tally = self.watcher, self.processor.tally if self.processor else None
        inbox = {"folder": self.settings.inbox.folder, "last_error": watcher.last_error if watcher else None,
                 "lag_seconds": watcher.lag if watcher else None, "handed_over": watcher.handled if watcher else 0,
                 "position": store.inbox_position(self.settings.inbox.folder)}
        if tally is not None:
            inbox.update(handled=tally.handled, for_a_person=tally.human, unmatched=tally.unmatched,
                         repeated=tally.repeated, by_intent=tally.by_intent)
        return {"daemon": self._daemon_doc(), "jobs": self._jobs_doc(), "inbox": inbox, "outbox": box,
                "problems": dict(self.problems), "errors": list(self.errors),
                "ledger": ledger_check.last_ledger_check(store)}

    def _daemon_doc(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "state": self.state, "config": str(self.config),
                "started_at": self.started_at, "heartbeat_at": self.clock(), "heartbeat_wall": datetime.now(UTC),
                "heartbeat_seconds": self.options.heartbeat_seconds,
                "health": f"http://{self.options.health_host}:{self.health.port}/healthz" if self.health else None}

    def _jobs_doc(self) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        scheduled = {j.id: j for j in self.scheduler.get_jobs()} if self.scheduler and self.scheduler.running else {}
        for job_id, (name, _fn, _trigger) in getattr(self, "_table", {}).items():
            state = self.jobs.get(job_id)
            nxt = getattr(scheduled.get(job_id), "next_run_time", None)
            jobs[job_id] = {"name": name, "last_start": state.last_start, "last_end": state.last_end,
                            "outcome": state.outcome, "error": state.error, "runs": state.runs, "next_run": nxt}
        return jobs

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        ok = self.state == "running" and not self.problems
        return ok, {"status": "ok" if ok else "unhealthy", "state": self.state, "problems": self.problems,
                    "jobs": self._jobs_doc()}

    def _job_summary(self) -> list[str]:
        o = self.options
        names = {"pass": o.pass_schedule, "holds": o.holds_schedule, "digest": o.digest_schedule,
                 "retry": f"every {o.retry_seconds:g} s", "notify": f"every {o.notify_seconds:g} s",
                 "heartbeat": f"every {o.heartbeat_seconds:g} s"}
        return [f"{job_id} ({names[job_id]})" for job_id in getattr(self, "_table", {})]

    # -- the inbox --

    def _start_watcher(self) -> None:
        self.watcher = watcher_for(self.settings.inbox, self.store, self.clock)
        self._watch_stop = asyncio.Event()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(self.watcher, self._watch_stop),
                                                                  name="inbox-watcher")

    async def _watch(self, watcher: Watcher, stop: asyncio.Event) -> None:
        await watcher.watch(self._handle, stop)

    async def _handle(self, incoming: Incoming) -> str | None:
        processor = self.processor
        assert processor is not None
        return await processor(incoming)

    async def _restart_watcher(self) -> None:
        old_task, old_watcher = self._watch_task, self.watcher
        self._watch_stop.set()
        if old_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(old_task, 5.0)
        if old_watcher is not None:
            await old_watcher.close()
        self._start_watcher()

    # -- reload --

    async def _template_problems(self, settings: Settings) -> list[str]:
        """Every stage and notification rendered with sample data, in a child (bot/offload.py): the Jinja2
        environment and Babel's locale data it loads would otherwise stay in the idle daemon (~4.6 MB)."""
        return list((await self._offload(offload.CHECK, settings)).problems)

    async def reload(self) -> bool:
        """SIGHUP: take the new config.toml and templates if they check out; else keep the old, and say why."""
        try:
            settings = await asyncio.to_thread(load_settings, self.config)
            options = load_daemon_settings(settings)
        except ConfigError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
            self._set_problem("reload", f"rejected: {exc}")
            return False
        if settings.store_url != self.settings.store_url:
            log.error("reload rejected, the running configuration stays: [store] changed; the store cannot change "
                      "without a restart")
            self._set_problem("reload", "rejected: [store] cannot change without a restart")
            return False
        problems = await self._template_problems(settings)
        if problems:
            log.error("reload rejected, the running configuration stays: %d template problems; first: %s",
                      len(problems), problems[0])
            self._set_problem("reload", f"rejected: {len(problems)} template problems; first: {problems[0]}")
            return False
        old, self.settings, self.options = self.settings, settings, options
        self.processor = await asyncio.to_thread(Processor, self.store, settings, self.clock)
        if self.scheduler is not None and self.scheduler.running:
            self._schedule()
        if old.inbox != settings.inbox:
            await self._restart_watcher()
        self._set_problem("reload", None)
        log.info("configuration reloaded from %s; jobs: %s", self.config, ", ".join(self._job_summary()))
        return True
