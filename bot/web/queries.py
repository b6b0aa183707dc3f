"""The few reads the pages need that `CaseBook` does not offer, each one short query.

Kept apart so the pages stay free of SQL and so it is plain what the web reads directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bot.schema import cases, escalations, reminders, replies, users
from bot.store import Store


def state_counts(store: Store, owner: str | None) -> dict[str, int]:
    """How many cases are in each state, for one owner or for everyone."""
    q = sa.select(cases.c.state, sa.func.count()).group_by(cases.c.state)
    if owner:
        q = q.where(cases.c.owner == owner)
    with store.engine.begin() as c:
        return {state: int(n) for state, n in c.execute(q)}


def open_reasons(store: Store, customer_ids: Sequence[str]) -> dict[str, str]:
    """The reason of each customer's open escalation (dispute, age, ...), for one page of the queue."""
    if not customer_ids:
        return {}
    q = (sa.select(escalations.c.customer_id, escalations.c.reason)
         .where(escalations.c.customer_id.in_(list(customer_ids))).where(escalations.c.resolved_at.is_(None))
         .order_by(escalations.c.id))
    with store.engine.begin() as c:
        return dict(c.execute(q).all())  # type: ignore[arg-type]


def owners(store: Store) -> list[str]:
    """Everyone a case can belong to: the users, and owners named by routing who have no log-in yet."""
    with store.engine.begin() as c:
        names = set(c.execute(sa.select(users.c.username)).scalars())
        names.update(c.execute(sa.select(cases.c.owner).distinct()).scalars())
    return sorted(n for n in names if n)


def reply_customer(store: Store, reply_id: int) -> str | None:
    with store.engine.begin() as c:
        return c.execute(sa.select(replies.c.customer_id).where(replies.c.id == reply_id)).scalar()


@dataclass(frozen=True, slots=True)
class Mail:
    """One message of a case's email thread, ours or the customer's."""

    at: datetime
    message_id: str
    subject: str


def thread(store: Store, customer_id: str) -> list[Mail]:
    """The case's messages oldest first: what a hand-written reply threads onto."""
    with store.engine.begin() as c:
        ours = c.execute(sa.select(reminders.c.sent_at, reminders.c.created_at, reminders.c.message_id,
                                   reminders.c.subject)
                         .where(reminders.c.customer_id == customer_id)
                         .where(reminders.c.status != "failed")).all()
        theirs = c.execute(sa.select(replies.c.sent_at, replies.c.created_at, replies.c.message_id, replies.c.subject)
                           .where(replies.c.customer_id == customer_id)).all()
    return sorted((Mail(sent or created, mid, subject) for sent, created, mid, subject in (*ours, *theirs)),
                  key=lambda m: m.at)
