"""The outbox's marks: "sending" and "sent" committed as a group, by a thread of their own.

Exactly once needs a commit between a message's acceptance and its connection's next, and one before each
message can be accepted; ten connections making those one at a time would queue on the store. Here they share.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime

from bot.errors import StoreError
from bot.store import Store


class Marks:
    """Group commit of the marks around each SMTP transaction, by a thread of its own.

    A reminder's "sending" is still committed before the server can accept it, and its "sent" before its
    connection's next message can be accepted: the outbox's guarantees hold as they are. But one commit runs
    at a time, and every mark made while it runs goes into the next, one transaction for them all. The
    committer is a thread that goes from one commit to the next by itself: a commit per mark on the event
    loop blocked every connection (~1.2 ms each); a committer that came back to the loop between commits
    (asyncio.to_thread) left each claim waiting ~4 ms for its commit to start, more than the commit took.
    """

    def __init__(self, store: Store, store_failed: Callable[[StoreError], None]) -> None:
        self.store, self.store_failed = store, store_failed
        self.loop = asyncio.get_running_loop()
        self.sending: list[tuple[int, asyncio.Future[bool]]] = []
        self.sent: list[tuple[int, datetime, str]] = []
        self.closing = False
        self.failure: BaseException | None = None  # not a StoreError: raised by close()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def claim(self, rid: int) -> asyncio.Future[bool]:
        """True once the reminder is recorded as being sent by us; False if another sender claimed it first.

        A future, not a coroutine: the connection awaits it at the end of DATA, and each layer between the
        commit and that await would cost it a turn of the event loop."""
        future: asyncio.Future[bool] = self.loop.create_future()
        with self._wake:
            self.sending.append((rid, future))
            self._start()
        return future

    def mark_sent(self, rid: int, at: datetime, reply: str) -> None:
        with self._wake:
            self.sent.append((rid, at, reply))
            self._start()

    def _start(self) -> None:
        """With the lock held: wake the committer, or start it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._commit_all, name="dunbot-marks", daemon=True)
            self._thread.start()
        self._wake.notify()

    def _commit_all(self) -> None:
        while True:
            with self._wake:
                while not (self.sending or self.sent or self.closing):
                    self._wake.wait()
                if not (self.sending or self.sent):
                    return
                sending, sent = self.sending, self.sent
                self.sending, self.sent = [], []
            try:
                claimed = self.store.mark([rid for rid, _ in sending], sent)
            except BaseException as exc:
                self.loop.call_soon_threadsafe(self._failed, [future for _, future in sending], exc)
                continue
            self.loop.call_soon_threadsafe(self._claimed, sending, claimed)

    @staticmethod
    def _claimed(sending: list[tuple[int, asyncio.Future[bool]]], claimed: set[int]) -> None:
        for rid, future in sending:
            if not future.done():
                future.set_result(rid in claimed)

    def _failed(self, waiting: list[asyncio.Future[bool]], exc: BaseException) -> None:
        # Nobody waits for ever: the workers get the error (a StoreError stops the pass, anything else ends
        # it once the connections have stopped).
        for future in waiting:
            if future.done():
                continue
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
        if isinstance(exc, StoreError):
            self.store_failed(exc)
        elif self.failure is None:
            self.failure = exc

    async def close(self) -> None:
        """Wait for the last marks (the last "sent" of each worker) to be committed."""
        with self._wake:
            self.closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
            await asyncio.sleep(0)  # the last results, scheduled by the thread, are handed over
        if self.failure is not None:
            raise self.failure
