"""Commands for the people who work cases: list, show and act on cases, export a case file, add users,
see the aging report, and send the owners their notifications."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import sys
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import sqlalchemy as sa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bot import notify, reports
from bot.casebook import RESOLUTIONS, STATES, CaseBook, CaseError
from bot.casefile import export
from bot.cli.common import OK, PROBLEMS, _common, _error, _now_option, _open_store, clock_from, main, parse_now
from bot.config import Settings
from bot.outbox import Retry
from bot.schema import cases, customers
from bot.store import Store
from bot.transports import make_transport
from bot.users import ROLES, add_user, all_users

F = TypeVar("F", bound=Callable[..., Any])
_LANGUAGE = re.compile(r"^[a-z]{2}$")


def _as_user(func: F) -> F:
    return click.option("--as-user", "actor", default=None, metavar="NAME",
                        help="Who is acting, as recorded in the timeline (default: your login name).")(func)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date such as 2026-12-15", param_hint=option) from None


def _amount(text: str, option: str) -> Decimal:
    """Digits and a decimal point only: "1.250,00" must not quietly become 1.25."""
    if not re.fullmatch(r"\d+(\.\d+)?", text.strip()) or Decimal(text) <= 0:
        raise click.BadParameter(f"{text!r} is not a positive amount such as 1250.00 (no thousands separators)",
                                 param_hint=option)
    return Decimal(text.strip())


def _act(settings: Settings, action: Callable[[CaseBook], None]) -> None:
    store = _open_store(settings)
    try:
        action(CaseBook(store, settings))
    finally:
        store.close()


def _done(settings: Settings, customer_id: str, what: str, actor: str) -> None:
    store = _open_store(settings)
    try:
        case = CaseBook(store, settings).case(customer_id) or {}
    finally:
        store.close()
    zone = ZoneInfo(settings.company.timezone)
    until = f" until {case['until'].astimezone(zone).date()}" if case.get("until") else ""
    click.echo(f"{customer_id}: {what}; the case is now {case.get('state', '?')}{until} (recorded as {actor})")


def _owed(balances: dict[str, str]) -> str:
    return ", ".join(f"{cur} {Decimal(amount):,.2f}" for cur, amount in sorted(balances.items())) or "-"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: reports.plain(v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@main.group("cases")
def cases_group() -> None:
    """List, show and act on cases; every change is recorded in the case's timeline with who and why."""


@cases_group.command("list")
@_common
@click.option("--state", type=click.Choice(STATES), default=None, help="Only cases in this state.")
@click.option("--owner", default=None, metavar="USER", help="Only this owner's cases.")
@click.option("--json", "as_json", is_flag=True, help="Print the cases as JSON.")
def cases_list(settings: Settings, state: str | None, owner: str | None, as_json: bool) -> None:
    """Cases, largest and oldest first."""
    store = _open_store(settings)
    try:
        rows = CaseBook(store, settings).queue(state=state, owner=owner, limit=1_000_000)
        if state in (None, "active"):
            rows = sorted([*rows, *_untouched(store, owner)], key=lambda r: (-r["open_amount"], -r["oldest_days"]))
    finally:
        store.close()
    if as_json:
        keep = ("customer_id", "name", "state", "owner", "reason", "since", "until", "balances", "open_amount",
                "oldest_days")
        click.echo(json.dumps([_jsonable({k: r.get(k) for k in keep}) for r in rows], ensure_ascii=False, indent=1))
        return
    table = Table(title_justify="left")
    for column in ("customer", "state", "owner", "owed", "oldest", "why"):
        table.add_column(column)
    for r in rows:
        table.add_row(escape(f"{r['customer_id']} {r['name']}"), r["state"], escape(r["owner"]),
                      _owed(r["balances"]), f"{r['oldest_days']} d", escape(r.get("reason") or ""))
    Console(width=160).print(table)
    click.echo(f"{len(rows)} cases")


def _untouched(store: Store, owner: str | None) -> list[dict[str, Any]]:
    """Customers who owe but whose case nobody has changed yet: active, with no row in `cases`."""
    q = (sa.select(customers).where(customers.c.open_amount > 0)
         .where(customers.c.customer_id.not_in(sa.select(cases.c.customer_id))))
    if owner:
        q = q.where(customers.c.owner == owner)
    with store.engine.begin() as c:
        rows = [dict(r._mapping) for r in c.execute(q)]
    for row in rows:
        row.update(state="active", reason="", since=None, until=None, balances=json.loads(row["balances"]))
    return rows


