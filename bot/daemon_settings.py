"""The `[daemon]` table of config.toml: the jobs' schedules (crontab lines in the company's time zone), intervals,
stop timeout, the health endpoint's address and the ledger sanity thresholds; validated like the rest of the
settings, errors naming key and file.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from bot.config import Reader, Settings
from bot.errors import ConfigError
from bot.ledger_check import LedgerCheck

OFF = ("", "off", "never")


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


def _cron(r: Reader, name: str, default: str, timezone: str) -> str:
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
    r = Reader(data, "", source).table("daemon")
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
