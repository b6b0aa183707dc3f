"""A send pass records and delivers overlapped (each batch delivered while the next is rendered), and keeps
every guarantee of recording everything first: bytes committed before sending, "sending" before the transaction."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sample import NOW, row, write_config, write_ledger

from bot import dunning, outbox
from bot.cli.common import clock_from
from bot.config import Settings, load_settings
from bot.errors import StoreError
from bot.ledger import read_ledger
from bot.schema import reminder_messages, reminders
from bot.store import Store
from bot.templates import Templates
from bot.transports import Accepted, Envelope, MaildirTransport

CUSTOMERS = 4 * outbox.RECORD_BATCH + 37  # more than rendering may run ahead of delivery


class Watching(MaildirTransport):
    """The real Maildir transport; at each message, what the store holds for it and how far recording got."""

    def __init__(self, path: Path, store: Store) -> None:
        super().__init__(path)
        self.store = store
        self.seen: list[tuple[str, bool, int]] = []  # (status, stored bytes == sent bytes, reminders recorded)

    async def send(self, envelope: Envelope, ready: asyncio.Future[bool] | None = None) -> Accepted | None:
        if ready is not None and not await ready:
            return None
        with self.store.engine.begin() as c:
            status, raw = c.execute(sa.select(reminders.c.status, reminder_messages.c.raw)
                                    .join(reminder_messages, reminder_messages.c.reminder_id == reminders.c.id)
                                    .where(reminders.c.message_id == envelope.message_id)).one()
            recorded = c.execute(sa.select(sa.func.count()).select_from(reminders)).scalar_one()
        self.seen.append((status, raw == envelope.message, recorded))
        return await super().send(envelope)


def setup(tmp_path: Path) -> tuple[Settings, Store, Watching]:
    ledger = write_ledger(tmp_path / "ledger.csv",
                          [row(f"INV-{i}", f"C{i}", f"ap{i}@customers.test") for i in range(CUSTOMERS)])
    settings = load_settings(write_config(tmp_path, ledger))
    store = Store.open(settings.store_url)
    return settings, store, Watching(tmp_path / "sent", store)


def send_pass(settings: Settings, store: Store, transport: Watching) -> outbox.Report:
    async def run() -> outbox.Report:
        await transport.open()
        templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
        _, report = await dunning.send_pass(store, read_ledger(settings.ledger).open_invoices, transport, 1,
                                            clock_from(datetime.fromisoformat(NOW)), settings, templates)
        return report

    return asyncio.run(run())


def test_each_batch_goes_out_while_the_next_is_rendered(tmp_path: Path) -> None:
    settings, store, transport = setup(tmp_path)
    report = send_pass(settings, store, transport)
    assert (report.queued, report.sent, report.errors, report.aborted) == (CUSTOMERS, CUSTOMERS, [], None)
    assert [(status, same) for status, same, _ in transport.seen] == [("sending", True)] * CUSTOMERS
    recorded = [count for _, _, count in transport.seen]
    assert recorded[0] < CUSTOMERS, "the first message waited for every reminder to be recorded"
    # Rendering keeps pace with delivery: never more than a few batches recorded and not yet sent.
    assert max(count - sent for sent, count in enumerate(recorded)) <= 3 * outbox.RECORD_BATCH
    assert store.counts() == {"sent": CUSTOMERS} and len(list(transport.path.joinpath("new").iterdir())) == CUSTOMERS
    assert send_pass(settings, store, transport).queued == 0 and len(transport.seen) == CUSTOMERS


def test_reminders_left_from_an_earlier_pass_go_first(tmp_path: Path) -> None:
    settings, store, transport = setup(tmp_path)
    report = outbox.Report()
    plan = dunning.prepare(store, read_ledger(settings.ledger).open_invoices, datetime.fromisoformat(NOW), settings,
                           report)
    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    outbox.enqueue(plan, store, templates, settings, report)  # recorded, then the process died
    (first, *_) = store.due(datetime.fromisoformat(NOW))
    store.mark(sending=[first.id])
    report = send_pass(settings, store, transport)
    assert report.interrupted == [first.message_id] and (report.queued, report.sent) == (0, CUSTOMERS)
    assert [status for status, _, _ in transport.seen] == ["sending"] * CUSTOMERS


def test_a_store_that_fills_up_stops_the_pass(tmp_path: Path) -> None:
    settings, store, transport = setup(tmp_path)
    with store.engine.begin() as c:
        pages = int(c.execute(sa.text("PRAGMA page_count")).scalar_one())

    def cap(dbapi_connection: Any, _record: Any) -> None:  # room for about one batch of ~8 KB messages
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2 * outbox.RECORD_BATCH + 100}")

    sa.event.listen(store.engine, "connect", cap)
    store.engine.dispose()
    with pytest.raises(StoreError, match="full"):
        send_pass(settings, store, transport)
    assert len(transport.seen) <= outbox.RECORD_BATCH
    assert [(status, same) for status, same, _ in transport.seen] == [("sending", True)] * len(transport.seen)
    # The first batch is recorded, the second is not; the rest of the first waits for the next pass.
    counts = store.counts()
    assert counts["sent"] == len(transport.seen) and counts["sent"] + counts.get("queued", 0) == outbox.RECORD_BATCH


def test_templates_edited_between_passes_are_used_by_the_next(tmp_path: Path) -> None:
    """The daemon keeps one Templates for every pass: each pass (enqueue, as the daemon runs it) looks again."""
    settings, store, _ = setup(tmp_path)
    templates_dir = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates_dir)
    settings = replace(settings, templates_dir=templates_dir)
    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    invoices = read_ledger(settings.ledger).open_invoices
    now = datetime.fromisoformat(NOW)

    def one_pass(invoice_id: str) -> str:
        plan = dunning.plan_from_store(store, [i for i in invoices if i.invoice_id == invoice_id], now, settings)
        outbox.enqueue(plan, store, templates, settings, outbox.Report())
        (reminder,) = plan.reminders
        return next(r["subject"] for r in store.reminders_for() if r["customer_id"] == reminder.customer.customer_id)

    assert one_pass("INV-0").startswith("Second reminder: invoice INV-0, 7 days overdue")
    subject = templates_dir / "en" / "second_reminder" / "subject.txt"
    subject.write_text("Edited: {{ invoices[0].id }}\n")
    later = subject.stat().st_mtime_ns + 5_000_000_000
    os.utime(subject, ns=(later, later))
    assert one_pass("INV-1") == "Edited: INV-1"
