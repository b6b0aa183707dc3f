"""What the figures were measured on, for the report: a ratio still depends on the machine's balance."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe() -> str:
    """One line: CPU model, cores, RAM, Python, OS, date (UTC), and the load average when it started."""
    return (f"{_cpu_model()}, {os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM; Python "
            f"{platform.python_version()} ({sys.implementation.name}); {platform.system()} {platform.release()}; "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average at start {_load()}")
