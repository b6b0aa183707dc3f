"""Planned reminders turned into outbox entries: the exact bytes to record, then send.

Rendering (Jinja2, Babel, the email package) costs ~0.45 ms of CPU a reminder, as much as the SMTP
exchange it feeds. Done in the process that talks SMTP, it takes turns with the connections on one core, and
every turn it takes is a wait for ten of them. So a pass of at least WORKER_FROM reminders renders in a worker
process (bot/children.py) while this one records and delivers; a smaller pass
renders here, where the worker's start (~0.4 s) would cost more than it saves.

Nothing else moves: the worker gets reminders and gives back messages, it never sees the store or a server,
so recording before sending and the marks around each transaction stay where they were. A template error
skips only its customer, and says so; the worker's log records (a missing language, say) are replayed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot import children
from bot.config import Settings
from bot.errors import TemplateError
from bot.messages import compose, recipients
from bot.store import Queued

if TYPE_CHECKING:  # the daemon only delivers: planning and rendering run in its child process (bot/offload.py)
    from types import TracebackType

    from bot.policy import Reminder
    from bot.templates import Templates

log = logging.getLogger(__name__)
WORKER_FROM = 1000
# Reminders rendered here before the connections get a turn: a turn per message cost ~0.14 ms of CPU
# each (1.4 s of a 10,000-reminder pass); a few milliseconds' wait costs them little.
STRETCH = 10


def render(reminder: Reminder, templates: Templates, settings: Settings, now: datetime) -> Queued:
    rendered = templates.render(reminder, settings.company)
    return Queued(
        message_id=reminder.message_id,
        customer_id=reminder.customer.customer_id,
        contact=reminder.to,
        track=reminder.track,
        stage=reminder.stage.name,
        language=reminder.language,
        sender=settings.company.email,
        recipients=recipients(reminder),
        subject=rendered.subject,
        raw=compose(reminder, rendered, settings.company, now),
        balances=tuple((line.invoice.invoice_id, str(line.invoice.balance)) for line in reminder.lines),
    )


@dataclass(slots=True)
class Batch:
    """A batch rendered: the messages, and the customers skipped with the template error that skipped them."""

    queued: list[Queued]
    skipped: list[tuple[str, str]]
    records: list[dict[str, Any]]  # the worker's log records, to replay here


def render_batch(reminders: Sequence[Reminder], templates: Templates, settings: Settings, now: datetime) -> Batch:
    batch = Batch([], [], [])
    for reminder in reminders:
        try:
            batch.queued.append(render(reminder, templates, settings, now))
        except TemplateError as exc:
            batch.skipped.append((reminder.customer.customer_id, str(exc)))
    return batch


class Renderer:
    """Renders a pass's reminders batch by batch, in a worker process or here (see the module's docstring).

    `submit` returns at once either way; the worker renders the batches in the order submitted while the
    caller awaits the earlier ones, and the caller decides how far ahead it lets it run. A worker that fails
    (killed, say) leaves its batches, and the rest of the pass, to be rendered here.
    """

    def __init__(self, templates: Templates, settings: Settings, now: datetime, *, worker: bool) -> None:
        self.templates, self.settings, self.now = templates, settings, now
        self.worker = worker
        self._child: asyncio.subprocess.Process | None = None
        self._waiting: deque[tuple[asyncio.Future[Batch], Sequence[Reminder]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._submitted: set[asyncio.Future[Batch]] = set()  # until done: a batch holds ~1 MB of messages

    @classmethod
    def for_pass(cls, reminders: int, templates: Templates, settings: Settings, now: datetime) -> Renderer:
        return cls(templates, settings, now, worker=reminders >= WORKER_FROM)

    def submit(self, reminders: Sequence[Reminder], *, here: bool = False) -> asyncio.Future[Batch]:
        """`here`: render in this process even with a worker (a pass's first batch, while the worker starts)."""
        if here or self._child is None or self._child.stdin is None:
            future: asyncio.Future[Batch] = asyncio.ensure_future(self._here(reminders))
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((future, reminders))
            self._child.stdin.write(children.frame((self.now, list(reminders))))  # a few batches ahead, buffered
        self._submitted.add(future)
        future.add_done_callback(self._submitted.discard)
        return future

    async def _here(self, reminders: Sequence[Reminder]) -> Batch:
        batch = Batch([], [], [])
        for i in range(0, len(reminders), STRETCH):
            part = render_batch(reminders[i:i + STRETCH], self.templates, self.settings, self.now)
            batch.queued += part.queued
            batch.skipped += part.skipped
            await asyncio.sleep(0)  # the connections' replies come in between
        return batch

    async def _read(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        try:
            while True:
                batch = await children.receive(child.stdout)
                future, _ = self._waiting.popleft()
                if not future.done():
                    future.set_result(batch)
        except (asyncio.IncompleteReadError, EOFError):
            self._child = None
            code = await child.wait()
            if not self._closing:
                log.warning("the rendering worker stopped (exit %s): rendering the rest of this pass here", code)
        while self._waiting:
            future, reminders = self._waiting.popleft()
            if not future.done():
                _chain(asyncio.ensure_future(self._here(reminders)), future)

    async def __aenter__(self) -> Renderer:
        self.templates.refresh()  # an edit takes effect at the next pass, and a whole pass uses one version
        if self.worker:
            try:
                child = self._child = await children.spawn("bot.rendering:worker_main")
            except OSError as exc:
                log.warning("cannot start the rendering worker (%s): rendering this pass here", exc)
                return self
            assert child.stdin is not None
            t = self.templates
            child.stdin.write(children.frame((t.root, t.languages, t.default_language, self.settings,
                                              logging.getLogger("bot").getEffectiveLevel())))
            self._reader = asyncio.create_task(self._read(child))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for future in list(self._submitted):  # left when recording stopped: not needed any more
            future.cancel()
        self._closing = True
        child, self._child = self._child, None
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()  # the worker ends at the end of its input
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.wait()), 1.0)
            await children.stop(child, 1.0)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _chain(source: asyncio.Future[Batch], target: asyncio.Future[Batch]) -> None:
    def copy(done: asyncio.Future[Batch]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif done.exception() is not None:
            target.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


def replay(batch: Batch) -> None:
    """The worker's log records, handled here as if logged here."""
    for doc in batch.records:
        record = logging.makeLogRecord(doc)
        logging.getLogger(record.name).handle(record)


# ---- the worker process ---------------------------------------------------------------------------

class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(children.portable(record))


def worker_main() -> None:
    """The worker: the templates' folder, languages and settings, then batches of reminders until its input ends."""
    from bot.templates import Templates

    stdin, out = children.become_child()
    root, languages, default, settings, level = children.read(stdin)
    collect = _Collect()
    logging.getLogger().handlers[:] = [collect]
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("bot").setLevel(level)
    templates = Templates(root, languages, default)
    while True:
        try:
            now, reminders = children.read(stdin)
        except EOFError:
            return
        batch = render_batch(reminders, templates, settings, now)
        batch.records, collect.records = collect.records, []
        children.write(out, batch)
