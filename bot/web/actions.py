"""What people do on a case page: every form posts here, is checked, acts through CaseBook, and redirects.

Each action reads its form through the CSRF check, then the access check (`case_for`), then
validates its fields. Bad input re-renders the case page with status 400, the message at the top
and the typed values kept; a `CaseError` from CaseBook is bad input too. Success redirects back to
the case page with a flash message (POST-redirect-GET), so reloading never repeats an action.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bot.casebook import RESOLUTIONS, CaseError
from bot.triage import INTENTS
from bot.users import User
from bot.web import handwritten, queries
from bot.web.sessions import checked_form, session_of, user_of
from bot.web.views import case_for, render_case, web_of

if TYPE_CHECKING:
    from bot.web.app import Web

MAX_AHEAD = timedelta(days=2 * 366)


class FormError(ValueError):
    """A field that cannot be read as what the action needs; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class Done:
    """What an action did, for the flash message; `task` runs after the page is sent."""

    message: str
    anchor: str = ""
    task: BackgroundTask | None = None


@dataclass(frozen=True, slots=True)
class Act:
    """Everything an action needs, handed over explicitly."""

    web: Web
    user: User
    case: dict[str, Any]
    form: FormData
    now: datetime

    @property
    def cid(self) -> str:
        return str(self.case["customer_id"])

    def text(self, name: str, limit: int = 2000) -> str:
        value = self.form.get(name, "")
        return value.strip()[:limit] if isinstance(value, str) else ""


# Reading fields.


def parse_date(text: str, what: str, today: date, *, required: bool = True, future: bool = True) -> date | None:
    text = text.strip()
    if not text:
        if required:
            raise FormError(f"Give {what}.")
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FormError(f"{what.capitalize()}: {text!r} is not a date (use YYYY-MM-DD, e.g. "
                        f"{today.isoformat()}).") from None
    if future and day < today:
        raise FormError(f"{what.capitalize()} ({day.isoformat()}) is in the past.")
    if day > today + MAX_AHEAD:
        raise FormError(f"{what.capitalize()} ({day.isoformat()}) is more than two years away.")
    return day


def parse_amount(text: str, what: str) -> Decimal:
    """A positive amount with at most two decimals; '1,234.50', '1.234,50' and '1234,5' are all read."""
    raw = "".join(text.split()).replace("'", "")
    if "," in raw and "." in raw:
        thousands = "," if raw.rfind(",") < raw.rfind(".") else "."
        raw = raw.replace(thousands, "").replace(",", ".")
    elif raw.count(",") == 1:
        raw = raw.replace(",", ".")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise FormError(f"{what.capitalize()}: {text.strip()!r} is not a number (e.g. 1250.00).") from None
    if not value.is_finite() or value <= 0:
        raise FormError(f"{what.capitalize()} must be more than zero, not {text.strip()!r}.")
    if value != value.quantize(Decimal("0.01")):
        raise FormError(f"{what.capitalize()}: {text.strip()!r} has more than two decimals.")
    if value >= Decimal("1e13"):
        raise FormError(f"{what.capitalize()}: {text.strip()!r} is too large.")
    return value.quantize(Decimal("0.01"))


def start_of(day: date, web: Web) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(web.settings.company.timezone))


# The actions. Each returns what it did, or raises FormError / CaseError.


def resume(a: Act) -> Done:
    a.web.book.resume(a.cid, a.user.username, a.now)
    return Done("Reminders resume with the next dunning pass.")


def pause(a: Act) -> Done:
    today = a.web.today()
    until = parse_date(a.text("until"), "the date to pause until", today)
    assert until is not None
    if until <= today:
        raise FormError("Pause until a day after today.")
    a.web.book.pause(a.cid, start_of(until, a.web), a.text("reason") or "paused by hand", a.user.username, a.now)
    return Done(f"Reminders paused until {until.isoformat()}.")


def promise(a: Act) -> Done:
    on = parse_date(a.text("on"), "the promised date", a.web.today())
    assert on is not None
    amount = parse_amount(a.text("amount"), "the promised amount") if a.text("amount") else None
    a.web.book.promise(a.cid, on, amount, a.user.username, a.now)
    return Done(f"Promise recorded: {amount or 'the balance'} on {on.isoformat()}; reminders wait until then.")


