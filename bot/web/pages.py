"""Rendering pages: the Jinja2 environment (autoescaped, strict), its filters, and `render`.

Everything shown comes from customers or the ledger, so nothing is marked safe except what is
built here from escaped pieces (`highlight`) or by charts.py from numbers and escaped labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from email.header import decode_header, make_header
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from bot.web.sessions import CSRF_FIELD, session_of

if TYPE_CHECKING:
    from bot.web.app import Web

TEMPLATES = Path(__file__).with_name("templates")


def money(amount: object, currency: str = "") -> str:
    """1234.5 -> '1,234.50 EUR': grouping that reads the same in every language the team uses."""
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return f"{amount} {currency}".strip()
    return f"{value:,.2f} {currency}".strip()


def decode_subject(raw: str) -> str:
    """Subjects are stored as they came (RFC 2047 encoded words); show them decoded, on one line."""
    try:
        text = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):
        text = raw
    return " ".join(text.split())


def highlight(text: str, phrases: Iterable[str]) -> Markup:
    """The text, escaped, with every occurrence of the deciding phrases wrapped in <mark>."""
    spans: list[tuple[int, int]] = []
    for phrase in phrases:
        words = str(phrase).split()
        if not words:
            continue
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
        spans.extend(m.span() for m in pattern.finditer(text) if m.end() > m.start())
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = Markup(""), 0
    for start, end in merged:
        out += escape(text[pos:start]) + Markup("<mark>") + escape(text[start:end]) + Markup("</mark>")
        pos = end
    return out + escape(text[pos:])


def label(name: object) -> str:
    """'payment_plan' -> 'payment plan'."""
    return str(name or "").replace("_", " ")


def make_templates(web: Web) -> Jinja2Templates:
    zone = ZoneInfo(web.settings.company.timezone)

    def local(value: datetime | None) -> datetime | None:
        return value.astimezone(zone) if value else None

    def when(value: datetime | None) -> str:
        moment = local(value)
        return moment.strftime("%d %b %Y %H:%M") if moment else ""

    def day(value: datetime | date | str | None) -> str:
        if isinstance(value, datetime):
            value = value.astimezone(zone).date()
        if isinstance(value, date):
            return value.strftime("%d %b %Y")
        return str(value or "")

    def ago(value: datetime | None) -> str:
        if value is None:
            return ""
        days = (web.today() - value.astimezone(zone).date()).days
        return "today" if days <= 0 else "yesterday" if days == 1 else f"{days} days ago"

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=money, when=when, day=day, ago=ago, label=label, subject=decode_subject,
                       highlight=highlight)
    env.globals.update(CSRF_FIELD=CSRF_FIELD)
    return Jinja2Templates(env=env)


def render(request: Request, name: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    """A page with what every page needs: the user, the CSRF token for its forms, and flash messages."""
    web: Web = request.app.state.web
    session = session_of(request)
    full = {"user": request.scope.get("user"), "csrf": session.csrf, "flashes": session.pop_flashes(),
            "company": web.settings.company, "path": request.url.path, **context}
    response: HTMLResponse = web.templates.TemplateResponse(request, name, full, status_code=status)
    return response
