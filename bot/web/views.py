"""The pages that show cases: the queue, one case, its case file, and the reports.

Handlers are plain functions (Starlette runs them in its thread pool, the store is synchronous).
Who may see what is decided in one place, `case_for`: sales see their own cases, finance all.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.datastructures import FormData, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bot import casefile
from bot.casebook import RESOLUTIONS, STATES, Entry
from bot.cases import SUGGESTED_STEPS
from bot.triage import INTENTS
from bot.users import User
from bot.web import handwritten, queries
from bot.web.pages import decode_subject, render
from bot.web.sessions import user_of

if TYPE_CHECKING:
    from bot.web.app import Web

PER_PAGE = 50
PLAN_ROWS = 6
REASONS = (*SUGGESTED_STEPS, "by_hand")


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def home(_request: Request) -> Response:
    return RedirectResponse("/cases", 303)


# The queue.


@dataclass(frozen=True, slots=True)
class Filters:
    """The queue's filters as given in the query string, each checked against what it may be."""

    state: str
    owner: str
    reason: str
    language: str
    search: str
    page: int
    own: bool  # a salesperson's queue: the owner is not theirs to choose

    @classmethod
    def parse(cls, q: QueryParams, user: User, web: Web) -> Filters:
        state = q.get("state", "escalated")
        try:
            page = min(max(int(q.get("page", "1")), 1), 10_000)
        except ValueError:
            page = 1
        return cls(
            state=state if state in (*STATES, "all") else "escalated",
            owner=(q.get("owner", "") if user.sees_all else user.username)[:64],
            reason=q.get("reason", "") if q.get("reason", "") in REASONS else "",
            language=q.get("language", "") if q.get("language", "") in web.settings.languages else "",
            search=" ".join(q.get("q", "").split())[:100],
            page=page,
            own=not user.sees_all,
        )

    def link(self, **changes: Any) -> str:
        values = {"state": self.state, "owner": "" if self.own else self.owner, "reason": self.reason,
                  "language": self.language, "q": self.search, "page": self.page, **changes}
        return "/cases?" + urlencode({k: v for k, v in values.items() if v not in ("", None, 1)})


def queue(request: Request) -> Response:
    web, user = web_of(request), user_of(request)
    f = Filters.parse(request.query_params, user, web)
    rows = web.book.queue(owner=f.owner or None, reason=f.reason or None, language=f.language or None,
                          state=None if f.state == "all" else f.state, search=f.search or None,
                          limit=PER_PAGE + 1, offset=(f.page - 1) * PER_PAGE)
    more, rows = len(rows) > PER_PAGE, rows[:PER_PAGE]
    reasons = queries.open_reasons(web.store, [r["customer_id"] for r in rows])
    counts = queries.state_counts(web.store, f.owner or None)
    return render(request, "queue.html", {
        "f": f, "rows": rows, "reasons": reasons, "more": more, "counts": counts, "states": STATES,
        "reason_choices": REASONS, "languages": web.settings.languages,
        "owners": queries.owners(web.store) if user.sees_all else [],
        "summary": web.reports.summary(f.owner or None),
        "first": (f.page - 1) * PER_PAGE + 1,
    })


# One case.


def case_for(request: Request, customer_id: str) -> dict[str, Any]:
    """The case if this user may see it: 404 if there is none, 403 if it is someone else's (finance sees all)."""
    web, user = web_of(request), user_of(request)
    case = web.book.case(customer_id)
    if case is None:
        raise HTTPException(404, f"There is no customer {customer_id!r}.")
    if not user.sees_all and case["owner"] != user.username:
        raise HTTPException(403, f"This is {case['owner'] or 'nobody'}'s case: only its owner and finance can "
                                 "open it.")
    return case


