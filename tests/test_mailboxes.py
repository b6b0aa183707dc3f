"""The mailbox adapter against the real Dovecot of the test stack (mail delivered through Postfix),
and the Maildir default without any server."""

from __future__ import annotations

import asyncio
import email
import logging
import mailbox
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mailstack import OWN, MailStack

from bot.config import ImapSettings, Secret
from bot.errors import StoreError
from bot.mailboxes import ImapMailbox, Incoming, MailboxError, MaildirMailbox, Watcher
from bot.store import Store

T = TypeVar("T")
TO = f"billing@{OWN}"  # lands in the INBOX of the stack's `dunbot` user
USER = "dunbot"
HANDLED, HUMAN = "Dunbot/Handled", "Dunbot/Needs human"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def now() -> datetime:
    return datetime.now(UTC)


def mail(subject: str, body: str = "We paid invoice 42 yesterday.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ana <ana@customers.test>"
    msg["To"] = TO
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="customers.test")
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def subject(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Subject"])


def message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw)["Message-ID"])


def subjects(stack: MailStack, folder: str = "INBOX") -> list[str]:
    return [str(m["Subject"]) for m in stack.messages(USER, folder)]


def imap(stack: MailStack, **overrides: Any) -> ImapSettings:
    values: dict[str, Any] = {
        "host": stack.host, "port": stack.imap_port, "security": "none", "username": USER,
        "password": Secret(stack.users[USER]), "oauth_token": None, "verify": True, "ca_file": None,
        "timeout": 5.0, "idle_seconds": 540.0, "poll_seconds": 60.0,
    }
    values.update(overrides)
    return ImapSettings(**values)


def watcher(stack: MailStack, store: Store, folder: str = "INBOX", max_bytes: int = 100_000,
            settings: ImapSettings | None = None, **options: Any) -> Watcher:
    box = {k: options.pop(k) for k in ("use_idle", "use_move") if k in options}
    config = settings or imap(stack)
    options = {"backoff_initial": 0.05, "backoff_max": 0.4, **options}
    return Watcher(lambda: ImapMailbox(config, folder, max_bytes, **box), store, folder, now, **options)


def deliver(stack: MailStack, *subjects_: str) -> list[bytes]:
    """Through Postfix into the INBOX of `dunbot`, one at a time so UIDs follow the given order."""
    raws = [mail(s) for s in subjects_]
    before = len(stack.messages(USER))
    for i, raw in enumerate(raws, 1):
        stack.deliver(raw, to=TO)
        stack.wait_for(before + i, user=USER)
    return raws


