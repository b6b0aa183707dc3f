"""The store's tables: one place that says what the bot remembers. Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the dialect stores."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, _dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, _dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

reminders = sa.Table(
    "reminders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(255), nullable=False, unique=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("contact", sa.String(320), nullable=False),
    sa.Column("track", sa.String(40), nullable=False),
    sa.Column("stage", sa.String(40), nullable=False),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("sender", sa.String(320), nullable=False),
    sa.Column("recipients", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("server_reply", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
)

# The exact bytes of each reminder (migration 0007), written once at enqueue: a status mark rewrites only the
# small `reminders` row above, not the ~8 KB message.
reminder_messages = sa.Table(
    "reminder_messages", metadata,
    sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True,
              autoincrement=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
)

reminder_invoices = sa.Table(
    "reminder_invoices", metadata,
    sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("invoice_id", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(40), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("balance", sa.String(40), nullable=False),
    sa.UniqueConstraint("invoice_id", "stage", name="uq_invoice_stage"),
)

contacts = sa.Table(
    "contacts", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

escalations = sa.Table(
    "escalations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("reason", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("invoice_ids", sa.Text, nullable=False),
    sa.Column("recommendation", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.Column("reply_id", sa.Integer, nullable=True),
)

replies = sa.Table(
    "replies", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(998), nullable=False, unique=True),
    sa.Column("customer_id", sa.String(64), nullable=True, index=True),
    sa.Column("matched_by", sa.String(16), nullable=True),
    sa.Column("sender", sa.String(320), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("intent", sa.String(20), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("escalate", sa.Boolean, nullable=False),
    sa.Column("classification", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

holds = sa.Table(
    "holds", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("until", UTCDateTime, nullable=False),
    sa.Column("amount", sa.String(40), nullable=True),
    sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id"), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),
)

flags = sa.Table(
    "flags", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id"), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("done_at", UTCDateTime, nullable=True),
)

inbox_state = sa.Table(
    "inbox_state", metadata,
    sa.Column("folder", sa.String(255), primary_key=True),
    sa.Column("uidvalidity", sa.BigInteger, nullable=False),
    sa.Column("last_uid", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

customers = sa.Table(
    "customers", metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("contact_name", sa.Text, nullable=False),
    sa.Column("contact_email", sa.String(320), nullable=False),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("account_manager", sa.Text, nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(40), nullable=False),
    sa.Column("balances", sa.Text, nullable=False),
    sa.Column("open_amount", sa.Numeric(18, 2), nullable=False),
    sa.Column("oldest_days", sa.Integer, nullable=False),
    sa.Column("invoices", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

cases = sa.Table(
    "cases", metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("until", UTCDateTime, nullable=True),
    sa.Column("actor", sa.String(64), nullable=False),
)

case_events = sa.Table(
    "case_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

users = sa.Table(
    "users", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

installments = sa.Table(
    "installments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("plan", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("amount", sa.String(40), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("start_balance", sa.String(40), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.UniqueConstraint("customer_id", "plan", "seq", name="uq_installment"),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id"), primary_key=True),
    sa.Column("intent", sa.String(20), nullable=False),
    sa.Column("promised_date", sa.Date, nullable=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(255), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=True, index=True),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
)

# ---- The daemon (migration 0005): its heartbeat and state for `dunbot status`, and the ledger's last good shape.

daemon_status = sa.Table(
    "daemon_status", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

ledger_checks = sa.Table(
    "ledger_checks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("open_count", sa.Integer, nullable=False),
    sa.Column("vanished", sa.Integer, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("invoice_ids", sa.LargeBinary, nullable=True),
)

# ---- Matching replies (migration 0006): what a reply can name to be matched to a reminder, looked up on demand
# instead of held in memory. Only reminders about invoices are here (the others never matched a reply); the keys
# are folded in Python (lower() and upper() differ between Python, SQLite and PostgreSQL outside ASCII).

reminder_addresses = sa.Table(
    "reminder_addresses", metadata,
    sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("address", sa.String(320), primary_key=True),  # a recipient, str.lower()
    sa.Column("domain", sa.String(320), nullable=False, index=True),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Index("ix_reminder_addresses_address", "address", "reminder_id"),
)

reminder_invoice_keys = sa.Table(
    "reminder_invoice_keys", metadata,
    sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),  # the invoice id, str.upper()
    sa.Column("digits", sa.String(64), nullable=True, index=True),  # its digits alone ("invoice 1042")
    sa.Column("plain", sa.Boolean, nullable=False, index=True),  # ASCII without "`": folds to key.lower()
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Index("ix_reminder_invoice_keys_key", "key", "reminder_id"),
)
