"""What the customer means: weighted phrases per intent, then one language-neutral decision.

Phrases come from the language files; this module only scores and decides. The rules:
- a phrase counts only as something the customer states here and now (see _counts): not negated
  ("we have NOT paid", "we've paid NOTHING"; before a phrase with its own subject only a hedge
  negates: "no need to chase, we paid" is a payment, "I don't think we paid" is not), not a
  commitment under a condition the collector must meet first ("once we have your IBAN") nor a habit
  ("we always pay on time"), and not a mention of a closed or separate matter ("the dispute last
  month is resolved"); "dated" phrases count only when the text holds a future date;
- three kinds of phrase are settled before scoring: verbs whose form does not tell past from future
  ("pagamos") take the tense of the time words and dates around them; money on its way ("you
  should have it Monday") backs a payment claim if there is one, else it is a promise; hard times
  told as a reason ("cash flow is tight") are hardship only when nothing is paid or promised;
- an intent competes when its phrases add up to SUBSTANTIAL (one "normal" phrase);
- among competing intents the one the collector must act on first wins (PRIORITY): a complaint
  handed to a lawyer is legal; paid half and withholding the rest over damaged goods is a dispute;
  asking for instalments or more time is hardship even with dates; paid half and promising the rest
  on a date is a promise. A payment and a promise both stated otherwise: the stronger evidence, then
  the tense, and a tie goes to the payment (see _paid_or_promised);
- with nothing competing, the best weak evidence wins at a confidence low enough to escalate;
- with no evidence at all, a bare acknowledgement ("ok", "gracias") is "other" and needs nobody,
  while anything else (a lone "?", a request to call) is "other" for a person to read, at a low
  confidence; any word of a payment or a promise, however weak, keeps a reply from passing as a
  bare acknowledgement.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
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
"""Statements about money paid or to be paid: any evidence of them, even weak, keeps a reply from
passing as a bare acknowledgement (a payment claim must never be filed away unread)."""
ARRIVAL = "arrival"
"""Phrases about money reaching the collector ("you should see it by Monday"): counted for
payment_sent when a payment is claimed, for promise_to_pay otherwise (see _settle_arrival)."""
TENSELESS = "paid_or_promised"
"""Verbs of paying whose form does not tell past from future: resolved by the time words and dates
around them (see _settle_tenseless)."""
CIRCUMSTANCE = "hardship_context"
"""Phrases telling of hard times without asking for anything ("cash flow is tight"): hardship only
when no payment or promise is stated (see _settle_circumstances)."""
CONDITIONED = COMMITMENTS | {ARRIVAL, TENSELESS}
"""Statements that a condition in the same sentence ("we'll pay once we have your IBAN") empties:
they do not count, so what the collector must do first (here: send the IBAN) decides."""
SUBSTANTIAL = 2.0
MAX_CONFIDENCE = 0.97
NEGATION_WINDOW = 30
"""Characters before a phrase searched for a negation cue, within its clause."""

_PUNCTUATION_BREAK = re.compile(r"[.;:!?\n()]|,\s|\s[-–—]+\s")
_SENTENCE_END = re.compile(r"[.!?;](?!\d)|\n")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Decision:
    intent: str
    confidence: float
    evidence: tuple[str, ...]  # the customer's words that decided it, in reading order
    anchor: int | None  # offset in the text of the strongest evidence, where its details are sought
    anchors: dict[str, int]  # the same for every intent that had evidence
    acknowledgement: bool  # a bare "ok"/"thanks": nothing to do, nobody to ask
    support: tuple[int, ...] = ()  # offsets of all the winner's evidence, strongest first


def decide(
    text: str,
    langs: Iterable[Language],
    *,
    has_future_date: bool,
    future_dates: Sequence[int] = (),
    past_dates: Sequence[int] = (),
) -> Decision:
    """Score ``text`` with the phrases of ``langs`` and apply the priority rules.

    ``has_future_date``: a date after the message is written (dated phrases count). ``future_dates``
    and ``past_dates``: where in ``text`` dates after and before the message are written ("paid on
    14/11"), evidence of the tense of a statement.
    """
    langs = [lang for lang in langs if lang.reads_intents]
    squeezed, offsets = squeeze(text)
    future_at = [bisect_left(offsets, d) for d in future_dates]
    when = _Tense(squeezed, langs, future_at, [bisect_left(offsets, d) for d in past_dates])
    hits: dict[str, list[tuple[int, int, float]]] = {}
    for lang in langs:
        for screen, phrases in lang.screens:  # lang.phrases, in order, less those that match nowhere
            if not screen.search(squeezed):
                continue
            for phrase in phrases:
                if phrase.needs_date and not has_future_date:
                    continue
                for match in phrase.pattern.finditer(squeezed):
                    if _counts(squeezed, match, phrase.intent, lang):
                        hits.setdefault(phrase.intent, []).append((match.start(), match.end(), phrase.weight))
                        break
    _settle_tenseless(hits, when)
    _settle_arrival(hits)
    _settle_circumstances(hits)
    scores = {intent: sum(w for _, _, w in found) for intent, found in hits.items()}
    money = any(scores.get(i, 0.0) > 0 for i in COMMITMENTS)
    if not any(score >= SUBSTANTIAL for score in scores.values()) and not money and _acknowledgement(squeezed, langs):
        return Decision("other", 0.9, (), None, {}, True)
    if not scores:
        return Decision("other", 0.3 if _WORD.search(squeezed) else 0.1, (), None, {}, False)
    competing = [intent for intent in PRIORITY if scores.get(intent, 0.0) >= SUBSTANTIAL]
    if "promise_to_pay" in competing and "payment_sent" in competing:
        loser = _paid_or_promised(squeezed, hits, langs, when)
        competing.remove(loser)
    winner = competing[0] if competing else max(scores, key=lambda i: (scores[i], -PRIORITY.index(i)))
    score = scores[winner]
    confidence = score / (score + 4 / 3)  # one weak phrase 0.43, one normal 0.6, one strong 0.69
    if any(scores[i] > score for i in competing):
        confidence *= 0.9  # a rule, not the stronger evidence, chose the label
    found = sorted((s, e) for s, e, _ in hits[winner])
    spans = [(s, e) for s, e in found if not any(o != (s, e) and o[0] <= s and e <= o[1] for o in found)]
    evidence = tuple(dict.fromkeys(text[offsets[s] : offsets[e - 1] + 1] for s, e in spans))
    anchors = {i: offsets[min(h, key=lambda x: (-x[2], x[0]))[0]] for i, h in hits.items()}
    support = tuple(offsets[s] for s, _, _ in sorted(hits[winner], key=lambda x: (-x[2], x[0])))
    confidence = round(min(confidence, MAX_CONFIDENCE), 3)
    return Decision(winner, confidence, evidence, anchors[winner], anchors, False, support)


def _counts(squeezed: str, match: re.Match[str], intent: str, lang: Language) -> bool:
    """Whether a phrase match is something the customer states, here and now:
    - not negated: no negation cue shortly before it in its clause ("we have NOT paid"), nor right
      after it ("we've paid nothing yet");
    - a commitment not emptied by a condition the collector must meet first ("once we have your
      IBAN"), nor a habit ("we always pay on time" is no payment);
    - anything else not said of a past or separate matter ("the dispute last month is resolved").
    """
    if _negated(squeezed, match.start(), lang):
        return False
    if lang.negation_after is not None and lang.negation_after.match(squeezed, match.end()):
        return False
    if intent in CONDITIONED:
        if _in_sentence(squeezed, match, lang.conditional):
            return False
        window = max(clause_start(squeezed, match.start(), (lang,)), match.start() - NEGATION_WINDOW)
        return not (lang.habitual is not None and lang.habitual.search(squeezed, window, match.end()))
    return not any(_in_sentence(squeezed, match, lang.aside.get(k)) for k in ("all", intent))


def _in_sentence(squeezed: str, match: re.Match[str], cue: re.Pattern[str] | None) -> bool:
    if cue is None:
        return False
    start, end = sentence(squeezed, match.start())
    return bool(cue.search(squeezed, start, max(end, match.end())))


def sentence(squeezed: str, position: int) -> tuple[int, int]:
    """Bounds of the sentence holding ``position`` in squeezed text (a decimal point ends none)."""
    start = max((m.end() for m in _SENTENCE_END.finditer(squeezed, 0, position)), default=0)
    end = next((m.start() for m in _SENTENCE_END.finditer(squeezed, position)), len(squeezed))
    return start, end


def _settle_circumstances(hits: dict[str, list[tuple[int, int, float]]]) -> None:
    """Hard times told as the reason for a payment or a promise ("once our line of credit resets",
    "thanks for your patience") are no request for time: they count as hardship only when the
    reply neither promises nor reports a payment."""
    told = hits.pop(CIRCUMSTANCE, None)
    if told and not any(sum(w for _, _, w in hits.get(i, ())) >= SUBSTANTIAL for i in COMMITMENTS):
        hits.setdefault("hardship", []).extend(told)


def _settle_arrival(hits: dict[str, list[tuple[int, int, float]]]) -> None:
    """Words about money reaching the collector ("you should have it by Monday") back a payment
    claim when one is made, and are a promise otherwise."""
    arrival = hits.pop(ARRIVAL, None)
    if arrival:
        paid = sum(w for _, _, w in hits.get("payment_sent", ()))
        target = "payment_sent" if paid >= SUBSTANTIAL else "promise_to_pay"
        hits.setdefault(target, []).extend(arrival)


def _paid_or_promised(
    squeezed: str, hits: dict[str, list[tuple[int, int, float]]], langs: list[Language], when: _Tense
) -> str:
    """Which of payment_sent and promise_to_pay, both stated, gives way (the one returned).

    Paid part and promises the rest ("the remaining half on the 30th"): the promise is what the
    collector follows, so the payment gives way. Otherwise the stronger evidence wins, and when it
    is even, the tense: words of the past ("yesterday", a date before the message) against words of
    the future ("tomorrow", a date after it). A tie goes to payment_sent: chasing a customer who has
    paid does more harm than waiting one more cycle for a promise.
    """
    if any(lang.remainder is not None and lang.remainder.search(squeezed) for lang in langs):
        return "payment_sent"
    paid = sum(w for _, _, w in hits["payment_sent"])
    promised = sum(w for _, _, w in hits["promise_to_pay"])
    if paid != promised:
        return "promise_to_pay" if paid > promised else "payment_sent"
    return "payment_sent" if when.of(0, len(squeezed)) == "future" else "promise_to_pay"


def _settle_tenseless(hits: dict[str, list[tuple[int, int, float]]], when: _Tense) -> None:
    """A verb of paying whose form does not tell past from future (Spanish "pagamos" is both "we
    pay" and "we paid"; "le pagamos el viernes" is a promise, "le pagamos ayer" a payment) takes the
    tense of its sentence, else of the whole reply; with no clue at all it is read as paid, the
    reading whose mistake costs less."""
    for start, end, weight in hits.pop(TENSELESS, ()):
        tense = when.of(*sentence(when.squeezed, start)) or when.of(0, len(when.squeezed))
        hits.setdefault("promise_to_pay" if tense == "future" else "payment_sent", []).append((start, end, weight))


class _Tense:
    """Past or future, as the words ("yesterday", "mañana") and the dates of a stretch of text say."""

    def __init__(self, squeezed: str, langs: list[Language], future_at: list[int], past_at: list[int]) -> None:
        self.squeezed = squeezed
        self.past = sorted(
            [*past_at, *(m.start() for lang in langs if lang.past for m in lang.past.finditer(squeezed))]
        )
        self.future = sorted(
            [*future_at, *(m.start() for lang in langs if lang.future for m in lang.future.finditer(squeezed))]
        )

    def of(self, start: int, end: int) -> str | None:
        """ "past", "future", or None when the stretch says neither or both."""
        past = any(start <= p < end for p in self.past)
        future = any(start <= f < end for f in self.future)
        return None if past == future else ("past" if past else "future")


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
    """A negation cue shortly before the phrase, in its clause. Before a phrase that opens with its
    own subject ("we paid", "ya pagamos") a plain "no"/"not" belongs to something else ("no need to
    chase, we paid"): only a hedge on the whole statement counts there ("I don't think we paid")."""
    if lang.clause_break is not None and lang.clause_break.match(squeezed, start):
        return False  # the phrase opens a clause of its own ("[we won't pay] until you fix the price")
    window_start = max(clause_start(squeezed, start, (lang,)), start - NEGATION_WINDOW)
    first = _WORD.match(squeezed, start)
    cue = lang.hedge if first is not None and first.group() in lang.subjects else lang.negation
    return cue is not None and bool(cue.search(squeezed, window_start, start))


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
