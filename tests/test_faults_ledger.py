"""A ledger gone wrong must not read as "everyone paid": truncated, emptied, or swapped while being read.

The sanity check stops the pass before it sends, closes a case as paid or withdraws a reminder, logs at
ERROR, shows in status and metrics, and emails the default owner; a fixed ledger, or `dunbot ledger accept`,
lets the next pass go on."""

from __future__ import annotations

import asyncio
import email
import os
import threading
from datetime import datetime
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sample import LEDGER_FIELDS, NOW
from test_daemon import daemon_config, ledger_rows, maildir_sent, run, run_pass, running, store_of

from bot.cli import main
from bot.schema import cases, ledger_checks
from bot.users import add_user


def case_states(config: Path) -> dict[str, str]:
    store = store_of(config)
    with store.engine.begin() as c:
        return dict(c.execute(sa.select(cases.c.customer_id, cases.c.state)).all())  # type: ignore[arg-type]


def write_rows(path: Path, rows: list[str], *, atomic: bool = True) -> None:
    text = ",".join(LEDGER_FIELDS) + "\n" + "\n".join(rows) + "\n"
    if not atomic:
        path.write_text(text)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_truncated_emptied_and_unreadable_ledgers_stop_everything_and_alert(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    rows = ledger_rows(40, days_overdue=90)  # every case gets escalated: a wrongly "paid" one would be closed
    config = daemon_config(tmp_path, rows)
    ledger = tmp_path / "ledger.csv"
    store = store_of(config)
    add_user(store, "finance", "correct horse battery", "finance", datetime.fromisoformat(NOW),
             email="finance@northwind.example")

    async def scenario() -> None:
        async with running(config) as daemon:
            await run_pass(daemon)
            before = case_states(config)
            assert set(before.values()) == {"escalated"} and len(before) == 40
            sent_before = len(maildir_sent(tmp_path))

            text = ledger.read_text()
            ledger.write_text(text[:len(text) // 5])  # cut mid-write: a fifth of the rows, the last one broken
            await run_pass(daemon)
            assert "ledger suspect" in daemon.problems["ledger"]
            assert daemon.jobs.get("pass").outcome == "ledger_suspect"
            assert case_states(config) == before, "no case may be closed as paid on a truncated ledger"
            assert "dunbot_ledger_ok 0.0" in daemon.metrics.render().decode()
            result = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--config", str(config)])
            assert result.exit_code == 1 and "ledger: stopped" in result.output and "vanished at once" in result.output
            alerts = [m for m in maildir_sent(tmp_path)[sent_before:] if b"finance@northwind.example" in m]
            assert len(alerts) == 1
            alert = email.message_from_bytes(alerts[0], policy=policy.default)
            assert alert["Subject"].startswith("Dunbot stopped: the ledger lost") and alert["Auto-Submitted"]

            write_rows(ledger, [])  # emptied by mistake: the header alone
            await run_pass(daemon)
            assert "the ledger lists 0 open invoices" in daemon.problems["ledger"]
            ledger.write_bytes(b"")  # not even a header
            await run_pass(daemon)
            assert "cannot read the ledger" in daemon.problems["ledger"]
            assert case_states(config) == before

            write_rows(ledger, rows)  # the export is fixed: the next pass goes on, nothing sent twice
            await run_pass(daemon)
            assert "ledger" not in daemon.problems
            assert "dunbot_ledger_ok 1.0" in daemon.metrics.render().decode()
            assert len([m for m in maildir_sent(tmp_path) if b"finance@" not in m.split(b"\n\n")[0]]) == sent_before
            assert len([m for m in maildir_sent(tmp_path) if b"Dunbot stopped" in m]) == 1  # one alert per incident

            write_rows(ledger, rows[:10])  # the drop is real this time
            await run_pass(daemon)
            assert "ledger" in daemon.problems
            result = await asyncio.to_thread(CliRunner().invoke, main, ["ledger", "accept", "--config", str(config),
                                                                        "--by", "marta"])
            assert result.exit_code == 0 and "accepted 10 open invoices" in result.output
            await run_pass(daemon)
            assert "ledger" not in daemon.problems
            states = case_states(config)
            assert sum(s == "resolved" for s in states.values()) == 30

    run(scenario(), timeout=90)
    assert "ledger suspect" in caplog.text and any(r.levelname == "ERROR" and "ledger suspect" in r.getMessage()
                                                   for r in caplog.records)


def test_ledger_replaced_by_atomic_rename_while_being_read_is_read_whole_or_stopped(tmp_path: Path) -> None:
    full = ledger_rows(20_000, days_overdue=-10)  # due in ten days: nothing to send, only reading and checking
    short = full[:2_000]
    config = daemon_config(tmp_path, full)
    ledger = tmp_path / "ledger.csv"
    (tmp_path / "full.csv").write_text(",".join(LEDGER_FIELDS) + "\n" + "\n".join(full) + "\n")
    (tmp_path / "short.csv").write_text(",".join(LEDGER_FIELDS) + "\n" + "\n".join(short) + "\n")
    stop = threading.Event()

    def flip() -> None:  # an exporter replacing the file by rename, again and again, mid-read
        n = 0
        while not stop.is_set():
            n += 1
            os.link(tmp_path / ("short.csv" if n % 2 else "full.csv"), tmp_path / "next.csv")
            os.replace(tmp_path / "next.csv", ledger)
            stop.wait(0.013)

    async def scenario() -> None:
        async with running(config) as daemon:
            await run_pass(daemon)
            flipper = threading.Thread(target=flip, daemon=True)
            flipper.start()
            try:
                for _ in range(6):
                    await run_pass(daemon, timeout=60)
            finally:
                stop.set()
                flipper.join(5)

    run(scenario(), timeout=150)
    store = store_of(config)
    with store.engine.begin() as c:
        checks = c.execute(sa.select(ledger_checks.c.verdict, ledger_checks.c.open_count)).all()
    assert len(checks) >= 7
    assert set(checks) <= {("ok", 20_000), ("stopped", 2_000)}, "a pass read a mix of two exports"
    assert store.reminders_for() == []
