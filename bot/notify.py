"""Tell the people who own cases: a notice when a case is escalated, and a daily digest of what is open.

Exactly once, like the reminders: a notification is rendered and committed ("queued") with a
deterministic Message-ID (the escalation's for a notice, owner and date for a digest; the column is
unique) before a byte is sent, marked "sending" just before the SMTP transaction and "sent" after.
Two passes racing queue it once; a crash mid-send sends it again, the one window for a duplicate.

Both go to the owner in their language (users.language; the company language if the templates lack
it), from templates operators edit like the reminders': `<lang>/notify_escalation/` and
`<lang>/notify_digest/`. They carry Auto-Submitted: auto-generated, so an owner's out-of-office
answer does not land in the bot's inbox.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.config import Settings
from bot.errors import ConfigurationFailure, PermanentFailure, StoreError, TemplateError, TemporaryFailure
from bot.messages import POLICY, Rendered, address
from bot.outbox import Retry
from bot.schema import cases, customers, escalations, notifications, replies
from bot.store import Store
from bot.transports import Envelope, Transport
from bot.users import User, all_users

if TYPE_CHECKING:  # rendering notices runs in the daemon's child process (bot/offload.py); the daemon delivers them
    from bot.templates import TemplateProblem, Templates

log = logging.getLogger(__name__)

ESCALATION, DIGEST = "escalation", "digest"
TEMPLATES = {ESCALATION: "notify_escalation", DIGEST: "notify_digest"}
QUEUED, SENDING, SENT, FAILED = "queued", "sending", "sent", "failed"
DIGEST_HOUR = 8  # company time: a digest waits for the start of a working day, whenever the first pass runs
_BREAKER = 3     # consecutive temporary failures that end a pass: the server is down, not the message


# ---- Message-IDs: the same escalation or owner-day always gives the same id -------------------------------


def _digest(text: str, size: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def notice_message_id(escalation_id: int, customer_id: str, domain: str) -> str:
    return f"<dunbot.notice.{escalation_id}.{_digest(customer_id, 8)}@{domain}>"


def digest_message_id(owner: str, day: date, domain: str) -> str:
    return f"<dunbot.digest.{_digest(owner)}.{day.isoformat()}@{domain}>"


# ---- Template contexts: pure, from plain rows --------------------------------------------------------------


def _owner(user: User) -> dict[str, str]:
    return {"username": user.username, "display_name": user.display_name or user.username, "email": user.email}


def case_link(settings: Settings, customer_id: str) -> str:
    return f"{settings.cases.base_url}/cases/{quote(customer_id, safe='')}"


def _customer(row: Mapping[str, Any], today: date) -> dict[str, Any]:
    """The customer as templates see it, with invoices most overdue first and days counted to `today`."""
    invoices = sorted(({
        "id": i["invoice_id"], "currency": i["currency"], "amount": Decimal(i["amount"]),
        "balance": Decimal(i["balance"]), "issue_date": date.fromisoformat(i["issue_date"]),
        "due_date": date.fromisoformat(i["due_date"]),
        "days_overdue": (today - date.fromisoformat(i["due_date"])).days,
    } for i in json.loads(row.get("invoices") or "[]")), key=lambda i: -i["days_overdue"])
    balances = json.loads(row.get("balances") or "{}")
    return {
        "customer": {k: row.get(k) or "" for k in ("customer_id", "name", "contact_name", "contact_email", "country",
                                                  "account_manager", "tier")},
        "invoices": invoices,
        "totals": [{"currency": c, "balance": Decimal(balances[c])} for c in sorted(balances)],
        "days_overdue": max((i["days_overdue"] for i in invoices), default=int(row.get("oldest_days") or 0)),
        "open_amount": Decimal(str(row.get("open_amount") or 0)),
    }


def escalation_context(escalation: Mapping[str, Any], customer: Mapping[str, Any], reply: Mapping[str, Any] | None,
                       user: User, settings: Settings, now: datetime) -> dict[str, Any]:
    """What notify_escalation/* see; the comment at the top of its body.txt lists it for operators."""
    zone = ZoneInfo(settings.company.timezone)
    today = now.astimezone(zone).date()
    words, answer = "", None
    if reply is not None:
        words = str(json.loads(reply.get("classification") or "{}").get("new_text") or "").strip()
        sent = reply.get("sent_at") or reply.get("created_at")
        answer = {"sender": reply.get("sender") or "", "subject": reply.get("subject") or "",
                  "date": sent.astimezone(zone).date() if sent else today, "intent": reply.get("intent") or ""}
    return {
        "company": settings.company, "owner": _owner(user), **_customer(customer, today),
        "reason": escalation["reason"], "detail": escalation.get("detail") or "",
        "step": escalation.get("recommendation") or "", "words": words, "reply": answer,
        "escalated_on": escalation["created_at"].astimezone(zone).date(),
        "link": case_link(settings, str(customer.get("customer_id") or escalation["customer_id"])),
        "today": today,
    }


def digest_context(items: list[tuple[Mapping[str, Any], Mapping[str, Any]]], user: User, settings: Settings,
                   now: datetime) -> dict[str, Any]:
    """What notify_digest/* see: `cases` oldest first, then largest (one currency-blind open amount)."""
    zone = ZoneInfo(settings.company.timezone)
    today = now.astimezone(zone).date()
    rows = []
    totals: dict[str, Decimal] = {}
    for escalation, customer in items:
        view = _customer(customer, today)
        since = escalation["created_at"].astimezone(zone).date()
        rows.append({**view, "reason": escalation["reason"], "detail": escalation.get("detail") or "",
                     "step": escalation.get("recommendation") or "", "escalated_on": since,
                     "waiting_days": (today - since).days,
                     "link": case_link(settings, str(customer.get("customer_id") or escalation["customer_id"]))})
        for total in view["totals"]:
            totals[total["currency"]] = totals.get(total["currency"], Decimal(0)) + total["balance"]
    rows.sort(key=lambda r: (-r["days_overdue"], -r["open_amount"], r["customer"]["customer_id"]))
    return {"company": settings.company, "owner": _owner(user), "cases": rows, "count": len(rows),
            "totals": [{"currency": c, "balance": totals[c]} for c in sorted(totals)],
            "queue_link": f"{settings.cases.base_url}/cases", "today": today}


def render(templates: Templates, kind: str, language: str, ctx: Mapping[str, Any], settings: Settings) -> Rendered:
    """Render in `language`, or the company language when its folder is incomplete; raises TemplateError."""
    from bot.policy import locale_for

    template = TEMPLATES[kind]
    used = templates.language_for(language if language in settings.languages else settings.company.language,
                                  template)
    full = {**ctx, "language": used, "locale": locale_for(used, settings.company.country)}
    return templates.render_folder(f"{used}/{template}", full)


def compose(message_id: str, user: User, rendered: Rendered, settings: Settings, now: datetime, kind: str) -> bytes:
    company = settings.company
    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = message_id
    msg["Date"] = format_datetime(now)
    msg["From"] = address(f"Dunbot ({company.name})", company.email)
    msg["To"] = address(user.display_name or user.username, user.email)
    msg["Subject"] = rendered.subject
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = f"dunbot@{company.message_id_domain}"
    msg["X-Dunbot-Notification"] = kind
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


# ---- Queueing ----------------------------------------------------------------------------------------------


def _recipient(owner: str, users: Mapping[str, User], what: str, skipped: list[str] | None) -> User | None:
    user = users.get(owner)
    if user is not None and "@" in user.email:
        return user
    why = (f"{what}: owner {owner!r} is not a user" if user is None else f"{what}: user {owner!r} has no email")
    why += f" (`dunbot users add {owner or 'NAME'} --email ...`); nothing sent"
    log.warning("%s", why)
    if skipped is not None:
        skipped.append(why)
    return None


def queue_notification(store: Store, message_id: str, kind: str, owner: str, user: User, customer_id: str | None,
                       raw: bytes, now: datetime) -> bool:
    """Record one notification; False when another pass recorded it first (the Message-ID is unique)."""
    try:
        with store.transaction() as c:
            c.execute(notifications.insert().values(
                message_id=message_id, kind=kind, owner=owner, recipient=user.email, customer_id=customer_id,
                raw=raw, created_at=now, status=QUEUED, attempts=0))
    except IntegrityError:
        log.info("notification %s was already queued; skipped", message_id)
        return False
    return True


def _existing(c: Connection, message_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(message_ids), 500):
        chunk = message_ids[i:i + 500]
        found.update(c.execute(sa.select(notifications.c.message_id)
                               .where(notifications.c.message_id.in_(chunk))).scalars())
    return found


def _owner_of(case_owner: str | None, customer: Mapping[str, Any] | None) -> str:
    return case_owner or (customer or {}).get("owner") or ""


def queue_escalation_notices(store: Store, settings: Settings, now: datetime, *,
                             skipped: list[str] | None = None) -> int:
    """Queue a notice for each open escalation that has none yet; returns how many were queued.

    An owner without a user or an email is logged and appended to `skipped`; the escalation is tried
    again on the next pass, so adding the user later still brings the notice.
    """
    domain = settings.company.message_id_domain
    with store.transaction() as c:
        rows = [dict(r._mapping) for r in c.execute(
            sa.select(escalations, cases.c.owner.label("case_owner"))
            .select_from(escalations.outerjoin(cases, cases.c.customer_id == escalations.c.customer_id))
            .where(escalations.c.resolved_at.is_(None)).order_by(escalations.c.id))]
        ids = {notice_message_id(r["id"], r["customer_id"], domain): r for r in rows}
        done = _existing(c, list(ids))
        pending = [(mid, r) for mid, r in ids.items() if mid not in done]
        wanted = {r["customer_id"] for _, r in pending}
        snapshot = {r.customer_id: dict(r._mapping) for r in c.execute(
            sa.select(customers).where(customers.c.customer_id.in_(wanted)))} if wanted else {}
        reply_ids = [r["reply_id"] for _, r in pending if r["reply_id"]]
        answers = {r.id: dict(r._mapping) for r in c.execute(
            sa.select(replies.c.id, replies.c.sender, replies.c.subject, replies.c.sent_at, replies.c.created_at,
                      replies.c.intent, replies.c.classification).where(replies.c.id.in_(reply_ids)))}
    if not pending:
        return 0
    users = {u.username: u for u in all_users(store)}
    from bot.templates import Templates

    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    queued = 0
    for message_id, esc in pending:
        cid = esc["customer_id"]
        customer = snapshot.get(cid) or {"customer_id": cid, "name": cid}
        owner = _owner_of(esc["case_owner"], snapshot.get(cid))
        user = _recipient(owner, users, f"escalation {esc['id']} of customer {cid}", skipped)
        if user is None:
            continue
        try:
            ctx = escalation_context(esc, customer, answers.get(esc["reply_id"]), user, settings, now)
            rendered = render(templates, ESCALATION, user.language, ctx, settings)
        except TemplateError as exc:
            log.error("no notice for escalation %d of customer %s: %s", esc["id"], cid, exc)
            if skipped is not None:
                skipped.append(f"escalation {esc['id']} of customer {cid}: {exc}")
            continue
        raw = compose(message_id, user, rendered, settings, now, ESCALATION)
        if queue_notification(store, message_id, ESCALATION, owner, user, cid, raw, now):
            queued += 1
    return queued


def digest_due(settings: Settings, now: datetime) -> bool:
    """Digests go out on the company's working days, from DIGEST_HOUR on."""
    local = now.astimezone(ZoneInfo(settings.company.timezone))
    return local.hour >= DIGEST_HOUR and local.weekday() in settings.schedule.window.working_days


def queue_digests(store: Store, settings: Settings, now: datetime, *, skipped: list[str] | None = None) -> int:
    """Queue today's digest for each owner with open escalations, once a day; returns how many were queued."""
    if not digest_due(settings, now):
        return 0
    today = now.astimezone(ZoneInfo(settings.company.timezone)).date()
    domain = settings.company.message_id_domain
    with store.transaction() as c:
        rows = c.execute(
            sa.select(escalations, cases.c.owner.label("case_owner"), customers)
            .select_from(escalations.join(cases, cases.c.customer_id == escalations.c.customer_id)
                         .outerjoin(customers, customers.c.customer_id == escalations.c.customer_id))
            .where(escalations.c.resolved_at.is_(None)).where(cases.c.state == "escalated")
            .order_by(escalations.c.id)).all()
        by_owner: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {}
        for row in rows:
            m = row._mapping
            esc = {k: m[escalations.c[k]] for k in escalations.c.keys()}  # noqa: SIM118
            customer = {k: m[customers.c[k]] for k in customers.c.keys()}  # noqa: SIM118
            customer["customer_id"] = customer["customer_id"] or esc["customer_id"]
            owner = _owner_of(m["case_owner"], customer)
            by_owner.setdefault(owner, {})[esc["customer_id"]] = (esc, customer)  # the latest per customer
        ids = {digest_message_id(owner, today, domain): owner for owner in by_owner}
        done = _existing(c, list(ids))
    users = {u.username: u for u in all_users(store)}
    from bot.templates import Templates

    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    queued = 0
    for message_id, owner in sorted(ids.items(), key=lambda kv: kv[1]):
        if message_id in done:
            continue
        user = _recipient(owner, users, f"digest of {len(by_owner[owner])} open escalations", skipped)
        if user is None:
            continue
        try:
            ctx = digest_context(list(by_owner[owner].values()), user, settings, now)
            rendered = render(templates, DIGEST, user.language, ctx, settings)
        except TemplateError as exc:
            log.error("no digest for %s: %s", owner, exc)
            if skipped is not None:
                skipped.append(f"digest for {owner}: {exc}")
            continue
        raw = compose(message_id, user, rendered, settings, now, DIGEST)
        if queue_notification(store, message_id, DIGEST, owner, user, None, raw, now):
            queued += 1
    return queued


# ---- Delivery: the outbox's rules (record, send, mark; retry with backoff; stop when the store fails) ------


@dataclass(slots=True)
class Delivery:
    """What a delivery pass did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    interrupted: list[str] = field(default_factory=list)
    aborted: str | None = None


def _mark(store: Store, nid: int, **values: Any) -> None:
    with store.transaction() as c:
        c.execute(notifications.update().where(notifications.c.id == nid).values(**values))


def _sender(raw: bytes) -> str:
    """The envelope sender is the From we wrote: the row keeps only the bytes, sent as they were recorded."""
    head = raw[:64 * 1024].split(b"\r\n\r\n", 1)[0]
    return parseaddr(str(BytesHeaderParser(policy=compat32).parsebytes(head).get("From", "")))[1]


async def deliver_notifications(store: Store, transport: Transport, clock: Callable[[], datetime],
                                retry: Retry) -> Delivery:
    """Send every due notification through an opened transport; the caller opens and closes it."""
    report = Delivery()
    with store.transaction() as c:
        stuck = c.execute(sa.select(notifications.c.id, notifications.c.message_id)
                          .where(notifications.c.status == SENDING)).all()
        if stuck:
            c.execute(notifications.update().where(notifications.c.status == SENDING).values(status=QUEUED))
    for _nid, message_id in stuck:
        report.interrupted.append(message_id)
        log.warning("notification %s was being sent when Dunbot stopped; sending it again (the owner may get it "
                    "twice)", message_id)
    with store.transaction() as c:
        due = c.execute(sa.select(notifications.c.id, notifications.c.message_id, notifications.c.recipient,
                                  notifications.c.raw, notifications.c.attempts)
                        .where(notifications.c.status == QUEUED)
                        .where(sa.or_(notifications.c.next_attempt_at.is_(None),
                                      notifications.c.next_attempt_at <= clock()))
                        .order_by(notifications.c.id)).all()
    failures = 0
    for nid, message_id, recipient, raw, attempts in due:
        try:
            _mark(store, nid, status=SENDING, attempts=attempts + 1)
        except StoreError as exc:
            report.aborted = f"the store cannot record sends, so nothing more is sent: {exc}"
            break
        error = ""
        try:
            await transport.send(Envelope(_sender(raw), (recipient,), raw, message_id))
        except TemporaryFailure as exc:
            error, failures = str(exc), failures + 1
            if attempts + 1 >= retry.max_attempts:
                report.failed += 1
                _mark(store, nid, status=FAILED, last_error=f"gave up after {attempts + 1} attempts: {error}"[:1000],
                      next_attempt_at=None)
            else:
                _mark(store, nid, status=QUEUED, last_error=error[:1000],
                      next_attempt_at=clock() + retry.delay(attempts + 1))
            log.warning("notification %s to %s not sent: %s", message_id, recipient, error)
            if failures >= _BREAKER:
                report.aborted = f"the mail server keeps failing ({error}); the rest waits for the next pass"
                break
            continue
        except PermanentFailure as exc:
            report.failed += 1
            log.error("notification %s to %s refused for good: %s", message_id, recipient, exc)
            _mark(store, nid, status=FAILED, last_error=str(exc)[:1000], next_attempt_at=None)
            continue
        except ConfigurationFailure as exc:
            report.aborted = f"sending is misconfigured, nothing more is sent until it is fixed: {exc}"
            _mark(store, nid, status=QUEUED, last_error=str(exc)[:1000], next_attempt_at=clock())
            break
        failures = 0
        report.sent += 1
        log.info("sent notification %s to %s", message_id, recipient)
        try:
            _mark(store, nid, status=SENT, sent_at=clock(), last_error=None, next_attempt_at=None)
        except StoreError as exc:
            report.aborted = f"the store cannot record sends, so nothing more is sent: {exc}"
            break
    if report.aborted:
        log.error("%s", report.aborted)
    with store.transaction() as c:
        report.retrying = int(c.execute(sa.select(sa.func.count()).select_from(notifications)
                                        .where(notifications.c.status == QUEUED)).scalar() or 0)
    return report


# ---- Template check ----------------------------------------------------------------------------------------


def check_templates(settings: Settings) -> list[TemplateProblem]:
    """Render both notifications in every language with hostile sample data, as `templates.check` does."""
    from bot.policy import locale_for
    from bot.templates import HOSTILE, Templates

    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    now = datetime(2025, 12, 15, 9, 30, tzinfo=ZoneInfo(settings.company.timezone))
    user = User("sam", "sales", "sam@example.invalid", settings.company.language, f"Sam {HOSTILE}")
    customer = {
        "customer_id": "C-SAMPLE", "name": f"Distribuidora del Mediterráneo {HOSTILE} S.A.",
        "contact_name": f"María José {HOSTILE}", "contact_email": "ap@customer.example", "country": "ES",
        "account_manager": "Sam Lee", "tier": "", "owner": "sam", "open_amount": "13070.50", "oldest_days": 95,
        "balances": json.dumps({"EUR": "12090.50", "USD": "980.00"}),
        "invoices": json.dumps([
            {"invoice_id": f"INV-{n}", "currency": cur, "amount": amount, "balance": balance,
             "issue_date": (now.date() - timedelta(days=days + 30)).isoformat(),
             "due_date": (now.date() - timedelta(days=days)).isoformat()}
            for n, cur, amount, balance, days in ((1042, "EUR", "4250.00", "4250.00", 95),
                                                   (1077, "EUR", "12840.50", "7840.50", 40),
                                                   (1103, "USD", "980.00", "980.00", 3))]),
    }
    reply = {"sender": "ap@customer.example", "subject": f"Re: {HOSTILE}", "sent_at": now, "intent": "dispute",
             "classification": json.dumps({"new_text": f"Half arrived broken. {HOSTILE}"})}
    from_reply = {"id": 7, "customer_id": "C-SAMPLE", "reason": "dispute", "detail": HOSTILE,
                  "recommendation": f"Check the documents. {HOSTILE}", "created_at": now - timedelta(days=2)}
    by_hand = {**from_reply, "id": 8, "reason": "by_hand", "recommendation": "", "detail": f"Call them {HOSTILE}"}
    samples: list[tuple[str, str, dict[str, Any]]] = []
    for language in settings.languages:
        person = User(user.username, user.role, user.email, language, user.display_name)
        samples += [
            (language, ESCALATION, escalation_context(from_reply, customer, reply, person, settings, now)),
            (language, ESCALATION, escalation_context(by_hand, customer, None, person, settings, now)),
            (language, DIGEST, digest_context([(from_reply, customer), (by_hand, {**customer, "customer_id": "C-2"})],
                                              person, settings, now)),
            (language, DIGEST, digest_context([(by_hand, customer)], person, settings, now)),
        ]
    return templates.problems_in(
        (f"{language}/{TEMPLATES[kind]}",
         {**ctx, "language": language, "locale": locale_for(language, settings.company.country)})
        for language, kind, ctx in samples
    )
