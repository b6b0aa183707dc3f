"""Exactly-once delivery: record a reminder, then send it, then mark it sent.

A reminder is rendered and committed to the store ("queued") before any byte goes to a server;
it is marked "sending" (committed) just before the SMTP transaction and "sent" once the server
accepts it. A crash anywhere leaves one of three states, each safe on restart:
queued (sent later), sending (sent again, and logged: the server may have accepted it just before
the crash — the one window where a customer can get a duplicate), sent (done).
If the store cannot record a step, sending stops: the bot never sends what it cannot record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.errors import ConfigurationFailure, DeliveryError, PermanentFailure, StoreError, TemporaryFailure
from bot.marks import Marks
from bot.rendering import Batch, Renderer, render_batch, replay
from bot.store import Outgoing, Store
from bot.transports import Envelope, Transport

if TYPE_CHECKING:  # the daemon only delivers: planning and rendering run in its child process (bot/offload.py)
    from bot.policy import Plan
    from bot.templates import Templates

log = logging.getLogger(__name__)
BATCH = 500
# While delivery runs: reminders recorded per transaction, and at most that many more waiting for a
# connection, so rendering keeps pace with delivery instead of holding every message in memory.
RECORD_BATCH = 100
# Batches a pass has being rendered at a time: with a worker, it renders the next while this one is recorded.
RENDER_AHEAD = 2


@dataclass(frozen=True, slots=True)
class Retry:
    """How long to wait after each temporary failure, and when to give up."""

    max_attempts: int = 8
    initial: float = 60.0
    maximum: float = 3600.0

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.initial * 2 ** max(attempts - 1, 0), self.maximum))

    @classmethod
    def from_settings(cls, settings: Settings) -> Retry:
        smtp = settings.transport.smtp
        if smtp is None:
            return cls()
        return cls(smtp.max_attempts, smtp.backoff_initial, smtp.backoff_max)


@dataclass(slots=True)
class Report:
    """What a pass did, for the command line and the logs."""

    queued: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    cancelled: int = 0
    escalated: int = 0
    refused: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    aborted: str | None = None


def enqueue(plan: Plan, store: Store, templates: Templates, settings: Settings, report: Report) -> None:
    """Render and record every planned reminder and escalation; a template error skips only its customer."""
    templates.refresh()
    for i in range(0, len(plan.reminders), BATCH):
        batch = render_batch(plan.reminders[i:i + BATCH], templates, settings, plan.now)
        _skipped(batch, report)
        report.queued += len(store.enqueue(batch.queued, plan.now))
    escalate(plan, store, report)


def _skipped(batch: Batch, report: Report) -> None:
    for customer_id, error in batch.skipped:
        report.errors.append(f"customer {customer_id}: {error}")
        log.error("not queued for customer %s: %s", customer_id, error)


async def send_plan(plan: Plan, store: Store, templates: Templates, settings: Settings, transport: Transport,
                    clock: Callable[[], datetime], report: Report, *, workers: int = 1,
                    retry_for: float = 0.0) -> Report:
    """enqueue then deliver, overlapped: each batch is delivered as soon as it is recorded, while the next
    is rendered (in a worker process, for a large pass: bot/rendering.py), so the first message leaves after
    one batch is rendered, not all of them, and rendering does not take turns with the connections.

    Nothing else changes: a reminder is committed with its exact bytes before it is offered to a
    connection, and marked around its SMTP transaction as in `deliver`. If delivery stops (the server
    keeps failing), the rest is still recorded, to be sent at a retry or the next pass, as before.
    """

    async def record(feed: _Feed) -> None:
        async def put(batch: Batch) -> None:
            replay(batch)
            _skipped(batch, report)
            try:
                recorded = await asyncio.to_thread(store.enqueue, batch.queued, plan.now)
            except StoreError as exc:
                _abort(report, f"the store cannot record reminders, so nothing more is sent: {exc}")
                raise
            report.queued += len(recorded)
            await feed.put(recorded)

        async with Renderer.for_pass(len(plan.reminders), templates, settings, plan.now) as renderer:
            chunks = [plan.reminders[i:i + RECORD_BATCH] for i in range(0, len(plan.reminders), RECORD_BATCH)]
            # The first batch is rendered here while the worker starts (~0.4 s): the first message leaves as
            # early as it would without a worker.
            rendering = deque(renderer.submit(chunk, here=i == 0) for i, chunk in enumerate(chunks[:RENDER_AHEAD]))
            escalate(plan, store, report)
            await feed.put(store.due(clock()))  # left by an earlier pass, or caught mid-send by a crash
            for chunk in chunks[RENDER_AHEAD:]:
                await put(await rendering.popleft())
                rendering.append(renderer.submit(chunk))
            while rendering:
                await put(await rendering.popleft())

    return await deliver(store, transport, clock, Retry.from_settings(settings), report, workers=workers,
                         retry_for=retry_for, first=record)


def escalate(plan: Plan, store: Store, report: Report) -> None:
    """Record the plan's escalations: each customer's case goes to a person, once."""
    for esc in plan.escalations:
        if store.escalate(esc.customer.customer_id, esc.reason, f"{esc.days_overdue} days overdue",
                          esc.invoice_ids, esc.recommendation, plan.now):
            report.escalated += 1
            log.warning("escalated customer %s: %s days overdue; %s", esc.customer.customer_id,
                        esc.days_overdue, esc.recommendation)


def recover(store: Store, report: Report) -> None:
    for rid, message_id, customer_id in store.recover_interrupted():
        report.interrupted.append(message_id)
        log.warning("reminder %d %s to customer %s was being sent when Dunbot stopped; sending it again. If the "
                    "server had accepted it just before, the customer gets it twice", rid, message_id, customer_id)


class _Breaker:
    """Stops a pass when the server keeps failing, instead of burning every reminder's attempts."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failures = limit, 0

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> bool:
        self.failures += 1
        return self.failures >= self.limit


