"""Commands of the dunning pass: plan, send, preview, the checks of ledger and templates, and `dunbot ledger
accept` (vouch for a ledger the sanity check stopped)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot import dunning, outbox, rendering
from bot.cli.common import (
    OK,
    PROBLEMS,
    PROGRESS_ROWS,
    _common,
    _error,
    _now_option,
    _open_store,
    clock_from,
    err,
    exclusive,
    main,
    parse_now,
)
from bot.config import Settings
from bot.daemon_settings import load_daemon_settings
from bot.errors import DunbotError
from bot.ledger import Invoice, Ledger, read_ledger
from bot.ledger_check import accept_ledger, last_ledger_check
from bot.messages import compose
from bot.policy import (
    Line,
    Plan,
    Reminder,
    current_stage,
    language_for,
    locale_for,
    message_id,
    timezone_for,
    track_for,
)
from bot.store import Store
from bot.templates import Templates, check
from bot.transports import make_transport


def _read(settings: Settings, quiet: bool = False) -> Ledger:
    size = settings.ledger.path.stat().st_size if settings.ledger.path.exists() else 0
    if quiet or size < 5_000_000 or not err().is_terminal:
        return read_ledger(settings.ledger)
    with Progress(TextColumn("reading the ledger"), BarColumn(), TimeElapsedColumn(), console=err(),
                  transient=True) as progress:
        task = progress.add_task("read", total=None)
        ledger = read_ledger(settings.ledger)
        progress.update(task, completed=1, total=1)
    return ledger


def _report_problems(ledger: Ledger, limit: int | None = 20) -> None:
    if not ledger.problems:
        return
    shown = ledger.problems if limit is None else ledger.problems[:limit]
    for problem in shown:
        _error("skipped", problem, "yellow")
    if limit is not None and len(ledger.problems) > limit:
        err().print(f"... and {len(ledger.problems) - limit} more bad rows (see `dunbot ledger check`)")


def _plan(settings: Settings, now: datetime, ledger: Ledger, store: Store) -> Plan:
    if len(ledger.open_invoices) < PROGRESS_ROWS or not err().is_terminal:
        return dunning.plan_from_store(store, ledger.open_invoices, now, settings)
    with Progress(TextColumn("planning"), BarColumn(), TimeElapsedColumn(), console=err(), transient=True) as p:
        task = p.add_task("plan", total=1)
        result = dunning.plan_from_store(store, ledger.open_invoices, now, settings)
        p.update(task, completed=1)
    return result


def _totals(reminder: Reminder) -> str:
    totals: dict[str, Any] = {}
    for line in reminder.lines:
        totals[line.invoice.currency] = totals.get(line.invoice.currency, 0) + line.invoice.balance
    return ", ".join(f"{cur} {amount:,.2f}" for cur, amount in sorted(totals.items()))


def plan_json(result: Plan) -> dict[str, Any]:
    return {
        "now": result.now.isoformat(),
        "reminders": [{
            "customer_id": r.customer.customer_id, "customer": r.customer.name, "to": r.to, "cc": list(r.cc),
            "track": r.track, "stage": r.stage.name, "template": r.stage.template, "language": r.language,
            "message_id": r.message_id,
            "invoices": [{"invoice_id": ln.invoice.invoice_id, "currency": ln.invoice.currency,
                          "balance": str(ln.invoice.balance), "days_overdue": ln.days_overdue} for ln in r.lines],
        } for r in result.reminders],
        "escalations": [{"customer_id": e.customer.customer_id, "reason": e.reason, "days_overdue": e.days_overdue,
                         "invoices": list(e.invoice_ids), "recommendation": e.recommendation}
                        for e in result.escalations],
        "waiting": [{"customer_id": w.customer.customer_id, "stage": w.stage, "reason": w.reason,
                     "not_before": w.not_before.isoformat() if w.not_before else None} for w in result.waiting],
        "held": [{"customer_id": c.customer_id, "reason": why} for c, why in result.held],
    }


def _print_plan(result: Plan, out: Console) -> None:
    table = Table(title=f"Reminders due at {result.now.isoformat(timespec='minutes')}", title_justify="left")
    for column in ("customer", "to", "stage", "lang", "invoices", "owed", "oldest"):
        table.add_column(column)
    for r in result.reminders:
        to = r.to + (f" (cc {', '.join(r.cc)})" if r.cc else "")
        table.add_row(f"{r.customer.customer_id} {r.customer.name}", to,
                      f"{r.track}/{r.stage.name}", r.language, ", ".join(r.invoice_ids), _totals(r),
                      f"{r.lines[0].days_overdue} d")
    out.print(table)
    for e in result.escalations:
        out.print(f"escalate {e.customer.customer_id} {e.customer.name}: {e.days_overdue} days overdue. "
                  f"{e.recommendation}", highlight=False)
    for w in result.waiting:
        when = w.not_before.isoformat(timespec="minutes") if w.not_before else "later"
        out.print(f"waiting  {w.customer.customer_id} {w.customer.name}: {w.stage}, {w.reason}, not before {when}",
                  highlight=False)
    for customer, why in result.held:
        out.print(f"held     {customer.customer_id} {customer.name}: {why}", highlight=False)
    out.print(f"{len(result.reminders)} to send, {len(result.escalations)} to escalate, "
              f"{len(result.waiting)} waiting, {len(result.held)} held", highlight=False)



@main.command("plan")
@_common
@_now_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(settings: Settings, now_text: str | None, as_json: bool) -> None:
    """Show what would be sent now (or at --now), changing nothing."""
    now = parse_now(now_text, settings)
    ledger = _read(settings)
    _report_problems(ledger)
    store = _open_store(settings)
    try:
        result = _plan(settings, now, ledger, store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(plan_json(result), ensure_ascii=False, indent=1))
    else:
        _print_plan(result, Console())
    sys.exit(PROBLEMS if ledger.problems else OK)


@main.command("send")
@_common
@_now_option
@click.option("--dry-run", is_flag=True, help="Plan and render everything, record and send nothing.")
@click.option("--retry-for", default=0.0, metavar="SECONDS", show_default=True,
              help="Keep retrying temporary failures for this long before returning.")
def send_command(settings: Settings, now_text: str | None, dry_run: bool, retry_for: float) -> None:
    """One pass: read the ledger, plan, record and send the due reminders."""
    now = parse_now(now_text, settings)
    ledger = _read(settings)
    _report_problems(ledger)
    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    report = outbox.Report()
    if dry_run:
        store = _open_store(settings)
        try:
            result = _plan(settings, now, ledger, store)
        finally:
            store.close()
        for reminder in result.reminders:
            try:
                rendering.render(reminder, templates, settings, now)
            except DunbotError as exc:
                report.errors.append(f"customer {reminder.customer.customer_id}: {exc}")
        _print_plan(result, Console())
        for error in report.errors:
            _error("error", error)
        sys.exit(PROBLEMS if ledger.problems or report.errors else OK)
    with exclusive(settings):
        store = _open_store(settings)
        try:
            result, report = asyncio.run(_send(settings, store, ledger, templates, now, retry_for))
        finally:
            store.close()
    click.echo(f"queued {report.queued}, sent {report.sent}, failed {report.failed}, waiting for retry "
               f"{report.retrying}, withdrawn {report.cancelled}, escalated {report.escalated}; "
               f"{len(result.waiting)} customers wait for their send window or the minimum gap")
    for message in report.errors:
        _error("error", message)
    if report.aborted:
        _error("stopped", report.aborted)
    problems = ledger.problems or report.errors or report.aborted or report.failed or report.retrying
    sys.exit(PROBLEMS if problems else OK)


async def _send(settings: Settings, store: Store, ledger: Ledger, templates: Templates, now: datetime,
                retry_for: float) -> tuple[Plan, outbox.Report]:
    transport, workers = make_transport(settings)
    await transport.open()
    try:
        return await dunning.send_pass(store, ledger.open_invoices, transport, workers, clock_from(now), settings,
                                       templates, retry_for=retry_for,
                                       check=load_daemon_settings(settings).ledger_check)
    finally:
        await transport.close()


@main.command("preview")
@_common
@_now_option
@click.argument("invoice_id")
@click.option("--stage", default=None, help="The stage to render (default: the invoice's current stage).")
@click.option("--lang", default=None, help="Render in this language instead of the customer's.")
def preview_command(settings: Settings, now_text: str | None, invoice_id: str, stage: str | None,
                    lang: str | None) -> None:
    """Print the full reminder for an invoice's customer as an .eml on standard output."""
    now = parse_now(now_text, settings)
    ledger = _read(settings, quiet=True)
    target = next((i for i in ledger.open_invoices if i.invoice_id == invoice_id), None)
    if target is None:
        _error("error", f"no open invoice {invoice_id!r} in {settings.ledger.path}")
        sys.exit(PROBLEMS)
    reminder = preview_reminder(target, ledger.open_invoices, settings, now, stage, lang)
    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    rendered = templates.render(reminder, settings.company)
    sys.stdout.buffer.write(compose(reminder, rendered, settings.company, now))


