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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import gc
import hashlib
import html
import ipaddress
import json
import logging
import os
import socket
import time
import tomllib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from bot import dunning, notify, outbox
from bot.config import Settings, _Reader, load_settings
from bot.dunning import LedgerCheck, LedgerSuspect
from bot.errors import ConfigError, DeliveryError, DunbotError, StoreError
from bot.inbox import Processor
from bot.ledger import read_ledger
from bot.mailboxes import Incoming, Watcher, watcher_for
from bot.metrics import DecisionCounter, Metrics
from bot.schema import daemon_status, escalations, ledger_checks, notifications, reminders
from bot.store import QUEUED, SENDING, Store, engine_safe
from bot.templates import Rendered, Templates
from bot.templates import check as check_templates
from bot.transports import make_transport
from bot.users import all_users

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
OFF = ("", "off", "never")


# ---- [daemon] in config.toml -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The `[daemon]` table. Schedules are crontab lines in the company's time zone ("off" disables a job)."""

    pass_schedule: str = "0 9-17 * * mon-fri"
    holds_schedule: str = "30 8-18 * * *"
    digest_schedule: str = "0 8 * * mon-fri"
    retry_seconds: float = 60.0
    notify_seconds: float = 300.0
    heartbeat_seconds: float = 15.0
    misfire_grace_seconds: int = 3600
    catch_up: bool = True
    stop_timeout: float = 7.0
    health_host: str = "127.0.0.1"
    health_port: int = 9187
    ledger_max_vanished: float = 0.5
    ledger_min_vanished: int = 10

    @property
    def ledger_check(self) -> LedgerCheck:
        return LedgerCheck(self.ledger_max_vanished, self.ledger_min_vanished)


def _cron(r: _Reader, name: str, default: str, timezone: str) -> str:
    value = r.get(name, str, default).strip()
    if value.lower() in OFF:
        return "off"
    try:
        CronTrigger.from_crontab(value, timezone=ZoneInfo(timezone))
    except ValueError as exc:
        raise r.fail(name, f"must be a crontab line such as '0 9-17 * * mon-fri' (minute hour day month "
                           f"weekday) or 'off', not {value!r}: {exc}") from exc
    return value