def plan(a: Act) -> Done:
    today = a.web.today()
    currency = a.text("currency", 3)
    if currency not in a.case["balances"]:
        raise FormError(f"Choose one of the currencies owed: {', '.join(a.case['balances']) or 'none'}.")
    parts: list[tuple[date, Decimal]] = []
    rows = zip(a.form.getlist("due"), a.form.getlist("amount"), strict=False)
    for n, (due, amount) in enumerate(rows, 1):
        due, amount = str(due).strip(), str(amount).strip()
        if not due and not amount:
            continue
        if not due or not amount:
            raise FormError(f"Installment {n}: give both a date and an amount.")
        day = parse_date(due, f"the date of installment {n}", today)
        assert day is not None
        parts.append((day, parse_amount(amount, f"the amount of installment {n}")))
    if not parts:
        raise FormError("A payment plan needs at least one installment: fill in a date and an amount.")
    days = [d for d, _ in parts]
    if len(set(days)) != len(days):
        raise FormError("Two installments fall on the same day; give each its own date.")
    parts.sort()
    owed = Decimal(a.case["balances"][currency])
    total = sum((x for _, x in parts), Decimal(0))
    if total != owed:
        raise FormError(f"The installments add up to {total:,.2f} {currency}, but {owed:,.2f} {currency} is owed "
                        f"({'short by' if total < owed else 'over by'} {abs(owed - total):,.2f}).")
    a.web.book.set_plan(a.cid, parts, currency, a.user.username, a.now)
    return Done(f"Payment plan set: {len(parts)} installments, the first on {parts[0][0].isoformat()}.")


def resolve(a: Act) -> Done:
    how = a.text("how", 20)
    if how not in RESOLUTIONS:
        raise FormError("Choose how the case was resolved: paid, written off or credited.")
    a.web.book.resolve(a.cid, how, a.user.username, a.now)
    return Done(f"Case resolved: {how.replace('_', ' ')}.")


def agency(a: Act) -> Done:
    who = a.text("who", 200)
    if not who:
        raise FormError("Name the agency or lawyer the case goes to.")
    a.web.book.agency(a.cid, who, a.user.username, a.now)
    return Done(f"Case handed to {who}; the bot stays silent.")


def escalate(a: Act) -> Done:
    why = a.text("why", 500)
    if not why:
        raise FormError("Say why the case needs a person.")
    a.web.book.escalate(a.cid, why, a.user.username, a.now)
    return Done("Case escalated; reminders stop.")


def note(a: Act) -> Done:
    text = a.text("text", 5000)
    if not text:
        raise FormError("The note is empty.")
    a.web.book.note(a.cid, text, a.user.username, a.now)
    return Done("Note added.", "timeline")


def correct(a: Act) -> Done:
    try:
        reply_id = int(a.text("reply_id", 20))
    except ValueError:
        raise FormError("Choose the reply to correct.") from None
    if queries.reply_customer(a.web.store, reply_id) != a.cid:
        raise FormError("That reply does not belong to this case.")
    intent = a.text("intent", 30)
    if intent not in INTENTS:
        raise FormError(f"Choose what the reply means; {intent!r} is not one of the intents.")
    promised = parse_date(a.text("promised_date"), "the promised date", a.web.today(), required=False,
                          future=False)
    if promised and intent != "promise_to_pay":
        raise FormError("A promised date only goes with 'promise to pay'.")
    a.web.book.correct(reply_id, intent, promised, a.user.username, a.now)
    return Done(f"Reply read as {intent.replace('_', ' ')}; kept as feedback for the classifier. Act on it below if "
                "the case needs it.", f"reply-{reply_id}")


def reply(a: Act) -> Done:
    mails = queries.thread(a.web.store, a.cid)
    body = a.text("body", handwritten.MAX_BODY + 1)
    try:
        queued = handwritten.compose(a.case, mails, a.text("subject", 500), body, a.user, a.web.settings, a.now)
        handwritten.record(a.web.store, queued, body, a.user, a.now)
    except handwritten.ReplyError as exc:
        raise FormError(f"The reply was not sent: {exc}.") from None
    task = BackgroundTask(handwritten.deliver, a.web.store, a.web.settings, queued.message_id, a.web.clock)
    return Done(f"Reply to {queued.contact} queued and being sent; its status shows in the timeline.", "timeline",
                task)


ACTIONS: dict[str, Callable[[Act], Done]] = {
    "resume": resume, "pause": pause, "promise": promise, "plan": plan, "resolve": resolve, "agency": agency,
    "escalate": escalate, "note": note, "correct": correct, "reply": reply,
}


def endpoint(name: str, action: Callable[[Act], Done]) -> Callable[[Request], Awaitable[Response]]:
    """The POST handler of one action: CSRF, access, act, then redirect or show what was wrong."""

    async def handle(request: Request) -> Response:
        form = await checked_form(request)
        web, user = web_of(request), user_of(request)
        case = await run_in_threadpool(case_for, request, request.path_params["customer_id"])
        act = Act(web, user, case, form, web.clock())
        try:
            done = await run_in_threadpool(action, act)
        except (FormError, CaseError) as exc:
            return await run_in_threadpool(render_case, request, case, error=str(exc), failed=name, form=form,
                                           status=400)
        session_of(request).flash("ok", done.message)
        target = f"/cases/{quote(act.cid, safe='')}" + (f"#{done.anchor}" if done.anchor else "")
        return RedirectResponse(target, 303, background=done.task)

    handle.__name__ = f"{name}_action"
    return handle
