"""Run the benchmarks and rewrite their sections of docs/performance.md.

    python -m bench.run [plan|send|all] [--repeats N]

Each benchmark owns one section of the file, between `<!-- NAME:start -->` and `<!-- NAME:end -->` (the
convention the other benchmarks there follow); everything else in the file is left as it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import machine
from bench import plan as plan_bench
from bench import send as send_bench
from bench import triage as triage_bench
from bench.doc import write_section

ROOT = Path(__file__).resolve().parent.parent


def _plan(repeats: int) -> str:
    started, machine_then = time.monotonic(), machine.describe()
    result = plan_bench.run(repeats, log=_log)
    return _section("Planning a million invoices", plan_bench.__doc__ or "", plan_bench.markdown(result),
                    "python -m bench.run plan", machine_then, time.monotonic() - started)


def _send(repeats: int) -> str:
    started, machine_then = time.monotonic(), machine.describe()
    result = send_bench.run(repeats, log=_log)
    return _section("Sending 10,000 reminders through a real Postfix", send_bench.__doc__ or "",
                    send_bench.markdown(result), "python -m bench.run send", machine_then, time.monotonic() - started)


def _triage(repeats: int) -> str:  # its markdown is a whole section: title, machine and how to reproduce included
    return triage_bench.markdown(triage_bench.run(repeats, log=_log))


BENCHMARKS: dict[str, Callable[[int], str]] = {"plan": _plan, "send": _send, "triage": _triage}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _section(title: str, doc: str, body: str, command: str, machine_then: str, seconds: float) -> str:
    """`machine_then` is described before the run: the load average at its start, not the one it caused."""
    what = " ".join(doc.split("\n\n", 1)[-1].split())
    return (f"## {title}\n\n{what}\n\n{body}\n\n"
            f"Machine: {machine_then}. The run took {seconds / 60:.1f} min.\n\n"
            f"Reproduce: `make bench` (both benchmarks; installs the mail stack's packages first) or `{command}`.")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Dunbot's benchmarks; results go to docs/performance.md.")
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    args = parser.parse_args()
    for name in BENCHMARKS if args.which == "all" else [args.which]:
        section = BENCHMARKS[name](args.repeats)
        write_section(name, section)
        print(section)


if __name__ == "__main__":
    main()
