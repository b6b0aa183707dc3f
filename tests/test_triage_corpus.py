"""The classifier held to its targets on every labelled folder, and the evaluation report itself.

tests/corpus and tests/corpus_dev2 were used to develop the classifier; tests/corpus_holdout was never
used for tuning, so it is the honest measure of how the classifier does on replies it has not seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.triage import EvalReport, classification_json, classify, evaluate

HERE = Path(__file__).parent


@pytest.fixture(scope="module", params=["corpus", "corpus_dev2", "corpus_holdout"])
def report(request: pytest.FixtureRequest) -> EvalReport:
    folder = HERE / request.param
    assert list(folder.glob("labels*.jsonl")), f"no labels*.jsonl in {folder}"
    return evaluate(folder)


def test_macro_f1(report: EvalReport) -> None:
    assert report.macro_f1 >= 0.90, report.format()


def test_payment_sent_recall(report: EvalReport) -> None:
    assert report.score("payment_sent").recall >= 0.97, report.format()


def test_no_human_reply_is_taken_for_a_machine_or_the_reverse(report: EvalReport) -> None:
    assert report.human_automatic_confusions == 0, report.format()


def test_language_and_dates(report: EvalReport) -> None:
    assert report.language_accuracy >= 0.90, report.format()
    assert report.date_accuracy is None or report.date_accuracy >= 0.85, report.format()


def test_report_table(report: EvalReport) -> None:
    table = report.format()
    assert "macro-F1" in table and "payment_sent" in table and "ms/message" in table


def test_evaluate_scores_a_folder(tmp_path: Path) -> None:
    head = "From: a@customer.example\nSubject: Re: x\nDate: Tue, 18 Nov 2025 10:00:00 +0000\n\n"
    (tmp_path / "1.eml").write_text(head + "We will pay on Friday.\n")
    (tmp_path / "2.eml").write_text(head + "We paid yesterday.\n")
    labels = [
        {"file": "1.eml", "intent": "promise_to_pay", "language": "en", "promised_date": "2025-11-21"},
        {"file": "2.eml", "intent": "dispute", "language": "es", "promised_date": None},
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in labels) + "\n")
    r = evaluate(tmp_path)
    assert (r.total, r.date_accuracy, r.language_accuracy) == (2, 1.0, 0.5)
    assert [(m.file, m.expected, m.got) for m in r.confusions] == [("2.eml", "dispute", "payment_sent")]
    assert r.score("promise_to_pay").f1 == 1.0
    assert r.score("dispute").recall == 0.0
    assert r.macro_f1 == pytest.approx(1 / 3)


def test_classification_json_shape() -> None:
    head = b"From: a@c.example\nSubject: Re: x\nDate: Tue, 18 Nov 2025 10:00:00 +0000\n\n"
    raw = head + b"We will pay $1,200.50 on Friday for INV-1042.\n"
    record = classification_json(classify(raw), "a.eml")
    assert record == {
        "file": "a.eml",
        "language": "en",
        "intent": "promise_to_pay",
        "confidence": record["confidence"],
        "promised_date": "2025-11-21",
        "amount": "1200.50",
        "invoice_refs": ["INV-1042"],
        "escalate": False,
        "evidence": record["evidence"],
    }
    assert json.loads(json.dumps(record)) == record
