"""The bot's own memory: what it queued, sent, learned about contacts and escalated.

SQLAlchemy Core over SQLite (WAL) by default, PostgreSQL alike; the schema is owned by Alembic
migrations and upgraded on open. The ledger is never written: everything the bot does lives here.

Two constraints carry the delivery guarantees: a reminder's Message-ID is unique, and an
(invoice, stage) pair is unique, so the same stage can never be queued twice for an invoice, even
by two processes racing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from bot.casebook import BOT, STOPPED, state_of, transition
from bot.directory import insert_reply_keys
from bot.errors import StoreError
from bot.schema import (
    cases,
    contacts,
    escalations,
    flags,
    holds,
    inbox_state,
    installments,
    reminder_invoices,
    reminder_messages,
    reminders,
    replies,
)

log = logging.getLogger(__name__)

_BATCH: ContextVar[tuple[Store, Connection] | None] = ContextVar("dunbot_reply_batch", default=None)
"""The open reply batch of this thread or task (Store.reply_batch), if any."""


QUEUED, SENDING, SENT, FAILED = "queued", "sending", "sent", "failed"
# The outbox's marks, built once: building them at each group commit cost as much as running them (~0.25 ms).
_CLAIM = (reminders.update().where(reminders.c.id.in_(sa.bindparam("ids", expanding=True)))
          .where(reminders.c.status == QUEUED).values(status=SENDING, attempts=reminders.c.attempts + 1)
          .returning(reminders.c.id))
_SENT = (reminders.update().where(reminders.c.id == sa.bindparam("rid"))
         .values(status=SENT, sent_at=sa.bindparam("at", type_=reminders.c.sent_at.type),
                 server_reply=sa.bindparam("reply"), last_error=None, next_attempt_at=None))
IMMEDIATE = "dunbot_immediate"  # execution option: SQLite begins the transaction with BEGIN IMMEDIATE
MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class Queued:
    """A reminder ready to be recorded: everything needed to send it again byte for byte."""

    message_id: str
    customer_id: str
    contact: str
    track: str
    stage: str
    language: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    raw: bytes
    balances: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: int
    message_id: str
    customer_id: str
    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    attempts: int
    invoice_ids: tuple[str, ...]


def _head_revision() -> str:
    """The newest migration: revisions are named by their file's four-digit prefix (0001_outbox.py is "0001")."""
    return max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _current_revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: Connection) -> None:
    """Alembic is imported only when a migration is due: it costs ~11 MB that a running daemon never needs."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite runs DDL outside any transaction by default: a kill during a migration would leave half a schema.
    # With its own transaction handling off, SQLAlchemy's BEGIN (below) covers DDL and DML alike.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at once: a long transaction that reads first could not write later
    # if another connection wrote meanwhile (SQLITE_BUSY_SNAPSHOT, no waiting).
    immediate = connection.get_execution_options().get(IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """All reads and writes of the bot's state, each method one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and bring the schema to the latest migration."""
        try:
            if url.startswith("sqlite:///") and not url.endswith(":memory:"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, future=True)
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
                sa.event.listen(engine, "begin", _sqlite_begin)
            with engine.begin() as connection:
                if _current_revision(connection) != _head_revision():
                    _upgrade(connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the store {engine_safe(url)}: {exc.__class__.__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the store {engine_safe(url)}: {exc}") from exc
        return cls(engine)

    @staticmethod
    def migration_due(url: str) -> bool:
        """Whether opening the store would migrate it. The daemon then has a child open it first
        (bot/offload.py), so that Alembic (~11 MB) is not kept for months by the process that waits."""
        if url.endswith(":memory:"):
            return False
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
            return True
        engine = sa.create_engine(url, future=True)
        try:
            with engine.connect() as connection:
                return _current_revision(connection) != _head_revision()
        except SQLAlchemyError:
            return False  # Store.open reports it, with the reason
        finally:
            engine.dispose()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Connection]:
        """One transaction; a failing database (disk full, locked) becomes a StoreError, so sending stops.

        `immediate` for one that reads before it writes: on SQLite it takes the write lock first, waiting for
        it, because a transaction that read while another connection committed cannot write at all
        ("database is locked" at once: the daemon's heartbeat commits every few seconds)."""
        try:
            with self.engine.connect() as connection:
                if immediate:
                    connection.execution_options(**{IMMEDIATE: True})
                with connection.begin():
                    yield connection
        except OperationalError as exc:
            raise StoreError(f"the store could not record the change: {exc.orig}") from exc

    # History, as the policy needs it.

    def stages_sent(self) -> dict[str, frozenset[str]]:
        result: dict[str, set[str]] = {}
        with self.transaction() as c:
            for invoice_id, stage in c.execute(sa.select(reminder_invoices.c.invoice_id, reminder_invoices.c.stage)):
                result.setdefault(invoice_id, set()).add(stage)
        return {k: frozenset(v) for k, v in result.items()}

    def last_sent(self) -> dict[str, datetime]:
        q = sa.select(reminders.c.customer_id, sa.func.max(reminders.c.created_at)).group_by(reminders.c.customer_id)
        with self.transaction() as c:
            return {cid: _utc(at) for cid, at in c.execute(q)}

    def threads(self) -> dict[str, tuple[str, ...]]:
        q = (sa.select(reminders.c.customer_id, reminders.c.message_id)
             .where(reminders.c.status.in_((SENT, SENDING, QUEUED)))
             .order_by(reminders.c.customer_id, reminders.c.id))
        result: dict[str, list[str]] = {}
        with self.transaction() as c:
            for cid, mid in c.execute(q):
                result.setdefault(cid, []).append(mid)
        return {k: tuple(v) for k, v in result.items()}

    def invalid_contacts(self) -> frozenset[str]:
        with self.transaction() as c:
            return frozenset(r[0] for r in c.execute(sa.select(contacts.c.address)
                                                    .where(contacts.c.status == "invalid")))

    def escalated_customers(self) -> frozenset[str]:
        """Customers the bot must not write to: an open escalation, or a case escalated, with an agency or closed."""
        with self.transaction() as c:
            open_ = c.execute(sa.select(escalations.c.customer_id).where(escalations.c.resolved_at.is_(None)))
            stopped = c.execute(sa.select(cases.c.customer_id).where(cases.c.state.in_(STOPPED)))
            return frozenset(r[0] for r in (*open_, *stopped))

    # The outbox.

    def enqueue(self, batch: Sequence[Queued], now: datetime) -> list[Outgoing]:
        """Record reminders before they are sent; returns those actually queued, ready to deliver.

        A batch is one transaction; if another writer got there first (a unique constraint), the batch
        is retried row by row so the others still go in and the duplicate is dropped.
        """
        try:
            with self.transaction() as c:
                if c.dialect.insert_executemany_returning_sort_by_parameter_order:
                    ids = self._insert_many(c, batch, now)
                else:
                    ids = [self.insert_queued(c, item, now) for item in batch]
            return [_outgoing(rid, item) for rid, item in zip(ids, batch, strict=True)]
        except IntegrityError:
            pass
        queued = []
        for item in batch:
            try:
                with self.transaction() as c:
                    queued.append(_outgoing(self.insert_queued(c, item, now), item))
            except IntegrityError:
                log.info("reminder %s for customer %s was already queued; skipped", item.message_id,
                         item.customer_id)
        return queued

    @staticmethod
    def _row(item: Queued, now: datetime) -> dict[str, Any]:
        return {"message_id": item.message_id, "customer_id": item.customer_id, "contact": item.contact,
                "track": item.track, "stage": item.stage, "language": item.language, "sender": item.sender,
                "recipients": json.dumps(list(item.recipients)), "subject": item.subject, "status": QUEUED,
                "attempts": 0, "next_attempt_at": None, "created_at": now}

    @staticmethod
    def _invoice_rows(rid: int, item: Queued) -> list[dict[str, Any]]:
        return [{"reminder_id": rid, "invoice_id": inv, "stage": item.stage, "customer_id": item.customer_id,
                 "balance": balance} for inv, balance in item.balances]

    @staticmethod
    def insert_queued(c: Connection, item: Queued, now: datetime) -> int:
        """Record one reminder inside the caller's transaction (with an event of its own, say); returns its id."""
        rid = int(c.execute(reminders.insert().values(**Store._row(item, now))).inserted_primary_key[0])
        c.execute(reminder_messages.insert().values(reminder_id=rid, raw=item.raw))
        if item.balances:
            c.execute(reminder_invoices.insert(), Store._invoice_rows(rid, item))
            insert_reply_keys(c, [(rid, item)])
        return rid

    @staticmethod
    def _insert_many(c: Connection, batch: Sequence[Queued], now: datetime) -> list[int]:
        """A batch in three statements, the new ids returned in batch order: a statement per row cost ~0.4 ms."""
        if not batch:
            return []
        ids = list(c.execute(reminders.insert().returning(reminders.c.id, sort_by_parameter_order=True),
                             [Store._row(item, now) for item in batch]).scalars())
        c.execute(reminder_messages.insert(),
                  [{"reminder_id": rid, "raw": item.raw} for rid, item in zip(ids, batch, strict=True)])
        rows = [row for rid, item in zip(ids, batch, strict=True) for row in Store._invoice_rows(rid, item)]
        if rows:
            c.execute(reminder_invoices.insert(), rows)
        insert_reply_keys(c, [(rid, item) for rid, item in zip(ids, batch, strict=True) if item.balances])
        return ids

    def recover_interrupted(self) -> list[tuple[int, str, str]]:
        """Put reminders caught mid-send by a crash back in the queue; returns them for the log.

        The server may or may not have accepted them: this is the one window where a duplicate can occur.
        """
        with self.transaction(immediate=True) as c:
            rows = c.execute(sa.select(reminders.c.id, reminders.c.message_id, reminders.c.customer_id)
                             .where(reminders.c.status == SENDING)).all()
            if rows:
                c.execute(reminders.update().where(reminders.c.status == SENDING).values(status=QUEUED))
        return [(r[0], r[1], r[2]) for r in rows]

    def due(self, now: datetime, limit: int | None = None, only: frozenset[str] | None = None) -> list[Outgoing]:
        q = (sa.select(reminders.c.id, reminders.c.message_id, reminders.c.customer_id, reminders.c.sender,
                       reminders.c.recipients, reminder_messages.c.raw, reminders.c.attempts)
             .join(reminder_messages, reminder_messages.c.reminder_id == reminders.c.id)
             .where(reminders.c.status == QUEUED)
             .where(sa.or_(reminders.c.next_attempt_at.is_(None), reminders.c.next_attempt_at <= now))
             .order_by(reminders.c.id))
        if only is not None:
            q = q.where(reminders.c.message_id.in_(sorted(only)))
        if limit:
            q = q.limit(limit)
        with self.transaction() as c:
            rows = c.execute(q).all()
            ids = [r[0] for r in rows]
            invoices: dict[int, list[str]] = {}
            for chunk in _chunks(ids, 500):
                for rid, inv in c.execute(sa.select(reminder_invoices.c.reminder_id, reminder_invoices.c.invoice_id)
                                          .where(reminder_invoices.c.reminder_id.in_(chunk))):
                    invoices.setdefault(rid, []).append(inv)
        return [Outgoing(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], tuple(invoices.get(r[0], ())))
                for r in rows]

    def queued_balances(self) -> dict[int, dict[str, str]]:
        """For every reminder not yet sent, the balance each invoice had when it was queued."""
        q = (sa.select(reminder_invoices.c.reminder_id, reminder_invoices.c.invoice_id, reminder_invoices.c.balance)
             .join(reminders, reminders.c.id == reminder_invoices.c.reminder_id)
             .where(reminders.c.status.in_((QUEUED, SENDING))))
        result: dict[int, dict[str, str]] = {}
        with self.transaction() as c:
            for rid, inv, balance in c.execute(q):
                result.setdefault(rid, {})[inv] = balance
        return result

    def next_retry(self) -> datetime | None:
        with self.transaction() as c:
            value = c.execute(sa.select(sa.func.min(reminders.c.next_attempt_at))
                              .where(reminders.c.status == QUEUED)).scalar()
        return _utc(value) if value else None

    def mark_sending(self, rid: int) -> bool:
        """Claim one queued reminder for sending; False when another sender has it already."""
        return rid in self.mark(sending=[rid])

    def mark_sent(self, rid: int, now: datetime, reply: str) -> None:
        with self.transaction() as c:
            c.execute(reminders.update().where(reminders.c.id == rid).values(
                status=SENT, sent_at=now, server_reply=reply[:500], last_error=None, next_attempt_at=None))

    def mark(self, sending: Sequence[int] = (), sent: Sequence[tuple[int, datetime, str]] = ()) -> set[int]:
        """mark_sending and mark_sent for several reminders in one transaction: the outbox's group commit.

        Returns the reminders this call claimed for sending: one still queued is claimed; one another
        process claimed first (it is "sending" or "sent" already) is not, and must not be sent here.
        """
        claimed: set[int] = set()
        with self.transaction() as c:
            if sending:
                claimed = set(c.execute(_CLAIM, {"ids": list(sending)}).scalars())
            if sent:
                c.execute(_SENT, [{"rid": rid, "at": at, "reply": reply[:500]} for rid, at, reply in sent])
        return claimed

    def mark_retry(self, rid: int, at: datetime, error: str) -> None:
        with self.transaction() as c:
            c.execute(reminders.update().where(reminders.c.id == rid).values(
                status=QUEUED, next_attempt_at=at, last_error=error[:1000]))

    def mark_failed(self, rid: int, error: str) -> None:
        with self.transaction() as c:
            c.execute(reminders.update().where(reminders.c.id == rid).values(
                status=FAILED, last_error=error[:1000], next_attempt_at=None))

    def withdraw(self, rid: int) -> None:
        """Delete a reminder that was never sent (its invoices changed): its stages and Message-ID become free."""
        # Writes first, no read before them: on SQLite a transaction that reads and then writes fails at once
        # when another connection committed in between.
        unsent = (sa.select(reminders.c.id).where(reminders.c.id == rid)
                  .where(reminders.c.status.in_((QUEUED, SENDING))).scalar_subquery())
        with self.transaction(immediate=True) as c:
            c.execute(reminder_invoices.delete().where(reminder_invoices.c.reminder_id == unsent))
            c.execute(reminder_messages.delete().where(reminder_messages.c.reminder_id == unsent))
            c.execute(reminders.delete().where(reminders.c.id == rid).where(reminders.c.status.in_((QUEUED, SENDING))))

    def mark_contact_invalid(self, address: str, reason: str, now: datetime) -> None:
        address = address.lower()
        with self.transaction() as c:
            updated = c.execute(contacts.update().where(contacts.c.address == address).values(
                status="invalid", reason=reason[:1000], updated_at=now)).rowcount
            if not updated:
                c.execute(contacts.insert().values(address=address, status="invalid", reason=reason[:1000],
                                                   updated_at=now))

    def escalate(self, customer_id: str, reason: str, detail: str, invoice_ids: Iterable[str],
                 recommendation: str, now: datetime) -> bool:
        """Open an escalation unless one is already open for the customer; True when a new one was opened."""
        with self.transaction(immediate=True) as c:
            open_ = c.execute(sa.select(escalations.c.id).where(escalations.c.customer_id == customer_id)
                              .where(escalations.c.resolved_at.is_(None))).first()
            if open_ or state_of(c, customer_id) in STOPPED:
                return False
            c.execute(escalations.insert().values(
                customer_id=customer_id, reason=reason, detail=detail, invoice_ids=json.dumps(list(invoice_ids)),
                recommendation=recommendation, created_at=now))
            transition(c, customer_id, "escalated", actor=BOT, reason=f"{reason}: {detail}", now=now)
        return True

    def inbox_position(self, folder: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID handled) for a folder, so a restart neither misses nor repeats a message."""
        with self.transaction() as c:
            found = c.execute(sa.select(inbox_state.c.uidvalidity, inbox_state.c.last_uid)
                              .where(inbox_state.c.folder == folder)).first()
        return (int(found[0]), int(found[1])) if found else None

    def set_inbox_position(self, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
        with self.transaction() as c:
            updated = c.execute(inbox_state.update().where(inbox_state.c.folder == folder).values(
                uidvalidity=uidvalidity, last_uid=last_uid, updated_at=now)).rowcount
            if not updated:
                c.execute(inbox_state.insert().values(folder=folder, uidvalidity=uidvalidity, last_uid=last_uid,
                                                      updated_at=now))

    def reply_escalated(self, message_id: str) -> bool | None:
        """Whether a recorded reply went to a person; None if it was never recorded. A reply recorded but not
        yet moved (a crash between the two) is filed again where its decision sent it."""
        query = sa.select(replies.c.escalate).where(replies.c.message_id == message_id)
        batch = self._batch()
        if batch is not None:  # sees the batch's own replies, not yet committed
            row = batch.execute(query).first()
        else:
            with self.transaction() as c:
                row = c.execute(query).first()
        return None if row is None else bool(row[0])

    @contextmanager
    def reply_batch(self) -> Iterator[None]:
        """Replies recorded inside share one transaction, committed on leaving: one commit (one fsync) for a
        batch of mail, not one per reply. Each reply stays all or nothing (a savepoint); an error or a crash
        before the end records none of the batch, so the mailbox, which moves mail only after this commit,
        hands the whole batch over again. For this thread or task only; an in-memory SQLite store (one
        connection per thread) records reply by reply."""
        if _BATCH.get() is not None:
            raise RuntimeError("reply batches do not nest")
        if self.engine.url.database in (None, "", ":memory:"):
            yield
            return
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**{IMMEDIATE: True})
                with connection.begin():
                    token = _BATCH.set((self, connection))
                    try:
                        yield
                    finally:
                        _BATCH.reset(token)
        except OperationalError as exc:
            raise StoreError(f"the store could not record the change: {exc.orig}") from exc

    def _batch(self) -> Connection | None:
        batch = _BATCH.get()
        return batch[1] if batch is not None and batch[0] is self else None

    @contextmanager
    def _reply_tx(self) -> Iterator[Connection]:
        """A transaction of its own, or a savepoint in the open reply batch."""
        batch = self._batch()
        if batch is None:
            with self.transaction() as c:
                yield c
            return
        try:
            with batch.begin_nested():
                yield batch
        except OperationalError as exc:
            raise StoreError(f"the store could not record the change: {exc.orig}") from exc

    # Replies, and what the bot decided about them.

    def record_reply(self, reply: Mapping[str, Any], *, hold: Mapping[str, Any] | None,
                     escalation: Mapping[str, Any] | None, flag: Mapping[str, Any] | None,
                     invalid_contacts: Iterable[str], now: datetime) -> int | None:
        """Record a reply and everything decided about it in one transaction (a savepoint in a reply batch);
        None if it was recorded before."""
        try:
            with self._reply_tx() as c:
                rid = c.execute(replies.insert().values(**reply, created_at=now)).inserted_primary_key[0]
                customer_id = reply["customer_id"]
                if hold is not None:
                    c.execute(holds.insert().values(**hold, customer_id=customer_id, reply_id=rid, created_at=now))
                if flag is not None:
                    c.execute(flags.insert().values(**flag, customer_id=customer_id, reply_id=rid, created_at=now))
                state = state_of(c, customer_id)
                if escalation is not None and state not in STOPPED:
                    c.execute(escalations.insert().values(**escalation, customer_id=customer_id, reply_id=rid,
                                                          created_at=now))
                    transition(c, customer_id, "escalated", actor=BOT, reason=reply["action"], now=now)
                elif hold is not None and state not in STOPPED and state != "payment_plan":
                    transition(c, customer_id, "paused", actor=BOT, reason=hold["reason"], now=now,
                               until=hold["until"])
                for address in invalid_contacts:
                    address = address.lower()
                    c.execute(contacts.delete().where(contacts.c.address == address))
                    c.execute(contacts.insert().values(address=address, status="invalid",
                                                       reason=f"reply {reply['message_id']}", updated_at=now))
        except IntegrityError:
            return None
        return int(rid)

    def active_holds(self, now: datetime) -> list[dict[str, Any]]:
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(holds).where(holds.c.ended_at.is_(None)).where(holds.c.until > now).order_by(holds.c.id))]

    def expired_holds(self, now: datetime) -> list[dict[str, Any]]:
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(holds).where(holds.c.ended_at.is_(None)).where(holds.c.until <= now).order_by(holds.c.id))]

    def end_hold(self, hold_id: int, outcome: str, now: datetime) -> None:
        """End a hold; a case paused only by it becomes active again."""
        with self.transaction(immediate=True) as c:
            customer_id = c.execute(sa.select(holds.c.customer_id).where(holds.c.id == hold_id)).scalar()
            c.execute(holds.update().where(holds.c.id == hold_id).values(ended_at=now, outcome=outcome))
            others = c.execute(sa.select(holds.c.id).where(holds.c.customer_id == customer_id)
                               .where(holds.c.ended_at.is_(None)).where(holds.c.until > now)).first()
            if customer_id and not others and state_of(c, customer_id) == "paused":
                transition(c, customer_id, "active", actor=BOT, reason=f"hold ended: {outcome}", now=now)

    def close_paid(self, owing: set[str], now: datetime) -> None:
        """Resolve the cases of customers the ledger shows nothing owed by any more."""
        with self.transaction(immediate=True) as c:
            open_cases = c.execute(sa.select(cases.c.customer_id).where(cases.c.state != "resolved")).scalars().all()
            for customer_id in open_cases:
                if customer_id not in owing:
                    c.execute(escalations.update().where(escalations.c.customer_id == customer_id)
                              .where(escalations.c.resolved_at.is_(None)).values(resolved_at=now))
                    transition(c, customer_id, "resolved", actor=BOT, reason="paid: the ledger shows no balance",
                               now=now)

    def active_installments(self) -> dict[str, list[dict[str, Any]]]:
        q = (sa.select(installments).join(cases, cases.c.customer_id == installments.c.customer_id)
             .where(installments.c.active.is_(True)).where(cases.c.state == "payment_plan")
             .order_by(installments.c.customer_id, installments.c.seq))
        result: dict[str, list[dict[str, Any]]] = {}
        with self.transaction() as c:
            for row in c.execute(q):
                result.setdefault(row.customer_id, []).append(dict(row._mapping))
        return result

    def broken_promises(self) -> dict[str, list[datetime]]:
        """For each customer, when each broken promise was found broken, oldest first."""
        q = (sa.select(holds.c.customer_id, holds.c.ended_at).where(holds.c.kind == "promise")
             .where(holds.c.outcome == "broken").order_by(holds.c.ended_at))
        result: dict[str, list[datetime]] = {}
        with self.transaction() as c:
            for cid, at in c.execute(q):
                result.setdefault(cid, []).append(_utc(at))
        return result

    def replies_for(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(replies).order_by(replies.c.id)
        if customer_id is not None:
            q = q.where(replies.c.customer_id == customer_id)
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def open_flags(self) -> list[dict[str, Any]]:
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(flags).where(flags.c.done_at.is_(None))
                                                        .order_by(flags.c.id))]

    def reminders_for(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """Every column of each reminder, and its message as `raw`."""
        q = (sa.select(reminders, reminder_messages.c.raw)
             .join(reminder_messages, reminder_messages.c.reminder_id == reminders.c.id).order_by(reminders.c.id))
        if customer_id is not None:
            q = q.where(reminders.c.customer_id == customer_id)
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def open_escalations(self) -> list[dict[str, Any]]:
        with self.transaction() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(escalations)
                                                        .where(escalations.c.resolved_at.is_(None))
                                                        .order_by(escalations.c.id))]

    def counts(self) -> dict[str, int]:
        with self.transaction() as c:
            rows = c.execute(sa.select(reminders.c.status, sa.func.count()).group_by(reminders.c.status))
            return {status: int(count) for status, count in rows}


def _outgoing(rid: int, item: Queued) -> Outgoing:
    return Outgoing(rid, item.message_id, item.customer_id, item.sender, item.recipients, item.raw, 0,
                    tuple(invoice for invoice, _ in item.balances))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def engine_safe(url: str) -> str:
    """The URL with any password replaced, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable store URL>"
