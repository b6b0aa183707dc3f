"""The `dunbot` command group and what every command shares. Exit codes: 0 success, 1 problems found,
2 usage or configuration error."""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import click

from bot.config import Settings, load_settings
from bot.errors import ConfigError, DunbotError, LedgerError
from bot.instance_lock import InstanceLock
from bot.store import Store

if TYPE_CHECKING:
    from rich.console import Console

OK, PROBLEMS, USAGE = 0, 1, 2
PROGRESS_ROWS = 200_000
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("bot")


def _common(func: F) -> F:
    """--config on every command, and DunbotError turned into a one-line message with the right exit code."""

    @click.option("--config", "config_path", default="config.toml", show_default=True,
                  type=click.Path(dir_okay=False, path_type=Path), help="The configuration file.")
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: Path, **kwargs: Any) -> Any:
        try:
            settings = load_settings(config_path)
            return func(*args, settings=settings, **kwargs)
        except (ConfigError, LedgerError) as exc:
            _error("error", exc)
            sys.exit(USAGE)
        except DunbotError as exc:
            _error("error", exc)
            sys.exit(PROBLEMS)

    return wrapper  # type: ignore[return-value]


@functools.cache
def err() -> Console:
    """The console on stderr, made on first use: the daemon prints through logging and does not import rich."""
    from rich.console import Console

    return Console(stderr=True)


def _error(label: str, message: object, style: str = "red") -> None:
    from rich.markup import escape

    err().print(f"[{style}]{label}:[/{style}] {escape(str(message))}", highlight=False)


def _now_option(func: F) -> F:
    return click.option("--now", "now_text", default=None, metavar="ISO-DATETIME",
                        help="Decide as if it were this moment, e.g. 2026-03-15T10:00 "
                             "(without an offset: the company's time zone).")(func)


def parse_now(text: str | None, settings: Settings) -> datetime:
    zone = ZoneInfo(settings.company.timezone)
    if text is None:
        return datetime.now(zone)
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), zone).replace(hour=10)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO date or datetime such as 2026-03-15T10:00",
                                 param_hint="--now") from None
    return value if value.tzinfo else value.replace(tzinfo=zone)


def _open_store(settings: Settings) -> Store:
    return Store.open(settings.store_url)


@contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """Sending and reading the inbox are what a running daemon does on its own schedule: a second sender or
    reader on the same store would race it for the same mail. Raises AlreadyRunning (a DunbotError)."""
    lock = InstanceLock(settings.store_url)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()



def clock_from(now: datetime) -> Callable[[], datetime]:
    """A clock that starts at `now` (perhaps given with --now) and moves with real time."""
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)



# Each command's module, imported when that command runs: `dunbot run` loads the daemon, not the web stack, the
# case tables or the planner's progress bars (the idle daemon's memory is what it imported).
COMMANDS = {
    "run": "daemon", "status": "daemon",
    "plan": "dunning", "send": "dunning", "preview": "dunning", "templates": "dunning", "ledger": "dunning",
    "triage": "replies", "inbox": "replies",
    "cases": "cases", "users": "cases", "report": "cases", "notify": "cases",
    "serve": "web",
}


class LazyGroup(click.Group):
    """The `dunbot` group: a command's module (which registers it on this group) is imported on first use."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"bot.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(COMMANDS.values())):
            importlib.import_module(f"bot.cli.{module}")
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for debug).")
@click.version_option(package_name="dunbot")
def main(verbose: int) -> None:
    """Dunbot collects overdue B2B payments by email: firm, friendly, exactly once."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
