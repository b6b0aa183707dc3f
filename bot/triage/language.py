"""Language of the customer's new text.

langdetect is random unless seeded and unreliable on short text ("ok gracias" came out Polish at
0.99999), so: its candidates are limited to the languages we have files for (the served ones plus
those kept for auto-replies), it reads the opening paragraphs (a bilingual notice is in its first
language) and is trusted only on enough letters and a clear probability; short texts are attributed
by common words from the language files; what is still unclear falls back to the thread's language,
then to the customer's known language, and words with no clue at all ("ok") to the first served one.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from bot.triage.phrases import fold, languages

MIN_LETTERS = 25
"""Fewer letters than this and langdetect is not asked: its answers on a few words are noise."""

MIN_PROBABILITY = 0.80
TRUST_LETTERS = 60
"""Below this many letters a clear vote of common words beats langdetect ("Les propongo pagar en tres
partes" came out French)."""
MIN_SHORT_LETTERS = 8
SHORT_PROBABILITY = 0.95
"""Short texts with no other clue: only a near-certain answer among the served languages is taken."""
UNDETERMINED = "und"
OPENING_LETTERS = 40
"""langdetect reads paragraphs from the top until this many letters."""

SALUTATION_WORDS = 4
"""A paragraph of at most this many words is a salutation or an address line, not prose."""

_NOISE = re.compile(r"https?://\S+|\S+@\S+|\d+")
_WORD = re.compile(r"[^\W\d_]+")


@cache
def _factory(codes: tuple[str, ...]) -> DetectorFactory | None:
    """A factory with only these profiles (loading all 55 is slow and invites exotic answers)."""
    profiles = [Path(PROFILES_DIRECTORY, c) for c in codes]
    texts = [p.read_text("utf-8") for p in profiles if p.is_file()]
    if len(texts) < 2:
        return None
    factory = DetectorFactory()
    factory.seed = 0  # langdetect samples at random: a fixed seed makes the answer reproducible
    factory.load_json_profile(texts)
    return factory


def detect(
    text: str,
    *,
    served: tuple[str, ...],
    known: str | None = None,
    thread: str | None = None,
) -> str:
    """ISO 639-1 code of ``text``; "und" when there is nothing to tell and no fallback."""
    clean = _NOISE.sub(" ", _opening(text))
    letters = sum(ch.isalpha() for ch in clean)
    by_words = _by_words(clean)
    short = sum(ch.isalpha() for ch in text) < TRUST_LETTERS
    if letters >= MIN_LETTERS and not (short and by_words):
        code = _langdetect(clean, tuple(sorted(set(served) | set(languages()))), MIN_PROBABILITY)
        if code:
            return code
    guess = by_words or thread or known
    if guess:
        return guess
    if letters >= MIN_SHORT_LETTERS:  # a last resort, among the served languages only
        guess = _langdetect(clean, tuple(sorted(served)), SHORT_PROBABILITY)
    # Words with no clue at all ("ok") are taken to be in the bot's first language.
    return guess or (served[0] if letters and served else UNDETERMINED)


def _opening(text: str) -> str:
    """The first paragraphs up to OPENING_LETTERS letters: a bilingual notice is in its first language.

    Paragraphs of a few words (a salutation, an addressee, a company name: "Señores / Northwind
    Trading S.L. / Respetados señores:") say little about the language and are passed over while
    longer ones follow.
    """
    paragraphs = re.split(r"\n\s*\n", text)
    prose = [p for p in paragraphs if len(_WORD.findall(p)) > SALUTATION_WORDS]
    taken: list[str] = []
    for paragraph in prose or paragraphs:
        taken.append(paragraph)
        if sum(ch.isalpha() for ch in "".join(taken)) >= OPENING_LETTERS:
            break
    return "\n\n".join(taken)


@cache
def _vocabulary(code: str) -> frozenset[str]:
    lang = languages()[code]
    return lang.detect_words | {w for w in (*lang.weekdays, *lang.months) if len(w) > 4}


def _langdetect(text: str, codes: tuple[str, ...], threshold: float) -> str | None:
    factory = _factory(codes)
    if factory is None:
        return None
    detector = factory.create()
    detector.append(text)
    try:
        best = detector.get_probabilities()[0]
    except (LangDetectException, IndexError):
        return None
    return str(best.lang) if best.prob >= threshold else None


def _by_words(text: str) -> str | None:
    """The language with most distinct common words (and month or weekday names) in the text, if one leads."""
    words = set(_WORD.findall(fold(text)))
    if not words:
        return None
    counts = sorted(((len(words & _vocabulary(code)), code) for code in languages()), reverse=True)
    (best, code), (second, _) = counts[0], counts[1]
    return code if best > 0 and best > second else None