async def deliver(store: Store, transport: Transport, clock: Callable[[], datetime], retry: Retry, report: Report,
                  *, workers: int = 1, stop: asyncio.Event | None = None, retry_for: float = 0.0,
                  only: frozenset[str] | None = None,
                  first: Callable[[_Feed], Awaitable[None]] | None = None) -> Report:
    """Send every due reminder; with `retry_for` > 0, keep retrying temporary failures for that many seconds.

    `only` limits the pass to those Message-IDs (a hand-written reply sent at once): such a pass leaves
    everything else alone, including reminders another process is sending, so it recovers nothing.
    `first` feeds the first round instead of the reminders due (send_plan: those due, then those it records).
    """
    if only is None:
        recover(store, report)
    deadline = clock() + timedelta(seconds=retry_for)
    breaker = _Breaker(workers + 2)
    stop = stop or asyncio.Event()

    async def due(feed: _Feed) -> None:
        await feed.put(store.due(clock(), only=only))

    fill = first or due
    while True:
        await _send_all(fill, store, transport, clock, retry, report, workers, breaker, stop)
        fill = due
        if report.aborted or stop.is_set():
            break
        next_at = store.next_retry() if only is None else None
        if next_at is None or next_at > deadline:
            break
        await _sleep_until(next_at, clock, stop)
    report.retrying = store.counts().get("queued", 0)
    return report


async def _sleep_until(when: datetime, clock: Callable[[], datetime], stop: asyncio.Event) -> None:
    seconds = max((when - clock()).total_seconds(), 0.01)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class _Feed:
    """Recorded reminders on their way to the connections.

    `put` waits while `ahead` reminders are waiting already (backpressure on the recorder), and returns at
    once when the connections have stopped: what it carried is recorded, and goes at the next round.
    `get` returns at once while reminders are waiting: no turn of the event loop per message.
    """

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        self.items: deque[Outgoing] = deque()
        self.finished = False  # nothing more will be put
        self.closed = False    # nothing more will be taken
        self._ready = asyncio.Event()  # reminders waiting, or finished
        self._room = asyncio.Event()   # fewer than `ahead` waiting, or closed
        self._room.set()

    async def put(self, items: list[Outgoing]) -> None:
        while not self.closed and len(self.items) >= self.ahead:
            self._room.clear()
            await self._room.wait()
        if not self.closed and items:
            self.items.extend(items)
            self._ready.set()

    async def get(self) -> Outgoing | None:
        """The next reminder, or None once the feed is finished and empty."""
        while not self.items and not self.finished:
            self._ready.clear()
            await self._ready.wait()
        if not self.items:
            return None
        item = self.items.popleft()
        if len(self.items) < self.ahead:
            self._room.set()
        return item

    def finish(self) -> None:
        self.finished = True
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self.items.clear()
        self._room.set()


async def _send_all(fill: Callable[[_Feed], Awaitable[None]], store: Store, transport: Transport,
                    clock: Callable[[], datetime], retry: Retry, report: Report, workers: int, breaker: _Breaker,
                    stop: asyncio.Event) -> None:
    feed = _Feed(RECORD_BATCH)
    marks = Marks(store, lambda exc: _abort(report, f"the store cannot record sends, so nothing more is sent: {exc}"))

    async def feeding() -> None:
        try:
            await fill(feed)
        finally:
            feed.finish()

    async def worker() -> None:
        while not report.aborted and not stop.is_set():
            item = await feed.get()
            if item is None or report.aborted or stop.is_set():
                return
            await _send_one(item, store, marks, transport, clock, retry, report, breaker)

    filling = asyncio.create_task(feeding())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    finally:
        feed.close()
        await marks.close()
        await filling  # a recorder's failure (the store) ends the pass once what was recorded has gone


