"""classify(): bytes of a reply in, one decision out. The order is the point:

parse (never fails) -> separate the customer's new text -> machine mail? (bounce, auto-reply) ->
language -> intent (served languages only) -> facts (dates, amounts, invoices, contact).
Machines are recognised before any reading so a bounce or an out-of-office never becomes a human
intent, and in a language we do not serve only machine mail is recognised: the rest goes to a person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal

from bot.triage import automatic, dates, extract, intent, language, mime, quotes
from bot.triage.automatic import Bounce
from bot.triage.mime import Attachment
from bot.triage.phrases import Language, fold, ordered, squeeze
from bot.triage.phrases import languages as language_files

INTENTS = (
    "payment_sent",
    "promise_to_pay",
    "dispute",
    "hardship",
    "request_info",
    "wrong_contact",
    "out_of_office",
    "bounce",
    "legal",
    "unsubscribe",
    "other",
)
NEEDS_A_PERSON = frozenset({"dispute", "hardship", "request_info", "legal", "unsubscribe", "wrong_contact"})
"""Intents a person must handle however sure the label (a new contact is never adopted unchecked)."""

_MACHINE_LABELS = {"bounce": "bounce", "receipt": "other", "moved": "wrong_contact", "reply": "out_of_office"}
"""A read receipt or delivery report is automatic but no reply: nothing to do, nobody to ask."""
_MACHINE_TEXT = frozenset({"bounce", "receipt"})
"""Written by a mail server, not by anyone at the customer: the text has no customer language."""

RETURN_DATE_REACH = 40
"""How far after a "back on" marker its date may be written, in characters."""

MONEY_INTENTS = ("promise_to_pay", "payment_sent", "hardship")
"""Intents whose evidence an amount may belong to."""
_SENTENCE_END = re.compile(
    r"(?<!\b[Nn]o)(?<!\b[Nn]r)(?<!\b[Nn]º)(?<!\bref)(?<!\binv)(?<!\bnum)(?<!\bfra)[.](?!\d)|[!?]|\n"
)
"""A sentence ends at . ! ? or a line break, not at a decimal point nor after "no." or "ref." ("invoice
no. INV-1633 has been effected ... for USD 22,750.00" is one sentence)."""

AUTO_REPLY_WORDING = frozenset({"other", "wrong_contact", "request_info"})
"""What an auto-reply itself says ("for urgent matters please contact x@y"): no person's statement."""

PERSONAL = 0.6
"""Confidence of a human intent that outweighs an auto-reply recognised by its body alone."""

ESCALATE_BELOW = 0.5
"""Confidence under which a person checks the label."""


@dataclass(frozen=True)
class Classification:
    intent: str
    confidence: float
    evidence: tuple[str, ...]
    language: str  # ISO 639-1 of the new text, "und" if none
    promised_date: date | None
    amount: Decimal | None
    invoice_refs: tuple[str, ...]
    escalate: bool
    new_contact: str | None
    return_date: date | None
    bounce: Bounce | None
    automatic: str | None  # why it was judged automatic, None for human mail
    new_text: str  # the customer's own words
    attachments: tuple[Attachment, ...]
    malformed: str | None


def classify(
    raw: bytes,
    *,
    known_language: str | None = None,
    thread_language: str | None = None,
    known_invoices: frozenset[str] = frozenset(),
    our_domains: frozenset[str] = frozenset(),
    languages: tuple[str, ...] = ("en", "es"),
    max_bytes: int = 10_000_000,
    today: date | None = None,
) -> Classification:
    """Classify one reply. Never raises: a failure is reported in ``malformed`` and escalated.

    Relative dates resolve against the reply's Date header; ``today`` stands in when it is missing
    or broken (without either, relative dates are not resolved).
    """
    try:
        return _classify(raw, known_language, thread_language, known_invoices, our_domains, languages, max_bytes, today)
    except Exception as exc:  # the last guard of an unattended bot: one bad mail must not stop the queue
        return Classification(
            intent="other",
            confidence=0.0,
            evidence=(),
            language=language.UNDETERMINED,
            promised_date=None,
            amount=None,
            invoice_refs=(),
            escalate=True,
            new_contact=None,
            return_date=None,
            bounce=None,
            automatic=None,
            new_text="",
            attachments=(),
            malformed=f"internal error: {exc!r}",
        )


def _classify(
    raw: bytes,
    known_language: str | None,
    thread_language: str | None,
    known_invoices: frozenset[str],
    our_domains: frozenset[str],
    served: tuple[str, ...],
    max_bytes: int,
    today: date | None,
) -> Classification:
    msg = mime.parse(raw, max_bytes)
    text = quotes.split_message(msg).new_text
    base_date = msg.date.date() if msg.date else today
    lang = language.detect(text, served=served, known=known_language, thread=thread_language)
    langs = ordered(lang, served)
    every = ordered(lang, (*served, *language_files()))
    found_dates = dates.find_dates(text, base_date, every) if base_date else []
    past_dates = dates.find_dates(text, base_date, every, past=True) if base_date else []
    # For the tense of a statement, "el día 10" written on the 18th is rather the 10th just past than next month's.
    when = {
        "has_future_date": bool(found_dates),
        "future_dates": [f.start for f in found_dates if not f.rolled],
        "past_dates": sorted([f.start for f in past_dates] + [f.start for f in found_dates if f.rolled]),
    }
    result = Classification(
        intent="other",
        confidence=0.5,
        evidence=(),
        language=lang,
        promised_date=None,
        amount=None,
        invoice_refs=extract.find_invoices(text, langs, known_invoices),
        escalate=True,
        new_contact=None,
        return_date=None,
        bounce=None,
        automatic=None,
        new_text=text,
        attachments=msg.attachments,
        malformed=msg.malformed,
    )

    # Phrases of the reply's own language only: Spanish stems such as "transf" would fire on English.
    readers = [x for x in langs if x.code == lang and x.reads_intents] or langs
    verdict = automatic.detect(msg, text, frozenset(d.lower() for d in our_domains))
    if verdict is not None and verdict.body_only and lang in served:
        said = intent.decide(text, readers, **when)
        personal = said.intent not in AUTO_REPLY_WORDING and said.confidence >= PERSONAL
        verdict = None if personal else verdict
    if verdict is not None:
        label = _MACHINE_LABELS[verdict.kind]
        machine_text = verdict.kind in _MACHINE_TEXT
        permanent = verdict.bounce is not None and verdict.bounce.permanent
        return replace(
            result,
            intent=label,
            confidence=0.95,
            evidence=(verdict.reason,),
            language=language.UNDETERMINED if machine_text else lang,
            invoice_refs=() if machine_text else result.invoice_refs,
            escalate=bool(msg.malformed) or permanent or label == "wrong_contact",
            new_contact=extract.find_contact(text, msg.sender, our_domains) if label == "wrong_contact" else None,
            return_date=_return_date(text, found_dates, every) if label == "out_of_office" else None,
            bounce=verdict.bounce,
            automatic=verdict.reason,
        )
    if lang not in served and lang != language.UNDETERMINED:
        return result  # "other", for a person: we do not guess in a language we do not read

    decision = intent.decide(text, readers, **when)
    dated = decision.intent == "promise_to_pay"  # a hardship request proposes dates; it promises none
    return replace(
        result,
        intent=decision.intent,
        confidence=decision.confidence,
        evidence=decision.evidence,
        promised_date=_promised_date(decision, found_dates, text, langs) if dated else None,
        amount=_amount(decision, text, langs),
        escalate=(
            bool(msg.malformed)
            or (decision.confidence < ESCALATE_BELOW and not decision.acknowledgement)
            or decision.intent in NEEDS_A_PERSON
        ),
        new_contact=extract.find_contact(text, msg.sender, our_domains) if decision.intent == "wrong_contact" else None,
    )


def _amount(decision: intent.Decision, text: str, langs: list[Language]) -> Decimal | None:
    """The sum paid, promised or offered: in the sentence of the strongest such evidence, after it
    if there is one there ("we'll pay the remaining $2,340"), else the nearest before it."""
    amounts = extract.find_amounts(text, langs)
    own = list(decision.support) if decision.intent in MONEY_INTENTS else []
    others = [decision.anchors[name] for name in MONEY_INTENTS if name in decision.anchors]
    for anchor in dict.fromkeys([*own, *others]):  # the winner's evidence, strongest first, then the rest
        start, end = _sentence(text, anchor)
        after = [a for at, a in amounts if anchor <= at < end]
        before = [a for at, a in amounts if start <= at < anchor]
        if after or before:
            return after[0] if after else before[-1]
    return None


def _sentence(text: str, position: int) -> tuple[int, int]:
    """Bounds of the sentence holding ``position`` (a decimal point ends none)."""
    start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, position)), default=0)
    end = next((m.start() for m in _SENTENCE_END.finditer(text, position)), len(text))
    return start, end


