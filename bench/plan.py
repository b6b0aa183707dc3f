"""Benchmark 1: planning a million invoices, against Python's csv module merely reading the same file.

(a) baseline: `for row in csv.reader(f): pass` over the ledger (same encoding Dunbot reads it with);
(b) Dunbot: `read_ledger` + `plan` with an empty history at a fixed moment: what `dunbot plan` computes.
Each measurement runs in a fresh interpreter, so its peak RSS is its own; a and b alternate, repeated.
Targets: b/a at most 3 (best b over best a), peak RSS of b under 500 MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from bench.ledgers import generate, ledger_path

ROOT = Path(__file__).resolve().parent.parent
ROWS, CUSTOMERS, SEED = 1_000_000, 100_000, 1
# A Tuesday, 15:30 in Madrid: Europe in business hours, the Americas opening, Asia-Pacific closed.
NOW = "2026-11-24T15:30:00+01:00"
TODAY = date(2026, 11, 24)
TARGET_RATIO = 3.0
TARGET_RSS_MB = 500.0
KINDS = ("csv", "dunbot")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB


def measure(kind: str, path: Path) -> dict[str, Any]:
    """Run inside the child: one measurement, returned as JSON-able figures."""
    if kind == "csv":
        started = time.perf_counter()
        rows = 0
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for _row in csv.reader(handle):
                rows += 1
        return {"seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb(), "rows": rows}
    from bot.config import load_settings
    from bot.ledger import read_ledger
    from bot.policy import History, plan

    settings = load_settings(ROOT / "config.toml")
    settings = replace(settings, ledger=replace(settings.ledger, path=path))
    now = datetime.fromisoformat(NOW)
    started = time.perf_counter()
    ledger = read_ledger(settings.ledger)
    read = time.perf_counter()
    result = plan(ledger.open_invoices, History(), now, settings)
    done = time.perf_counter()
    return {"seconds": done - started, "read_seconds": read - started, "plan_seconds": done - read,
            "rss_mb": _peak_rss_mb(), "open": len(ledger.open_invoices), "problems": len(ledger.problems),
            "reminders": len(result.reminders), "escalations": len(result.escalations),
            "waiting": len(result.waiting), "held": len(result.held)}


@dataclass
class Result:
    ledger: str
    size_mb: float
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def best(self, kind: str) -> dict[str, Any]:
        return min(self.runs[kind], key=lambda r: r["seconds"])

    @property
    def ratio(self) -> float:
        return float(self.best("dunbot")["seconds"] / self.best("csv")["seconds"])

    @property
    def rss_mb(self) -> float:
        return max(r["rss_mb"] for r in self.runs["dunbot"])

    @property
    def passed(self) -> tuple[bool, bool]:
        return self.ratio <= TARGET_RATIO, self.rss_mb < TARGET_RSS_MB


def run(repeats: int = 3, log: Any = print) -> Result:
    path = generate(ledger_path("plan", ROWS, CUSTOMERS, SEED), ROWS, CUSTOMERS, SEED, TODAY)
    result = Result(ledger=str(path.relative_to(ROOT)), size_mb=path.stat().st_size / 1e6)
    for rep in range(repeats):
        for kind in KINDS:
            out = subprocess.run([sys.executable, "-m", "bench.plan", "--child", kind, str(path)], cwd=ROOT,
                                 check=True, capture_output=True, text=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            result.runs.setdefault(kind, []).append(figures)
            log(f"plan rep {rep + 1}/{repeats} {kind}: {figures['seconds']:.2f} s, {figures['rss_mb']:.0f} MB")
    return result


NOTES = """\
What was done (`bot/ledger.py`, `bot/policy.py`; behaviour unchanged: the previous code and this one gave
identical ledgers and plans on this ledger, on fuzzed ledgers full of bad rows, at four moments and under
random histories). Before, on 2026-11-23, the same measurement gave 14.8 s (ratio 13.5) and 621 MB.

- Reader: a fast path for rows whose every value was seen before (the caches hold only valid values:
  dates, currencies, amounts, customers keyed by their raw cells); any other row takes the full validation,
  in the original order, so a bad row gets the reason it always got. Invoices are built without the frozen
  dataclass's `object.__setattr__` per field (a class with the same slots, then `__class__` assignment:
  0.7 -> 0.25 us each). Amount and balance share one Decimal when equal; currencies and the few distinct
  languages, countries, zones, managers and tiers are one string each; duplicates are found with a set (the
  first line is looked up only when a duplicate turns up). Cyclic GC pauses while the million long-lived
  objects are built, which are then filed as old (`gc.freeze()` + `gc.unfreeze()`), instead of being walked
  by one collection after another (about a fifth of the time).
