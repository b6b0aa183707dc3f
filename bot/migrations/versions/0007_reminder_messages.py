"""The message bytes of each reminder in a table of their own, written once when the reminder is queued.

Each status mark (queued -> sending -> sent) used to rewrite the whole `reminders` row, ~8 KB of message
included; now it rewrites ~100 bytes. Existing messages are moved, not lost. The column is dropped with
a plain ALTER TABLE (SQLite 3.35 or later): batch mode would rebuild `reminders`, and with foreign keys
on, dropping the old table would cascade to `reminder_invoices`.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reminder_messages",
        sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True,
                  autoincrement=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.execute("INSERT INTO reminder_messages (reminder_id, raw) SELECT id, raw FROM reminders")
    op.drop_column("reminders", "raw")


def downgrade() -> None:
    # Nullable on the way back: SQLite cannot add a NOT NULL column without a default to a filled table.
    op.add_column("reminders", sa.Column("raw", sa.LargeBinary, nullable=True))
    op.execute("UPDATE reminders SET raw = (SELECT m.raw FROM reminder_messages m WHERE m.reminder_id = reminders.id)")
    op.drop_table("reminder_messages")
