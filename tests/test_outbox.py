"""The outbox under faults, against a scripted SMTP server: retry, give up, refuse, stop, catch up."""

from __future__ import annotations

import asyncio
import email
import logging
import re
import socket
from collections.abc import Callable
from datetime import datetime
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample import NOW, row, write_config, write_ledger
from scripted_smtp import ScriptedSMTP

from bot import dunning, outbox
from bot.cli import main
from bot.config import load_settings
from bot.ledger import read_ledger
from bot.store import Store
from bot.templates import Templates
from bot.transports import make_transport

Start = Callable[..., ScriptedSMTP]


def send(config: Path, *extra: str, now: str = NOW) -> tuple[int, str]:
    """Run `dunbot send`; the output returned includes stderr (errors and the summary)."""
    result = CliRunner().invoke(main, ["send", "--config", str(config), "--now", now, *extra])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def ledger(tmp_path: Path, count: int = 3) -> Path:
    return write_ledger(tmp_path / "ledger.csv",
                        [row(f"INV-{i}", f"C{i}", f"ap{i}@customers.test") for i in range(count)])


def smtp(port: int, *extra: str) -> str:
    return "\n".join((f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"\nbackoff_initial = 0.2',
                      "backoff_max = 1", *extra))


def statuses(tmp_path: Path) -> dict[str, str]:
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    try:
        return {r["customer_id"]: r["status"] for r in store.reminders_for()}
    finally:
        store.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_then_back_catches_up(tmp_path: Path, scripted_smtp: Start,
                                          caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path, ledger(tmp_path, 8), smtp=smtp(closed_port()))
    code, out = send(config)
    assert code == 1 and "sent 0" in out and "keeps failing" in out
    assert "Connect call failed" in caplog.text
    assert set(statuses(tmp_path).values()) == {"queued"}
    server = scripted_smtp()
    write_config(tmp_path, tmp_path / "ledger.csv", smtp=smtp(server.port))
    code, out = send(config, "--retry-for", "5", now="2026-11-24T12:00:00+01:00")
    assert code == 0, out
    assert "queued 0, sent 8" in out
    assert len(server.messages) == 8 and set(statuses(tmp_path).values()) == {"sent"}


def test_4xx_is_retried_with_backoff(tmp_path: Path, scripted_smtp: Start, caplog: pytest.LogCaptureFixture) -> None:
    server = scripted_smtp(data_replies=["451 4.3.0 try later", "421 4.7.0 slow down"])
    config = write_config(tmp_path, ledger(tmp_path), smtp=smtp(server.port))
    code, out = send(config, "--retry-for", "5")
    assert code == 0, out
    assert "sent 3" in out and "will be retried" in caplog.text
    assert len(server.messages) == 3
    assert len({m.data for m in server.messages}) == 3


