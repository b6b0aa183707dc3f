"""The daemon against a failing SMTP server (the scripted aiosmtpd): down at start, down mid-pass, 4xx, 550 on
some recipients, TLS failure. The daemon keeps running throughout, degrades, retries with backoff, records
permanent failures against the right contacts and catches up when the server is back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sample import row
from scripted_smtp import HOST, STARTUP_TIMEOUT, Script, ScriptedSMTP
from test_daemon import daemon_config, free_port, ledger_rows, run, running, store_of, until

Start = Callable[..., ScriptedSMTP]


def smtp(port: int, *extra: str) -> str:
    return "\n".join((f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"\nbackoff_initial = 0.2',
                      "backoff_max = 1", "max_attempts = 20", *extra))


def start_on(port: int, script: Script | None = None) -> ScriptedSMTP:
    """A scripted server on a given port: a server that comes back comes back where it was."""
    server = ScriptedSMTP(script or Script())
    server._thread.start()
    create = server._loop.create_server(server._protocol, HOST, port, reuse_address=True)
    server._server = asyncio.run_coroutine_threadsafe(create, server._loop).result(STARTUP_TIMEOUT)
    server.port = port
    return server


def message_ids(*servers: ScriptedSMTP) -> Counter[bytes]:
    return Counter(m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for s in servers for m in s.messages)


def test_down_at_start_then_down_mid_pass_then_back_catches_up(tmp_path: Path) -> None:
    port = free_port()
    config = daemon_config(tmp_path, ledger_rows(30), smtp=smtp(port, "connections = 1", "rate_per_minute = 300"))
    servers: list[ScriptedSMTP] = []

    async def scenario() -> None:
        async with running(config) as daemon:
            store = store_of(config)
            await until(lambda: "keeps failing" in (daemon.problems.get("delivery") or ""), 20, "the pass to degrade")
            assert store.counts() == {"queued": 30}
            servers.append(await asyncio.to_thread(start_on, port))
            await until(lambda: len(servers[0].messages) >= 8, 20, "the retry worker to send")
            await asyncio.to_thread(servers[0].stop)  # the server dies mid-pass
            await until(lambda: "delivery" in daemon.problems, 20, "the failure to show")
            assert daemon.state == "running" and 0 < store.counts().get("sent", 0) < 30
            servers.append(await asyncio.to_thread(start_on, port))
            await until(lambda: store.counts().get("sent", 0) == 30, 40, "the catch-up")
            await until(lambda: "delivery" not in daemon.problems, 10, "the problem to clear")
            assert daemon.state == "running"
            text = daemon.metrics.render().decode()
            assert 'dunbot_delivery_failures_total{kind="temporary"}' in text
            assert "dunbot_reminders_sent_total 30.0" in text

    try:
        run(scenario(), timeout=120)
    finally:
        for server in servers:
            server.stop()
    ids = message_ids(*servers)
    assert len(ids) == 30
    assert sum(n - 1 for n in ids.values()) <= 1  # at most the one transaction cut when the server died


def test_4xx_retried_and_550_recorded_against_the_right_contacts(tmp_path: Path, scripted_smtp: Start) -> None:
    server = scripted_smtp(data_replies=["451 4.3.0 try later", "421 4.7.0 slow down"],
                           refuse={"ap2@customers.test": "550 5.1.1 no such user",
                                   "boss4@customers.test": "550 5.1.1 gone"})
    rows = [*ledger_rows(4, days_overdue=14), row("INV-4", "C4", "ap4@customers.test", days_overdue=14,
                                                  cc="boss4@customers.test")]
    config = daemon_config(tmp_path, rows, smtp=smtp(server.port, "connections = 1"))

    async def scenario() -> None:
        async with running(config) as daemon:
            store = store_of(config)
            await until(lambda: store.counts().get("sent", 0) == 4, 30, "the four good reminders")
            assert store.counts() == {"sent": 4, "failed": 1}
            assert {r["customer_id"]: r["status"] for r in store.reminders_for()}["C2"] == "failed"
            assert store.invalid_contacts() == frozenset({"ap2@customers.test", "boss4@customers.test"})
            await until(lambda: 'kind="permanent"} 1.0' in daemon.metrics.render().decode(), 5, "the metric")
            text = daemon.metrics.render().decode()
            assert 'dunbot_delivery_failures_total{kind="temporary"} 2.0' in text
            assert daemon.state == "running"

    run(scenario())
    (to_c4,) = [m for m in server.messages if "ap4@customers.test" in m.recipients]
    assert to_c4.recipients == ("ap4@customers.test",)


def test_tls_failure_is_reported_and_sending_resumes_after_a_fixed_config_is_reloaded(
        tmp_path: Path, scripted_smtp: Start, untrusted_cert: tuple[Path, Path]) -> None:
    server = scripted_smtp(starttls=True)
    config = daemon_config(tmp_path, ledger_rows(3), smtp=smtp(server.port).replace('"none"', '"starttls"'))

    async def scenario(daemon_box: list[Any]) -> None:
        async with running(config) as daemon:
            daemon_box.append(daemon)
            await until(lambda: "certificate" in (daemon.problems.get("delivery") or ""), 20, "the TLS failure")
            assert "misconfigured" in daemon.problems["delivery"] and server.messages == []
            await asyncio.sleep(1.2)  # the retry worker keeps trying, and keeps failing, without crashing
            counts = store_of(config).counts()  # "sending" for a moment while the retry worker tries again
            assert daemon.state == "running" and set(counts) <= {"queued", "sending"} and sum(counts.values()) == 3
            config.write_text(config.read_text().replace('security = "starttls"',
                                                         f'security = "starttls"\nca_file = "{untrusted_cert[0]}"'))
            assert await daemon.reload()
            await until(lambda: store_of(config).counts().get("sent", 0) == 3, 20, "the catch-up after the fix")
            await until(lambda: "delivery" not in daemon.problems, 10, "the problem to clear")

    run(scenario([]))
    assert len(server.messages) == 3
