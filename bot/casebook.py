"""The case of each customer: its state, its owner, and one timeline of everything that happened.

States: active (reminders running), paused (until a date), escalated (a person decides), payment_plan
(installments agreed), with_agency (handed to an agency or lawyer), resolved (paid, written off,
credited). Every change records who, when and why as a timeline event, in the same transaction as
the change itself. People act through `CaseBook` (the web page and the command line); the bot's own
changes go through `transition` from the store and the dunning pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.config import Settings
from bot.errors import DunbotError
from bot.schema import (
    case_events,
    cases,
    customers,
    escalations,
    feedback,
    holds,
    installments,
    reminders,
    replies,
)

if TYPE_CHECKING:  # bot.ledger loads Babel's currency list (2.5 MB); the store imports this module
    from bot.ledger import Invoice
    from bot.store import Store

STATES = ("active", "paused", "escalated", "payment_plan", "with_agency", "resolved")
STOPPED = frozenset({"escalated", "with_agency", "resolved"})
BOT = "dunbot"
RESOLUTIONS = ("paid", "written_off", "credited")
"""How a case can be closed by a person."""


class CaseError(DunbotError):
    """An action that does not fit the case (unknown customer, bad date, empty plan)."""


def transition(c: Connection, customer_id: str, state: str, *, actor: str, reason: str, now: datetime,
               until: datetime | None = None) -> None:
    """Move a case to `state` and record it; creates the case (owner from the customer snapshot) if new."""
    assert state in STATES, state
    current = c.execute(sa.select(cases.c.state, cases.c.owner).where(cases.c.customer_id == customer_id)).first()
    if current is None:
        owner = c.execute(sa.select(customers.c.owner).where(customers.c.customer_id == customer_id)).scalar()
        c.execute(cases.insert().values(customer_id=customer_id, state=state, reason=reason, owner=owner or "",
                                        since=now, until=until, actor=actor))
    else:
        c.execute(cases.update().where(cases.c.customer_id == customer_id).values(
            state=state, reason=reason, since=now, until=until, actor=actor))
    when = f" until {until.date().isoformat()}" if until else ""
    event(c, customer_id, actor=actor, kind="state", summary=f"{state}{when}: {reason}", now=now,
          detail={"state": state, "reason": reason, "until": until.isoformat() if until else None})


def event(c: Connection, customer_id: str, *, actor: str, kind: str, summary: str, now: datetime,
          detail: Mapping[str, Any] | None = None) -> None:
    c.execute(case_events.insert().values(customer_id=customer_id, at=now, actor=actor, kind=kind,
                                          summary=summary[:2000], detail=json.dumps(detail or {}, default=str)))


def state_of(c: Connection, customer_id: str) -> str | None:
    return c.execute(sa.select(cases.c.state).where(cases.c.customer_id == customer_id)).scalar()


def route_owner(customer: Mapping[str, Any], settings: Settings) -> str:
    """The ledger's account manager, else the first routing rule that fits, else the default owner."""
    rules = settings.cases
    manager = str(customer.get("account_manager") or "").strip()
    if manager:
        return rules.managers.get(manager, manager)
    amount = Decimal(str(customer.get("open_amount") or 0))
    for route in rules.routes:
        if route.tier and route.tier != customer.get("tier"):
            continue
        if route.country and route.country != customer.get("country"):
            continue
        if route.min_amount is not None and amount < route.min_amount:
            continue
        return route.owner
    return rules.default_owner


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a case's timeline."""

    at: datetime
    kind: str  # "reminder", "reply", "state", "note", "correction", "promise", "plan", "handwritten", ...
    actor: str
    summary: str
    detail: Mapping[str, Any]


