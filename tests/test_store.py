"""The store on real SQLite and real PostgreSQL: the same tests, dialect-neutral SQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from stores import BACKENDS, store_url

from bot.errors import StoreError
from bot.schema import reminder_messages, reminders
from bot.store import MIGRATIONS, Outgoing, Queued, Store

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def queued(mid: str, customer: str = "C1", invoices: tuple[str, ...] = ("I1",), stage: str = "first") -> Queued:
    return Queued(message_id=mid, customer_id=customer, contact="ap@c.test", track="standard", stage=stage,
                  language="en", sender="ar@us.test", recipients=("ap@c.test",), subject="s", raw=b"raw\r\n",
                  balances=tuple((i, "10.00") for i in invoices))


def ids(recorded: list[Outgoing]) -> list[str]:
    return [item.message_id for item in recorded]


def test_enqueue_then_history(store: Store) -> None:
    (recorded,) = store.enqueue([queued("<a@x>", invoices=("I1", "I2"))], NOW)
    assert store.stages_sent() == {"I1": frozenset({"first"}), "I2": frozenset({"first"})}
    assert store.last_sent() == {"C1": NOW}
    assert store.threads() == {"C1": ("<a@x>",)}
    (due,) = store.due(NOW)
    assert due.raw == b"raw\r\n" and due.recipients == ("ap@c.test",) and set(due.invoice_ids) == {"I1", "I2"}
    assert recorded == due  # what enqueue hands the outbox is what the store would give back


def test_same_stage_for_an_invoice_is_refused_even_in_a_batch(store: Store) -> None:
    store.enqueue([queued("<a@x>")], NOW)
    result = store.enqueue([queued("<b@x>", invoices=("I1",)), queued("<c@x>", "C2", ("I9",))], NOW)
    assert ids(result) == ["<c@x>"] and result == [store.due(NOW)[1]]
    assert store.enqueue([queued("<a@x>", invoices=("I5",))], NOW) == []
    assert len(store.reminders_for()) == 2


def test_sending_states_and_recovery(store: Store) -> None:
    store.enqueue([queued("<a@x>"), queued("<b@x>", "C2", ("I2",))], NOW)
    first, second = store.due(NOW)
    store.mark_sending(first.id)
    store.mark_sent(first.id, NOW, "250 ok")
    store.mark_sending(second.id)
    assert store.due(NOW) == []
    assert store.recover_interrupted() == [(second.id, "<b@x>", "C2")]
    (again,) = store.due(NOW)
    assert again.id == second.id and again.attempts == 1
    assert store.counts() == {"sent": 1, "queued": 1}


def test_marks_for_several_reminders_in_one_transaction(store: Store) -> None:
    store.enqueue([queued("<a@x>"), queued("<b@x>", "C2", ("I2",)), queued("<c@x>", "C3", ("I3",))], NOW)
    first, second, third = store.due(NOW)
    store.mark(sending=[first.id, second.id])
    store.mark(sending=[third.id], sent=[(first.id, NOW, "250 ok a"), (second.id, NOW, "250 ok b")])
    rows = {r["message_id"]: r for r in store.reminders_for()}
    assert [rows[m]["status"] for m in ("<a@x>", "<b@x>", "<c@x>")] == ["sent", "sent", "sending"]
    assert rows["<b@x>"]["server_reply"] == "250 ok b" and rows["<a@x>"]["sent_at"] == NOW
    assert {r["attempts"] for r in rows.values()} == {1}
    assert store.recover_interrupted() == [(third.id, "<c@x>", "C3")]


def test_retry_later_and_give_up(store: Store) -> None:
    store.enqueue([queued("<a@x>")], NOW)
    (item,) = store.due(NOW)
    store.mark_sending(item.id)
    store.mark_retry(item.id, NOW + timedelta(minutes=1), "451 try later")
    assert store.due(NOW) == [] and store.next_retry() == NOW + timedelta(minutes=1)
    assert len(store.due(NOW + timedelta(minutes=1))) == 1
    store.mark_failed(item.id, "gave up")
    assert store.due(NOW + timedelta(days=1)) == [] and store.counts() == {"failed": 1}


def test_withdraw_frees_the_stage_and_the_message_id(store: Store) -> None:
    store.enqueue([queued("<a@x>", invoices=("I1", "I2"))], NOW)
    assert store.queued_balances() == {1: {"I1": "10.00", "I2": "10.00"}}
    store.withdraw(1)
    assert store.stages_sent() == {} and store.last_sent() == {} and store.due(NOW) == []
    with store.engine.begin() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(reminder_messages)).scalar() == 0
    assert ids(store.enqueue([queued("<a@x>", invoices=("I2",))], NOW)) == ["<a@x>"]


def test_withdraw_leaves_a_sent_reminder_alone(store: Store) -> None:
    (item,) = store.enqueue([queued("<a@x>")], NOW)
    store.mark(sending=[item.id], sent=[(item.id, NOW, "250 ok")])
    store.withdraw(item.id)
    (row,) = store.reminders_for()
    assert row["status"] == "sent" and row["raw"] == b"raw\r\n" and store.stages_sent() == {"I1": frozenset({"first"})}


def test_marks_leave_the_message_alone(store: Store) -> None:
    """The message is written once, apart from the row the marks rewrite (migration 0006)."""
    (item,) = store.enqueue([queued("<a@x>")], NOW)
    assert "raw" not in reminders.c
    store.mark(sending=[item.id])
    store.recover_interrupted()
    store.mark(sending=[item.id], sent=[(item.id, NOW, "250 ok")])
    assert [r["raw"] for r in store.reminders_for()] == [b"raw\r\n"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0007_moves_the_messages_out_of_the_reminders_row(backend: str, tmp_path: Path) -> None:
    with store_url(backend, tmp_path) as url:
        engine = sa.create_engine(url)
        with engine.begin() as c:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = c
            command.upgrade(config, "0005")
            c.execute(sa.text("INSERT INTO reminders (message_id, customer_id, contact, track, stage, language, "
                              "sender, recipients, subject, raw, status, attempts, created_at) VALUES ('<old@x>', "
                              "'C1', 'ap@c.test', 'standard', 'first', 'en', 'ar@us.test', '[\"ap@c.test\"]', 's', "
                              ":raw, 'queued', 0, :now)"), {"raw": b"old\r\n", "now": NOW.replace(tzinfo=None)})
            c.execute(sa.text("INSERT INTO reminder_invoices VALUES (1, 'I1', 'first', 'C1', '10.00')"))
        engine.dispose()
        store = Store.open(url)
        (due,) = store.due(NOW)
        assert (due.message_id, due.raw, due.invoice_ids) == ("<old@x>", b"old\r\n", ("I1",))
        assert "raw" not in {column["name"] for column in sa.inspect(store.engine).get_columns("reminders")}
        store.close()


def test_contacts_and_escalations(store: Store) -> None:
    store.mark_contact_invalid("AP@C.test", "550 no such user", NOW)
    store.mark_contact_invalid("ap@c.test", "550 again", NOW)
    assert store.invalid_contacts() == frozenset({"ap@c.test"})
    assert store.escalate("C1", "age", "90 days overdue", ["I1"], "agency", NOW) is True
    assert store.escalate("C1", "age", "91 days overdue", ["I1"], "agency", NOW) is False
    assert store.escalated_customers() == frozenset({"C1"})
    (esc,) = store.open_escalations()
    assert esc["created_at"] == NOW and esc["reason"] == "age"


def test_reopen_keeps_the_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    Store.open(url).enqueue([queued("<a@x>")], NOW)
    assert Store.open(url).threads() == {"C1": ("<a@x>",)}


def test_locked_store_stops_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = Store.open(f"sqlite:///{path}")
    store.engine.dispose()
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    fast = Store(sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1}))
    with pytest.raises(StoreError, match="could not record"):
        fast.enqueue([queued("<a@x>")], NOW)
    blocker.rollback()
    blocker.close()


def test_unopenable_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="cannot open the store"):
        Store.open(f"sqlite:///{tmp_path / 'f' / 'x.db'}")


def test_a_migration_killed_halfway_leaves_no_half_schema(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    script = ("import os, bot.store as s\n"
              "real = s._upgrade\n"
              "def killed(connection):\n"
              "    from alembic import command\n"
              "    from alembic.config import Config\n"
              "    config = Config(); config.set_main_option('script_location', str(s.MIGRATIONS))\n"
              "    config.attributes['connection'] = connection\n"
              "    command.upgrade(config, '0002')\n"
              "    os.kill(os.getpid(), 9)\n"
              "s._upgrade = killed\n"
              f"s.Store.open('sqlite:///{path}')\n")
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert died.returncode == -9
    store = Store.open(f"sqlite:///{path}")
    assert ids(store.enqueue([queued("<a@x>")], NOW)) == ["<a@x>"]


def test_only_one_sender_can_claim_a_reminder(store: Store) -> None:
    store.enqueue([queued("<a@x>"), queued("<b@x>", "C2", ("I2",))], NOW)
    first, second = store.due(NOW)
    assert store.mark_sending(first.id) is True
    assert store.mark_sending(first.id) is False
    assert store.mark(sending=[first.id, second.id]) == {second.id}


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_due_until_the_store_is_opened(backend: str, tmp_path: Path) -> None:
    with store_url(backend, tmp_path) as url:
        assert Store.migration_due(url)
        Store.open(url).close()
        assert not Store.migration_due(url)
    assert not Store.migration_due("sqlite:///:memory:")  # nothing to keep: opened and migrated in place


def test_a_write_that_reads_first_waits_for_the_lock_instead_of_failing(tmp_path: Path) -> None:
    """SQLite: a transaction that read while another connection committed cannot write at all, busy timeout or
    not; the store's read-then-write changes (an escalation here) take the write lock first and wait for it."""
    url = f"sqlite:///{tmp_path / 'dunbot.db'}"
    store, other = Store.open(url), Store.open(url)
    other.escalate("C0", "warm-up", "", ["I0"], "", NOW)

    def commit_meanwhile() -> None:
        other.escalate("C9", "meanwhile", "", ["I9"], "", NOW)

    def read_commit_write() -> None:
        with store.transaction() as c:
            c.execute(sa.text("SELECT count(*) FROM escalations")).scalar_one()
            commit_meanwhile()  # another connection commits after this one has read
            c.execute(sa.text("UPDATE escalations SET detail = 'x'"))

    with pytest.raises(StoreError, match="locked"):
        read_commit_write()

    with store.transaction(immediate=True) as c:
        c.execute(sa.text("SELECT count(*) FROM escalations")).scalar_one()
        meanwhile = threading.Thread(target=commit_meanwhile)
        meanwhile.start()
        meanwhile.join(0.3)
        assert meanwhile.is_alive(), "the other writer should wait for this transaction"
        c.execute(sa.text("UPDATE escalations SET detail = 'y'"))
    meanwhile.join(10)
    assert store.escalate("C1", "over 90 days", "", ["I1"], "", NOW) is True
    assert {r["customer_id"] for r in store.open_escalations()} >= {"C0", "C1", "C9"}
