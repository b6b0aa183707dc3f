"""Commands for replies: classify and score offline, and work the real inbox."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from bot.casebook import CaseBook
from bot.cli.common import (
    PROBLEMS,
    USAGE,
    _common,
    _error,
    _now_option,
    _open_store,
    clock_from,
    exclusive,
    main,
    parse_now,
)
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.inbox import Processor, Tally
from bot.mailboxes import watcher_for
from bot.triage import classification_json, classify, evaluate


@main.group("triage")
def triage_group() -> None:
    """Read replies offline: classify messages, or score the classifier on a labelled folder."""


def _optional_settings(path: Path) -> Settings | None:
    """The triage commands work without a config file (defaults), but honour one when it is there."""
    if not path.exists():
        return None
    try:
        return load_settings(path)
    except ConfigError as exc:
        _error("error", exc)
        sys.exit(USAGE)


@triage_group.command("classify")
@click.option("--config", "config_path", default="config.toml", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The configuration file (optional here).")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per file.")
def triage_classify(config_path: Path, files: tuple[Path, ...], as_json: bool) -> None:
    """Classify .eml files, changing nothing."""
    settings = _optional_settings(config_path)
    languages = settings.languages if settings else ("en", "es")
    domains = frozenset({settings.company.message_id_domain} if settings else ())
    for path in files:
        c = classify(path.read_bytes(), languages=languages, our_domains=domains)
        record = classification_json(c, str(path))
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            extra = f" promised {record['promised_date']}" if record["promised_date"] else ""
            click.echo(f"{path}: {c.intent} ({c.confidence:.2f}, {c.language}){extra}"
                       f"{' -> a person' if c.escalate else ''}; evidence: {'; '.join(c.evidence) or '-'}")


@triage_group.command("feedback")
@_common
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def triage_feedback(settings: Settings, folder: Path) -> None:
    """Write every reply a person corrected on the triage page to FOLDER, as .eml files with labels.jsonl.

    `dunbot triage eval FOLDER` then scores the classifier against what people said the replies meant.
    """
    store = _open_store(settings)
    try:
        corrected = CaseBook(store, settings).corrected_replies()
    finally:
        store.close()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in corrected:
        name = f"reply-{row['id']}.eml"
        (folder / name).write_bytes(row["raw"])
        promised = row["promised_date"].isoformat() if row["promised_date"] else None
        lines.append(json.dumps({"file": name, "intent": row["intent"], "language": row["language"],
                                 "promised_date": promised}))
    (folder / "labels-feedback.jsonl").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    click.echo(f"{len(lines)} corrected replies written to {folder}; score them with `dunbot triage eval {folder}`")


@triage_group.command("eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def triage_eval(folder: Path) -> None:
    """Score the classifier on a folder of .eml files with labels*.jsonl: precision, recall, macro-F1."""
    try:
        report = evaluate(folder)
    except (OSError, ValueError) as exc:
        _error("error", f"{folder}: {exc}")
        sys.exit(USAGE)
    click.echo(report.format())


@main.group("inbox")
def inbox_group() -> None:
    """Read the replies in the inbox and act on them."""


def _print_tally(tally: Tally) -> None:
    intents = ", ".join(f"{k} {v}" for k, v in sorted(tally.by_intent.items())) or "none"
    click.echo(f"handled {tally.handled}, for a person {tally.human}, unmatched (left in the inbox) "
               f"{tally.unmatched}, seen before {tally.repeated}; intents: {intents}")


@inbox_group.command("poll")
@_common
@_now_option
def inbox_poll(settings: Settings, now_text: str | None) -> None:
    """One pass over the inbox: every new message is matched, read, acted on and moved."""
    with exclusive(settings):
        store = _open_store(settings)
        try:
            processor = Processor(store, settings, clock_from(parse_now(now_text, settings)))
            watcher = watcher_for(settings.inbox, store, processor.clock)

            async def run() -> None:
                try:
                    await watcher.poll(processor)
                finally:
                    await watcher.close()

            asyncio.run(run())
        finally:
            store.close()
    _print_tally(processor.tally)
    if watcher.last_error:
        _error("error", watcher.last_error)
        sys.exit(PROBLEMS)


@inbox_group.command("watch")
@_common
def inbox_watch(settings: Settings) -> None:
    """Watch the inbox (IMAP IDLE, or polling) and act on every reply as it arrives, until interrupted."""
    with exclusive(settings):
        _watch(settings)


def _watch(settings: Settings) -> None:
    store = _open_store(settings)
    processor = Processor(store, settings, lambda: datetime.now(ZoneInfo(settings.company.timezone)))
    watcher = watcher_for(settings.inbox, store, processor.clock)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await watcher.watch(processor, stop)
        finally:
            await watcher.close()

    try:
        asyncio.run(run())
    finally:
        store.close()
    _print_tally(processor.tally)
