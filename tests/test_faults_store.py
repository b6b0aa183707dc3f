"""The store failing under the daemon: locked by another writer, or full. The bot stops sending rather than
send what it cannot record, keeps running, says why, and goes on once the store works again."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from scripted_smtp import ScriptedSMTP
from test_daemon import daemon_config, ledger_rows, run, run_pass, running, store_of, until
from test_faults_smtp import smtp

from bot.store import Store

Start = Callable[..., ScriptedSMTP]


def test_a_locked_store_stops_sending_until_it_is_released(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp()
    slow_retry = smtp(server.port).replace("backoff_initial = 0.2", "backoff_initial = 2")
    config = daemon_config(tmp_path, ledger_rows(5), smtp=slow_retry)
    database = tmp_path / "var" / "dunbot.db"

    async def scenario() -> None:
        async with running(config) as daemon:
            await run_pass(daemon)
            assert len(server.messages) == 5
            server.script.data_replies.extend(["451 4.3.0 later"] * 3)  # three of the next wait for a retry
            (tmp_path / "ledger.csv").write_text((tmp_path / "ledger.csv").read_text() + "\n".join(
                ledger_rows(5, start=5)) + "\n")
            await run_pass(daemon)
            assert len(server.messages) == 7 and store_of(config).counts()["queued"] == 3
            blocker = sqlite3.connect(database, timeout=0, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
            try:
                await asyncio.sleep(6)  # the retries fall due; every attempt to record one fails
                assert len(server.messages) == 7, "a reminder was sent that the store could not record"
                (tmp_path / "ledger.csv").write_text((tmp_path / "ledger.csv").read_text() + "\n".join(
                    ledger_rows(2, start=10)) + "\n")
                await run_pass(daemon, timeout=40)
                assert len(server.messages) == 7
                assert "locked" in str(daemon.problems), daemon.problems
                assert daemon.state == "running"
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            await until(lambda: len(server.messages) == 10, 20, "the retries after the release")
            await run_pass(daemon)
            assert len(server.messages) == 12
            await until(lambda: not any("locked" in p for p in daemon.problems.values()), 10, "the problems to clear")

    run(scenario(), timeout=120)
    assert store_of(config).counts() == {"sent": 12}


def tiny_store(extra_pages: int) -> Callable[[str], Store]:
    """Store.open, then every connection capped at a few more pages than the database has: SQLITE_FULL."""

    def open_store(url: str) -> Store:
        store = Store.open(url)
        with store.engine.begin() as c:
            pages = int(c.execute(sa.text("PRAGMA page_count")).scalar() or 0)

        def cap(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages + extra_pages}")

        sa.event.listen(store.engine, "connect", cap)
        store.engine.dispose()
        return store

    return open_store


def test_a_full_store_stops_sending_and_says_so(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp()
    config = daemon_config(tmp_path, ledger_rows(60), smtp=smtp(server.port))

    async def scenario() -> None:
        async with running(config, open_store=tiny_store(6)) as daemon:
            await until(lambda: daemon.jobs.get("pass").outcome == "failed", 30, "the pass to fail")
            assert "full" in daemon.problems["job:pass"], daemon.problems
            assert daemon.state == "running" and server.messages == []

    run(scenario())
    assert server.messages == []
    assert store_of(config).counts().get("sent", 0) == 0
