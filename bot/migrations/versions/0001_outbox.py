"""The outbox, contacts and escalations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reminders",
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
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("server_reply", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "reminder_invoices",
        sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("invoice_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False, index=True),
        sa.Column("balance", sa.String(40), nullable=False),
        sa.UniqueConstraint("invoice_id", "stage", name="uq_invoice_stage"),
    )
    op.create_table(
        "contacts",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "escalations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False, index=True),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("invoice_ids", sa.Text, nullable=False),
        sa.Column("recommendation", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("resolved_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    for table in ("escalations", "contacts", "reminder_invoices", "reminders"):
        op.drop_table(table)