class Inbox:
    """A handler answering by Subject: 'handled…', 'human…' -> that folder; 'boom…' raises; else None.

    With a store, every message not left alone is recorded as a reply, as the real handler would.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.got: list[Incoming] = []
        self.at: dict[str, float] = {}
        self.store = store

    async def __call__(self, message: Incoming) -> str | None:
        self.got.append(message)
        self.at[subject(message.raw)] = time.monotonic()
        word = subject(message.raw).split()[0]
        if word == "boom":
            raise ValueError("cannot parse this one")
        folder = {"handled": HANDLED, "human": HUMAN}.get(word)
        if folder and self.store is not None:
            self.store.record_reply({
                "message_id": message_id(message.raw), "customer_id": None, "matched_by": None,
                "sender": "ana@customers.test", "subject": subject(message.raw), "sent_at": None,
                "raw": message.raw, "language": "en", "intent": "other", "confidence": 1.0, "escalate": folder == HUMAN,
                "classification": "{}", "action": "",
            }, hold=None, escalation=None, flag=None, invalid_contacts=(), now=now())
        return folder

    @property
    def subjects(self) -> list[str]:
        return [subject(m.raw) for m in self.got]

    async def until(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.got) < count:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(enough(), timeout)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(wait(), timeout)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'dunbot.db'}")


async def polled(w: Watcher, handler: Inbox) -> int:
    try:
        return await w.poll(handler)
    finally:
        await w.close()


# ---- one pass --------------------------------------------------------------------------------


@pytest.mark.mail
def test_poll_hands_over_in_uid_order_moves_and_remembers(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    deliver(stack, "handled 1", "human 2", "none 3", "handled 4")
    inbox = Inbox()

    async def twice() -> tuple[int, int]:
        w = watcher(stack, store)
        try:
            return await w.poll(inbox), await w.poll(inbox)
        finally:
            await w.close()

    assert run(twice()) == (4, 0)  # the second pass hands over nothing again
    assert inbox.subjects == ["handled 1", "human 2", "none 3", "handled 4"]
    uids = [m.uid for m in inbox.got]
    assert uids == sorted(uids)
    assert not any(m.truncated for m in inbox.got)
    assert subjects(stack, HANDLED) == ["handled 1", "handled 4"]
    assert subjects(stack, HUMAN) == ["human 2"]
    assert subjects(stack, "INBOX") == ["none 3"]
    with stack.imap(USER) as client:
        info = client.select_folder("INBOX", readonly=True)
        assert list(client.get_flags(client.search("ALL")).values()) == [()]  # BODY.PEEK: not even \Seen
    assert store.inbox_position("INBOX") == (info[b"UIDVALIDITY"], uids[-1])

    deliver(stack, "handled 5")  # a restart: a new Watcher over the same store
    again = Inbox()
    assert run(polled(watcher(stack, store), again)) == 1
    assert again.subjects == ["handled 5"]
    assert store.inbox_position("INBOX") == (info[b"UIDVALIDITY"], again.got[0].uid)


@pytest.mark.mail
def test_fetch_after_sees_mail_that_arrived_while_the_connection_was_quiet(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    box = ImapMailbox(imap(stack), "INBOX", 100_000)
    box.connect()
    try:
        assert box.fetch_after(0) == []
        [raw] = deliver(stack, "none quiet")  # Dovecot answers the next SEARCH from its old view, then EXISTS
        [got] = box.fetch_after(0)
        assert subject(got.raw) == "none quiet" and not got.truncated
        assert box.fetch_after(got.uid) == []  # `UID n:*` still matches the last message: filtered out
        assert box.message_ids() == {got.uid: message_id(raw)}
    finally:
        box.close()


@pytest.mark.mail
def test_idle_renewal_finds_mail_that_landed_just_before_the_idle(clean_mailstack: MailStack) -> None:
    """Dovecot 2.3 stays silent in IDLE about mail that arrived since the previous command (40 s observed);
    the reply to DONE reports it, so renewing IDLE every poll_seconds bounds the delay."""
    stack = clean_mailstack
    box = ImapMailbox(imap(stack, poll_seconds=1.0), "INBOX", 100_000)
    box.connect()
    try:
        assert box.fetch_after(0) == []
        deliver(stack, "none landed")  # the connection is quiet meanwhile
        started = time.monotonic()
        assert box.wait(10) is True
        assert time.monotonic() - started < 3
        assert [subject(m.raw) for m in box.fetch_after(0)] == ["none landed"]
    finally:
        box.close()


@pytest.mark.mail
def test_handler_failure_sets_the_message_aside_and_continues(
        clean_mailstack: MailStack, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    stack = clean_mailstack
    deliver(stack, "boom 1", "handled 2")
    inbox = Inbox()
    assert run(polled(watcher(stack, store), inbox)) == 2
    assert inbox.subjects == ["boom 1", "handled 2"]
    assert subjects(stack, HUMAN) == ["boom 1"]
    assert subjects(stack, HANDLED) == ["handled 2"]
    assert subjects(stack, "INBOX") == []
    assert f"handler failed on message {inbox.got[0].uid}" in caplog.text
    assert store.inbox_position("INBOX")[1] == inbox.got[1].uid  # type: ignore[index]


@pytest.mark.mail
def test_copy_delete_expunge_fallback_leaves_a_colleagues_deleted_mail_alone(
        clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    with stack.imap(USER) as client:  # a colleague flagged this \Deleted but has not expunged it yet
        client.append("INBOX", mail("none kept"), flags=[b"\\Deleted"])
    deliver(stack, "handled 1", "human 2")
    boxes: list[ImapMailbox] = []

    def open_box() -> ImapMailbox:
        boxes.append(ImapMailbox(imap(stack), "INBOX", 100_000, use_move=False))
        return boxes[-1]

    inbox = Inbox()
    assert run(polled(Watcher(open_box, store, "INBOX", now), inbox)) == 3
    assert not boxes[0].has_move and boxes[0].has_uidplus  # Dovecot offers MOVE: the fallback was forced
    assert subjects(stack, HANDLED) == ["handled 1"]
    assert subjects(stack, HUMAN) == ["human 2"]
    assert subjects(stack, "INBOX") == ["none kept"]  # UID EXPUNGE of our UIDs only, never a bare EXPUNGE


@pytest.mark.mail
def test_a_destination_deleted_while_connected_is_created_again(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    deliver(stack, "handled 1")
    inbox = Inbox()

    async def scenario() -> tuple[int, int]:
        w = watcher(stack, store)
        try:
            first = await w.poll(inbox)
            with stack.imap(USER) as client:  # a person tidies up; our connection still thinks it exists
                client.delete_folder(HANDLED)
            await asyncio.to_thread(deliver, stack, "handled 2")
            return first, await w.poll(inbox)
        finally:
            await w.close()

    assert run(scenario()) == (1, 1)
    assert subjects(stack, HANDLED) == ["handled 2"]  # MOVE said [TRYCREATE]: created again, moved
    assert subjects(stack, "INBOX") == []


@pytest.mark.mail
def test_oversized_message_arrives_as_headers_only(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    big = mail("human big", body=("line of a large attachment " * 3 + "\n") * 400)  # ~33 KB
    stack.deliver(big, to=TO)
    deliver(stack, "handled small")
    inbox = Inbox()
    assert run(polled(watcher(stack, store, max_bytes=10_000), inbox)) == 2
    large, small = inbox.got
    assert large.truncated and large.size > 30_000
    assert large.raw.endswith(b"\r\n\r\n") and b"large attachment" not in large.raw
    assert b"Subject: human big" in large.raw
    assert not small.truncated and small.size == len(small.raw)
    assert subjects(stack, HUMAN) == ["human big"]  # set aside whole, nothing lost


# ---- batches ---------------------------------------------------------------------------------


class CountingBox(ImapMailbox):
    """The real adapter, noting each move it is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moves: list[tuple[list[int], str]] = []

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.moves.append((list(uids), folder))
        super().move(uids, folder)


