"""Replies recorded in batches (Store.reply_batch) on real SQLite and real PostgreSQL: one commit for the batch,
each reply still all or nothing, nothing of a failed batch kept."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.store import Store

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def reply(message_id: str, escalate: bool = False) -> dict[str, Any]:
    return {"message_id": message_id, "customer_id": None, "matched_by": None, "sender": "ana@customers.test",
            "subject": "Re: invoice", "sent_at": NOW, "raw": b"raw\r\n", "language": "en", "intent": "other",
            "confidence": 1.0, "escalate": escalate, "classification": "{}", "action": ""}


def record(store: Store, message_id: str, escalate: bool = False) -> int | None:
    return store.record_reply(reply(message_id, escalate), hold=None, escalation=None, flag=None,
                              invalid_contacts=(), now=NOW)


def committed(store: Store) -> set[str]:
    """What another connection sees: only what was committed."""
    fresh = Store.open(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        return {r["message_id"] for r in fresh.replies_for()}
    finally:
        fresh.close()


def test_a_batch_sees_its_own_replies_and_commits_them_together(store: Store) -> None:
    assert record(store, "<before@x>") is not None
    with store.reply_batch():
        assert record(store, "<a@x>") is not None
        assert store.reply_escalated("<a@x>") is False and store.reply_escalated("<before@x>") is False
        assert record(store, "<a@x>") is None  # recorded before, in this batch: only its own savepoint undone
        assert record(store, "<before@x>") is None
        assert record(store, "<b@x>", escalate=True) is not None
        assert store.reply_escalated("<b@x>") is True
        assert committed(store) == {"<before@x>"}
    assert committed(store) == {"<before@x>", "<a@x>", "<b@x>"}
    assert store.reply_escalated("<c@x>") is None and store.reply_escalated("<b@x>") is True


def test_a_failed_batch_records_nothing(store: Store) -> None:
    def dies_mid_batch() -> None:
        with store.reply_batch():
            assert record(store, "<a@x>") is not None
            raise ValueError("the process dies here")

    with pytest.raises(ValueError, match="dies here"):
        dies_mid_batch()
    assert committed(store) == set() and store.reply_escalated("<a@x>") is None
    assert record(store, "<a@x>") is not None  # handed over again: recorded once


def test_batches_do_not_nest(store: Store) -> None:
    with store.reply_batch(), pytest.raises(RuntimeError, match="do not nest"), store.reply_batch():
        pass


def test_a_sqlite_batch_takes_the_write_lock_at_once(tmp_path: Path) -> None:
    """Reading first and writing later would fail at once (no waiting) had another connection written meanwhile."""
    path = tmp_path / "dunbot.db"
    store = Store.open(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        with store.reply_batch():
            assert store.reply_escalated("<a@x>") is None  # a read only, yet the write lock is ours
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("UPDATE inbox_state SET last_uid = 0")
        other.execute("UPDATE inbox_state SET last_uid = 0")  # free again after the batch
    finally:
        other.close()
        store.close()


def test_an_in_memory_store_records_reply_by_reply_inside_a_batch() -> None:
    """One connection per thread: a batch's transaction would shut out the store's other reads and writes."""
    store = Store.open("sqlite:///:memory:")
    try:
        with store.reply_batch():
            assert record(store, "<a@x>") is not None
            assert record(store, "<a@x>") is None
            assert store.inbox_position("INBOX") is None  # another transaction of the store, on the same connection
        assert store.reply_escalated("<a@x>") is False
    finally:
        store.close()
