"""What the customer means: weighted phrases per intent, then one language-neutral decision.

Phrases come from the language files; this module only scores and decides. The rules:
- a phrase preceded, in the same clause, by a negation cue of its language does not count
  ("we have NOT paid"), nor does a promise or payment statement under a condition ("once we have
  your IBAN"); "dated" phrases count only when the text holds a future date;
- an intent competes when its phrases add up to SUBSTANTIAL (one "normal" phrase);
- among competing intents the one the collector must act on first wins (PRIORITY): a complaint
  handed to a lawyer is legal; paid half and withholding the rest over damaged goods is a dispute;
  asking for instalments or more time is hardship even with dates; paid half and promising the rest
  on a date is a promise;
- with nothing competing, the best weak evidence wins at a confidence low enough to escalate;
- with no evidence at all, a bare acknowledgement ("ok", "gracias") is "other" and needs nobody,
  while anything else (a lone "?") is "other" for a person to read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from bot.triage.phrases import Language, squeeze

PRIORITY = (
    "legal",
    "dispute",
    "hardship",
    "promise_to_pay",
    "payment_sent",
    "wrong_contact",
    "request_info",
    "unsubscribe",
)
COMMITMENTS = frozenset({"promise_to_pay", "payment_sent"})
"""Statements that a condition in the same sentence ("we'll pay once we have your IBAN") empties:
they do not count, so what the collector must do first (here: send the IBAN) decides."""
SUBSTANTIAL = 2.0
MAX_CONFIDENCE = 0.97
NEGATION_WINDOW = 30
"""Characters before a phrase searched for a negation cue, within its clause."""

_PUNCTUATION_BREAK = re.compile(r"[.;:!?\n()]|,\s")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Decision:
    intent: str
    confidence: float
    evidence: tuple[str, ...]  # the customer's words that decided it, in reading order
    anchor: int | None  # offset in the text of the strongest evidence, where its details are sought
    anchors: dict[str, int]  # the same for every intent that had evidence
    acknowledgement: bool  # a bare "ok"/"thanks": nothing to do, nobody to ask


def decide(text: str, langs: Iterable[Language], *, has_future_date: bool) -> Decision:
    """Score ``text`` with the phrases of ``langs`` and apply the priority rules."""
    langs = [lang for lang in langs if lang.reads_intents]
    squeezed, offsets = squeeze(text)
    hits: dict[str, list[tuple[int, int, float]]] = {}
    for lang in langs:
        for phrase in lang.phrases:
            if phrase.needs_date and not has_future_date:
                continue
            for match in phrase.pattern.finditer(squeezed):
                conditional = phrase.intent in COMMITMENTS and _conditional(squeezed, match, lang)
                if not conditional and not _negated(squeezed, match.start(), lang):
                    hits.setdefault(phrase.intent, []).append((match.start(), match.end(), phrase.weight))
                    break
    scores = {intent: sum(w for _, _, w in found) for intent, found in hits.items()}
    if not any(score >= SUBSTANTIAL for score in scores.values()) and _acknowledgement(squeezed, langs):
        return Decision("other", 0.9, (), None, {}, True)
    if not scores:
        return Decision("other", 0.3 if _WORD.search(squeezed) else 0.1, (), None, {}, False)
    competing = [intent for intent in PRIORITY if scores.get(intent, 0.0) >= SUBSTANTIAL]
    winner = competing[0] if competing else max(scores, key=lambda i: (scores[i], -PRIORITY.index(i)))
    score = scores[winner]
    confidence = score / (score + 4 / 3)  # one weak phrase 0.43, one normal 0.6, one strong 0.69
    if any(scores[i] > score for i in competing):
        confidence *= 0.9  # a rule, not the stronger evidence, chose the label
    found = sorted((s, e) for s, e, _ in hits[winner])
    spans = [(s, e) for s, e in found if not any(o != (s, e) and o[0] <= s and e <= o[1] for o in found)]
    evidence = tuple(dict.fromkeys(text[offsets[s] : offsets[e - 1] + 1] for s, e in spans))
    anchors = {i: offsets[min(h, key=lambda x: (-x[2], x[0]))[0]] for i, h in hits.items()}
    return Decision(winner, round(min(confidence, MAX_CONFIDENCE), 3), evidence, anchors[winner], anchors, False)


def clause_start(folded: str, position: int, langs: Iterable[Language]) -> int:
    """Where the clause holding ``position`` begins: after punctuation or a language's "but"/"and"."""
    start = 0
    for match in _PUNCTUATION_BREAK.finditer(folded, 0, position):
        start = match.end()
    for lang in langs:
        if lang.clause_break is not None:
            for match in lang.clause_break.finditer(folded, start, position):
                start = max(start, match.end())
    return start


def _negated(squeezed: str, start: int, lang: Language) -> bool:
    if lang.negation is None:
        return False
    window_start = max(clause_start(squeezed, start, (lang,)), start - NEGATION_WINDOW)
    return bool(lang.negation.search(squeezed, window_start, start))


def _conditional(squeezed: str, match: re.Match[str], lang: Language) -> bool:
    if lang.conditional is None:
        return False
    start = max((squeezed.rfind(c, 0, match.start()) for c in ".!?;\n"), default=-1) + 1
    ends = [i for i in (squeezed.find(c, match.end()) for c in ".!?;\n") if i >= 0]
    return bool(lang.conditional.search(squeezed, start, min(ends, default=len(squeezed))))


def _acknowledgement(squeezed: str, langs: list[Language]) -> bool:
    """Thanks/ok words only (a name of up to two words may follow), a known acknowledging phrase
    ("I've passed it on to our finance team"), or symbols alone that ask nothing (an emoji)."""
    words = _WORD.findall(squeezed)
    if not words:
        return bool(squeezed.strip()) and "?" not in squeezed
    if any(p.search(squeezed) for lang in langs for p in lang.ack_phrases):
        return True
    known = set().union(*(lang.ack_words for lang in langs)) if langs else set()
    if words[0] not in known:
        return False
    unknown = [i for i, w in enumerate(words) if w not in known]
    return len(unknown) <= 2 and all(i >= len(words) - 2 for i in unknown)