@cases_group.command("show")
@_common
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True, help="Print case, invoices and timeline as JSON.")
def cases_show(settings: Settings, customer_id: str, as_json: bool) -> None:
    """One case: its state, the customer's invoices and the whole timeline."""
    store = _open_store(settings)
    try:
        book = CaseBook(store, settings)
        case = book.case(customer_id)
        if case is None:
            raise CaseError(f"no customer {customer_id!r} in the store")
        timeline = book.timeline(customer_id)
        escalation = book.open_escalation(customer_id)
        plan = book.plan_installments(customer_id)
    finally:
        store.close()
    zone = ZoneInfo(settings.company.timezone)
    if as_json:
        document = {**_jsonable(case), "escalation": _jsonable(escalation) if escalation else None,
                    "installments": [_jsonable(p) for p in plan],
                    "timeline": [{"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "summary": e.summary}
                                 for e in timeline]}
        click.echo(json.dumps(document, ensure_ascii=False, indent=1, default=str))
        return
    out = Console(width=160, highlight=False)
    until = f" until {case['until'].astimezone(zone).date()}" if case.get("until") else ""
    out.print(escape(f"{case['customer_id']} {case['name']}: {case['state']}{until} ({case.get('reason') or ''})"))
    out.print(escape(f"owner {case['owner'] or '-'}; contact {case['contact_name']} <{case['contact_email']}>; "
                     f"owed {_owed(case['balances'])}; oldest {case['oldest_days']} days"))
    if escalation:
        out.print(escape(f"escalated: {escalation['reason']}: {escalation['detail']}"))
        if escalation["recommendation"]:
            out.print(escape(f"next step: {escalation['recommendation']}"))
    invoices = Table(title="invoices", title_justify="left")
    for column in ("invoice", "issued", "due", "amount", "owed"):
        invoices.add_column(column)
    for i in case["invoices"]:
        invoices.add_row(escape(i["invoice_id"]), i["issue_date"], i["due_date"], f"{i['currency']} {i['amount']}",
                         f"{i['currency']} {i['balance']}")
    out.print(invoices)
    if plan:
        out.print("payment plan: " + ", ".join(f"{p['amount']} {p['currency']} on {p['due_date']}" for p in plan))
    history = Table(title="timeline", title_justify="left")
    for column in ("when", "who", "what", "summary"):
        history.add_column(column)
    for e in timeline:
        history.add_row(e.at.astimezone(zone).strftime("%Y-%m-%d %H:%M"), escape(e.actor), e.kind, escape(e.summary))
    out.print(history)


@cases_group.command("resume")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
def cases_resume(settings: Settings, now_text: str | None, actor: str | None, customer_id: str) -> None:
    """Start the reminders again: ends holds, escalations and plans."""
    who, now = _actor(actor), parse_now(now_text, settings)
    _act(settings, lambda book: book.resume(customer_id, who, now))
    _done(settings, customer_id, "resumed", who)


@cases_group.command("pause")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--until", "until_text", required=True, metavar="DATE", help="No reminder before this date.")
@click.option("--reason", default="paused by hand", show_default=True)
def cases_pause(settings: Settings, now_text: str | None, actor: str | None, customer_id: str, until_text: str,
                reason: str) -> None:
    """No reminders until a date."""
    who, now = _actor(actor), parse_now(now_text, settings)
    until = datetime.combine(_day(until_text, "--until"), time(0), ZoneInfo(settings.company.timezone))
    _act(settings, lambda book: book.pause(customer_id, until, reason, who, now))
    _done(settings, customer_id, "paused", who)


@cases_group.command("promise")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--date", "on_text", required=True, metavar="DATE", help="The day the customer promised to pay.")
@click.option("--amount", "amount_text", default=None, metavar="X", help="The amount promised (default: all).")
def cases_promise(settings: Settings, now_text: str | None, actor: str | None, customer_id: str, on_text: str,
                  amount_text: str | None) -> None:
    """Record a promise to pay made by phone or letter: reminders wait for the date plus the grace days."""
    who, now = _actor(actor), parse_now(now_text, settings)
    on = _day(on_text, "--date")
    amount = _amount(amount_text, "--amount") if amount_text is not None else None
    _act(settings, lambda book: book.promise(customer_id, on, amount, who, now))
    _done(settings, customer_id, f"promise to pay on {on.isoformat()} recorded", who)


@cases_group.command("plan")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--installment", "parts_text", multiple=True, required=True, metavar="DATE:AMOUNT",
              help="One installment, e.g. 2026-12-15:500.00; repeat for each.")
