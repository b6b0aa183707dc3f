"""Measure the classifier against a labelled folder, and the JSON shape the CLI prints.

A folder holds .eml files and one or more labels*.jsonl files, one JSON object per message with at
least file, intent, language and promised_date (YYYY-MM-DD or null). Optional keys known_language,
thread_language and known_invoices are passed to classify() as the bot would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from bot.triage.pipeline import Classification, classify

AUTOMATIC = frozenset({"out_of_office", "bounce"})


def classification_json(c: Classification, file: str) -> dict[str, Any]:
    """The stable, flat record of one classification."""
    return {
        "file": file,
        "language": c.language,
        "intent": c.intent,
        "confidence": c.confidence,
        "promised_date": c.promised_date.isoformat() if c.promised_date else None,
        "amount": str(c.amount) if c.amount is not None else None,
        "invoice_refs": list(c.invoice_refs),
        "escalate": c.escalate,
        "evidence": list(c.evidence),
    }


@dataclass(frozen=True)
class IntentScore:
    intent: str
    precision: float
    recall: float
    f1: float
    support: int  # labelled messages with this intent


@dataclass(frozen=True)
class Miss:
    file: str
    expected: str
    got: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class EvalReport:
    total: int
    per_intent: tuple[IntentScore, ...]
    macro_f1: float
    language_accuracy: float
    date_accuracy: float | None  # over messages whose label has a promised_date; None if none has
    dated: int
    human_automatic_confusions: int  # human mail called automatic, or the reverse: must stay 0
    confusions: tuple[Miss, ...]
    ms_per_message: float

    def score(self, intent: str) -> IntentScore:
        return next((s for s in self.per_intent if s.intent == intent), IntentScore(intent, 0.0, 0.0, 0.0, 0))

    def format(self) -> str:
        """A plain-text table for the command line."""
        lines = [f"{'intent':<16}{'P':>7}{'R':>7}{'F1':>7}{'n':>6}"]
        lines += [f"{s.intent:<16}{s.precision:7.3f}{s.recall:7.3f}{s.f1:7.3f}{s.support:6d}" for s in self.per_intent]
        dates = f"{self.date_accuracy:.3f} (of {self.dated})" if self.date_accuracy is not None else "n/a"
        lines += [
            "",
            f"messages            {self.total}",
            f"macro-F1            {self.macro_f1:.3f}",
            f"language accuracy   {self.language_accuracy:.3f}",
            f"date accuracy       {dates}",
            f"human<->automatic   {self.human_automatic_confusions}",
            f"speed               {self.ms_per_message:.1f} ms/message",
        ]
        if self.confusions:
            lines += ["", "misclassified:"]
            lines += [f"  {m.file}: expected {m.expected}, got {m.got}  {list(m.evidence)}" for m in self.confusions]
        return "\n".join(lines)


def load_labels(folder: Path) -> list[dict[str, Any]]:
    labels = []
    for path in sorted(folder.glob("labels*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                labels.append(json.loads(line))
    return labels


def evaluate(folder: Path) -> EvalReport:
    """Classify every labelled message in ``folder`` and score the results."""
    labels = load_labels(Path(folder))
    results: list[tuple[dict[str, Any], Classification]] = []
    elapsed = 0.0
    for label in labels:
        raw = (Path(folder) / label["file"]).read_bytes()
        start = time.perf_counter()
        got = classify(
            raw,
            known_language=label.get("known_language"),
            thread_language=label.get("thread_language"),
            known_invoices=frozenset(label.get("known_invoices") or ()),
        )
        elapsed += time.perf_counter() - start
        results.append((label, got))
    return score(results, elapsed)


def score(results: list[tuple[dict[str, Any], Classification]], elapsed: float = 0.0) -> EvalReport:
    """Per-intent precision/recall/F1 over the union of expected and predicted labels, and the rest."""
    pairs = [(label["intent"], got.intent) for label, got in results]
    intents = sorted({e for e, _ in pairs} | {g for _, g in pairs})
    per_intent = []
    for name in intents:
        tp = sum(1 for e, g in pairs if e == g == name)
        predicted = sum(1 for _, g in pairs if g == name)
        support = sum(1 for e, _ in pairs if e == name)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_intent.append(IntentScore(name, precision, recall, f1, support))
    dated = [(label, got) for label, got in results if label.get("promised_date")]
    date_hits = sum(1 for label, got in dated if got.promised_date == date.fromisoformat(label["promised_date"]))
    with_language = [(label, got) for label, got in results if label.get("language")]
    total = len(results)
    return EvalReport(
        total=total,
        per_intent=tuple(per_intent),
        macro_f1=sum(s.f1 for s in per_intent) / len(per_intent) if per_intent else 0.0,
        language_accuracy=(
            sum(1 for label, got in with_language if label["language"] == got.language) / len(with_language)
            if with_language
            else 0.0
        ),
        date_accuracy=date_hits / len(dated) if dated else None,
        dated=len(dated),
        human_automatic_confusions=sum(1 for e, g in pairs if (e in AUTOMATIC) != (g in AUTOMATIC)),
        confusions=tuple(
            Miss(label["file"], label["intent"], got.intent, got.evidence)
            for label, got in results
            if label["intent"] != got.intent
        ),
        ms_per_message=1000 * elapsed / total if total else 0.0,
    )
