"""Replies and what was decided about them; holds, flags and the inbox position.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replies",
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
    op.create_table(
        "holds",
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
    op.create_table(
        "flags",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id"), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("done_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "inbox_state",
        sa.Column("folder", sa.String(255), primary_key=True),
        sa.Column("uidvalidity", sa.BigInteger, nullable=False),
        sa.Column("last_uid", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("escalations") as batch:
        batch.add_column(sa.Column("reply_id", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("escalations") as batch:
        batch.drop_column("reply_id")
    for table in ("inbox_state", "flags", "holds", "replies"):
        op.drop_table(table)