@click.option("--currency", default=None, help="The currency of the plan (default: the customer's only one).")
def cases_plan(settings: Settings, now_text: str | None, actor: str | None, customer_id: str,
               parts_text: tuple[str, ...], currency: str | None) -> None:
    """Agree a payment plan; the installments must add up to what is owed in that currency."""
    who, now = _actor(actor), parse_now(now_text, settings)
    parts = []
    for text in parts_text:
        day, sep, amount = text.partition(":")
        if not sep:
            raise click.BadParameter(f"{text!r}: write DATE:AMOUNT, e.g. 2026-12-15:500.00",
                                     param_hint="--installment")
        parts.append((_day(day, "--installment"), _amount(amount, "--installment")))
    if currency is None:
        store = _open_store(settings)
        try:
            case = CaseBook(store, settings).case(customer_id)
        finally:
            store.close()
        if case is None:
            raise CaseError(f"no customer {customer_id!r} in the store")
        owed = sorted(case["balances"])
        if len(owed) != 1:
            raise click.UsageError(f"{customer_id} owes in {', '.join(owed) or 'no currency'}: give --currency")
        currency = owed[0]
    chosen = currency.upper()
    _act(settings, lambda book: book.set_plan(customer_id, parts, chosen, who, now))
    _done(settings, customer_id, f"payment plan of {len(parts)} installments agreed", who)


@cases_group.command("resolve")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--as", "how", required=True, type=click.Choice(RESOLUTIONS))
def cases_resolve(settings: Settings, now_text: str | None, actor: str | None, customer_id: str, how: str) -> None:
    """Close the case."""
    who, now = _actor(actor), parse_now(now_text, settings)
    _act(settings, lambda book: book.resolve(customer_id, how, who, now))
    _done(settings, customer_id, f"resolved as {how.replace('_', ' ')}", who)


@cases_group.command("agency")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--to", "who_to", default="", metavar="NAME", help="The agency or lawyer.")
def cases_agency(settings: Settings, now_text: str | None, actor: str | None, customer_id: str, who_to: str) -> None:
    """Hand the case to a collection agency or a lawyer; the bot stops writing (see `cases export`)."""
    who, now = _actor(actor), parse_now(now_text, settings)
    _act(settings, lambda book: book.agency(customer_id, who_to, who, now))
    _done(settings, customer_id, f"handed to {who_to or 'an agency'}", who)


@cases_group.command("note")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.argument("text", nargs=-1, required=True)
def cases_note(settings: Settings, now_text: str | None, actor: str | None, customer_id: str,
               text: tuple[str, ...]) -> None:
    """Add a note to the timeline (a call, a letter, what was agreed)."""
    who, now = _actor(actor), parse_now(now_text, settings)
    _act(settings, lambda book: book.note(customer_id, " ".join(text), who, now))
    _done(settings, customer_id, "note added", who)


@cases_group.command("escalate")
@_common
@_now_option
@_as_user
@click.argument("customer_id")
@click.option("--why", required=True, help="What the owner should know.")
def cases_escalate(settings: Settings, now_text: str | None, actor: str | None, customer_id: str, why: str) -> None:
    """Stop the reminders and hand the case to its owner."""
    if not why.strip():
        raise click.BadParameter("say why the case needs a person", param_hint="--why")
    who, now = _actor(actor), parse_now(now_text, settings)
    _act(settings, lambda book: book.escalate(customer_id, why.strip(), who, now))
    _done(settings, customer_id, "escalated", who)


@cases_group.command("export")
@_common
@_now_option
@click.argument("customer_id")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the ZIP (default: case-<ID>.zip here).")
def cases_export(settings: Settings, now_text: str | None, customer_id: str, output: Path | None) -> None:
    """Write the case file for an agency or lawyer: summary.html, every message as .eml, SHA-256 manifest."""
    now = parse_now(now_text, settings)
    store = _open_store(settings)
    try:
        data = export(store, settings, customer_id, now=now)
    finally:
        store.close()
    target = output or Path(f"case-{re.sub(r'[^A-Za-z0-9._-]+', '_', customer_id)}.zip")
    try:
        target.write_bytes(data)
    except OSError as exc:
        _error("error", f"cannot write {target}: {exc.strerror}")
        sys.exit(PROBLEMS)
    click.echo(f"wrote {target} ({len(data):,} bytes)")


