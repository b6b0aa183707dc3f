"""The daemon's state for `dunbot status`, and the ledger sanity check's memory of the last good ledger.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from bot.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemon_status",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "ledger_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("open_count", sa.Integer, nullable=False),
        sa.Column("vanished", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("invoice_ids", sa.LargeBinary, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ledger_checks")
    op.drop_table("daemon_status")