- Planner: ZoneInfo objects are kept (ZoneInfo's own cache holds 8 strongly; each miss reread the zone file:
  1.2 s); invoices are grouped by Customer object rather than by building and hashing a key per invoice;
  what depends only on (zone, country, now) is worked out once per plan (local date, send window, holidays);
  Line objects are built only for reminders; each contact's group is freed as soon as it is planned.

Where the time goes now (py-spy): the csv parse itself, ~1.1 s; then about 3 us per row: probes into tables
too large for the CPU caches (100,000 customers, a million invoice ids: ~0.3-0.5 us each), a Decimal per
distinct amount, the Invoice; the first sight of each of the 100,000 customers (full validation, ~6 us);
planning ~1.5 s, a third of it grouping a million invoices by contact. A ratio of 3 leaves ~2 us per row for
everything after the parse, which a pure-Python reader that validates every row and makes one object per
invoice does not reach on this machine.

Tried on 2026-11-23 and not adopted: a columnar path. pyarrow's CSV reader (customer, currency and date
columns dictionary-encoded, so each distinct value goes once through the same `_Parser` checks); vectorised
checks that send every doubtful row through `_validate`; invoices kept as columns and built as objects only
where the plan needs them; planning fed by a columnar pre-pass (contacts grouped and sorted by due date in
numpy, the same per-contact decision). It gave the same ledgers, problems and plans as this code on this
ledger and on 600 fuzzed ledgers at four moments under random histories. It was not fast enough, and it took
far more memory. In CPU seconds, measured side by side on a loaded machine (load average 3-4; csv.reader
1.21-1.24 s): read 3.1-3.9 + plan 2.1 s against 4.9-5.1 + 2.0-2.2 s for this code. That is a ratio of 4.3-4.9.
Peak RSS was 740-870 MB (620 MB with jemalloc) against 460 MB. The floor was the obstacle. The parse alone,
with the dictionary encoding that validation needs, takes 0.9-1.3 s of CPU (about what csv.reader takes) and
210-300 MB of transient memory. Planning costs as much over columns as over objects (~2 s of CPU): the time
goes into the 100,000 per-contact decisions and the 46,000 reminders with 300,000 lines that are the plan's
output, not into grouping. Reaching 3 would need a reader that streams batches (for memory), vectorised checks
of the customers and a planner that builds its output in bulk. Estimated at about 2.8 on a quiet machine, that
margin is too thin to justify two more dependencies (pyarrow, numpy) and two data paths."""


def markdown(result: Result) -> str:
    a, b = result.best("csv"), result.best("dunbot")
    ratio_ok, rss_ok = result.passed
    verdict = {True: "**pass**", False: "**FAIL**"}
    runs = ", ".join(f"{r['seconds']:.2f}" for r in result.runs["csv"])
    druns = ", ".join(f"{r['seconds']:.2f}" for r in result.runs["dunbot"])
    return "\n".join([
        f"Ledger: `{result.ledger}` ({result.size_mb:.0f} MB): {ROWS:,} open invoices over {CUSTOMERS:,} customers, "
        "generated by `bench/ledgers.py` (seeded). `--now` "
        f"{NOW}; empty history. {b['reminders']:,} reminders, {b['escalations']:,} escalations, "
        f"{b['waiting']:,} waiting, {b['held']:,} held.",
        "",
        "| | best of runs (s) | all runs (s) | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| (a) `csv.reader` only | {a['seconds']:.2f} | {runs} | {a['rss_mb']:.0f} |",
        f"| (b) `read_ledger` + `plan` | {b['seconds']:.2f} (read {b['read_seconds']:.2f} + plan "
        f"{b['plan_seconds']:.2f}) | {druns} | {result.rss_mb:.0f} |",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        f"| b/a at most {TARGET_RATIO:g} | {result.ratio:.2f} | {verdict[ratio_ok]} |",
        f"| peak RSS of b under {TARGET_RSS_MB:g} MB | {result.rss_mb:.0f} MB | {verdict[rss_ok]} |",
        "",
        NOTES,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("path", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.path)))
        return
    print(markdown(run(args.repeats)))


if __name__ == "__main__":
    main()