def load_daemon_settings(settings: Settings) -> DaemonSettings:
    """Read `[daemon]` from the same file as the settings, with the same care: errors name key and file."""
    source = settings.source
    try:
        data = tomllib.loads(source.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the [daemon] table: {exc}") from exc
    r = _Reader(data, "", source).table("daemon")
    d = DaemonSettings()
    tz = settings.company.timezone
    values = DaemonSettings(
        pass_schedule=_cron(r, "pass_schedule", d.pass_schedule, tz),
        holds_schedule=_cron(r, "holds_schedule", d.holds_schedule, tz),
        digest_schedule=_cron(r, "digest_schedule", d.digest_schedule, tz),
        retry_seconds=r.get("retry_seconds", float, d.retry_seconds),
        notify_seconds=r.get("notify_seconds", float, d.notify_seconds),
        heartbeat_seconds=r.get("heartbeat_seconds", float, d.heartbeat_seconds),
        misfire_grace_seconds=r.get("misfire_grace_seconds", int, d.misfire_grace_seconds),
        catch_up=r.get("catch_up", bool, d.catch_up),
        stop_timeout=r.get("stop_timeout", float, d.stop_timeout),
        health_host=r.get("health_host", str, d.health_host),
        health_port=r.get("health_port", int, d.health_port),
        ledger_max_vanished=r.get("ledger_max_vanished", float, d.ledger_max_vanished),
        ledger_min_vanished=r.get("ledger_min_vanished", int, d.ledger_min_vanished),
    )
    for name in ("retry_seconds", "notify_seconds", "heartbeat_seconds"):
        if not 0 < getattr(values, name) <= 86_400:
            raise r.fail(name, "must be more than 0 and at most 86400 seconds")
    if values.misfire_grace_seconds < 1:
        raise r.fail("misfire_grace_seconds", "must be at least 1 (APScheduler skips a run later than this)")
    if not 0 < values.stop_timeout <= 8:
        raise r.fail("stop_timeout", "must be more than 0 and at most 8 seconds (systemd waits 10)")
    if not 0 <= values.health_port < 65536:
        raise r.fail("health_port", f"must be a TCP port, or 0 for none, not {values.health_port}")
    if not _loopback(values.health_host):
        raise r.fail("health_host", f"must be a loopback address such as 127.0.0.1, not {values.health_host!r}: "
                                    "/metrics and /healthz have no authentication")
    if not 0 < values.ledger_max_vanished < 1:
        raise r.fail("ledger_max_vanished", "must be a fraction between 0 and 1, such as 0.5")
    if values.ledger_min_vanished < 1:
        raise r.fail("ledger_min_vanished", "must be at least 1")
    return values


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"



def previous_fire(trigger: CronTrigger, now: datetime, lookback: timedelta = timedelta(days=8)) -> datetime | None:
    """The last time at or before `now` the trigger fired (within `lookback`): what a catch-up compares with."""
    last = None
    fire = trigger.get_next_fire_time(None, now - lookback)
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last


# ---- one daemon per store --------------------------------------------------------------------------------


class AlreadyRunning(DunbotError):
    """Another daemon holds the store's lock."""


class InstanceLock:
    """Held for the daemon's life. SQLite: flock() on `<database>.lock` (released by the kernel when the process
    dies, even by kill -9). PostgreSQL: a session advisory lock on a connection of its own (released when the
    connection closes). An in-memory SQLite store needs none."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path: Path | None = None
        self._fd: int | None = None
        self._engine: Engine | None = None
        self._connection: Connection | None = None
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            self.path = Path(url[len("sqlite:///"):] + ".lock")

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def acquire(self) -> None:
        if self.path is not None:
            self._acquire_file(self.path)
        elif self.is_postgres:
            self._acquire_advisory()

    def _acquire_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another `dunbot run` (pid {holder}) already works on the store "
                                 f"{engine_safe(self.url)} (lock {path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    _KEY = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '/dunbot.daemon'))"
    _UNLOCK = "SELECT pg_advisory_unlock(hashtext(current_schema() || '/dunbot.daemon'))"

    def _acquire_advisory(self) -> None:
        try:
            self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
            self._connection = self._engine.connect()
            got = bool(self._connection.execute(sa.text(self._KEY)).scalar())
            self._connection.commit()
        except SQLAlchemyError as exc:
            self.release()
            raise StoreError(f"cannot take the daemon lock on {engine_safe(self.url)}: {exc}") from exc
        if not got:
            self.release()
            raise AlreadyRunning(f"another `dunbot run` already works on the store {engine_safe(self.url)} "
                                 "(its PostgreSQL advisory lock is held); stop it first")

    def verify(self) -> bool:
        """False when the PostgreSQL connection holding the lock was lost (another daemon could now start)."""
        if self._connection is None:
            return True
        try:
            self._connection.execute(sa.text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except SQLAlchemyError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @classmethod
    def held(cls, url: str) -> bool:
        """Whether a daemon holds the lock now (for `dunbot status`); takes and drops it when free."""
        probe = cls(url)
        try:
            probe.acquire()
        except AlreadyRunning:
            return True
        except (StoreError, OSError):
            return False
        probe.release()
        return False


# ---- the daemon's state in the store ---------------------------------------------------------------------


def write_status(store: Store, values: dict[str, Any], now: datetime) -> None:
    """Upsert `daemon_status` rows (key -> JSON) in one transaction."""
    with store._tx() as c:
        for key, value in values.items():
            text = json.dumps(value, default=str, ensure_ascii=False)
            if not c.execute(daemon_status.update().where(daemon_status.c.key == key)
                             .values(value=text, updated_at=now)).rowcount:
                c.execute(daemon_status.insert().values(key=key, value=text, updated_at=now))


def read_status(store: Store) -> dict[str, Any]:
    with store._tx() as c:
        return {k: json.loads(v) for k, v in c.execute(sa.select(daemon_status.c.key, daemon_status.c.value))}


def outbox_state(store: Store, now: datetime) -> dict[str, Any]:
    """Depth by status and the age of the oldest reminder still queued."""
    counts = store.counts()
    with store._tx() as c:
        oldest = c.execute(sa.select(sa.func.min(reminders.c.created_at))
                           .where(reminders.c.status.in_((QUEUED, SENDING)))).scalar()
    age = (now - (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC))).total_seconds() if oldest else 0.0
    return {"counts": counts, "oldest_queued_seconds": max(age, 0.0)}


# ---- /healthz and /metrics -------------------------------------------------------------------------------


class HealthServer:
    """A minimal HTTP/1.0 server on the loop: no thread, no framework, two paths."""

    def __init__(self, host: str, port: int, health: Callable[[], tuple[bool, dict[str, Any]]],
                 metrics: Callable[[], bytes]) -> None:
        self.host, self.port, self.health, self.metrics = host, port, health, metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if parts[:1] not in (["GET"], ["HEAD"]):
                status, kind, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/healthz":
                ok, doc = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                kind, body = "application/json", json.dumps(doc, default=str).encode() + b"\n"
            elif path == "/metrics":
                status, kind, body = "200 OK", "text/plain; version=0.0.4; charset=utf-8", self.metrics()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"/healthz or /metrics\n"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + (body if parts[:1] == ["GET"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


# ---- the daemon ------------------------------------------------------------------------------------------


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _limit_arenas() -> None:
    """glibc gives every thread that allocates an arena of its own, which keeps what a pass freed: two are enough
    for a process whose work runs on one loop (same as MALLOC_ARENA_MAX=2, which the systemd unit also sets)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(-8, 2)  # M_ARENA_MAX


def _trim_memory() -> None:
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
class _Jobs:
    state: dict[str, JobState] = field(default_factory=dict)

    def get(self, name: str) -> JobState:
        return self.state.setdefault(name, JobState())


class Daemon:
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
        self.jobs = _Jobs()
        self.started_at: datetime | None = None
        self.store: Store | None = None
        self.templates: Templates | None = None
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
        _limit_arenas()
        problems = await asyncio.to_thread(self._template_problems, self.settings)
        if problems:
            raise ConfigError(f"{len(problems)} template problems (run `dunbot templates check`); first: "
                              f"{problems[0]}")
        self._lock.acquire()
        try:
            self.store = await asyncio.to_thread(self.open_store, self.settings.store_url)
            self.templates = Templates(self.settings.templates_dir, self.settings.languages,
                                       self.settings.company.language)
            self.processor = await asyncio.to_thread(Processor, self.store, self.settings, self.clock)
            with self.store._tx() as c:
                self._escalations_seen = int(c.execute(sa.select(sa.func.max(escalations.c.id))).scalar() or 0)
            previous = read_status(self.store).get("jobs", {})
            for name, values in previous.items():
                job = self.jobs.get(name)
                job.last_end = _parse_time(values.get("last_end"))
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
            await asyncio.to_thread(_trim_memory)  # start-up garbage (template check, migrations)
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

    # -- jobs --

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
        """The dunning pass: ledger -> sanity check -> prepare -> plan -> outbox -> SMTP, exactly as `dunbot send`."""
        async with self._work:
            if self._stopping.is_set():
                return
            settings, templates, store = self.settings, self.templates, self.store
            assert templates is not None and store is not None
            now = self.clock()
            invoices = await self._read_ledger(settings)
            report = outbox.Report()
            try:
                plan = await asyncio.to_thread(dunning.prepare, store, invoices, now, settings, report,
                                               check=self.options.ledger_check)
            except LedgerSuspect as exc:
                await self._ledger_suspect(exc, settings)
                raise
            self._ledger_ok()
            await asyncio.to_thread(outbox.enqueue, plan, store, templates, settings, report)
            for r in plan.reminders:
                log.info("queued reminder %s for customer %s: %s/%s in %s to %s (invoices %s)", r.message_id,
                         r.customer.customer_id, r.track, r.stage.name, r.language, r.to, ", ".join(r.invoice_ids))
            await self._deliver(settings, report)
            del plan, invoices
            summary = {"at": self.clock(), "queued": report.queued, "sent": report.sent, "failed": report.failed,
                       "retrying": report.retrying, "withdrawn": report.cancelled, "escalated": report.escalated,
                       "aborted": report.aborted, "errors": report.errors[:5]}
            self.metrics.last_pass.set(time.time())
            log.info("pass done: queued %d, sent %d, failed %d, waiting for retry %d, withdrawn %d, escalated %d%s",
                     report.queued, report.sent, report.failed, report.retrying, report.cancelled, report.escalated,
                     f"; stopped: {report.aborted}" if report.aborted else "")
            self._record("last_pass", summary)
        await asyncio.to_thread(_trim_memory)

    async def _read_ledger(self, settings: Settings) -> list[Any]:
        try:
            ledger = await asyncio.to_thread(read_ledger, settings.ledger)
        except DunbotError as exc:
            self._set_problem("ledger", f"cannot read the ledger, nothing is sent: {exc}")
            self.metrics.ledger_ok.set(0)
            raise
        if ledger.problems:
            log.warning("%d ledger rows skipped (see `dunbot ledger check`); first: %s", len(ledger.problems),
                        ledger.problems[0])
        return ledger.open_invoices

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
        with store._tx() as c:
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
        raw = notify.compose(message_id, user, rendered, settings, self.clock(), "alert")
        if notify._insert(store, {"message_id": message_id, "kind": "alert", "owner": owner, "recipient": user.email,
                                  "customer_id": None, "raw": raw, "created_at": self.clock()}):
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
        """Promises and pauses that ran out, between passes (weekends too): kept, broken, resumed."""
        async with self._work:
            if self._stopping.is_set():
                return
            settings, store = self.settings, self.store
            assert store is not None
            now = self.clock()
            invoices = await self._read_ledger(settings)
            try:
                await asyncio.to_thread(dunning.check_ledger, store, invoices, now, self.options.ledger_check)
            except LedgerSuspect as exc:
                await self._ledger_suspect(exc, settings)
                raise
            self._ledger_ok()
            by_id = {invoice.invoice_id: invoice for invoice in invoices}
            await asyncio.to_thread(dunning.review_holds, store, by_id, now, settings)
        await asyncio.to_thread(_trim_memory)

    async def _notify(self) -> None:
        async with self._work:
            if self._stopping.is_set():
                return
            settings, store = self.settings, self.store
            skipped: list[str] = []
            queued = await asyncio.to_thread(notify.queue_escalation_notices, store, settings, self.clock(),
                                             skipped=skipped)
            if queued:
                log.info("queued %d escalation notices", queued)
            await self._send_notifications(settings)

    async def _digest(self) -> None:
        async with self._work:
            if self._stopping.is_set():
                return
            settings, store = self.settings, self.store
            queued = await asyncio.to_thread(notify.queue_digests, store, settings, self.clock())
            if queued:
                log.info("queued %d digests", queued)
            await self._send_notifications(settings)

    async def _send_notifications(self, settings: Settings) -> None:
        store = self.store
        assert store is not None
        now = self.clock()

        def pending() -> bool:
            with store._tx() as c:
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
        with store._tx() as c:
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
                "ledger": dunning.last_ledger_check(store)}

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

    @staticmethod
    def _template_problems(settings: Settings) -> list[str]:
        return [str(p) for p in (*check_templates(settings), *notify.check_templates(settings))]

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
        problems = await asyncio.to_thread(self._template_problems, settings)
        if problems:
            log.error("reload rejected, the running configuration stays: %d template problems; first: %s",
                      len(problems), problems[0])
            self._set_problem("reload", f"rejected: {len(problems)} template problems; first: {problems[0]}")
            return False
        old, self.settings, self.options = self.settings, settings, options
        self.templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
        self.processor = await asyncio.to_thread(Processor, self.store, settings, self.clock)
        if self.scheduler is not None and self.scheduler.running:
            self._schedule()
        if old.inbox != settings.inbox:
            await self._restart_watcher()
        self._set_problem("reload", None)
        log.info("configuration reloaded from %s; jobs: %s", self.config, ", ".join(self._job_summary()))
        return True


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
