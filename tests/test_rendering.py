"""A large pass renders in a worker process: the same messages as rendering here, the same skips and warnings,
and a worker that dies leaves nothing unrendered and nothing sent twice."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from sample import NOW, row, write_config, write_ledger

from bot import children, dunning, rendering
from bot.cli.common import clock_from
from bot.config import Settings, load_settings
from bot.ledger import read_ledger
from bot.outbox import Report
from bot.store import Store
from bot.templates import Templates
from bot.transports import MaildirTransport

CUSTOMERS = 260  # three batches: the first rendered here while the worker starts, the others there


def settings_for(tmp_path: Path, rows: list[str]) -> Settings:
    settings = load_settings(write_config(tmp_path, write_ledger(tmp_path / "ledger.csv", rows)))
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    return replace(settings, templates_dir=templates)


def mixed(count: int = CUSTOMERS) -> list[str]:
    """English and Spanish customers at the stages from courtesy to final notice, some with a Cc."""
    days = [-3, 1, 7, 14, 30, 60]
    return [row(f"INV-{i}", f"C{i}", f"ap{i}@customers.test", days_overdue=days[i % len(days)],
                language="es" if i % 3 else "en", cc=f"boss{i}@customers.test" if i % 4 == 0 else "")
            for i in range(count)]


def send(settings: Settings, folder: Path, worker_from: int, monkeypatch: pytest.MonkeyPatch) -> Report:
    monkeypatch.setattr(rendering, "WORKER_FROM", worker_from)
    store = Store.open(f"sqlite:///{folder / 'dunbot.db'}")
    transport = MaildirTransport(folder / "sent")

    async def run() -> Report:
        await transport.open()
        templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
        _, report = await dunning.send_pass(store, read_ledger(settings.ledger).open_invoices, transport, 1,
                                            clock_from(datetime.fromisoformat(NOW)), settings, templates)
        return report

    try:
        return asyncio.run(run())
    finally:
        store.close()


def delivered(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Each message by Message-ID: its headers but the MIME boundary (random), and its decoded parts."""
    found = {}
    for path in (folder / "sent" / "new").iterdir():
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        headers = tuple((k, str(v)) for k, v in message.items() if k not in ("Content-Type", "Return-Path"))
        parts = tuple((part.get_content_type(), part.get_content()) for part in message.walk()
                      if not part.is_multipart())
        found[str(message["Message-ID"])] = (headers, parts)
    return found


def spawned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    entries: list[str] = []
    spawn = children.spawn

    async def counting(entry: str) -> asyncio.subprocess.Process:
        entries.append(entry)
        return await spawn(entry)

    monkeypatch.setattr(children, "spawn", counting)
    return entries


def test_the_worker_renders_the_very_messages_rendered_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path, mixed())
    (tmp_path / "here").mkdir()
    (tmp_path / "worker").mkdir()
    entries = spawned(monkeypatch)
    here = send(settings, tmp_path / "here", CUSTOMERS + 1, monkeypatch)
    assert entries == []
    worker = send(settings, tmp_path / "worker", CUSTOMERS, monkeypatch)
    assert entries == ["bot.rendering:worker_main"]
    assert (here.queued, here.sent, here.errors) == (CUSTOMERS, CUSTOMERS, [])
    assert (worker.queued, worker.sent, worker.errors) == (CUSTOMERS, CUSTOMERS, [])
    assert delivered(tmp_path / "worker") == delivered(tmp_path / "here")


def test_template_problems_in_the_worker_come_back_as_they_would_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, mixed())
    (settings.templates_dir / "es" / "second_reminder" / "subject.txt").write_text("{{ no_such_value }}\n")
    (settings.templates_dir / "es" / "firm_reminder" / "body.txt").unlink()  # incomplete: English instead
    caplog.set_level(logging.WARNING, logger="bot")
    report = send(settings, tmp_path, 1, monkeypatch)
    broken = {f"C{i}" for i in range(CUSTOMERS) if i % 6 == 2}  # Spanish, 7 days overdue
    assert broken and {error.split(":")[0].removeprefix("customer ") for error in report.errors} == broken
    assert all("no_such_value" in error for error in report.errors)
    assert (report.queued, report.sent) == (CUSTOMERS - len(broken),) * 2
    fallback = [r for r in caplog.records if r.name == "bot.templates" and "firm_reminder" in r.getMessage()]
    assert fallback and "using 'en' instead" in fallback[0].getMessage()
    assert any(r.name == "bot.outbox" and "not queued for customer" in r.getMessage() for r in caplog.records)


def test_a_worker_that_dies_leaves_the_rest_to_be_rendered_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, mixed(4 * CUSTOMERS))
    receive = children.receive
    answers = 0

    async def killed_after_one(stream: asyncio.StreamReader) -> Any:
        nonlocal answers
        answers += 1
        if answers == 2:
            os.kill(_worker_of(os.getpid(), deadline=time.monotonic() + 5), signal.SIGKILL)
        return await receive(stream)

    monkeypatch.setattr(children, "receive", killed_after_one)
    caplog.set_level(logging.WARNING, logger="bot")
    report = send(settings, tmp_path, 1, monkeypatch)
    assert answers >= 2
    assert any("rendering worker stopped" in r.getMessage() for r in caplog.records)
    assert (report.queued, report.sent, report.errors) == (4 * CUSTOMERS, 4 * CUSTOMERS, [])
    assert len(delivered(tmp_path)) == 4 * CUSTOMERS == len(list((tmp_path / "sent" / "new").iterdir()))


def test_the_worker_dies_with_the_sender(tmp_path: Path) -> None:
    config = write_config(tmp_path, write_ledger(tmp_path / "ledger.csv", mixed(rendering.WORKER_FROM + 500)))
    sender = subprocess.Popen([sys.executable, "-m", "bot", "send", "--config", str(config), "--now", NOW],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = _worker_of(sender.pid, deadline=time.monotonic() + 60)
        sender.send_signal(signal.SIGKILL)
        sender.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{worker}").exists() and _state(worker) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{worker}").exists() or _state(worker) == "Z", "the worker outlived its sender"
    finally:
        if sender.poll() is None:
            sender.kill()


def _worker_of(pid: int, deadline: float) -> int:
    """The rendering worker among the children of `pid` (the test session has others: Dovecot)."""
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if b"bot.rendering" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
        time.sleep(0.02)
    raise AssertionError("the sender never started its rendering worker")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_worker_that_cannot_start_leaves_the_pass_to_be_rendered_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, mixed())

    async def no_processes(_entry: str) -> asyncio.subprocess.Process:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(children, "spawn", no_processes)
    caplog.set_level(logging.WARNING, logger="bot")
    report = send(settings, tmp_path, 1, monkeypatch)
    assert "cannot start the rendering worker" in caplog.text
    assert (report.queued, report.sent, report.errors) == (CUSTOMERS, CUSTOMERS, [])
