"""The `dunbot` command group and what every command shares. Exit codes: 0 success, 1 problems found,
2 usage or configuration error."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.markup import escape

from bot.config import Settings, load_settings
from bot.errors import ConfigError, DunbotError, LedgerError
from bot.store import Store

OK, PROBLEMS, USAGE = 0, 1, 2
PROGRESS_ROWS = 200_000
F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True)
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


def _error(label: str, message: object, style: str = "red") -> None:
    err.print(f"[{style}]{label}:[/{style}] {escape(str(message))}", highlight=False)


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



def clock_from(now: datetime) -> Callable[[], datetime]:
    """A clock that starts at `now` (perhaps given with --now) and moves with real time."""
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for debug).")
@click.version_option(package_name="dunbot")
def main(verbose: int) -> None:
    """Dunbot collects overdue B2B payments by email: firm, friendly, exactly once."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
