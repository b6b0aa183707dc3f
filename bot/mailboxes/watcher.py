"""Runs a mailbox in its own thread and hands each new message to the handler on the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime
from typing import Any, TypeVar

from bot.config import InboxSettings
from bot.errors import DunbotError, StoreError
from bot.mailboxes.common import (
    Handler,
    Incoming,
    MailboxError,
    MailboxRefused,
)
from bot.mailboxes.imap import ImapMailbox
from bot.mailboxes.maildir import MaildirMailbox
from bot.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")



def watcher_for(settings: InboxSettings, store: Store, clock: Callable[[], datetime]) -> Watcher:
    """The watcher [inbox] in config.toml describes: the mailbox to open on each (re)connection, its folders."""
    imap, maildir = settings.imap, settings.maildir

    def open_mailbox() -> ImapMailbox | MaildirMailbox:
        if imap is not None:
            return ImapMailbox(imap, settings.folder, settings.max_bytes)
        if maildir is None:
            raise MailboxError("[inbox] names neither an [inbox.imap] table nor a maildir path")
        return MaildirMailbox(maildir, settings.folder, settings.max_bytes)

    return Watcher(open_mailbox, store, settings.folder, clock, human_folder=settings.human_folder,
                   idle_seconds=imap.idle_seconds if imap is not None else 540.0)


# ---- the watcher -----------------------------------------------------------------------------


class Watcher:
    """Runs a mailbox in its own thread and hands each new message to the handler on the event loop.

    Every (re)connection calls `open_mailbox()` for a fresh mailbox. A handler error sets that one message
    aside in `human_folder`; a StoreError from the handler is not about the message, so the pass stops and
    the batch is tried again later. Messages are handled a batch at a time, their replies recorded in one
    store transaction (Store.reply_batch); after its commit each target folder gets one MOVE for the batch
    (a MOVE costs a round trip, more the fuller the folder), made by the mailbox thread while the next batch
    is handled, and the stored position passes the batch once its moves are done. Use poll() or watch(),
    one at a time; close() at the end.
    """

    BATCH = 25  # messages fetched, then moved, at once: bounds memory to BATCH * max_bytes

    def __init__(self, open_mailbox: Callable[[], ImapMailbox | MaildirMailbox], store: Store, folder: str,
                 clock: Callable[[], datetime], *, idle_seconds: float = 540, backoff_initial: float = 1,
                 backoff_max: float = 300, human_folder: str = "Dunbot/Needs human") -> None:
        self.open_mailbox, self.store, self.folder, self.clock = open_mailbox, store, folder, clock
        self.idle_seconds, self.backoff_initial, self.backoff_max = idle_seconds, backoff_initial, backoff_max
        self.human_folder = human_folder
        self.lag = 0.0                        # seconds from the newest handled message's arrival to its handling
        self.handled = 0                      # messages handed over since start
        self.last_error: str | None = None    # the current failure, None while the mailbox works
        self._box: ImapMailbox | MaildirMailbox | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mailbox-{folder}")
        self._cancel = threading.Event()

    def _call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queued for the mailbox thread at once; await it when the result is needed."""
        return asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _mailbox(self) -> ImapMailbox | MaildirMailbox:
        if self._box is None:
            box = self.open_mailbox()
            try:
                await self._call(box.connect)
            except BaseException:
                self._executor.submit(box.close)  # if we were cancelled mid-connect, the thread still connects
                raise
            self._box = box
        return self._box

    async def _drop(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            await self._call(box.close)

    async def close(self) -> None:
        self._cancel.set()
        await self._drop()
        self._executor.shutdown(wait=False)

    async def poll(self, handler: Handler) -> int:
        """One pass: connect if needed, hand over every message after the stored position; returns how many.

        A mailbox failure does not raise: it is logged and kept in `last_error` (None after a clean pass), and
        the next call reconnects. Store errors and bugs do raise.
        """
        before = self.handled
        try:
            await self._pass(handler)
            self.last_error = None
        except MailboxError as exc:
            self.last_error = str(exc)
            log.warning("mailbox %s: %s", self.folder, exc)
        return self.handled - before

    async def _pass(self, handler: Handler) -> None:
        try:
            await self._catch_up(await self._mailbox(), handler)
        except MailboxError:
            await self._drop()
            raise

    async def _catch_up(self, box: ImapMailbox | MaildirMailbox, handler: Handler) -> None:
        uidvalidity = await self._call(box.uidvalidity)
        position = self.store.inbox_position(self.folder)
        last, stored = 0, position
        skip: frozenset[int] = frozenset()
        if position is not None and position[0] == uidvalidity:
            last = position[1]
        elif position is not None:
            log.warning("mailbox %s: UIDVALIDITY changed from %d to %d (folder recreated or server restored): "
                        "resyncing by Message-ID", self.folder, position[0], uidvalidity)
            ids = await self._call(box.message_ids)
            skip = frozenset(uid for uid, mid in ids.items() if mid and self.store.reply_escalated(mid) is not None)
        # A pipeline: while a batch is handled here, the mailbox thread moves the previous batch and fetches the
        # next one. A batch's replies are committed before its moves are queued, and the position passes a
        # batch only once its moves are done, so it trails the handling by up to a batch.
        fetching: asyncio.Future[list[Incoming]] | None = None
        filing: tuple[asyncio.Task[None], int] | None = None  # the previous batch's moves, and its last UID
        try:
            while not self._cancel.is_set():  # until a fetch after the last move comes back empty
                batch = await (fetching or self._call(box.fetch_after, last, self.BATCH))
                fetching = None
                if not batch:
                    if filing is None:
                        break
                    done, filing = filing, None  # a MOVE's reply may announce new mail: fetch again after it
                    stored = await self._filed(done, uidvalidity)
                    continue
                fetching = self._call(box.fetch_after, batch[-1].uid, self.BATCH)
                moves: dict[str, list[int]] = {}  # target folder -> UIDs, moved together once the batch is handled
                handled = self.handled
                with self.store.reply_batch():  # the batch's replies are committed together, before any move
                    for message in batch:
                        if message.uid not in skip:
                            target = await self._handle(message, handler)
                            if target is not None:
                                moves.setdefault(target, []).append(message.uid)
                            handled += 1
                        last = message.uid
                        if self._cancel.is_set():
                            break
                self.handled = handled
                if filing is not None:
                    done, filing = filing, None
                    stored = await self._filed(done, uidvalidity)
                filing = (asyncio.ensure_future(self._move(box, moves)), last)
            if filing is not None:
                done, filing = filing, None
                stored = await self._filed(done, uidvalidity)
        except BaseException:  # a failure, or a cancelled task stopping
            if filing is not None:  # what was recorded still goes where it belongs; the position stays behind
                with suppress(MailboxError):
                    await filing[0]
            raise
        finally:
            if fetching is not None and not fetching.cancel() and not fetching.cancelled():
                fetching.exception()  # done already: its failure, if any, is of no interest now
        if stored != (uidvalidity, last):  # first run, or a resync that found nothing to hand over
            self.store.set_inbox_position(self.folder, uidvalidity, last, self.clock())

    async def _filed(self, filing: tuple[asyncio.Task[None], int], uidvalidity: int) -> tuple[int, int]:
        """Once a batch's moves are done, the position passes it: a crash before this hands the batch over
        again, and the handler knows by Message-ID what it recorded already."""
        moving, last = filing
        await moving
        self.store.set_inbox_position(self.folder, uidvalidity, last, self.clock())
        return uidvalidity, last

    async def _handle(self, message: Incoming, handler: Handler) -> str | None:
        """The folder the handler names for the message (None: leave it); a failing handler's message goes
        to human_folder."""
        try:
            target = await handler(message)
        except StoreError:
            raise
        except Exception:
            log.exception("mailbox %s: the handler failed on message %d; setting it aside in %r",
                          self.folder, message.uid, self.human_folder)
            target = self.human_folder
        if message.arrived is not None:
            with suppress(TypeError):  # a naive clock cannot be compared: no metric, no crash
                self.lag = max(0.0, (self.clock() - message.arrived).total_seconds())
        return target

    async def _move(self, box: ImapMailbox | MaildirMailbox, moves: dict[str, list[int]]) -> None:
        """One move per target folder. A refused move sets its messages aside for a person; if even that is
        refused they stay where they are."""
        for target, uids in moves.items():
            for folder in dict.fromkeys((target, self.human_folder)):
                try:
                    await self._call(box.move, uids, folder)
                    log.debug("mailbox %s: messages %s moved to %r", self.folder, uids, folder)
                    break
                except MailboxRefused as exc:
                    log.error("mailbox %s: %s", self.folder, exc)
            else:
                log.error("mailbox %s: messages %s left in place", self.folder, uids)

    async def watch(self, handler: Handler, stop: asyncio.Event) -> None:
        """Until `stop`: catch up, IDLE (renewed every idle_seconds), catch up on every wake and reconnect.

        Failures are logged and retried with exponential backoff; nothing but cancellation escapes.
        """
        self._cancel.clear()
        relay = asyncio.create_task(self._relay(stop))
        delay, failures = self.backoff_initial, 0
        try:
            while not stop.is_set():
                try:
                    await self._pass(handler)
                    if failures:
                        log.info("mailbox %s: working again after %d failed attempts", self.folder, failures)
                    delay, failures, self.last_error = self.backoff_initial, 0, None
                    box = await self._mailbox()
                    await self._call(box.wait, self.idle_seconds, self._cancel)
                except Exception as exc:
                    failures += 1
                    self.last_error = str(exc) if isinstance(exc, DunbotError) else f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, MailboxError):
                        log.warning("mailbox %s: %s; retrying in %.3g s (attempt %d)", self.folder,
                                    self.last_error, delay, failures)
                    else:
                        log.exception("mailbox %s: unexpected failure; retrying in %.3g s (attempt %d)",
                                      self.folder, delay, failures)
                    await self._drop()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, self.backoff_max)
        finally:
            relay.cancel()
            self._cancel.set()  # frees the thread if we leave by cancellation mid-IDLE
            await self._drop()
            self._cancel.clear()
        log.info("mailbox %s: stopped watching", self.folder)

    async def _relay(self, stop: asyncio.Event) -> None:
        """The thread cannot await an asyncio.Event: mirror it into a threading.Event it checks every half second."""
        await stop.wait()
        self._cancel.set()
