"""Benchmark 2: triaging 10,000 replies already in an IMAP mailbox, against a bare imapclient fetch of them.

Set-up (not timed): a real Postfix + Dovecot (tests/mailstack.py); a seeded ledger of ~2,000 European customers
(bench/ledgers.py); `dunbot send` through the Maildir transport records one reminder per customer in a SQLite
store (the real code path); 10,000 replies built from tests/corpus/ (In-Reply-To, References and every reminder
Message-ID in them rewritten to the customer's reminder, From to the customer's address, Message-IDs made
unique) are APPENDed once to a staging folder of user `dunbot`; before every measurement INBOX is emptied and
refilled by one server-side COPY, and Dunbot's folders are deleted.

(a) baseline: a bare imapclient loop: login, SELECT INBOX, SEARCH ALL, FETCH BODY.PEEK[] in batches of
    Watcher.BATCH, doing nothing with the bytes;
(b) Dunbot: what `dunbot inbox poll` does: Store.open on a fresh copy of the store, Processor, the IMAP Watcher,
    one poll() (fetch, parse, match, classify, record, MOVE, advance the position), close.
Each measurement runs in a fresh interpreter; a and b alternate (order flipped every repetition). Target: b/a at
most 3 (median of the per-repetition ratios). One more run of b under cProfile (both threads) goes to bench/out/.

IDLE latency: `dunbot inbox watch` (Watcher.watch) on the real mailbox; 20 replies delivered through Postfix
1.5 s apart; for each, from the return of the SMTP delivery to its row in the store (polled every 10 ms).
Target: every reply under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import io
import json
import math
import os
import pstats
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bench.doc import DOC, write_section
from bench.ledgers import EUROPE, OUT, generate, ledger_path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"

CUSTOMERS, ROWS, SEED = 2_000, 5_000, 2
REPLIES = 10_000
# Thursday 13 November 2025, 11:30 in Madrid: a working day, inside every European customer's send window,
# before the corpus's earliest reply (17 Nov 2025); the pass reads them on 24 December, after the latest.
SEND_DAY = date(2025, 11, 13)
SEND_NOW = "2025-11-13T11:30:00+01:00"
TRIAGE_NOW = "2025-12-24T10:00:00+01:00"
OVERDUE = (1, 80)  # every customer's oldest invoice is due a stage, none is past escalation
TARGET_RATIO = 3.0
TARGET_LATENCY = 2.0
IDLE_REPLIES, IDLE_GAP, IDLE_TIMEOUT = 20, 1.5, 20.0
STAGING = "BenchStaging"
USER = "dunbot"
PASSWORD_ENV = "DUNBOT_BENCH_IMAP_PASSWORD"
KINDS = ("imapclient", "dunbot")
CLASSIFY = "classify"
PROFILE = OUT / "triage-profile.txt"


# ---- the replies -------------------------------------------------------------------------------

_REMINDER_ID = re.compile(rb"<dunbot\.[0-9a-f]{32}@northwind\.example>")


def _field(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?im)^" + name + rb":[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


_MESSAGE_ID, _FROM = _field(b"Message-ID"), _field(b"From")


def corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]


def make_reply(template: bytes, n: int, reminder_id: str, contact: str) -> bytes:
    """The corpus message as a reply to this customer's reminder, with a Message-ID of its own."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in template else b"\n\n"
    head, _, body = template.partition(sep)
    eol = b"\r\n" if sep == b"\r\n\r\n" else b"\n"
    mid = reminder_id.encode()
    head, body = _REMINDER_ID.sub(lambda _m: mid, head), _REMINDER_ID.sub(lambda _m: mid, body)
    new_id = f"Message-ID: <bench.{n:05d}.{hashlib.sha256(template).hexdigest()[:12]}@customers.test>".encode()
    head, found = _MESSAGE_ID.subn(lambda _m: new_id, head, count=1)
    if not found:
        head += eol + new_id

    def sender(m: re.Match[bytes]) -> bytes:
        value = m.group()
        if b"mailer-daemon" in value.lower() or b"postmaster" in value.lower():
            return value  # a bounce comes from the remote server, not from the customer
        angle = value.rfind(b"<")
        return (value[:angle] if angle > 0 else b"From: ") + b"<" + contact.encode() + b">"

    head = _FROM.sub(sender, head, count=1)
    return head + sep + body


def customers_of(store_path: Path) -> list[tuple[str, str, str]]:
    """(customer_id, reminder Message-ID, contact address) per customer, in the order they were queued."""
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT customer_id, message_id, recipients FROM reminders ORDER BY id").fetchall()
    seen: dict[str, tuple[str, str, str]] = {}
    for cid, mid, recipients in rows:
        seen.setdefault(cid, (cid, mid, (json.loads(recipients) or [""])[0]))
    return list(seen.values())