def test_dropped_connection_mid_data_is_retried(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp(drop_in_data=1)
    config = write_config(tmp_path, ledger(tmp_path), smtp=smtp(server.port))
    code, out = send(config, "--retry-for", "5")
    assert code == 0, out
    assert len(server.messages) == 3 and set(statuses(tmp_path).values()) == {"sent"}


def test_temporary_failures_give_up_after_max_attempts(tmp_path: Path, scripted_smtp: Start,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = scripted_smtp(data_replies=["451 4.3.0 later"] * 10)
    config = write_config(tmp_path, ledger(tmp_path, 1), smtp=smtp(server.port, "max_attempts = 3"))
    code, out = send(config, "--retry-for", "10")
    assert code == 1 and "failed 1" in out
    assert "gave up on reminder" in caplog.text and "after 3 attempts" in caplog.text
    assert statuses(tmp_path) == {"C0": "failed"}


def test_5xx_fails_for_good_and_holds_the_customer(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp(refuse={"ap1@customers.test": "550 5.1.1 no such user"})
    config = write_config(tmp_path, ledger(tmp_path), smtp=smtp(server.port))
    code, out = send(config)
    assert code == 1 and "sent 2, failed 1" in out
    assert statuses(tmp_path) == {"C0": "sent", "C1": "failed", "C2": "sent"}
    code, out = send(config, now="2026-12-10T11:00:00+01:00")
    assert "sent 2" in out
    assert statuses(tmp_path)["C1"] == "failed"
    plan = CliRunner().invoke(main, ["plan", "--config", str(config), "--now", "2026-12-10T11:00:00+01:00"])
    assert "contact ap1@customers.test is known invalid" in plan.output


def test_bad_credentials_stop_the_pass_without_leaking_the_password(
        tmp_path: Path, scripted_smtp: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    server = scripted_smtp(credentials=("dunbot", "right-password"))
    monkeypatch.setenv("DUNBOT_TEST_SMTP_PASSWORD", "wrong-s3cret-pw")
    config = write_config(tmp_path, ledger(tmp_path), smtp=smtp(
        server.port, 'username = "dunbot"', 'password_env = "DUNBOT_TEST_SMTP_PASSWORD"'))
    code, out = send(config)
    assert code == 1 and "misconfigured" in out
    assert "wrong-s3cret-pw" not in out
    assert set(statuses(tmp_path).values()) == {"queued"} and server.messages == []


def test_paid_while_waiting_for_retry_is_withdrawn(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp(data_replies=["451 4.3.0 later"] * 3)
    path = ledger(tmp_path)
    slow_retry = smtp(server.port).replace("backoff_initial = 0.2", "backoff_initial = 600")
    config = write_config(tmp_path, path, smtp=slow_retry)
    code, out = send(config)
    assert code == 1 and "sent 0" in out and "keeps failing" not in out
    write_ledger(path, [row("INV-0", "C0", "ap0@customers.test", balance="0"),
                        row("INV-1", "C1", "ap1@customers.test", balance="200.00"),
                        row("INV-2", "C2", "ap2@customers.test")])
    code, out = send(config, now="2026-11-24T12:00:00+01:00")
    assert "withdrawn 2" in out and "queued 1, sent 2" in out
    assert statuses(tmp_path) == {"C1": "sent", "C2": "sent"}
    (to_c1,) = [m.data for m in server.messages if m.recipients == ("ap1@customers.test",)]
    text = email.message_from_bytes(to_c1, policy=policy.default).get_body(("plain",)).get_content()
    assert re.search(r"Still owed:\s+200,00", text)


def test_two_senders_on_one_store_send_each_reminder_once(tmp_path: Path, scripted_smtp: Start,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Each claims while its transaction goes out: the one that loses the claim hangs up before the "." that
    would have delivered the message."""
    server = scripted_smtp()
    settings = load_settings(write_config(tmp_path, ledger(tmp_path, 120), smtp=smtp(server.port, "connections = 4")))
    now = datetime.fromisoformat(NOW)
    first = Store.open(settings.store_url)
    report = outbox.Report()
    plan = dunning.prepare(first, read_ledger(settings.ledger).open_invoices, now, settings, report)
    outbox.enqueue(plan, first, Templates(settings.templates_dir, settings.languages, settings.company.language),
                   settings, report)
    second = Store.open(settings.store_url)
    caplog.set_level(logging.INFO, logger="bot.outbox")

    async def sender(store: Store) -> outbox.Report:
        transport, workers = make_transport(settings)
        await transport.open()
        try:
            return await outbox.deliver(store, transport, lambda: now, outbox.Retry(), outbox.Report(),
                                        workers=workers, only=frozenset(r.message_id for r in plan.reminders))
        finally:
            await transport.close()

    async def both() -> list[outbox.Report]:
        return list(await asyncio.gather(sender(first), sender(second)))

    reports = asyncio.run(both())
    ids = [email.message_from_bytes(m.data)["Message-ID"] for m in server.messages]
    assert sorted(ids) == sorted(r.message_id for r in plan.reminders)
    assert sum(r.sent for r in reports) == 120 and all(r.sent for r in reports)
    assert first.counts() == {"sent": 120}
    lost = caplog.text.count("is being sent by another process; left to it")
    assert lost and server.commands.count("DATA") == 120 + lost and server.connections <= 8 + lost
