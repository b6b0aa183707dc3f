"""Commands of the daemon: `dunbot run` (the service) and `dunbot status` (is it alive and well)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import click

from bot.cli.common import OK, PROBLEMS, USAGE, _common, _error, _now_option, _open_store, main, parse_now
from bot.config import Settings
from bot.daemon import Daemon
from bot.daemon_settings import load_daemon_settings
from bot.instance_lock import AlreadyRunning, InstanceLock
from bot.ledger_check import last_ledger_check
from bot.metrics import JsonFormatter
from bot.status import read_status
from bot.store import engine_safe

NOT_RUNNING = 3  # as LSB's `status` says "program is not running"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(fmt: str, verbose: int) -> None:
    """INFO by default: the daemon's log is its record of decisions, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


async def serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    return await daemon.run()


@main.command("run")
@_common
@_now_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text, or as JSON objects with the decision's fields (customer, invoices, ...).")
def run_command(settings: Settings, now_text: str | None, log_format: str) -> None:
    """Run as a service: the dunning pass, retries, the inbox, notices, on schedule, until SIGTERM.

    SIGHUP reloads config.toml and the templates. A second `dunbot run` on the same store refuses to start.
    """
    configure_logging(log_format, click.get_current_context().find_root().params.get("verbose", 0))
    now = parse_now(now_text, settings) if now_text else None
    daemon = Daemon(settings.source, settings=settings, now=now)
    try:
        code = asyncio.run(serve(daemon))
    except AlreadyRunning as exc:
        _error("error", exc)
        sys.exit(USAGE)
    sys.exit(code)


def _age(value: Any, now: datetime) -> float | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()


def _when(value: Any) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value)).isoformat(sep=" ", timespec="minutes")
    except ValueError:
        return str(value)


def status_report(settings: Settings) -> tuple[int, dict[str, Any]]:
    """(exit code, document): 0 running and healthy, 1 running with problems, 3 not running."""
    running = InstanceLock.held(settings.store_url)
    store = _open_store(settings)
    try:
        state = read_status(store)
        counts = store.counts()
        escalations = len(store.open_escalations())
        ledger = last_ledger_check(store)
    finally:
        store.close()
    now = datetime.now(UTC)
    daemon = state.get("daemon", {})
    problems = dict(state.get("problems", {})) if running else {}
    beat = _age(daemon.get("heartbeat_wall"), now)
    limit = 3 * float(daemon.get("heartbeat_seconds") or 15) + 10
    if running and (beat is None or beat > limit):
        problems["heartbeat"] = (f"no heartbeat for {beat:.0f} s (expected every {daemon.get('heartbeat_seconds')} s):"
                                 " the daemon may be stuck" if beat is not None else "no heartbeat recorded yet")
    if ledger and ledger["verdict"] == "stopped":
        problems.setdefault("ledger", ledger["detail"])
    code = NOT_RUNNING if not running else (PROBLEMS if problems else OK)
    doc = {"running": running, "healthy": code == OK, "store": engine_safe(settings.store_url), "daemon": daemon,
           "heartbeat_age_seconds": beat, "problems": problems, "jobs": state.get("jobs", {}),
           "last_pass": state.get("last_pass"), "last_retry": state.get("last_retry"), "ledger": ledger,
           "outbox": counts, "outbox_oldest_queued_seconds": state.get("outbox", {}).get("oldest_queued_seconds"),
           "inbox": state.get("inbox", {}), "open_escalations": escalations, "errors": state.get("errors", [])}
    return code, doc


def _print_status(doc: dict[str, Any]) -> None:
    d = doc["daemon"]
    if doc["running"]:
        click.echo(f"dunbot daemon: running, pid {d.get('pid')} on {d.get('host')}, since {_when(d.get('started_at'))}"
                   f", last heartbeat {doc['heartbeat_age_seconds'] or 0:.0f} s ago")
    else:
        seen = f"; last seen {_when(d.get('heartbeat_wall'))} ({d.get('state')})" if d else ""
        click.echo(f"dunbot daemon: NOT running on {doc['store']}{seen}")
    click.echo("health: " + ("ok" if doc["healthy"] else ("problems" if doc["running"] else "not running")))
    for component, message in doc["problems"].items():
        click.echo(f"  {component}: {message}")
    p = doc["last_pass"]
    if p:
        click.echo(f"last pass: {_when(p.get('at'))}: queued {p.get('queued')}, sent {p.get('sent')}, failed "
                   f"{p.get('failed')}, waiting for retry {p.get('retrying')}, withdrawn {p.get('withdrawn')}, "
                   f"escalated {p.get('escalated')}" + (f"; stopped: {p['aborted']}" if p.get("aborted") else ""))
    else:
        click.echo("last pass: none yet")
    ledger = doc["ledger"]
    if ledger:
        click.echo(f"ledger: {ledger['verdict']} at {_when(ledger['at'])}, {ledger['open_count']} open invoices, "
                   f"{ledger['vanished']} gone since the last good pass")
    if doc["jobs"]:
        click.echo("jobs:")
        for job in doc["jobs"].values():
            last = f"last {job.get('outcome') or '-'} at {_when(job.get('last_end'))}"
            click.echo(f"  {job.get('name', '?'):<20} next {_when(job.get('next_run')):<22} {last}")
    box = doc["outbox"]
    oldest = doc["outbox_oldest_queued_seconds"]
    click.echo(f"outbox: queued {box.get('queued', 0)}, sending {box.get('sending', 0)}, sent {box.get('sent', 0)}, "
               f"failed {box.get('failed', 0)}" + (f"; oldest queued {oldest / 60:.0f} min" if oldest else ""))
    inbox = doc["inbox"]
    if inbox:
        lag = inbox.get("lag_seconds")
        click.echo(f"inbox {inbox.get('folder')}: handled {inbox.get('handled', 0)}, for a person "
                   f"{inbox.get('for_a_person', 0)}, unmatched (left in the inbox) {inbox.get('unmatched', 0)} since "
                   f"start; lag {lag if lag is not None else '-'} s; "
                   f"{'error: ' + inbox['last_error'] if inbox.get('last_error') else 'connected'}")
    click.echo(f"open escalations: {doc['open_escalations']}")
    if doc["errors"]:
        click.echo("last errors:")
        for e in doc["errors"][-5:]:
            click.echo(f"  {e.get('at')} {e.get('component')}: {e.get('error')}")


@main.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(settings: Settings, as_json: bool) -> None:
    """Whether the daemon runs and is healthy: last pass, next runs, outbox, inbox, escalations, errors.

    Exit 0 when it runs and is healthy, 1 when it runs with problems, 3 when it does not run.
    """
    load_daemon_settings(settings)  # a bad [daemon] table is worth knowing about here too
    code, doc = status_report(settings)
    if as_json:
        click.echo(json.dumps(doc, default=str, ensure_ascii=False, indent=1))
    else:
        _print_status(doc)
    sys.exit(code)


__all__ = ["AlreadyRunning", "run_command", "status_command"]
