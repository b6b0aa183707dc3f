"""What the daemon tells the outside: Prometheus metrics, and log records read as decisions.

The outbox, the inbox and the dunning pass already log one line per decision (sent, retried, refused,
withdrawn, escalated, a reply's intent). Rather than thread counters through them, the daemon reads those
records: DECISIONS maps each message template to an event name and the names of its arguments, which
gives the JSON log its fields (`customer`, `invoices`, `stage`, `intent`) and the metrics their counts
from one place. tests/test_daemon.py checks that every template still occurs in the sources.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest

# record.msg -> (event, names of record.args)
DECISIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sent reminder %s to customer %s (invoices %s)": ("sent", ("message_id", "customer", "invoices")),
    "reminder %s to customer %s will be retried at %s: %s": ("retry", ("message_id", "customer", "retry_at",
                                                                        "error")),
    "reminder %s to customer %s refused for good: %s": ("refused", ("message_id", "customer", "error")),
    "gave up on reminder %s to customer %s after %d attempts: %s": ("gave_up", ("message_id", "customer",
                                                                                  "attempts", "error")),
    "withdrew unsent reminder %d: invoices %s were paid, changed or left the ledger since it was queued": (
        "withdrawn", ("reminder", "invoices")),
    "escalated customer %s: %s days overdue; %s": ("escalated", ("customer", "days_overdue", "recommendation")),
    "escalated customer %s: %d broken promises": ("escalated", ("customer", "broken_promises")),
    "hold %d on customer %s (%s) ended: %s": ("hold_ended", ("hold", "customer", "reason", "outcome")),
    "reply %s from customer %s (matched by %s): %s, confidence %.2f, evidence %s -> %s": (
        "reply", ("message_id", "customer", "matched_by", "intent", "confidence", "evidence", "action")),
    "message %s matches no case; left in the inbox": ("unmatched", ("message_id",)),
    "not queued for customer %s: %s": ("not_queued", ("customer", "error")),
    "queued reminder %s for customer %s: %s/%s in %s to %s (invoices %s)": (
        "queued", ("message_id", "customer", "track", "stage", "language", "to", "invoices")),
    "sent notification %s to %s": ("notified", ("message_id", "to")),
    "notification %s to %s not sent: %s": ("notify_retry", ("message_id", "to", "error")),
}
# Reasons the outbox logs as `log.error("%s", reason)` when it stops a pass, by their first words.
ABORTS = {
    "the store cannot record": "store",
    "sending is misconfigured": "configuration",
    "the mail server keeps failing": "server_down",
}
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def decision(record: logging.LogRecord) -> tuple[str, dict[str, Any]] | None:
    """(event, named fields) when the record is one of the known decisions."""
    found = DECISIONS.get(record.msg) if isinstance(record.msg, str) else None
    if found is None:
        return None
    event, names = found
    args = record.args if isinstance(record.args, tuple) else ()
    return event, dict(zip(names, args, strict=False))


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the decision's named fields (or the raw
    args), any `extra=` fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        found = decision(record)
        if found is not None:
            doc["event"] = found[0]
            doc.update({k: _plain(v) for k, v in found[1].items()})
        elif isinstance(record.args, tuple) and record.args:
            doc["args"] = [_plain(a) for a in record.args]
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = _plain(value)
        if record.exc_info:
            doc["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(doc, ensure_ascii=False)


class Metrics:
    """The daemon's metrics, in a registry of its own (one per daemon: tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        self.reminders_sent = Counter("dunbot_reminders_sent", "Reminders accepted by the mail server.", registry=r)
        self.failures = Counter("dunbot_delivery_failures", "Delivery failures by kind: temporary (retried), "
                                "permanent (refused), gave_up, server_down, configuration, store.", ["kind"],
                                registry=r)
        self.replies = Counter("dunbot_replies", "Replies recorded, by intent.", ["intent"], registry=r)
        self.unmatched = Counter("dunbot_replies_unmatched", "Messages matching no case, left in the inbox.",
                                 registry=r)
        self.escalations = Counter("dunbot_escalations", "Cases handed to a person (by the pass or a reply).",
                                   registry=r)
        self.withdrawn = Counter("dunbot_reminders_withdrawn", "Queued reminders withdrawn: invoices changed.",
                                 registry=r)
        self.notifications = Counter("dunbot_notifications_sent", "Notices and digests sent to case owners.",
                                     registry=r)
        self.jobs = Counter("dunbot_job_runs", "Scheduled job runs by job and outcome.", ["job", "outcome"],
                            registry=r)
        self.outbox = Gauge("dunbot_outbox_messages", "Reminders in the outbox by status.", ["status"], registry=r)
        self.outbox_age = Gauge("dunbot_outbox_oldest_queued_seconds", "Age of the oldest reminder still queued.",
                                registry=r)
        self.inbox_lag = Gauge("dunbot_inbox_lag_seconds", "From the newest handled reply's arrival to its handling.",
                               registry=r)
        self.inbox_up = Gauge("dunbot_inbox_up", "1 while the mailbox works, 0 while it fails.", registry=r)
        self.ledger_ok = Gauge("dunbot_ledger_ok", "0 while the ledger sanity check stops sending.", registry=r)
        self.last_pass = Gauge("dunbot_last_pass_timestamp_seconds", "When the last dunning pass finished.",
                               registry=r)
        self.healthy = Gauge("dunbot_healthy", "1 when the daemon has no current problem.", registry=r)
        self.open_escalations = Gauge("dunbot_open_escalations", "Escalations waiting for a person.", registry=r)
        self.ledger_ok.set(1)
        self.inbox_up.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DecisionCounter(logging.Handler):
    """Counts decisions from the log records of the `bot` logger into Metrics."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.DEBUG)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        m = self.metrics
        found = decision(record)
        if found is None:
            if record.msg == "%s" and isinstance(record.args, tuple) and record.args:
                text = str(record.args[0])
                kind = next((k for prefix, k in ABORTS.items() if text.startswith(prefix)), None)
                if kind is not None:
                    m.failures.labels(kind).inc()
            return
        event, fields = found
        if event == "sent":
            m.reminders_sent.inc()
        elif event == "retry":
            m.failures.labels("temporary").inc()
        elif event in ("refused", "gave_up"):
            m.failures.labels("permanent" if event == "refused" else "gave_up").inc()
        elif event == "reply":
            m.replies.labels(str(fields.get("intent", "unknown"))).inc()
        elif event == "unmatched":
            m.unmatched.inc()
        elif event == "withdrawn":
            m.withdrawn.inc()
        elif event == "notified":
            m.notifications.inc()
