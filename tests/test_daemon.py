"""The daemon (`dunbot run`): schedule, catch-up, one instance per store, signals, reload, status, health, logs.

Most tests run the daemon in this process (fast, inspectable); the ones about signals and exit codes run the
real command. The helpers at the top are shared with tests/test_faults_*.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sample import NOW, ROOT, row, write_config, write_ledger
from stores import BACKENDS, store_url

from bot.cli import main
from bot.config import load_settings
from bot.daemon import Daemon
from bot.daemon_settings import load_daemon_settings, previous_fire
from bot.errors import ConfigError
from bot.instance_lock import AlreadyRunning, InstanceLock
from bot.metrics import DECISIONS, JsonFormatter
from bot.status import write_status
from bot.store import Store

T = 60.0  # the bound on every scenario


# ---- shared helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ledger_rows(count: int, *, domain: str = "customers.test", start: int = 0, **kw: Any) -> list[str]:
    return [row(f"INV-{i}", f"C{i}", f"ap{i}@{domain}", **kw) for i in range(start, start + count)]


def daemon_config(tmp_path: Path, rows: list[str], *, smtp: str = "", daemon: str = "", inbox: str = "",
                  templates: bool = False, health: bool = False) -> Path:
    """The example config on this ledger, with a [daemon] table fast enough for tests (and optional overrides)."""
    ledger = write_ledger(tmp_path / "ledger.csv", rows)
    config = write_config(tmp_path, ledger, smtp=smtp)
    text = config.read_text()
    if templates:
        shutil.copytree(ROOT / "templates", tmp_path / "templates")
        text = text.replace(f'dir = "{ROOT / "templates"}"', f'dir = "{tmp_path / "templates"}"')
    if inbox:
        text = text.replace('kind = "maildir"           # "maildir" reads replies',
                            'kind = "imap"           # "maildir" reads replies', 1) + f"\n{inbox}\n"
    fast = {"retry_seconds": "0.5", "heartbeat_seconds": "0.5", "notify_seconds": "1",
            "health_port": str(free_port()) if health else "0"}
    given = dict(line.split("=", 1) for line in daemon.strip().splitlines() if "=" in line)
    given = {k.strip(): v.strip() for k, v in given.items()}
    table = "\n".join(f"{k} = {v}" for k, v in {**fast, **given}.items())
    config.write_text(text + f"\n[daemon]\n{table}\n")
    return config


def store_of(config: Path) -> Store:
    return Store.open(load_settings(config).store_url)


async def until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@asynccontextmanager
async def running(config: Path, now: str | None = NOW, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A daemon in this process, started (its catch-up pass scheduled) and always stopped at the end."""
    daemon = Daemon(config, now=datetime.fromisoformat(now) if now else None, **kwargs)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.state == "running" or task.done(), 30, "the daemon to start")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)


def run(coro: Any, timeout: float = T) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def pass_done(daemon: Daemon, runs: int = 1, timeout: float = 30.0) -> None:
    job = daemon.jobs.get("pass")
    await until(lambda: job.runs >= runs and job.last_end is not None and job.outcome != "" and
                "pass" not in {t.get_name() for t in daemon._running}, timeout, f"pass #{runs}")


async def run_pass(daemon: Daemon, timeout: float = 30.0) -> None:
    """Fire the pass job now (as its cron would) and wait for it to finish."""
    job = daemon.jobs.get("pass")
    scheduler = daemon.scheduler
    assert scheduler is not None

    def idle() -> bool:  # no pass running or about to (a run fired while one runs would be skipped)
        nxt = scheduler.get_job("pass").next_run_time
        instances = scheduler._executors["default"]._instances.get("pass", 0)  # APScheduler's own count
        return not instances and nxt > datetime.now(UTC) and (job.runs == 0 or job.last_end is not None)

    await until(idle, timeout, "the pass job to be idle")
    before = job.runs
    scheduler.modify_job("pass", next_run_time=datetime.now(UTC))
    await pass_done(daemon, before + 1, timeout)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_daemon_process(config: Path, log: Path, *extra: str, now: str = NOW) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "bot", "run", "--config", str(config), "--now", now, *extra],
                                stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def maildir_sent(tmp_path: Path) -> list[bytes]:
    folder = tmp_path / "var" / "sent" / "new"
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.exists() else []


# ---- configuration -----------------------------------------------------------------------------------------