class CaseBook:
    """Reads and changes cases for the people who work them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings

    # The customers, as the last dunning pass read them from the ledger.

    def refresh_customers(self, invoices: Iterable[Invoice], today: date, now: datetime) -> None:
        grouped: dict[str, list[Invoice]] = {}
        for invoice in invoices:
            grouped.setdefault(invoice.customer.customer_id, []).append(invoice)
        rows = []
        for cid, group in grouped.items():
            first = group[0].customer
            balances: dict[str, Decimal] = {}
            for invoice in group:
                balances[invoice.currency] = balances.get(invoice.currency, Decimal(0)) + invoice.balance
            row = {
                "customer_id": cid, "name": first.name, "contact_name": first.contact_name,
                "contact_email": first.contact_email, "language": first.language, "country": first.country,
                "account_manager": first.account_manager, "tier": first.tier,
                "balances": json.dumps({k: str(v) for k, v in sorted(balances.items())}),
                "open_amount": sum(balances.values(), Decimal(0)),
                "oldest_days": max((today - i.due_date).days for i in group),
                "invoices": json.dumps([{"invoice_id": i.invoice_id, "currency": i.currency, "amount": str(i.amount),
                                         "balance": str(i.balance), "issue_date": i.issue_date.isoformat(),
                                         "due_date": i.due_date.isoformat()} for i in group]),
                "updated_at": now,
            }
            row["owner"] = route_owner(row, self.settings)
            rows.append(row)
        with self.store.transaction(immediate=True) as c:
            c.execute(customers.update().values(balances="{}", open_amount=0, invoices="[]", updated_at=now))
            known = set(c.execute(sa.select(customers.c.customer_id)).scalars())
            fresh = [r for r in rows if r["customer_id"] not in known]
            old = [r for r in rows if r["customer_id"] in known]
            if fresh:
                c.execute(customers.insert(), fresh)
            if old:
                c.execute(customers.update().where(customers.c.customer_id == sa.bindparam("cid")),
                          [{**r, "cid": r["customer_id"]} for r in old])

    # Reading.

    def case(self, customer_id: str) -> dict[str, Any] | None:
        q = (sa.select(customers, cases.c.state, cases.c.reason, cases.c.since, cases.c.until,
                       cases.c.owner.label("case_owner"))
             .select_from(customers.outerjoin(cases, cases.c.customer_id == customers.c.customer_id))
             .where(customers.c.customer_id == customer_id))
        with self.store.engine.begin() as c:
            row = c.execute(q).first()
        return _case_row(row._mapping) if row else None

    def queue(self, *, owner: str | None = None, reason: str | None = None, language: str | None = None,
              state: str | None = "escalated", search: str | None = None, limit: int = 200,
              offset: int = 0) -> list[dict[str, Any]]:
        """Cases for a person, largest and oldest first; `search` matches customer id, name or an invoice."""
        q = (sa.select(customers, cases.c.state, cases.c.reason, cases.c.since, cases.c.until,
                       cases.c.owner.label("case_owner"))
             .select_from(cases.join(customers, cases.c.customer_id == customers.c.customer_id)))
        if state:
            q = q.where(cases.c.state == state)
        if owner:
            q = q.where(cases.c.owner == owner)
        if reason:
            q = q.where(cases.c.customer_id.in_(sa.select(escalations.c.customer_id)
                                               .where(escalations.c.resolved_at.is_(None))
                                               .where(escalations.c.reason == reason)))
        if language:
            q = q.where(customers.c.language == language)
        if search:
            like = f"%{search.strip().lower()}%"
            q = q.where(sa.or_(sa.func.lower(customers.c.name).like(like),
                               sa.func.lower(customers.c.customer_id).like(like),
                               sa.func.lower(customers.c.invoices).like(like)))
        q = q.order_by(customers.c.open_amount.desc(), customers.c.oldest_days.desc()).limit(limit).offset(offset)
        with self.store.engine.begin() as c:
            return [_case_row(r._mapping) for r in c.execute(q)]

    def open_escalation(self, customer_id: str) -> dict[str, Any] | None:
        with self.store.engine.begin() as c:
            row = c.execute(sa.select(escalations).where(escalations.c.customer_id == customer_id)
                            .where(escalations.c.resolved_at.is_(None)).order_by(escalations.c.id.desc())).first()
        return dict(row._mapping) if row else None

    def timeline(self, customer_id: str) -> list[Entry]:
        """Reminders, replies and every human or bot action on the case, oldest first."""
        entries: list[Entry] = []
        with self.store.engine.begin() as c:
            for r in c.execute(sa.select(reminders).where(reminders.c.customer_id == customer_id)):
                entries.append(Entry(r.sent_at or r.created_at, "reminder", BOT,
                                     f"{r.stage} reminder {r.status}: {r.subject}",
                                     {"id": r.id, "message_id": r.message_id, "status": r.status,
                                      "recipients": json.loads(r.recipients)}))
            corrected = dict(c.execute(sa.select(feedback.c.reply_id, feedback.c.intent)).all())
            for r in c.execute(sa.select(replies).where(replies.c.customer_id == customer_id)):
                document = json.loads(r.classification)
                entries.append(Entry(r.sent_at or r.created_at, "reply", r.sender,
                                     f"{r.intent} ({r.confidence:.0%}): {r.action}",
                                     {**document, "id": r.id, "subject": r.subject, "message_id": r.message_id,
                                      "corrected": corrected.get(r.id)}))
            for e in c.execute(sa.select(case_events).where(case_events.c.customer_id == customer_id)):
                entries.append(Entry(e.at, e.kind, e.actor, e.summary, json.loads(e.detail)))
        return sorted(entries, key=lambda e: e.at)

    def plan_installments(self, customer_id: str) -> list[dict[str, Any]]:
        with self.store.engine.begin() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(installments).where(installments.c.customer_id == customer_id)
                .where(installments.c.active.is_(True)).order_by(installments.c.seq))]

    # Acting. Each action is one transaction: the change and its timeline entry together.

    def _require(self, c: Connection, customer_id: str) -> str:
        state = state_of(c, customer_id)
        if state is None:
            if c.execute(sa.select(customers.c.customer_id).where(customers.c.customer_id == customer_id)).first():
                return "active"
            raise CaseError(f"no customer {customer_id!r} in the store (run `dunbot send` or `plan` first)")
        return state

    def _release(self, c: Connection, customer_id: str, actor: str, now: datetime) -> None:
        c.execute(holds.update().where(holds.c.customer_id == customer_id).where(holds.c.ended_at.is_(None))
                  .values(ended_at=now, outcome=f"lifted by {actor}"))
        c.execute(escalations.update().where(escalations.c.customer_id == customer_id)
                  .where(escalations.c.resolved_at.is_(None)).values(resolved_at=now))
        c.execute(installments.update().where(installments.c.customer_id == customer_id).values(active=False))

    def resume(self, customer_id: str, actor: str, now: datetime, reason: str = "resumed by hand") -> None:
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            self._release(c, customer_id, actor, now)
            transition(c, customer_id, "active", actor=actor, reason=reason, now=now)

    def pause(self, customer_id: str, until: datetime, reason: str, actor: str, now: datetime) -> None:
        if until <= now:
            raise CaseError(f"pause until {until.date().isoformat()} is not in the future")
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            self._release(c, customer_id, actor, now)
            c.execute(holds.insert().values(customer_id=customer_id, kind="manual", reason=reason, until=until,
                                            created_at=now))
            transition(c, customer_id, "paused", actor=actor, reason=reason, now=now, until=until)

    def promise(self, customer_id: str, on: date, amount: Decimal | None, actor: str, now: datetime) -> None:
        zone = ZoneInfo(self.settings.company.timezone)
        until = datetime.combine(on + timedelta(days=self.settings.triage.promise_grace_days + 1), time(0), zone)
        if on < now.astimezone(zone).date():
            raise CaseError(f"a promise for {on.isoformat()} is in the past")
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            self._release(c, customer_id, actor, now)
            c.execute(holds.insert().values(customer_id=customer_id, kind="promise", until=until,
                                            reason=f"promised to pay on {on.isoformat()}",
                                            amount=str(amount) if amount is not None else None, created_at=now))
            event(c, customer_id, actor=actor, kind="promise", now=now,
                  summary=f"promise recorded: {amount or 'the balance'} on {on.isoformat()}",
                  detail={"date": on.isoformat(), "amount": str(amount) if amount is not None else None})
            transition(c, customer_id, "paused", actor=actor, reason=f"promise for {on.isoformat()}", now=now,
                       until=until)

    def set_plan(self, customer_id: str, parts: list[tuple[date, Decimal]], currency: str, actor: str,
                 now: datetime) -> None:
        """Agree installments; the bot then reminds per installment with the usual stages."""
        if not parts or any(amount <= 0 for _, amount in parts):
            raise CaseError("a payment plan needs at least one installment, each with a positive amount")
        dates = [d for d, _ in parts]
        if dates != sorted(set(dates)):
            raise CaseError("installment dates must be distinct and in order")
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            balances = json.loads(c.execute(sa.select(customers.c.balances)
                                            .where(customers.c.customer_id == customer_id)).scalar() or "{}")
            start = Decimal(balances.get(currency, "0"))
            total = sum((a for _, a in parts), Decimal(0))
            if total != start:
                raise CaseError(f"the installments add up to {total} {currency}, but {start} {currency} is owed")
            self._release(c, customer_id, actor, now)
            number = (c.execute(sa.select(sa.func.max(installments.c.plan))
                                .where(installments.c.customer_id == customer_id)).scalar() or 0) + 1
            c.execute(installments.insert(), [
                {"customer_id": customer_id, "plan": number, "seq": i + 1, "due_date": d, "amount": str(a),
                 "currency": currency, "start_balance": str(start), "active": True}
                for i, (d, a) in enumerate(parts)])
            summary = ", ".join(f"{a} on {d.isoformat()}" for d, a in parts)
            event(c, customer_id, actor=actor, kind="plan", now=now, summary=f"payment plan: {summary} ({currency})",
                  detail={"installments": [[d.isoformat(), str(a)] for d, a in parts], "currency": currency})
            transition(c, customer_id, "payment_plan", actor=actor, reason=f"{len(parts)} installments", now=now)

    def resolve(self, customer_id: str, how: str, actor: str, now: datetime) -> None:
        if how not in RESOLUTIONS:
            raise CaseError(f"resolve as paid, written_off or credited, not {how!r}")
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            self._release(c, customer_id, actor, now)
            transition(c, customer_id, "resolved", actor=actor, reason=how.replace("_", " "), now=now)

    def agency(self, customer_id: str, who: str, actor: str, now: datetime) -> None:
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            self._release(c, customer_id, actor, now)
            transition(c, customer_id, "with_agency", actor=actor, reason=f"handed to {who or 'an agency'}", now=now)

    def escalate(self, customer_id: str, why: str, actor: str, now: datetime) -> None:
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            c.execute(escalations.insert().values(customer_id=customer_id, reason="by_hand", detail=why,
                                                  invoice_ids="[]", recommendation="", created_at=now))
            transition(c, customer_id, "escalated", actor=actor, reason=why, now=now)

    def note(self, customer_id: str, text: str, actor: str, now: datetime) -> None:
        if not text.strip():
            raise CaseError("a note needs some text")
        with self.store.engine.begin() as c:
            self._require(c, customer_id)
            event(c, customer_id, actor=actor, kind="note", summary=text.strip(), now=now)

    def corrected_replies(self) -> list[dict[str, Any]]:
        """Every reply a person corrected, with the right reading: a labelled set for `dunbot triage eval`."""
        q = (sa.select(replies.c.id, replies.c.raw, replies.c.language, feedback.c.intent, feedback.c.promised_date)
             .join(feedback, feedback.c.reply_id == replies.c.id).order_by(replies.c.id))
        with self.store.engine.begin() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def correct(self, reply_id: int, intent: str, promised_date: date | None, actor: str, now: datetime) -> str:
        """Record the right reading of a reply, kept as feedback for `dunbot triage eval`; returns the customer."""
        with self.store.engine.begin() as c:
            row = c.execute(sa.select(replies.c.customer_id, replies.c.intent).where(replies.c.id == reply_id)).first()
            if row is None:
                raise CaseError(f"no reply {reply_id}")
            c.execute(feedback.delete().where(feedback.c.reply_id == reply_id))
            c.execute(feedback.insert().values(reply_id=reply_id, intent=intent, promised_date=promised_date,
                                               actor=actor, at=now))
            event(c, row.customer_id, actor=actor, kind="correction", now=now,
                  summary=f"reply {reply_id} is {intent}, not {row.intent}",
                  detail={"reply_id": reply_id, "intent": intent, "was": row.intent})
        return str(row.customer_id)


def _case_row(mapping: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(mapping)
    row["balances"] = json.loads(row.get("balances") or "{}")
    row["invoices"] = json.loads(row.get("invoices") or "[]")
    row["state"] = row.get("state") or "active"
    row["owner"] = row.get("case_owner") or row.get("owner") or ""
    return row