def _promised_date(
    decision: intent.Decision, found: list[dates.FoundDate], text: str, langs: list[Language]
) -> date | None:
    """The first date after the strongest evidence ("we will pay ... on Friday"), else one before it
    in the same clause ("el viernes le pagamos"), or anywhere before it when its sentence points back
    ("... isn't due until December 13. It will be released on that date"); a date elsewhere is about
    something else."""
    if decision.anchor is None:
        return None
    after = [f for f in found if f.start >= decision.anchor]
    if after:
        return after[0].value
    start = intent.clause_start(fold(text), decision.anchor, langs)
    before = [f for f in found if start <= f.start < decision.anchor]
    if before:
        return before[-1].value
    end = _sentence(text, decision.anchor)[1]
    folded = fold(text)
    if any(lang.anaphora is not None and lang.anaphora.search(folded, start, end) for lang in langs):
        earlier = [f for f in found if f.start < start]
        return earlier[-1].value if earlier else None
    return None


def _return_date(text: str, found: list[dates.FoundDate], langs: list[Language]) -> date | None:
    """The day an out-of-office says the person is back: a date shortly after a "back on" marker;
    failing that, after an "until" marker; written dates before weekdays."""
    squeezed, offsets = squeeze(text)
    returns = [p for lang in langs for p in lang.return_marker]
    untils = [p for lang in langs for p in lang.until_marker]
    for markers in (returns, untils):
        ends = [offsets[m.end() - 1] + 1 for p in markers for m in p.finditer(squeezed) if m.end()]
        near = [f for f in found if any(0 <= f.start - end <= RETURN_DATE_REACH for end in ends)]
        chosen = [f for f in near if f.exact] or near
        if chosen:
            return chosen[0].value
    return None
