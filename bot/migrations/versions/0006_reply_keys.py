"""What a reply can be matched by (recipient addresses, invoice keys), indexed, so the inbox looks them up on demand.

Filled here for the reminders already recorded, and by the store with each new reminder.

Revision ID: 0006
Revises: 0005
"""

import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 2000


def upgrade() -> None:
    addresses = op.create_table(
        "reminder_addresses",
        sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("domain", sa.String(320), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_reminder_addresses_domain", "reminder_addresses", ["domain"])
    op.create_index("ix_reminder_addresses_address", "reminder_addresses", ["address", "reminder_id"])
    keys = op.create_table(
        "reminder_invoice_keys",
        sa.Column("reminder_id", sa.Integer, sa.ForeignKey("reminders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("digits", sa.String(64), nullable=True),
        sa.Column("plain", sa.Boolean, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_reminder_invoice_keys_digits", "reminder_invoice_keys", ["digits"])
    op.create_index("ix_reminder_invoice_keys_plain", "reminder_invoice_keys", ["plain"])
    op.create_index("ix_reminder_invoice_keys_key", "reminder_invoice_keys", ["key", "reminder_id"])
    _fill(op.get_bind(), addresses, keys)


def _fill(connection: sa.Connection, addresses: sa.Table, keys: sa.Table) -> None:
    """The same keys as bot.store.reply_keys, for every reminder with invoices, in batches of reminders."""
    reminders = sa.table("reminders", sa.column("id", sa.Integer), sa.column("customer_id", sa.String),
                         sa.column("recipients", sa.Text))
    links = sa.table("reminder_invoices", sa.column("reminder_id", sa.Integer), sa.column("invoice_id", sa.String))
    after = 0
    while True:
        batch = connection.execute(sa.select(reminders.c.id, reminders.c.customer_id, reminders.c.recipients)
                                   .where(reminders.c.id > after).order_by(reminders.c.id).limit(_BATCH)).all()
        if not batch:
            return
        after = batch[-1].id
        invoices: dict[int, list[str]] = {}
        for rid, invoice_id in connection.execute(sa.select(links.c.reminder_id, links.c.invoice_id)
                                                  .where(links.c.reminder_id.in_([r.id for r in batch]))):
            invoices.setdefault(rid, []).append(invoice_id)
        address_rows, key_rows = [], []
        for rid, customer_id, recipients in batch:
            if rid not in invoices:
                continue
            for address in dict.fromkeys(a.lower() for a in json.loads(recipients)):
                address_rows.append({"reminder_id": rid, "address": address, "domain": address.rpartition("@")[2],
                                     "customer_id": customer_id})
            for key in dict.fromkeys(i.upper() for i in invoices[rid]):
                key_rows.append({"reminder_id": rid, "key": key, "digits": re.sub(r"\D", "", key) or None,
                                 "plain": key.isascii() and "`" not in key, "customer_id": customer_id})
        if address_rows:
            connection.execute(addresses.insert(), address_rows)
        if key_rows:
            connection.execute(keys.insert(), key_rows)


def downgrade() -> None:
    op.drop_table("reminder_invoice_keys")
    op.drop_table("reminder_addresses")