def preview_reminder(target: Invoice, invoices: list[Invoice], settings: Settings, now: datetime,
                     stage_name: str | None, lang: str | None) -> Reminder:
    customer = target.customer
    track = track_for(customer, settings)
    tz = timezone_for(customer, settings)
    today = now.astimezone(ZoneInfo(tz)).date()
    lines = sorted((Line(i, (today - i.due_date).days) for i in invoices
                    if i is target
                    or (i.customer == customer and (today - i.due_date).days >= track.stages[0].offset)),
                   key=lambda ln: -ln.days_overdue)
    if stage_name is None:
        stage = current_stage(track, lines[0].days_overdue) or track.stages[0]
    else:
        matches = [s for s in track.stages if s.name == stage_name]
        if not matches:
            raise click.BadParameter(f"track {track.name!r} has no stage {stage_name!r}; stages are "
                                     f"{', '.join(s.name for s in track.stages)}", param_hint="--stage")
        stage = matches[0]
    language = lang or language_for(customer, settings)
    if language not in settings.languages:
        raise click.BadParameter(f"no templates for {language!r}; languages are {', '.join(settings.languages)}",
                                 param_hint="--lang")
    ids = tuple(ln.invoice.invoice_id for ln in lines)
    return Reminder(customer=customer, track=track.name, stage=stage, language=language,
                    locale=locale_for(language, customer.country), timezone=tz, lines=tuple(lines),
                    to=customer.contact_email, cc=customer.cc_emails if stage.cc else (), local_date=today,
                    deadline=today + timedelta(days=settings.schedule.deadline_days),
                    message_id=message_id(customer.customer_id, ids, stage.name, settings.company.message_id_domain),
                    in_reply_to=None, references=())