def test_daemon_settings_have_safe_defaults_and_errors_name_key_and_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, write_ledger(tmp_path / "ledger.csv", ledger_rows(1)))
    options = load_daemon_settings(load_settings(config))
    assert options.pass_schedule == "0 9-17 * * mon-fri" and options.misfire_grace_seconds == 3600
    assert options.health_host == "127.0.0.1" and options.ledger_check.max_vanished == 0.5
    for table, key in (('pass_schedule = "every hour"', "daemon.pass_schedule"),
                       ('health_host = "0.0.0.0"', "daemon.health_host"),
                       ("retry_seconds = -1", "daemon.retry_seconds"),
                       ("stop_timeout = 30", "daemon.stop_timeout"),
                       ("ledger_max_vanished = 2", "daemon.ledger_max_vanished")):
        config.write_text(config.read_text().split("\n[daemon]")[0] + f"\n[daemon]\n{table}\n")
        with pytest.raises(ConfigError, match=rf"{re.escape(str(config.resolve()))}: \[{key}\]"):
            load_daemon_settings(load_settings(config))
    config.write_text(config.read_text().split("\n[daemon]")[0] + '\n[daemon]\nholds_schedule = "off"\n')
    assert load_daemon_settings(load_settings(config)).holds_schedule == "off"


def test_every_decision_template_still_occurs_in_the_sources() -> None:
    sources = "".join(p.read_text() for p in (ROOT / "bot").rglob("*.py"))
    missing = [template for template in DECISIONS if json.dumps(template)[1:-1] not in sources]
    assert missing == []


def test_json_log_lines_carry_the_decision_fields() -> None:
    record = logging.LogRecord("bot.outbox", logging.INFO, __file__, 1, "sent reminder %s to customer %s (invoices %s)",
                               ("<m@x>", "C7", "INV-1, INV-2"), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["event"] == "sent" and doc["customer"] == "C7" and doc["invoices"] == "INV-1, INV-2"
    assert doc["message"] == "sent reminder <m@x> to customer C7 (invoices INV-1, INV-2)"
    other = logging.LogRecord("bot.x", logging.WARNING, __file__, 1, "odd %s %d", ("thing", 3), None)
    other.customer = "C9"  # an extra= field
    assert json.loads(JsonFormatter().format(other)) | {"time": 0} == {
        "time": 0, "level": "warning", "logger": "bot.x", "message": "odd thing 3", "args": ["thing", 3],
        "customer": "C9"}


def test_previous_fire_is_the_last_scheduled_time() -> None:
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab("0 9-17 * * mon-fri", timezone=ZoneInfo("Europe/Madrid"))
    monday_morning = datetime.fromisoformat("2026-11-23T08:00:00+01:00")
    assert previous_fire(trigger, monday_morning) == datetime.fromisoformat("2026-11-20T17:00:00+01:00")
    assert previous_fire(trigger, datetime.fromisoformat(NOW)) == datetime.fromisoformat(NOW)


# ---- running -----------------------------------------------------------------------------------------------


def test_run_catches_up_once_sends_and_reports_status_health_and_metrics(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(5), health=True)
    settings = load_settings(config)
    port = load_daemon_settings(settings).health_port

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            assert len(maildir_sent(tmp_path)) == 5
            await until(lambda: "dunbot_reminders_sent_total 5.0" in daemon.metrics.render().decode(), 5, "metrics")
            code, body = await asyncio.to_thread(http_get, port, "/healthz")
            assert code == 200 and json.loads(body)["status"] == "ok"
            code, body = await asyncio.to_thread(http_get, port, "/metrics")
            assert code == 200 and b"dunbot_reminders_sent_total 5.0" in body and b"dunbot_inbox_up 1.0" in body
            assert b"process_resident_memory_bytes" in body
            assert (await asyncio.to_thread(http_get, port, "/nope"))[0] == 404
            await asyncio.sleep(1.2)  # a heartbeat or two
            result = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--config", str(config)])
            assert result.exit_code == 0, result.output
            assert "dunbot daemon: running" in result.output and "health: ok" in result.output
            assert "last pass: 2026-11-24 11:00" in result.output and "queued 5, sent 5" in result.output
            assert "outbox: queued 0, sending 0, sent 5, failed 0" in result.output
            assert daemon.jobs.get("pass").runs == 1  # one catch-up run, not one per missed hour
        result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
        assert result.exit_code == 3
        doc = json.loads(result.output)
        assert doc["running"] is False and doc["daemon"]["state"] == "stopped"

    run(scenario())


def test_a_restart_right_after_a_pass_does_not_pass_again(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(2))

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
        async with running(config, now="2026-11-24T11:20:00+01:00") as daemon:
            await asyncio.sleep(1.0)
            assert daemon.jobs.get("pass").runs == 0
        async with running(config, now="2026-11-24T12:05:00+01:00") as daemon:  # the 12:00 run was missed
            await pass_done(daemon)

    run(scenario())


def test_a_late_job_after_the_loop_was_blocked_runs_once(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1), daemon="retry_seconds = 0.2")

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            await until(lambda: daemon.jobs.get("retry").runs >= 2, 5, "the retry worker")
            before = daemon.jobs.get("retry").runs
            time.sleep(2.0)  # the machine "sleeps": ten runs of the retry worker are missed
            await asyncio.sleep(0.1)
            assert daemon.jobs.get("retry").runs - before <= 2  # coalesced into one late run (plus the next)

    run(scenario())


def test_second_daemon_on_the_same_store_refuses_with_exit_2(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1))

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "run", "--config",
                                                            str(config)], capture_output=True, timeout=30)
            assert done.returncode == 2, done.stderr
            assert b"already works on the store" in done.stderr and str(os.getpid()).encode() in done.stderr

    run(scenario())