async def _send_one(item: Outgoing, store: Store, marks: Marks, transport: Transport,
                    clock: Callable[[], datetime], retry: Retry, report: Report, breaker: _Breaker) -> None:
    """The claim's commit runs while the transaction goes out (MAIL, RCPT, DATA and the message); the
    transport waits for it before the "." that ends DATA, after which the server may accept the message:
    "sending" is still committed first, and the previous message's "sent" with it or before, so a connection
    never has more than one message accepted and not recorded."""
    claim = marks.claim(item.id)
    envelope = Envelope(item.sender, item.recipients, item.raw, item.message_id)
    try:
        accepted = await transport.send(envelope, ready=claim)
    except StoreError as exc:  # the claim, raised at the transport's wait for it
        _abort(report, f"the store cannot record sends, so nothing more is sent: {exc}")
        return
    except (TemporaryFailure, PermanentFailure, ConfigurationFailure) as exc:
        if await _ours(claim, item, report):
            _failed(exc, item, store, clock, retry, report, breaker)
        return
    except BaseException:
        claim.cancel()
        raise
    if accepted is None:
        log.info("reminder %s is being sent by another process; left to it", item.message_id)
        return
    breaker.success()
    report.sent += 1
    log.info("sent reminder %s to customer %s (invoices %s)", item.message_id, item.customer_id,
             ", ".join(item.invoice_ids))

    marks.mark_sent(item.id, clock(), accepted.server_reply)

    def invalid() -> None:
        for address, reply in accepted.refused.items():
            report.refused.append(address)
            store.mark_contact_invalid(address, f"refused by the server: {reply}", clock())
    if accepted.refused:
        _record(report, invalid)


async def _ours(claim: asyncio.Future[bool], item: Outgoing, report: Report) -> bool:
    """Whether this process claimed the reminder; a failure is recorded only then, and after the claim."""
    try:
        if await claim:
            return True
    except StoreError as exc:
        _abort(report, f"the store cannot record sends, so nothing more is sent: {exc}")
        return False
    log.info("reminder %s is being sent by another process; left to it", item.message_id)
    return False


def _failed(exc: DeliveryError, item: Outgoing, store: Store, clock: Callable[[], datetime], retry: Retry,
            report: Report, breaker: _Breaker) -> None:
    error = str(exc)
    if isinstance(exc, TemporaryFailure):
        _record(report, lambda: _retry_or_give_up(store, item, item.attempts + 1, retry, clock(), error, report))
        if breaker.failure():
            _abort(report, f"the mail server keeps failing ({error}); the rest waits for the next pass")
    elif isinstance(exc, PermanentFailure):
        refused = exc.recipients or item.recipients
        _record(report, lambda: _refused(store, item, refused, error, clock(), report))
    else:
        _abort(report, f"sending is misconfigured, nothing more is sent until it is fixed: {error}")
        _record(report, lambda: store.mark_retry(item.id, clock(), error))


def _refused(store: Store, item: Outgoing, refused: tuple[str, ...], error: str, now: datetime,
             report: Report) -> None:
    report.failed += 1
    report.refused.extend(refused)
    log.error("reminder %s to customer %s refused for good: %s", item.message_id, item.customer_id, error)
    store.mark_failed(item.id, error)
    for address in refused:
        store.mark_contact_invalid(address, f"refused by the server: {error}", now)


def _abort(report: Report, reason: str) -> None:
    if not report.aborted:
        report.aborted = reason
        log.error("%s", reason)


def _retry_or_give_up(store: Store, item: Outgoing, attempts: int, retry: Retry, now: datetime, error: str,
                      report: Report) -> None:
    if attempts >= retry.max_attempts:
        store.mark_failed(item.id, f"gave up after {attempts} attempts: {error}")
        report.failed += 1
        log.error("gave up on reminder %s to customer %s after %d attempts: %s", item.message_id,
                  item.customer_id, attempts, error)
    else:
        at = now + retry.delay(attempts)
        store.mark_retry(item.id, at, error)
        log.warning("reminder %s to customer %s will be retried at %s: %s", item.message_id, item.customer_id,
                    at.isoformat(timespec="seconds"), error)


def _record(report: Report, action: Callable[[], None]) -> None:
    try:
        action()
    except StoreError as exc:
        _abort(report, f"the store cannot record sends, so nothing more is sent: {exc}")