def _entry(e: Entry) -> dict[str, Any]:
    view: dict[str, Any] = {"at": e.at, "kind": e.kind, "actor": e.actor, "summary": e.summary, "detail": e.detail}
    if e.kind == "reply":
        d = e.detail
        view.update(subject=decode_subject(str(d.get("subject") or "")), text=str(d.get("new_text") or ""),
                    evidence=[str(x) for x in d.get("evidence") or []], intent=str(d.get("intent") or "other"),
                    confidence=float(d.get("confidence") or 0), promised=d.get("promised_date"),
                    amount=d.get("amount"), corrected=d.get("corrected"), reply_id=int(d.get("id") or 0))
    return view


def _plan_rows(case: dict[str, Any], currency: str, split: int, today: date, failed: str | None,
               form: FormData | None) -> list[tuple[str, str]]:
    """The installment rows to show: as last submitted, or split evenly on request (?split=3), or empty."""
    if failed == "plan" and form is not None:
        rows = [(str(d), str(a)) for d, a in zip(form.getlist("due"), form.getlist("amount"), strict=False)]
        return rows + [("", "")] * max(PLAN_ROWS - len(rows), 0)
    total = Decimal(case["balances"].get(currency, "0"))
    if split < 1 or total <= 0:
        return [("", "")] * PLAN_ROWS
    share = (total / split).quantize(Decimal("0.01"))
    amounts = [share] * (split - 1) + [total - share * (split - 1)]
    dates = [_add_months(today + timedelta(days=7), i) for i in range(split)]
    return [(d.isoformat(), str(a)) for d, a in zip(dates, amounts, strict=True)] + [("", "")] * 2


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def render_case(request: Request, case: dict[str, Any], *, error: str | None = None, failed: str | None = None,
                form: FormData | None = None, status: int = 200) -> Response:
    """The case page; after bad input (`failed` names the action) it shows the error and keeps what was typed."""
    web = web_of(request)
    customer_id = case["customer_id"]
    today = web.today()
    invoices = sorted(({**i, "days": (today - date.fromisoformat(i["due_date"])).days} for i in case["invoices"]),
                      key=lambda i: -i["days"])
    escalation = web.book.open_escalation(customer_id)
    reason = escalation["reason"] if escalation else None
    step = SUGGESTED_STEPS.get(reason or "") or (escalation or {}).get("recommendation") or ""
    timeline = [_entry(e) for e in web.book.timeline(customer_id)]
    replies = [e for e in timeline if e["kind"] == "reply"]
    mails = queries.thread(web.store, customer_id)
    q = request.query_params
    currency = q.get("currency") if q.get("currency") in case["balances"] else next(iter(case["balances"]), "")
    try:
        split = min(max(int(q.get("split", "0")), 0), 24)
    except ValueError:
        split = 0
    return render(request, "case.html", {
        "case": case, "invoices": invoices, "escalation": escalation, "reason": reason, "step": step,
        "timeline": timeline[::-1], "latest": replies[-1] if replies else None, "intents": INTENTS,
        "installments": web.book.plan_installments(customer_id), "today": today,
        "plan_rows": _plan_rows(case, currency, split, today, failed, form), "plan_open": "split" in q,
        "plan_split": split, "plan_currency": currency,
        "subject": handwritten.default_subject(mails, f"Your account with {web.settings.company.name}"),
        "invalid": case["contact_email"].lower() in web.store.invalid_contacts(),
        "error": error, "failed": failed, "form": form if form is not None else FormData(),
        "resolutions": RESOLUTIONS,
    }, status)


def case_page(request: Request) -> Response:
    return render_case(request, case_for(request, request.path_params["customer_id"]))


def export(request: Request) -> Response:
    """The case file as a ZIP download (bot.casefile builds it)."""
    web = web_of(request)
    case = case_for(request, request.path_params["customer_id"])
    data = casefile.export(web.store, web.settings, case["customer_id"], now=web.clock())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", case["customer_id"])
    return Response(data, media_type="application/zip",
                    headers={"content-disposition": f'attachment; filename="case-{name}.zip"'})


def reports(request: Request) -> Response:
    web, user = web_of(request), user_of(request)
    owner = request.query_params.get("owner", "") if user.sees_all else user.username
    return render(request, "reports.html", {"owner": owner, "owners": queries.owners(web.store) if user.sees_all
                                            else [], **web.reports.page(owner or None)})
