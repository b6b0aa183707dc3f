"""The daemon's state in the store (`daemon_status`, key -> JSON): written by its heartbeat, read by `dunbot status`,
which must work when the daemon is down.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from bot.schema import daemon_status, reminders
from bot.store import QUEUED, SENDING, Store


def write_status(store: Store, values: dict[str, Any], now: datetime) -> None:
    """Upsert `daemon_status` rows (key -> JSON) in one transaction."""
    with store.transaction() as c:
        for key, value in values.items():
            text = json.dumps(value, default=str, ensure_ascii=False)
            if not c.execute(daemon_status.update().where(daemon_status.c.key == key)
                             .values(value=text, updated_at=now)).rowcount:
                c.execute(daemon_status.insert().values(key=key, value=text, updated_at=now))


def read_status(store: Store) -> dict[str, Any]:
    with store.transaction() as c:
        return {k: json.loads(v) for k, v in c.execute(sa.select(daemon_status.c.key, daemon_status.c.value))}


def outbox_state(store: Store, now: datetime) -> dict[str, Any]:
    """Depth by status and the age of the oldest reminder still queued."""
    counts = store.counts()
    with store.transaction() as c:
        oldest = c.execute(sa.select(sa.func.min(reminders.c.created_at))
                           .where(reminders.c.status.in_((QUEUED, SENDING)))).scalar()
    age = (now - (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC))).total_seconds() if oldest else 0.0
    return {"counts": counts, "oldest_queued_seconds": max(age, 0.0)}


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