def build_replies(customers: list[tuple[str, str, str]], count: int, first: int = 0,
                  seed: int = SEED) -> list[bytes]:
    """`count` replies, customer after customer (about five each), the corpus message picked at random (seeded)."""
    templates, rng = corpus(), random.Random(seed + first)
    replies = []
    for n in range(first, first + count):
        _cid, mid, contact = customers[n % len(customers)]
        replies.append(make_reply(rng.choice(templates), n, mid, contact))
    return replies


# ---- the mail stack ----------------------------------------------------------------------------

def _stack() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from mailstack import MailStack

    return MailStack()


def append_staging(stack: Any, replies: list[bytes], chunk: int = 250) -> None:
    with stack.imap(USER, timeout=120) as client:
        if not client.folder_exists(STAGING):
            client.create_folder(STAGING)
        for i in range(0, len(replies), chunk):
            client.multiappend(STAGING, replies[i:i + chunk])
        got = client.folder_status(STAGING, [b"MESSAGES"])[b"MESSAGES"]
    if got != len(replies):
        raise RuntimeError(f"{STAGING} holds {got} messages, expected {len(replies)}")


def reset_mailbox(stack: Any, fill: bool) -> int:
    """Delete Dunbot's folders, empty INBOX and (fill) copy the staging folder into it server-side."""
    from imapclient import IMAPClient

    with stack.imap(USER, timeout=120) as client:
        for _flags, _sep, name in sorted(client.list_folders(), key=lambda f: -len(f[2])):
            if name.upper() != "INBOX" and name != STAGING:
                with suppress(IMAPClient.Error):  # a \Noselect parent already gone with its children
                    client.delete_folder(name)
        client.select_folder("INBOX")
        if client.search("ALL"):
            client.delete_messages("1:*", silent=True)
            client.expunge()
        if fill:
            client.select_folder(STAGING, readonly=True)
            client.copy("1:*", "INBOX")
        return int(client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"])


def folder_counts(stack: Any) -> dict[str, int]:
    with stack.imap(USER) as client:
        return {name: int(client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"])
                for flags, _sep, name in client.list_folders()
                if name != STAGING and b"\\Noselect" not in flags and b"\\NonExistent" not in flags}


# ---- configuration and the store ---------------------------------------------------------------

def write_config(folder: Path, ledger: Path, stack: Any, store: Path) -> Path:
    """The repository's config.toml with this ledger and store, the Maildir transport and [inbox.imap] on the stack."""
    (folder / "var").mkdir(parents=True, exist_ok=True)  # the Maildir transport's var/sent needs its parent
    text = (ROOT / "config.toml").read_text()
    for old, new in (('path = "examples/ledger.csv"', f'path = "{ledger}"'),
                     ('dir = "templates"', f'dir = "{ROOT / "templates"}"'),
                     ('url = "sqlite:///var/dunbot.db"', f'url = "sqlite:///{store}"')):
        if old not in text:
            raise RuntimeError(f"config.toml no longer has {old!r}: update bench/triage.py")
        text = text.replace(old, new, 1)
    text, n = re.subn(r'(?m)^(\[inbox\]\s*\n(?:[^\[\n]*\n)*?)kind = "maildir"', r'\1kind = "imap"', text, count=1)
    if not n:
        raise RuntimeError("config.toml: no [inbox] kind = \"maildir\" to switch to imap: update bench/triage.py")
    text += (f'\n[inbox.imap]\nhost = "{stack.host}"\nport = {stack.imap_port}\nsecurity = "none"\n'
             f'username = "{USER}"\npassword_env = "{PASSWORD_ENV}"\n')
    config = folder / "config.toml"
    config.write_text(text)
    return config


def send_reminders(config: Path, store: Path) -> str:
    """`dunbot send` at SEND_NOW: one reminder per customer recorded in the store, written to the Maildir."""
    done = subprocess.run([sys.executable, "-m", "bot", "send", "--config", str(config), "--now", SEND_NOW],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode or not store.exists():
        raise RuntimeError(f"dunbot send failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def copy_store(master: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
        if Path(f"{master}{suffix}").exists():
            shutil.copyfile(f"{master}{suffix}", f"{target}{suffix}")
    return target


def count_replies(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return int(db.execute("SELECT count(*) FROM replies").fetchone()[0])


# ---- the measurements (each in a fresh interpreter) ----------------------------------------------

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def measure_imapclient(spec: dict[str, Any]) -> dict[str, Any]:
    from imapclient import IMAPClient

    from bot.mailboxes import Watcher

    started = time.perf_counter()
    client = IMAPClient(spec["host"], port=spec["port"], ssl=False, timeout=60)
    client.login(USER, os.environ[PASSWORD_ENV])
    client.select_folder("INBOX")
    uids = client.search("ALL")
    messages = size = 0
    for i in range(0, len(uids), Watcher.BATCH):
        fetched = client.fetch(uids[i:i + Watcher.BATCH], ["BODY.PEEK[]"])
        messages += len(fetched)
        size += sum(len(v[b"BODY[]"]) for v in fetched.values())
    client.logout()
    return {"seconds": time.perf_counter() - started, "messages": messages, "mb": size / 1e6,
            "rss_mb": _peak_rss_mb()}


def measure_classify(spec: dict[str, Any]) -> dict[str, Any]:
    """classify() alone over the 200 corpus messages as the Processor calls it, without a customer's context:
    the pure-Python floor under (b), per message, to set against the fetch's."""
    from bot.config import load_settings
    from bot.triage import classify

    settings = load_settings(spec["config"])
    company = settings.company
    options: dict[str, Any] = {
        "our_domains": frozenset({company.message_id_domain, company.email.rpartition("@")[2]}),
        "languages": settings.languages, "max_bytes": settings.inbox.max_bytes}
    raws = corpus()
    for raw in raws:  # the first call loads the phrase files and langdetect's profiles
        classify(raw, **options)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for raw in raws:
            classify(raw, **options)
        times.append(time.perf_counter() - started)
    return {"seconds": min(times), "messages": len(raws), "rss_mb": _peak_rss_mb()}


def _cli(name: str) -> Any:
    """A helper of the `dunbot` command (bot/cli.py, or the bot/cli/ package it became)."""
    import importlib

    for module in ("bot.cli", "bot.cli.common", "bot.cli.replies"):
        with suppress(ImportError):
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
    raise ImportError(f"no {name} in bot.cli: update bench/triage.py")


def measure_dunbot(spec: dict[str, Any]) -> dict[str, Any]:
    clock_from, parse_now = (_cli(n) for n in ("clock_from", "parse_now"))
    from bot.config import load_settings
    from bot.inbox import Processor
    from bot.mailboxes import Incoming, watcher_for
    from bot.store import Store

    settings = load_settings(spec["config"])
    profile = spec.get("profile")
    main_prof, thread_prof = cProfile.Profile(), cProfile.Profile()
    in_handler = [0.0]
    if profile:
        main_prof.enable()
    started = time.perf_counter()
    store = Store.open(f"sqlite:///{spec['store']}")
    processor = Processor(store, settings, clock_from(parse_now(TRIAGE_NOW, settings)))
    watcher = watcher_for(settings.inbox, store, processor.clock)

    async def timed(incoming: Incoming) -> str | None:  # two clock reads a message: the handler's share
        t = time.perf_counter()
        try:
            return await processor(incoming)
        finally:
            in_handler[0] += time.perf_counter() - t

    async def one_pass() -> int:
        loop = asyncio.get_running_loop()
        try:
            if profile:  # the mailbox thread (imapclient) is profiled by a profiler of its own
                await loop.run_in_executor(watcher._executor, thread_prof.enable)
            handled = await watcher.poll(timed)
            if profile:
                await loop.run_in_executor(watcher._executor, thread_prof.disable)
            return handled
        finally:
            await watcher.close()

    handled = asyncio.run(one_pass())
    store.close()
    seconds = time.perf_counter() - started
    if profile:
        main_prof.disable()
    tally = processor.tally
    result: dict[str, Any] = {
        "seconds": seconds, "handler_seconds": in_handler[0], "messages": handled, "rss_mb": _peak_rss_mb(),
        "handled": tally.handled, "human": tally.human, "unmatched": tally.unmatched, "repeated": tally.repeated,
        "by_intent": tally.by_intent, "last_error": watcher.last_error,
    }
    if profile:
        result["profile"] = write_profile(main_prof, thread_prof, seconds, handled)
    return result


# ---- the profile -----------------------------------------------------------------------------------

_WATCH: dict[str, tuple[str, str | tuple[str, ...], str]] = {  # label: (thread, file suffix(es), function)
    "Processor.handle (parse, match, classify, record)": ("main", "bot/inbox.py", "handle"),
    "  triage classify()": ("main", "bot/triage/pipeline.py", "classify"),
    "    mime.parse (the email package, HTML to text)": ("main", "bot/triage/mime.py", "parse"),
    "    quotes.split_message": ("main", "bot/triage/quotes.py", "split_message"),
    "    language.detect (langdetect)": ("main", "bot/triage/language.py", "detect"),
    "    dates.find_dates": ("main", "bot/triage/dates.py", "find_dates"),
    "    intent.decide": ("main", "bot/triage/intent.py", "decide"),
    "    extract.find_invoices": ("main", "bot/triage/extract.py", "find_invoices"),
    "  Store.record_reply": ("main", "bot/store.py", "record_reply"),
    "  Store.reply_seen": ("main", "bot/store.py", "reply_seen"),
    "Store.set_inbox_position (once a batch)": ("main", "bot/store.py", "set_inbox_position"),
    "SQLite COMMIT (all store transactions)": ("main", "~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    "ImapMailbox.fetch_after (mailbox thread)": ("thread", ("bot/mailboxes.py", "bot/mailboxes/imap.py"),
                                                 "fetch_after"),
    "ImapMailbox.move (mailbox thread)": ("thread", ("bot/mailboxes.py", "bot/mailboxes/imap.py"), "move"),
}
# Plumbing and waiting, left out of the combined listing: the event loop, the executor, and each thread's
# idle wait for the other (the main thread's epoll while the mailbox thread works, and the reverse).
_PLUMBING = ("/asyncio/", "/concurrent/futures/", "bench/triage.py", "threading.py", "_contextvars",
             "select.epoll", "_queue.SimpleQueue", "runpy", "<string>")


def _cumulative(stats: pstats.Stats, suffix: str | tuple[str, ...], name: str) -> tuple[float, int]:
    total, calls = 0.0, 0
    for (filename, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and filename.replace(os.sep, "/").endswith(suffix):
            total, calls = total + ct, calls + nc
    return total, calls


def _top(stats: pstats.Stats, sort: str, n: int) -> str:
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(n)
    text = buffer.getvalue()
    return text[text.find("   ncalls"):] if "   ncalls" in text else text


def _short(filename: str, line: int, func: str) -> str:
    path = filename.replace(os.sep, "/")
    for anchor in ("/bot/", "/site-packages/", "/lib/python3"):
        if anchor in path:
            path = path[path.index(anchor) + 1:]
            break
    return f"{func}" if path == "~" else f"{path}:{line}({func})"


def write_profile(main_prof: cProfile.Profile, thread_prof: cProfile.Profile, seconds: float,
                  messages: int) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    main_prof.dump_stats(OUT / "triage-main.pstats")
    thread_prof.dump_stats(OUT / "triage-mailbox.pstats")
    return analyse_profile(seconds, messages)


def analyse_profile(seconds: float, messages: int) -> dict[str, Any]:
    """Summarise bench/out/triage-{main,mailbox}.pstats into bench/out/triage-profile.txt and the report's figures."""
    main, thread = pstats.Stats(str(OUT / "triage-main.pstats")), pstats.Stats(str(OUT / "triage-mailbox.pstats"))
    both = pstats.Stats(str(OUT / "triage-main.pstats"))
    both.add(str(OUT / "triage-mailbox.pstats"))
    parts = {}
    for label, (which, suffix, name) in _WATCH.items():
        ct, calls = _cumulative(main if which == "main" else thread, suffix, name)
        parts[label] = {"seconds": ct, "calls": calls}
    work = [(key, value) for key, value in both.stats.items()  # type: ignore[attr-defined]
            if not any(p in key[0] or p in key[2] for p in _PLUMBING)]
    top = [(_short(*key), value[3], value[1]) for key, value in sorted(work, key=lambda kv: -kv[1][3])[:15]]
    lines = [f"Dunbot, one poll over {messages} messages under cProfile (main thread and mailbox thread): "
             f"{seconds:.1f} s wall (profiling inflates the Python-heavy parts)", "",
             "Where the time goes (cumulative seconds):"]
    lines += [f"  {label:62} {v['seconds']:8.2f}  ({v['calls']} calls)" for label, v in parts.items()]
    lines += ["", "=" * 100, "BOTH THREADS, top 15 by cumulative time, without event-loop/executor plumbing and "
              "the threads' waits for each other", "=" * 100, "   cumtime     ncalls  function"]
    lines += [f"{ct:10.2f} {nc:10}  {name}" for name, ct, nc in top]
    for title, stats, sort in (("MAIN THREAD (event loop: handler, store), top 15 by cumulative time", main,
                                "cumulative"),
                               ("MAIN THREAD, top 15 by own time", main, "tottime"),
                               ("MAILBOX THREAD (imapclient), top 15 by cumulative time", thread, "cumulative"),
                               ("MAILBOX THREAD, top 15 by own time", thread, "tottime")):
        lines += ["", "=" * 100, title, "=" * 100, _top(stats, sort, 15)]
    PROFILE.write_text("\n".join(lines) + "\n")
    return {"wall": seconds, "messages": messages, "parts": parts, "top_cumulative": top}


# ---- IDLE latency ------------------------------------------------------------------------------------

def idle_latency(stack: Any, config: Path, store: Path, replies: list[bytes], log: Any) -> dict[str, Any]:
    """`dunbot inbox watch` in its own process; replies delivered through Postfix IDLE_GAP apart."""
    warmup, measured = replies[0], replies[1:]
    ids = [_message_id(r) for r in replies]
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch_store() -> None:  # its own connection: WAL lets it read while the watcher writes
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, check_same_thread=False)
        try:
            while not stop.is_set():
                pending = [i for i in ids if i not in seen]
                if pending:
                    try:
                        marks = ",".join("?" * len(pending))
                        rows = db.execute(f"SELECT message_id FROM replies WHERE message_id IN ({marks})", pending)
                        now = time.monotonic()
                        for (mid,) in rows:
                            seen.setdefault(mid, now)
                    except sqlite3.OperationalError:
                        pass  # the schema is not there yet, or a writer holds a lock for a moment
                time.sleep(0.01)
        finally:
            db.close()

    errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen([sys.executable, "-m", "bot", "inbox", "watch", "--config", str(config)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=errors, stderr=errors)
    poller = threading.Thread(target=watch_store, daemon=True)
    poller.start()
    latencies: list[float | None] = []
    try:
        stack.deliver(warmup, to=f"accounts@{USER}.test")  # start-up, imports and first classification
        deadline = time.monotonic() + 60
        while ids[0] not in seen:
            if time.monotonic() > deadline or proc.poll() is not None:
                errors.seek(0)
                raise RuntimeError(f"the watcher never recorded the warm-up reply:\n{errors.read().decode()[-3000:]}")
            time.sleep(0.05)
        time.sleep(1.0)
        delivered: dict[str, float] = {}
        start = time.monotonic()
        for k, reply in enumerate(measured):
            time.sleep(max(0.0, start + k * IDLE_GAP - time.monotonic()))
            stack.deliver(reply, to=f"accounts@{USER}.test")
            delivered[ids[k + 1]] = time.monotonic()
        deadline = time.monotonic() + IDLE_TIMEOUT
        while any(i not in seen for i in delivered) and time.monotonic() < deadline:
            time.sleep(0.05)
        latencies = [seen[i] - t if i in seen else None for i, t in delivered.items()]
    finally:
        stop.set()
        poller.join(5)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        errors.close()
    got = sorted(x for x in latencies if x is not None)
    for k, x in enumerate(latencies):
        log(f"idle reply {k + 1}/{len(latencies)}: " + (f"{x * 1000:.0f} ms" if x is not None else "NOT RECORDED"))
    return {"latencies": latencies, "missing": sum(x is None for x in latencies),
            "median": statistics.median(got) if got else None,
            "p90": got[math.ceil(0.9 * len(got)) - 1] if got else None,  # nearest rank
            "max": got[-1] if got else None, "min": got[0] if got else None}


def _message_id(raw: bytes) -> str:
    m = _MESSAGE_ID.search(raw.partition(b"\r\n\r\n")[0])
    assert m is not None
    return " ".join(m.group().split(b":", 1)[1].decode().split())


# ---- the run --------------------------------------------------------------------------------------------

@dataclass
class Result:
    setup: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    machine: str = ""
    code: str = ""

    def median(self, kind: str, key: str = "seconds") -> float:
        return float(statistics.median(r[key] for r in self.runs[kind]))

    @property
    def ratios(self) -> list[float]:
        return [b["seconds"] / a["seconds"] for a, b in zip(self.runs["imapclient"], self.runs["dunbot"],
                                                              strict=True)]

    @property
    def ratio(self) -> float:
        return float(statistics.median(self.ratios))

    @property
    def passed(self) -> tuple[bool, bool]:
        idle_max = self.idle.get("max")
        return (self.ratio <= TARGET_RATIO,
                idle_max is not None and not self.idle.get("missing") and idle_max < TARGET_LATENCY)


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.triage", "--child", kind, json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench.triage --child {kind} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _code() -> str:
    """The commit measured, and whether the working tree differed from it (others edit it concurrently)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bot"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{head}`" + (" with uncommitted changes in bot/" if dirty else "")


def run(repeats: int = 3, log: Any = print, profile: bool = True, idle: bool = True,
        messages: int = REPLIES) -> Result:
    from bench.machine import describe

    result = Result(machine=describe(), code=_code())
    began = time.monotonic()
    ledger = generate(ledger_path("triage", ROWS, CUSTOMERS, SEED), ROWS, CUSTOMERS, SEED, SEND_DAY,
                      countries=EUROPE, overdue=OVERDUE)
    stack = _stack()
    work = Path(tempfile.mkdtemp(prefix="dunbot-bench-triage-"))
    try:
        t = time.monotonic()
        stack.start()
        os.environ[PASSWORD_ENV] = stack.users[USER]
        master = work / "master" / "dunbot.db"
        config = write_config(work / "master", ledger, stack, master)
        sent = send_reminders(config, master)
        customers = customers_of(master)
        log(f"triage setup: stack up, {len(customers)} customers with a reminder ({sent}) "
            f"in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        replies = build_replies(customers, messages)
        append_staging(stack, replies)
        mb = sum(map(len, replies)) / 1e6
        log(f"triage setup: {len(replies)} replies ({mb:.1f} MB) appended to {STAGING} in "
            f"{time.monotonic() - t:.1f} s")
        result.setup = {"ledger": str(ledger.relative_to(ROOT)), "customers": len(customers), "send": sent,
                        "replies": len(replies), "mb": mb}
        spec = {"host": stack.host, "port": stack.imap_port, "config": str(config)}
        for rep in range(repeats):
            for kind in (KINDS if rep % 2 == 0 else KINDS[::-1]):
                filled = reset_mailbox(stack, fill=True)
                assert filled == messages, filled
                store = copy_store(master, work / f"run{rep}-{kind}" / "dunbot.db")
                figures = _child(kind, {**spec, "store": str(store)})
                if kind == "dunbot":
                    figures["recorded"] = count_replies(store)
                    figures["folders"] = folder_counts(stack)
                result.runs.setdefault(kind, []).append(figures)
                log(f"triage rep {rep + 1}/{repeats} {kind}: {figures['seconds']:.2f} s "
                    f"({figures['messages'] / figures['seconds']:.0f} msg/s)"
                    + (f", handler {figures['handler_seconds']:.1f} s, folders {figures['folders']}"
                       if kind == "dunbot" else ""))
            figures = _child(CLASSIFY, spec)
            result.runs.setdefault(CLASSIFY, []).append(figures)
            log(f"triage rep {rep + 1}/{repeats} classify() alone: "
                f"{figures['seconds'] / figures['messages'] * 1000:.2f} ms/message")
        if profile:
            reset_mailbox(stack, fill=True)
            store = copy_store(master, work / "profile" / "dunbot.db")
            figures = _child("dunbot", {**spec, "store": str(store), "profile": True})
            result.profile = figures["profile"]
            log(f"triage profile: {figures['seconds']:.1f} s under cProfile, written to "
                f"{PROFILE.relative_to(ROOT)}")
        if idle:
            reset_mailbox(stack, fill=False)
            store = copy_store(master, work / "watch" / "dunbot.db")
            watch_config = write_config(work / "watch", ledger, stack, store)
            live = build_replies(customers, IDLE_REPLIES + 1, first=max(messages, REPLIES))
            result.idle = idle_latency(stack, watch_config, store, live, log)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    result.setup["total_seconds"] = time.monotonic() - began
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "triage-result.json").write_text(json.dumps(result.__dict__, indent=1, default=str))  # for --render
    return result


# ---- the report ----------------------------------------------------------------------------------------

def _list(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['seconds']:.2f}" for r in runs)


def markdown(result: Result) -> str:
    verdict = {True: "**pass**", False: "**FAIL**"}
    a_runs, b_runs = result.runs["imapclient"], result.runs["dunbot"]
    a, b = result.median("imapclient"), result.median("dunbot")
    n = result.setup["replies"]
    ratio_ok, idle_ok = result.passed
    b0 = b_runs[0]
    handler = statistics.median(r["handler_seconds"] for r in b_runs)
    intents = ", ".join(f"{k} {v:,}" for k, v in sorted(b0["by_intent"].items(), key=lambda kv: -kv[1]))
    s = result.setup
    lines = [
        f"## Triage: {n:,} replies over IMAP, and IDLE latency",
        "",
        f"Measured {result.machine}; code {result.code}; the whole benchmark took "
        f"{s['total_seconds'] / 60:.0f} min.",
        "",
        "Targets (from the issue): triaging 10,000 messages already in the IMAP mailbox at most 3× a bare "
        "imapclient fetch of the same messages; latency from a reply's delivery to its recorded decision with "
        "IDLE under 2 s.",
        "",
        f"Set-up: a real Postfix + Dovecot on loopback (`tests/mailstack.py`); ledger `{s['ledger']}` "
        f"({ROWS:,} invoices, {CUSTOMERS:,} European customers, seeded); `dunbot send --now {SEND_NOW}` through "
        f"the Maildir transport recorded one reminder for each of {s['customers']:,} customers. {s['replies']:,} "
        f"replies ({s['mb']:.0f} MB) built from the 200 messages of `tests/corpus/` (reminder Message-IDs, "
        "In-Reply-To and References rewritten to the customer's reminder, From to the customer, Message-IDs "
        "unique; about five replies per customer) are APPENDed once to a staging folder; before every "
        "measurement INBOX is emptied and refilled by one server-side COPY, and Dunbot's folders are deleted. "
        "Each measurement runs in a fresh interpreter, the two alternate (order flipped each repetition), "
        f"{len(a_runs)} repetition{'s' if len(a_runs) > 1 else ''}; the ratio is the median of the "
        "per-repetition ratios.",
        "",
        "| | median (s) | all runs (s) | messages/s | peak RSS (MB) |",
        "|---|---|---|---|---|",
        f"| (a) imapclient: SEARCH ALL + FETCH BODY.PEEK[] by {25} | {a:.2f} | "
        f"{_list(a_runs)} | {n / a:,.0f} | "
        f"{max(r['rss_mb'] for r in a_runs):.0f} |",
        f"| (b) Dunbot `inbox poll`: fetch, parse, match, classify, record, MOVE | {b:.2f} | "
        f"{_list(b_runs)} | {n / b:,.0f} | "
        f"{max(r['rss_mb'] for r in b_runs):.0f} |",
        *_classify_row(result),
        "",
        f"Of (b), {handler:.1f} s (median, {handler / b:.0%}) is spent in the handler (`Processor`: parse, match, "
        f"classify, record); the rest is start-up (imports, the store) and the mailbox work the "
        f"handling does not hide (per batch of 25: SEARCH, 2 FETCHes and one MOVE per target folder, made by the "
        f"mailbox thread while the next batch is handled, and one position write). Outcome of a pass: "
        f"{b0['handled']:,} handled, {b0['human']:,} for a person, "
        f"{b0['unmatched']:,} unmatched, {b0['repeated']:,} seen before; {b0['recorded']:,} rows in `replies`; "
        f"intents: {intents}.{_spread(b_runs, result.code)}",
        "",
    ]
    idle = result.idle
    rows = [f"| b/a at most {TARGET_RATIO:g} | {result.ratio:.1f} (per repetition: "
            f"{', '.join(f'{x:.1f}' for x in result.ratios)}) | {verdict[ratio_ok]} |"]
    if idle:
        missing = f", {idle['missing']} never recorded" if idle["missing"] else ""
        rows.append(f"| IDLE: delivery to recorded decision under {TARGET_LATENCY:g} s | median "
                    f"{idle['median'] * 1000:.0f} ms, p90 {idle['p90'] * 1000:.0f} ms, max {idle['max'] * 1000:.0f} ms"
                    f"{missing} | {verdict[idle_ok]} |")
    lines += ["| target | measured | result |", "|---|---|---|", *rows, ""]
    if idle:
        lines += [
            f"IDLE: `dunbot inbox watch` (Watcher.watch) on the mailbox; after one warm-up reply, {IDLE_REPLIES} "
            f"replies delivered one at a time through Postfix SMTP {IDLE_GAP:g} s apart; latency from the return of "
            "the SMTP delivery to the reply's row in the store (polled every 10 ms), so it includes Postfix's "
            "queue and LMTP hand-off and Dovecot's own ~0.5 s delay before it notifies IDLE clients "
            f"(FIELD_NOTES.md). Min {idle['min'] * 1000:.0f} ms.",
            "",
        ]
    prof = result.profile
    if prof:
        lines += [f"Profile (one more run of (b) under cProfile, both threads; {prof['wall']:.0f} s wall, inflated "
                  "by profiling; full listings in `bench/out/triage-profile.txt`, raw `bench/out/triage-*.pstats`):",
                  "", "| part | cumulative s | share of wall | calls |", "|---|---|---|---|"]
        lines += [f"| {label.strip()} | {v['seconds']:.1f} | {v['seconds'] / prof['wall']:.0%} | {v['calls']:,} |"
                  for label, v in prof["parts"].items()]
        lines += ["", "Top 15 by cumulative time, both threads, without the event loop's and executor's plumbing "
                  "and the threads' waits for each other:", "", "| function | cumulative s | calls |", "|---|---|---|"]
        lines += [f"| `{name}` | {ct:.1f} | {nc:,} |" for name, ct, nc in prof["top_cumulative"]]
        lines += ["", *findings(result), ""]
    lines += [
        "Reproduce (as root: the stack starts Postfix and Dovecot): `.venv/bin/python -m bench.triage` "
        "(or `-m bench.run triage`) prints this section and writes it here. With the code as measured it takes "
        f"about {s['total_seconds'] / 60:.0f} min (each pass of (b) ~{b / 60:.1f} min, plus one profiled pass, "
        "the set-up and the IDLE run); `--repeats 1`, `--no-profile`, `--no-idle` or `--messages N` shorten it "
        "(the ratio depends on N), `--no-write` leaves this file alone, and `--render` reports the last run "
        "again from `bench/out/triage-*`.",
    ]
    return "\n".join(lines)


def _classify_row(result: Result) -> list[str]:
    runs = result.runs.get(CLASSIFY)
    if not runs:
        return []
    per = [r["seconds"] / r["messages"] * 1000 for r in runs]
    return [f"| (c) `classify()` alone over the {runs[0]['messages']} messages of `tests/corpus/`, per message "
            f"(best of 3 loops a run) | {statistics.median(per):.2f} ms | {', '.join(f'{x:.2f}' for x in per)} ms | "
            f"{1000 / statistics.median(per):,.0f} | {max(r['rss_mb'] for r in runs):.0f} |"]


def _spread(runs: list[dict[str, Any]], code: str) -> str:
    handled = sorted({r["handled"] for r in runs})
    if len(handled) < 2:
        return ""
    why = ": the working tree under bot/ was being edited while this ran" if "uncommitted" in code else ""
    return f" The repetitions' outcomes differ (handled {handled[0]:,}–{handled[-1]:,}){why}."


def findings(result: Result) -> list[str]:
    """What dominates, read off the profile and the timed runs."""
    prof, n = result.profile, result.setup["replies"]
    parts = {label.strip(): v for label, v in prof["parts"].items()}
    a, b = result.median("imapclient"), result.median("dunbot")
    handler = statistics.median(r["handler_seconds"] for r in result.runs["dunbot"])
    handle, classify = parts["Processor.handle (parse, match, classify, record)"], parts["triage classify()"]
    move, fetch = parts["ImapMailbox.move (mailbox thread)"], parts["ImapMailbox.fetch_after (mailbox thread)"]
    commits = parts["SQLite COMMIT (all store transactions)"]
    positions = parts["Store.set_inbox_position (once a batch)"]
    stages = ("mime.parse (the email package, HTML to text)", "quotes.split_message", "language.detect (langdetect)",
              "dates.find_dates", "intent.decide", "extract.find_invoices")
    twice = classify["calls"] - n
    fetch_ms = a / n * 1000
    runs = result.runs.get(CLASSIFY)
    alone = statistics.median(r["seconds"] / r["messages"] for r in runs) * 1000 if runs else None
    out = ["**What dominates** (profile seconds are inflated by cProfile, most for pure-Python code; the "
           "mailbox thread mostly waits on the socket, so its figures are close to real):", ""]
    floor = (f" Unprofiled, `classify()` alone costs {alone:.2f} ms per message (row c), {alone / fetch_ms:.0f}× "
             f"the bare fetch's {fetch_ms:.2f} ms: on one core the classifier alone keeps the ratio above "
             f"{alone / fetch_ms:.0f}." if alone else "")
    out.append(
        f"1. **Classification.** {classify['seconds']:.0f} s of the handler's {handle['seconds']:.0f} s under the "
        f"profiler, {classify['calls']:,} calls ({twice:,} replies out of thread are classified twice by "
        "`Processor._match`: once to find the customer, once with the customer's language and invoices). By "
        "stage: " + ", ".join(f"{name.split(' (')[0]} {parts[name]['seconds']:.0f} s" for name in stages)
        + f".{floor}")
    out.append(
        f"2. **The mailbox side.** {move['calls']:,} MOVE commands for {n:,} messages ({move['seconds']:.1f} s, "
        f"{move['seconds'] / max(move['calls'], 1) * 1000:.0f} ms each: one per target folder and batch of 25) and "
        f"{fetch['calls']:,} fetches ({fetch['seconds']:.1f} s); the position is written {positions['calls']:,} "
        f"times. (b) spends {b - handler:.0f} s (median, unprofiled) outside the handler: the mailbox thread "
        "fetches and moves while the handler runs, but shares the interpreter lock with it (imapclient parses "
        "responses in Python).")
    record = parts["Store.record_reply"]
    out.append(
        f"3. **The store.** {commits['calls']:,} SQLite COMMITs for {n:,} messages "
        f"({commits['calls'] / n:.2f} per message, `synchronous=FULL`): the replies of a batch are recorded in "
        f"one transaction (`Store.reply_batch`: one commit, one fsync), each in a savepoint; the position is "
        f"written after the batch's moves. `record_reply` {record['seconds']:.0f} s under the profiler "
        f"({record['seconds'] / max(record['calls'], 1) * 1000:.1f} ms a reply).")
    out.append(
        f"4. **The target.** A ratio of {TARGET_RATIO:g} leaves {TARGET_RATIO * fetch_ms:.2f} ms per message for "
        "fetching, parsing, matching, classifying, recording and moving. The classifier is pure Python (the "
        "email package, ~250 phrase patterns per language, langdetect's sampling, dateparser); even spread over "
        "both cores of this machine it would stay several times the fetch. The target needs rebasing (e.g. "
        "against a fetch + MOVE baseline, or an absolute throughput such as 10,000 replies within a few "
        "minutes).")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=(*KINDS, CLASSIFY), help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--messages", type=int, default=REPLIES, help="replies in the mailbox (the target: 10,000)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-idle", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/performance.md alone")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: report the last run again from bench/out/triage-*.json/.pstats")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        measure = {"imapclient": measure_imapclient, "dunbot": measure_dunbot, CLASSIFY: measure_classify}
        print(json.dumps(measure[args.child](spec)))
        return
    if args.render:
        result = Result(**json.loads((OUT / "triage-result.json").read_text()))
        if result.profile:
            result.profile = analyse_profile(result.profile["wall"], result.setup["replies"])
    else:
        result = run(args.repeats, profile=not args.no_profile, idle=not args.no_idle, messages=args.messages)
    (OUT / "triage-result.json").write_text(json.dumps(result.__dict__, indent=1, default=str))
    text = markdown(result)
    print(text)
    if not args.no_write:
        write_section("triage", text)
        print(f"\nwritten to the triage section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
