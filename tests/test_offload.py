"""The daemon's ledger work and digest in a child process (bot/offload.py): same records, logs and metrics as in
the daemon, and the child never outlives the daemon nor its stop timeout."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from sample import NOW
from test_daemon import (
    daemon_config,
    ledger_rows,
    maildir_sent,
    run,
    run_pass,
    running,
    start_daemon_process,
    store_of,
    wait_for,
)

from bot.config import load_settings
from bot.errors import ConfigError
from bot.instance_lock import InstanceLock
from bot.store import Store
from bot.users import add_user


def test_the_pass_runs_in_a_child_and_its_records_reach_the_daemons_log_and_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = daemon_config(tmp_path, ledger_rows(3), daemon="catch_up = false")
    caplog.set_level(logging.INFO, logger="bot")

    async def scenario() -> float:
        async with running(config) as daemon:
            await run_pass(daemon)
            assert daemon.jobs.get("pass").outcome == "ok"
            return float(daemon.metrics.registry.get_sample_value("dunbot_reminders_sent_total") or 0)

    sent = run(scenario())
    queued = [r for r in caplog.records if r.getMessage().startswith("queued reminder")]
    assert len(queued) == 3 and {r.process for r in queued} != {os.getpid()}
    assert queued[0].args and queued[0].args[1] == "C0"  # the arguments the decision counter reads
    assert sent == 3 and len(maildir_sent(tmp_path)) == 3


def test_a_suspect_ledger_found_in_the_child_stops_the_pass_as_before(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(40), daemon="catch_up = false")

    async def scenario() -> None:
        async with running(config) as daemon:
            await run_pass(daemon)
            (tmp_path / "ledger.csv").write_text((tmp_path / "ledger.csv").read_text().splitlines()[0] + "\n")
            await run_pass(daemon)
            assert daemon.jobs.get("pass").outcome == "ledger_suspect"
            assert "ledger" in daemon.problems
            assert daemon.metrics.registry.get_sample_value("dunbot_ledger_ok") == 0

    run(scenario())


def escalating(tmp_path: Path, count: int, daemon: str, *, with_account: bool = True) -> Path:
    """A daemon whose `count` cases all escalate at 90 days, owned by their account manager Laura ("laura"),
    who has an account to be notified at unless `with_account` is False."""
    config = daemon_config(tmp_path, ledger_rows(count, days_overdue=90), daemon=daemon)
    config.write_text(config.read_text().replace('"Laura Gómez" = "laura"', '"Laura" = "laura"'))
    if with_account:
        add_user(store_of(config), "laura", "correct horse battery", "finance", datetime.fromisoformat(NOW),
                 email="laura@northwind.example")
    return config


def test_the_digest_is_queued_in_a_child_and_sent_by_the_daemon(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = escalating(tmp_path, 5, 'digest_schedule = "off"')
    caplog.set_level(logging.INFO, logger="bot")

    async def scenario() -> None:
        async with running(config) as daemon:
            await run_pass(daemon)  # every case escalates at 90 days
            await daemon._digest()

    run(scenario())
    (queued,) = [r for r in caplog.records if r.getMessage() == "queued 1 digests"]
    assert queued.process != os.getpid()
    digests = [m for m in maildir_sent(tmp_path) if b"Message-ID: <dunbot.digest." in m]
    assert len(digests) == 1


def test_escalation_notices_are_queued_in_a_child_when_one_is_due_and_sent_by_the_daemon(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = escalating(tmp_path, 5, "notify_seconds = 3600")
    caplog.set_level(logging.INFO, logger="bot")

    async def scenario() -> tuple[bool, bool]:
        async with running(config) as daemon:
            await run_pass(daemon)  # every case escalates at 90 days
            due = daemon._notices_due(daemon.settings)
            await daemon._notify()
            return due is not None, daemon._notices_due(daemon.settings) is not None

    due_before, due_after = run(scenario())
    assert due_before and not due_after
    (queued,) = [r for r in caplog.records if r.getMessage() == "queued 5 escalation notices"]
    assert queued.process != os.getpid()
    notices = [m for m in maildir_sent(tmp_path) if b"Message-ID: <dunbot.notice." in m]
    assert len(notices) == 5


def test_a_notice_left_unqueued_is_tried_again_when_what_it_depends_on_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = escalating(tmp_path, 1, "notify_seconds = 3600", with_account=False)
    caplog.set_level(logging.INFO, logger="bot")

    def skipped() -> int:
        return sum("escalation 1 of customer C0: owner 'laura' is not a user" in r.getMessage() for r in caplog.records)

    async def scenario() -> list[int]:
        async with running(config) as daemon:
            await run_pass(daemon)
            counts = []
            for _ in range(2):
                await daemon._notify()
                counts.append(skipped())
            add_user(daemon.store, "laura", "correct horse battery", "finance", datetime.fromisoformat(NOW),
                     email="laura@northwind.example")
            await daemon._notify()
            counts.append(skipped())
            return counts

    assert run(scenario()) == [1, 1, 1]  # the unchanged second run spawns no child and logs nothing again
    assert any(r.getMessage() == "queued 1 escalation notices" for r in caplog.records)


def children_running(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children() if c.is_running()]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_the_child_never_outlives_the_daemon(tmp_path: Path, how: str) -> None:
    """kill -9 of the daemon takes its child with it (the instance lock goes with the daemon: no orphan may
    write); SIGTERM stops the daemon within its timeout, child included, and a restart finishes the pass."""
    config = daemon_config(tmp_path, ledger_rows(2000), daemon="stop_timeout = 2")
    log = tmp_path / "run.log"
    process = start_daemon_process(config, log)
    try:
        wait_for(lambda: bool(children_running(process.pid)), 60, "the pass's child process")
        (child,) = children_running(process.pid)
        os.kill(process.pid, getattr(signal, how))
        stopped = time.monotonic()
        code = process.wait(10)
        assert code == (0 if how == "SIGTERM" else -9)
        assert time.monotonic() - stopped < 10
        wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 5, "the child to end")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    process = start_daemon_process(config, log)
    try:
        store = store_of(config)
        wait_for(lambda: store.counts().get("sent", 0) == 2000, 120, "the restart to finish the pass")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    sent = maildir_sent(tmp_path)
    assert len(sent) == 2000 and len({m.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in sent}) == 2000


def test_a_template_problem_found_by_the_check_in_a_child_stops_the_start(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, ledger_rows(1), daemon="catch_up = false", templates=True)
    (tmp_path / "templates" / "en" / "courtesy" / "subject.txt").write_text("{{ nope.nope }}")

    async def scenario() -> None:
        async with running(config):
            pass

    with pytest.raises(ConfigError, match=r"template problems .*en/courtesy/subject.txt"):
        run(scenario())
    assert not InstanceLock.held(load_settings(config).store_url)  # refused before taking the lock


def test_a_store_that_needs_a_migration_is_migrated_in_a_child_not_in_the_daemon(tmp_path: Path) -> None:
    """Alembic (~11 MB) imported for one migration would stay in the idle daemon until its next restart."""
    import subprocess
    import sys

    config = daemon_config(tmp_path, ledger_rows(2), daemon="catch_up = false")
    url = load_settings(config).store_url
    assert Store.migration_due(url)  # nothing there yet
    script = f"""
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_daemon import running

async def main():
    async with running(Path({str(config)!r})) as daemon:
        print("store", daemon.store is not None, "alembic", "alembic" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "store True alembic False" in out.stdout
    assert not Store.migration_due(url)  # the child brought it to the latest migration
    store_of(config).close()