@main.group("templates")
def templates_group() -> None:
    """Check the reminder templates."""


@templates_group.command("check")
@_common
def templates_check(settings: Settings) -> None:
    """Render every stage of every track in every language with sample data; list every problem."""
    problems = check(settings)
    for problem in problems:
        click.echo(str(problem))
    stages = sum(len(t.stages) for t in settings.schedule.tracks.values())
    click.echo(f"{len(problems)} problems in {stages} stages x {len(settings.languages)} languages")
    sys.exit(PROBLEMS if problems else OK)


@main.group("ledger")
def ledger_group() -> None:
    """Validate the receivables ledger."""


@ledger_group.command("check")
@_common
def ledger_check(settings: Settings) -> None:
    """List every bad row of the ledger with file, line and reason."""
    ledger = _read(settings)
    for problem in ledger.problems:
        click.echo(str(problem))
    click.echo(f"{ledger.rows} rows: {len(ledger.open_invoices)} open, {ledger.paid} paid, "
               f"{len(ledger.problems)} bad")
    sys.exit(PROBLEMS if ledger.problems else OK)


@ledger_group.command("accept")
@_common
@_now_option
@click.option("--by", "who", default="operator", show_default=True, help="Who vouches for the ledger (logged).")
def ledger_accept(settings: Settings, now_text: str | None, who: str) -> None:
    """Take the ledger as it is after the sanity check stopped sending: the drop in open invoices was real."""
    ledger = read_ledger(settings.ledger)
    store = _open_store(settings)
    try:
        before = last_ledger_check(store)
        vanished = accept_ledger(store, ledger.open_invoices, parse_now(now_text, settings), who)
    finally:
        store.close()
    was = f" (the last check said: {before['verdict']})" if before else ""
    click.echo(f"accepted {len(ledger.open_invoices)} open invoices from {settings.ledger.path}; {vanished} gone since "
               f"the last good pass{was}. The next pass sends again.")
    err().print("A running daemon picks this up at its next pass; no restart needed.", highlight=False)
    sys.exit(OK)