# ---- users --------------------------------------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """The people who own and work cases."""


@users_group.command("add")
@_common
@_now_option
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), help="sales see their own cases, finance all.")
@click.option("--email", default="", help="Where escalation notices and digests go.")
@click.option("--language", default=None, help="The language of their notifications (default: the company's).")
@click.option("--display-name", default="", help="The name shown in the timeline and notifications.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
def users_add(settings: Settings, now_text: str | None, name: str, role: str, email: str, language: str | None,
              display_name: str, password_stdin: bool) -> None:
    """Add a user, or update one (new password, role, email...)."""
    language = language or settings.company.language
    if not _LANGUAGE.match(language):
        raise click.BadParameter(f"{language!r} is not a two-letter language code such as 'es'",
                                 param_hint="--language")
    if email and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", email):
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="--email")
    if language not in settings.languages:
        _error("warning", f"no templates in {language!r}: notifications go in {settings.company.language!r}",
               "yellow")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    store = _open_store(settings)
    try:
        user = add_user(store, name, password, role, parse_now(now_text, settings), email=email, language=language,
                        display_name=display_name)
    finally:
        store.close()
    click.echo(f"user {user.username} ({user.role}, {user.language}{', ' + user.email if user.email else ''}) saved")


@users_group.command("list")
@_common
def users_list(settings: Settings) -> None:
    """Every user with role, email and language."""
    store = _open_store(settings)
    try:
        people = all_users(store)
    finally:
        store.close()
    for user in people:
        click.echo(f"{user.username}\t{user.role}\t{user.language}\t{user.email or '-'}\t{user.display_name}")


# ---- reports ------------------------------------------------------------------------------------------------


@main.group("report")
def report_group() -> None:
    """Figures for collections: how old the open balances are."""


@report_group.command("aging")
@_common
@_now_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (amounts as decimal strings).")
def report_aging(settings: Settings, now_text: str | None, as_json: bool) -> None:
    """Open balances by age (current, 1-30, 31-60, 61-90, 90+ days overdue), per currency and per owner."""
    today = parse_now(now_text, settings).astimezone(ZoneInfo(settings.company.timezone)).date()
    store = _open_store(settings)
    try:
        result = reports.aging(reports.gather(store, settings).invoices, today)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(reports.plain(result), indent=1))
        return
    table = Table(title=f"Aging on {today.isoformat()}", title_justify="left")
    for column in ("owner", "currency", *reports.BUCKETS, "total"):
        table.add_column(column, justify="left" if column in ("owner", "currency") else "right")
    for currency, buckets in result.by_currency.items():
        table.add_row("all", currency, *(f"{buckets[b]:,.2f}" for b in reports.BUCKETS),
                      f"{sum(buckets.values(), Decimal(0)):,.2f}")
    for owner, per_currency in result.by_owner.items():
        for currency, buckets in per_currency.items():
            table.add_row(escape(owner or "-"), currency, *(f"{buckets[b]:,.2f}" for b in reports.BUCKETS),
                          f"{sum(buckets.values(), Decimal(0)):,.2f}")
    Console(width=160).print(table)


# ---- notifications ------------------------------------------------------------------------------------------


@main.command("notify")
@_common
@_now_option
def notify_command(settings: Settings, now_text: str | None) -> None:
    """Send owners a notice for each new escalation and, once a working day, a digest of their open cases."""
    now = parse_now(now_text, settings)
    skipped: list[str] = []
    store = _open_store(settings)
    try:
        notices = notify.queue_escalation_notices(store, settings, now, skipped=skipped)
        digests = notify.queue_digests(store, settings, now, skipped=skipped)
        delivery = asyncio.run(_deliver(settings, store, now))
    finally:
        store.close()
    click.echo(f"queued {notices} escalation notices and {digests} digests; sent {delivery.sent}, failed "
               f"{delivery.failed}, waiting for retry {delivery.retrying}; skipped {len(skipped)}")
    for message in skipped:
        _error("skipped", message, "yellow")
    if delivery.aborted:
        _error("stopped", delivery.aborted)
    sys.exit(PROBLEMS if skipped or delivery.failed or delivery.retrying or delivery.aborted else OK)


async def _deliver(settings: Settings, store: Store, now: datetime) -> notify.Delivery:
    """Through the same transport as the reminders."""
    transport, _workers = make_transport(settings)
    await transport.open()
    try:
        return await notify.deliver_notifications(store, transport, clock_from(now), Retry.from_settings(settings))
    finally:
        await transport.close()