def test_sigterm_mid_pass_exits_0_within_10_s_and_a_restart_finishes_without_duplicates(
        tmp_path: Path, scripted_smtp: Callable[..., Any]) -> None:
    server = scripted_smtp()
    smtp = f'host = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\nconnections = 2\nrate_per_minute = 600\n'
    config = daemon_config(tmp_path, ledger_rows(120), smtp=smtp)
    log = tmp_path / "run.log"
    process = start_daemon_process(config, log)
    try:
        wait_for(lambda: len(server.messages) >= 5, 30, "the pass to be sending")
        process.send_signal(signal.SIGHUP)  # reloads (unchanged config) without interrupting the pass
        wait_for(lambda: "configuration reloaded" in log.read_text(), 10, "the reload")
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - stopped < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    sent_before = len(server.messages)
    assert 5 <= sent_before < 120
    store = store_of(config)
    statuses = {r["status"] for r in store.reminders_for()}
    assert statuses <= {"sent", "queued"}, "nothing may be left mid-send after a clean stop"
    config.write_text(config.read_text().replace("rate_per_minute = 600", "rate_per_minute = 0"))
    process = start_daemon_process(config, log)
    try:
        wait_for(lambda: store.counts().get("sent", 0) == 120, 40, "the restart to finish the pass")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    ids = [m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in server.messages]
    assert len(ids) == 120 and len(set(ids)) == 120
    assert "was being sent when Dunbot stopped" not in log.read_text()


def test_sighup_reload_takes_a_good_config_and_keeps_the_old_one_otherwise(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1), templates=True)
    good = config.read_text()

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            config.write_text(good.replace("retry_seconds = 0.5", "retry_seconds = 7"))
            assert await daemon.reload()
            assert daemon.options.retry_seconds == 7
            assert daemon.scheduler is not None
            assert daemon.scheduler.get_job("retry").trigger.interval == timedelta(seconds=7)
            config.write_text(good + "\n[company\nbroken")
            assert not await daemon.reload()
            assert daemon.options.retry_seconds == 7 and "not valid TOML" in daemon.problems["reload"]
            config.write_text(good.replace('pass_schedule', 'x').replace("[daemon]", '[daemon]\npass_schedule = "x"'))
            assert not await daemon.reload()
            assert "daemon.pass_schedule" in daemon.problems["reload"]
            config.write_text(good)
            subject = tmp_path / "templates" / "en" / "first_reminder" / "subject.txt"
            subject.write_text("Invoice {{ oops(")
            assert not await daemon.reload()
            assert "template problems" in daemon.problems["reload"] and "subject.txt" in daemon.problems["reload"]
            assert daemon.state == "running"
            shutil.copy(ROOT / "templates" / "en" / "first_reminder" / "subject.txt", subject)
            assert await daemon.reload()
            assert "reload" not in daemon.problems

    run(scenario())


def test_template_edits_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1, days_overdue=1), templates=True)

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            subject = tmp_path / "templates" / "en" / "first_reminder" / "subject.txt"
            subject.write_text("Edited while running: {{ company.name }}\n")
            write_ledger(tmp_path / "ledger.csv", [*ledger_rows(1, days_overdue=1),
                                                   *ledger_rows(1, start=1, days_overdue=1)])
            await run_pass(daemon)

    run(scenario())
    subjects = [re.search(rb"Subject: (.*)", raw).group(1) for raw in maildir_sent(tmp_path)]  # type: ignore[union-attr]
    assert sorted(subjects)[0].startswith(b"Edited while running") and len(subjects) == 2


def test_status_without_a_daemon_says_so_with_exit_3(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1))
    result = CliRunner().invoke(main, ["status", "--config", str(config)])
    assert result.exit_code == 3 and "NOT running" in result.output and "last pass: none yet" in result.output


def test_a_stale_heartbeat_makes_status_unhealthy(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1))

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            assert daemon.scheduler is not None
            daemon.scheduler.pause_job("heartbeat")  # a stuck daemon: alive, holding the lock, silent
            store = store_of(config)
            old = datetime.now(UTC) - timedelta(minutes=5)
            write_status(store, {"daemon": {**daemon._daemon_doc(), "heartbeat_wall": old}}, old)
            result = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--config", str(config)])
            assert result.exit_code == 1 and "heartbeat: no heartbeat for" in result.output

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_instance_lock_is_exclusive_per_store(tmp_path: Path, backend: str) -> None:
    with store_url(backend, tmp_path) as url:
        Store.open(url).close()
        first = InstanceLock(url)
        first.acquire()
        try:
            assert InstanceLock.held(url)
            with pytest.raises(AlreadyRunning, match="already works on the store"):
                InstanceLock(url).acquire()
            assert first.verify()
        finally:
            first.release()
        assert not InstanceLock.held(url)
        again = InstanceLock(url)
        again.acquire()
        again.release()
