"""Where a daemon's resident memory goes, step by step, on a given store (run by bench/month.py in a process of its
own): the interpreter, the daemon's imports, the open store, the inbox Processor, then one pass over the ledger run
in this process (as the daemon did before it ran it in a child) and what stays after it is freed and trimmed.

    python -m bench.footprint CONFIG NOW     (prints one JSON object; sizes in MB)
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import tracemalloc
from datetime import datetime
from pathlib import Path

import psutil


def _rss() -> float:
    return psutil.Process().memory_info().rss / 1e6


def main() -> None:
    config, now = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2])
    out = {"interpreter": _rss()}
    import bot.daemon  # noqa: F401 - what `dunbot run` imports
    from bot import offload
    from bot.config import load_settings
    from bot.daemon_settings import load_daemon_settings
    from bot.inbox import Processor
    from bot.jobs import limit_arenas, trim_memory
    from bot.store import Store

    out["imports"] = _rss()
    limit_arenas()
    settings = load_settings(config)
    store = Store.open(settings.store_url)
    out["store"] = _rss()
    tracemalloc.start()
    processor = Processor(store, settings, lambda: now)
    out["processor_traced"] = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    out["processor"] = _rss()
    request = offload.Request(offload.PASS, settings, now, load_daemon_settings(settings).ledger_check,
                              logging.WARNING)
    for n in (1, 2):
        offload.work(request, store)
        gc.collect()
        trim_memory()
        out[f"after_pass_{n}"] = _rss()
    del processor
    store.close()
    print(json.dumps({k: round(v, 1) for k, v in out.items()}))


if __name__ == "__main__":
    main()