class CountingStore(Store):
    """The real store, noting each write of the inbox position."""

    positions: list[int]

    def set_inbox_position(self, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
        self.positions.append(last_uid)
        super().set_inbox_position(folder, uidvalidity, last_uid, now)


class Crash(BaseException):
    """The process dies here: nothing after it runs (no handler, no move, no position write)."""


class Recording(Inbox):
    """Like the real handler: a reply recorded before is not acted on again, only filed; `crash_after` dies
    after recording that many replies."""

    def __init__(self, store: Store, crash_after: int | None = None) -> None:
        super().__init__(store)
        self.crash_after, self.repeated = crash_after, 0

    async def __call__(self, message: Incoming) -> str | None:
        assert self.store is not None
        escalated = self.store.reply_escalated(message_id(message.raw))
        if escalated is not None:
            self.got.append(message)
            self.repeated += 1
            return HUMAN if escalated else HANDLED
        folder = await super().__call__(message)
        if self.crash_after is not None and len(self.got) == self.crash_after:
            raise Crash
        return folder


def append(stack: MailStack, *subjects_: str) -> None:
    with stack.imap(USER) as client:
        for s in subjects_:
            client.append("INBOX", mail(s))


@pytest.mark.mail
@pytest.mark.parametrize("use_move", [True, False])
def test_a_batch_is_moved_with_one_command_per_folder_and_remembered_once(
        clean_mailstack: MailStack, tmp_path: Path, use_move: bool) -> None:
    stack = clean_mailstack
    names = ["handled 1", "human 2", "none 3", "handled 4", "boom 5", "handled 6", "human 7"]
    append(stack, *names)
    store = CountingStore.open(f"sqlite:///{tmp_path / 'dunbot.db'}")
    store.positions = []
    boxes: list[CountingBox] = []

    def open_box() -> CountingBox:
        boxes.append(CountingBox(imap(stack), "INBOX", 100_000, use_move=use_move))
        return boxes[-1]

    w = Watcher(open_box, store, "INBOX", now)
    w.BATCH = 4
    inbox = Inbox()
    assert run(polled(w, inbox)) == 7
    assert inbox.subjects == names
    uid = {subject(m.raw): m.uid for m in inbox.got}
    assert boxes[0].moves == [
        ([uid["handled 1"], uid["handled 4"]], HANDLED), ([uid["human 2"]], HUMAN),
        ([uid["boom 5"], uid["human 7"]], HUMAN), ([uid["handled 6"]], HANDLED),
    ]
    assert store.positions == [uid["handled 4"], uid["human 7"]]  # once per batch, after its moves
    assert subjects(stack, HANDLED) == ["handled 1", "handled 4", "handled 6"]
    assert subjects(stack, HUMAN) == ["human 2", "boom 5", "human 7"]
    assert subjects(stack, "INBOX") == ["none 3"]  # UID EXPUNGE (or MOVE) of the batch's UIDs only


@pytest.mark.mail
def test_a_crash_mid_batch_hands_the_batch_over_again_and_nothing_is_recorded_twice(
        clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    names = [f"handled {i}" for i in range(1, 6)] + ["none 6", "human 7", "handled 8"]
    append(stack, *names)

    def watcher_of(box: type[ImapMailbox] = ImapMailbox) -> Watcher:
        w = Watcher(lambda: box(imap(stack), "INBOX", 100_000), store, "INBOX", now)
        w.BATCH = 4
        return w

    # Dies while handling the second batch, after recording "handled 5": the batch's replies are not committed.
    with pytest.raises(Crash):
        run(polled(watcher_of(), Recording(store, crash_after=5)))
    assert subjects(stack, HANDLED) == ["handled 1", "handled 2", "handled 3", "handled 4"]  # the first batch only
    assert sorted(r["subject"] for r in store.replies_for()) == [f"handled {i}" for i in range(1, 5)]
    first_batch = store.inbox_position("INBOX")
    assert first_batch is None  # the position trails a batch: the first batch's was due after the second's handling

    class DiesMoving(ImapMailbox):
        def move(self, uids: Sequence[int], folder: str) -> None:
            raise Crash(f"while moving {list(uids)} to {folder!r}")

    # Dies at the second batch's first move: its replies are committed, nothing moved, the position not advanced.
    second = Recording(store)
    with pytest.raises(Crash):
        run(polled(watcher_of(DiesMoving), second))
    assert second.subjects == ["handled 5", "none 6", "human 7", "handled 8"] and second.repeated == 0
    assert store.inbox_position("INBOX") == first_batch
    assert subjects(stack, HANDLED) == ["handled 1", "handled 2", "handled 3", "handled 4"]

    third = Recording(store)
    assert run(polled(watcher_of(), third)) == 4
    assert third.subjects == ["handled 5", "none 6", "human 7", "handled 8"]
    assert third.repeated == 3  # known by their Message-IDs: filed, not recorded again ("none 6" was never recorded)
    assert sorted(r["subject"] for r in store.replies_for()) == [
        "handled 1", "handled 2", "handled 3", "handled 4", "handled 5", "handled 8", "human 7"]
    # A reply seen before is filed where its recorded decision sent it (as bot.inbox does): "human 7" to a person.
    assert subjects(stack, HANDLED) == [f"handled {i}" for i in range(1, 6)] + ["handled 8"]
    assert subjects(stack, HUMAN) == ["human 7"]
    assert subjects(stack, "INBOX") == ["none 6"]
    assert store.inbox_position("INBOX")[1] == third.got[-1].uid  # type: ignore[index]


@pytest.mark.mail
def test_a_store_failure_mid_batch_records_and_moves_none_of_the_batch(
        clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    append(stack, "handled 1", "human 2", "handled 3", "handled 4")

    class Failing(Inbox):
        async def __call__(self, message: Incoming) -> str | None:
            if subject(message.raw) == "handled 3":
                raise StoreError("the store could not record the change: disk I/O error")
            return await super().__call__(message)

    w = watcher(stack, store)
    with pytest.raises(StoreError):
        run(polled(w, Failing(store)))
    assert w.handled == 0
    assert store.replies_for() == []  # "handled 1" and "human 2" were recorded in the batch, not committed
    assert subjects(stack, "INBOX") == ["handled 1", "human 2", "handled 3", "handled 4"]  # so none was moved
    assert store.inbox_position("INBOX") is None

    again = Inbox(store)
    assert run(polled(watcher(stack, store), again)) == 4
    assert again.subjects == ["handled 1", "human 2", "handled 3", "handled 4"]
    assert len(store.replies_for()) == 4
    assert subjects(stack, HANDLED) == ["handled 1", "handled 3", "handled 4"]
    assert subjects(stack, HUMAN) == ["human 2"]


# ---- watching --------------------------------------------------------------------------------


@pytest.mark.mail
def test_idle_hands_over_new_mail_within_seconds_and_stops_promptly(
        clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    inbox = Inbox()
    latencies: list[float] = []

    async def scenario() -> float:
        stop = asyncio.Event()
        w = watcher(stack, store)  # poll_seconds = 60: whatever arrives within the test, IDLE announced
        await asyncio.to_thread(deliver, stack, "handled warm-up")
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await inbox.until(1)
            for i in range(3):
                await asyncio.sleep(0.3)  # back in IDLE after the catch-up
                sent = time.monotonic()
                await asyncio.to_thread(stack.deliver, mail(f"handled {i}"), TO)
                await inbox.until(2 + i, timeout=5)
                latencies.append(inbox.at[f"handled {i}"] - sent)
            assert 0 <= w.lag < 5  # INTERNALDATE has whole seconds
            stop.set()
            stopping = time.monotonic()
            await asyncio.wait_for(task, 3)
            return time.monotonic() - stopping
        finally:
            stop.set()
            await w.close()

    stopped_in = run(scenario())
    print(f"\nIDLE latency delivery->handler: {', '.join(f'{x:.3f}' for x in latencies)} s;"
          f" stop took {stopped_in:.3f} s")
    assert max(latencies) < 5
    assert stopped_in < 2
    assert subjects(stack, HANDLED) == ["handled warm-up", "handled 0", "handled 1", "handled 2"]


@pytest.mark.mail
def test_without_idle_it_polls(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    inbox = Inbox()

    async def scenario() -> None:
        stop = asyncio.Event()
        w = watcher(stack, store, settings=imap(stack, poll_seconds=0.2), use_idle=False)
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(stack.deliver, mail("handled polled"), TO)
            await inbox.until(1, timeout=5)
        finally:
            stop.set()
            await asyncio.wait_for(task, 3)
            await w.close()

    run(scenario())
    assert subjects(stack, HANDLED) == ["handled polled"]


@pytest.mark.mail
def test_server_restart_during_idle_loses_nothing_and_repeats_nothing(
        clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    inbox = Inbox()

    async def scenario() -> None:
        stop = asyncio.Event()
        # IDLE renewed every second: mail Postfix flushes in while we reconnect may land just before an IDLE.
        w = watcher(stack, store, settings=imap(stack, poll_seconds=1.0))
        await asyncio.to_thread(deliver, stack, "handled before")
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await inbox.until(1)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(stack.stop_dovecot)
            await until(lambda: w.last_error is not None and "127.0.0.1" in w.last_error, timeout=5)
            await asyncio.to_thread(stack.deliver, mail("handled during outage"), TO)  # Postfix defers it
            await asyncio.sleep(0.3)
            assert not task.done()
            await asyncio.to_thread(stack.start_dovecot)
            await asyncio.to_thread(stack.flush)
            await inbox.until(2)
            await asyncio.sleep(1.0)  # a few more wake-ups and catch-ups: still handed over once
            assert w.last_error is None
        finally:
            stop.set()
            await asyncio.wait_for(task, 3)
            await w.close()
            stack.start_dovecot()  # whatever happened, leave the stack up for the next test

    run(scenario(), timeout=40)
    assert inbox.subjects == ["handled before", "handled during outage"]
    assert subjects(stack, HANDLED) == ["handled before", "handled during outage"]


@pytest.mark.mail
def test_rejected_credentials_are_reported_and_retried_without_leaking_the_secret(
        mailstack: MailStack, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Wr0ng-Imap-Pa55-9f3k"
    settings = imap(mailstack, password=Secret(secret))
    inbox = Inbox()

    async def scenario() -> None:
        w = watcher(mailstack, store, settings=settings)
        assert await w.poll(inbox) == 0  # one pass reports, with a message that says what to fix
        assert w.last_error is not None
        assert "refused the login of 'dunbot'" in w.last_error and "password_env" in w.last_error
        with pytest.raises(MailboxError) as caught:
            ImapMailbox(settings, "INBOX", 100_000).connect()
        assert secret not in repr(caught.value) and secret not in repr(caught.value.__cause__)
        stop = asyncio.Event()
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await until(lambda: caplog.text.count("retrying in") >= 5, timeout=5)
            assert not task.done()
            assert w.last_error is not None and "refused the login" in w.last_error
        finally:
            stop.set()
            await asyncio.wait_for(task, 3)
            await w.close()

    run(scenario())
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+) s", caplog.text)]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]  # exponential, capped at backoff_max
    assert secret not in caplog.text
    assert inbox.got == []


@pytest.mark.mail
def test_watched_folder_deleted_then_recreated(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    with stack.imap(USER) as client:
        client.create_folder("Replies")
        client.append("Replies", mail("none first"))
    inbox = Inbox(store)

    async def scenario() -> None:
        stop = asyncio.Event()
        w = watcher(stack, store, folder="Replies", settings=imap(stack, poll_seconds=1.0))
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await inbox.until(1)
            await asyncio.sleep(0.3)
            with stack.imap(USER) as client:
                client.delete_folder("Replies")
            await until(lambda: "'Replies' does not exist" in (w.last_error or ""), timeout=5)
            assert not task.done()
            with stack.imap(USER) as client:
                client.create_folder("Replies")
                client.append("Replies", mail("handled after"))
            await inbox.until(2, timeout=5)
            await until(lambda: w.last_error is None, timeout=5)
        finally:
            stop.set()
            await asyncio.wait_for(task, 3)
            await w.close()

    run(scenario())
    assert inbox.subjects == ["none first", "handled after"]
    assert subjects(stack, HANDLED) == ["handled after"]
    with stack.imap(USER) as client:
        uidvalidity = client.select_folder("Replies", readonly=True)[b"UIDVALIDITY"]
    assert store.inbox_position("Replies") == (uidvalidity, inbox.got[1].uid)


@pytest.mark.mail
def test_uidvalidity_change_resyncs_by_message_id(clean_mailstack: MailStack, store: Store) -> None:
    stack = clean_mailstack
    old = [mail("handled a"), mail("human b"), mail("handled c")]
    with stack.imap(USER) as client:
        client.create_folder("Replies")
        for raw in old:
            client.append("Replies", raw)
        first = client.select_folder("Replies", readonly=True)[b"UIDVALIDITY"]
    inbox = Inbox(store)
    assert run(polled(watcher(stack, store, folder="Replies"), inbox)) == 3
    assert store.inbox_position("Replies") == (first, 3)

    with stack.imap(USER) as client:  # the folder is recreated (a restore): old mail comes back, one is new
        client.delete_folder("Replies")
        client.create_folder("Replies")
        for raw in (old[0], old[1], mail("handled new"), old[2]):
            client.append("Replies", raw)
        second = client.select_folder("Replies", readonly=True)[b"UIDVALIDITY"]
    assert second != first
    again = Inbox(store)
    assert run(polled(watcher(stack, store, folder="Replies"), again)) == 1
    assert again.subjects == ["handled new"]
    assert store.inbox_position("Replies") == (second, 4)
    assert subjects(stack, "Replies") == ["handled a", "human b", "handled c"]  # seen before: skipped, left


# ---- connection security -------------------------------------------------------------------------


@pytest.mark.mail
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_with_the_test_ca(clean_mailstack: MailStack, store: Store, security: str) -> None:
    stack = clean_mailstack
    deliver(stack, "handled secure")
    port = stack.imaps_port if security == "tls" else stack.imap_port
    settings = imap(stack, security=security, port=port, ca_file=stack.ca_file)
    assert run(polled(watcher(stack, store, settings=settings), Inbox())) == 1
    assert subjects(stack, HANDLED) == ["handled secure"]


@pytest.mark.mail
def test_certificates_are_verified_by_default(mailstack: MailStack) -> None:
    box = ImapMailbox(imap(mailstack, security="tls", port=mailstack.imaps_port), "INBOX", 100_000)
    with pytest.raises(MailboxError, match=r"failed verification.*ca_file"):
        box.connect()


@pytest.mark.mail
def test_oauth_needs_xoauth2_and_the_token_never_shows(
        mailstack: MailStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "ya29.test-token-8d7f6e"
    settings = imap(mailstack, password=None, oauth_token=Secret(token))
    box = ImapMailbox(settings, "INBOX", 100_000)
    with pytest.raises(MailboxError, match="does not offer XOAUTH2") as caught:
        box.connect()
    assert token not in repr(caught.value) and token not in caplog.text


# ---- Maildir ---------------------------------------------------------------------------------


def drop(path: Path, *subjects_: str) -> list[bytes]:
    """Deliver into a Maildir as an MDA would, a little apart so arrival order is unambiguous."""
    box = mailbox.Maildir(path, create=True)
    raws = [mail(s) for s in subjects_]
    for raw in raws:
        box.add(raw)
        time.sleep(0.005)
    return raws


def folder_subjects(path: Path) -> list[str]:
    box = mailbox.Maildir(path, factory=None, create=False)
    return sorted(str(m["Subject"]) for m in box)


def maildir_watcher(path: Path, store: Store, max_bytes: int = 100_000) -> Watcher:
    return Watcher(lambda: MaildirMailbox(path, "INBOX", max_bytes), store, "INBOX", now)


def test_maildir_poll_moves_remembers_and_survives_a_restart(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "inbox"
    drop(path, "handled 1", "human 2", "none 3", "boom 4", "handled 5")
    inbox = Inbox()

    async def twice() -> tuple[int, int]:
        w = maildir_watcher(path, store)
        try:
            return await w.poll(inbox), await w.poll(inbox)
        finally:
            await w.close()

    assert run(twice()) == (5, 0)
    assert inbox.subjects == ["handled 1", "human 2", "none 3", "boom 4", "handled 5"]
    assert [m.uid for m in inbox.got] == [1, 2, 3, 4, 5]
    assert folder_subjects(path / ".Dunbot.Handled") == ["handled 1", "handled 5"]
    assert folder_subjects(path / ".Dunbot.Needs human") == ["boom 4", "human 2"]
    assert folder_subjects(path) == ["none 3"]
    uidvalidity = store.inbox_position("INBOX")[0]  # type: ignore[index]
    assert store.inbox_position("INBOX") == (uidvalidity, 5)

    drop(path, "handled 6")
    again = Inbox()
    assert run(polled(maildir_watcher(path, store), again)) == 1
    assert again.subjects == ["handled 6"] and again.got[0].uid == 6
    assert store.inbox_position("INBOX") == (uidvalidity, 6)


def test_maildir_lost_state_resyncs_by_message_id_and_truncates_big_mail(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "inbox"
    [kept] = drop(path, "human kept")
    assert run(polled(maildir_watcher(path, store), Inbox(store))) == 1
    (path / MaildirMailbox.STATE).unlink()  # state lost: numbering starts again under a new UIDVALIDITY
    mailbox.Maildir(path, create=False).add(kept)  # and a restore brings the handled message back
    drop(path, "human small")
    big = mail("human huge", body="a large attachment line\n" * 1000)
    mailbox.Maildir(path, create=False).add(big)
    again = Inbox(store)
    assert run(polled(maildir_watcher(path, store, max_bytes=10_000), again)) == 2
    assert again.subjects == ["human small", "human huge"]
    small, huge = again.got
    assert not small.truncated and small.size == len(small.raw)
    assert huge.truncated and huge.size == len(big) and huge.raw.endswith(b"\r\n\r\n")
    assert b"Subject: human huge" in huge.raw and b"attachment" not in huge.raw
    assert folder_subjects(path) == ["human kept"]  # seen before: skipped, left where it is


def test_maildir_watch_wakes_on_new_mail(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "inbox"
    inbox = Inbox()

    async def scenario() -> None:
        stop = asyncio.Event()
        w = maildir_watcher(path, store)
        task = asyncio.create_task(w.watch(inbox, stop))
        try:
            await asyncio.sleep(0.2)
            drop(path, "handled later")
            await inbox.until(1, timeout=3)
            stop.set()
            await asyncio.wait_for(task, 2)
        finally:
            stop.set()
            await w.close()

    run(scenario())
    assert folder_subjects(path / ".Dunbot.Handled") == ["handled later"]
    assert inbox.got[0].arrived is not None
