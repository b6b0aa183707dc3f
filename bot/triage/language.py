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

from langdetect.detector import Detector
from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import ErrorCode, LangDetectException
from langdetect.utils.ngram import NGram

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


class _Detector(Detector):  # type: ignore[misc]
    """langdetect's Detector with its two hot loops written tight: the same n-grams, the same seeded draws
    and the same float operations in the same order, so the very same probabilities, in less time (the stock
    loops pay a method call per character and per draw)."""

    def _extract_ngrams(self) -> list[str]:
        table = self.word_lang_prob_map
        found: list[str] = []
        grams, capital = " ", False
        for ch in self.text:  # NGram.add_char, then the 1-, 2- and 3-grams that are in the profiles
            ch = _normal(ch)
            last = grams[-1]
            if last == " ":
                grams, capital = " ", False
                if ch == " ":
                    continue
            elif len(grams) >= NGram.N_GRAM:
                grams = grams[1:]
            grams += ch
            capital = ch.isupper() and (capital or last.isupper())
            if capital:
                continue
            for n in range(1, min(len(grams), NGram.N_GRAM) + 1):
                w = grams[-n:]
                if w != " " and w in table:
                    found.append(w)
        return found

    def _detect_block(self) -> None:
        self.cleaning_text()
        ngrams = self._extract_ngrams()
        if not ngrams:
            raise LangDetectException(ErrorCode.CantDetectError, "No features in text.")
        rows = [self.word_lang_prob_map[w] for w in ngrams]
        count, trials = len(rows), self.n_trial
        self.langprob = [0.0] * len(self.langlist)
        self.random.seed(self.seed)
        draw = self.random._randbelow  # what random.choice(ngrams) calls, without the checks around it
        for _ in range(trials):
            prob = self._init_probability()
            weight = (self.alpha + self.random.gauss(0.0, 1.0) * self.ALPHA_WIDTH) / self.BASE_FREQ
            # The stock loop draws one n-gram at a time and normalises after draws 0, 5, 10, ... up to the
            # limit: the same draws, five at a time, multiplied left to right as it does.
            prob = [p * (weight + a) for p, a in zip(prob, rows[draw(count)], strict=True)]
            i = 0
            while True:
                total = sum(prob)
                prob = [p / total for p in prob]
                if max(prob) > self.CONV_THRESHOLD or i >= self.ITERATION_LIMIT:
                    break
                a, b, c, d, e = rows[draw(count)], rows[draw(count)], rows[draw(count)], rows[draw(count)], \
                    rows[draw(count)]
                prob = [p * (weight + x1) * (weight + x2) * (weight + x3) * (weight + x4) * (weight + x5)
                        for p, x1, x2, x3, x4, x5 in zip(prob, a, b, c, d, e, strict=True)]
                i += 5
            self.langprob = [s + p / trials for s, p in zip(self.langprob, prob, strict=True)]


@cache
def _normal(ch: str) -> str:
    return str(NGram.normalize(ch))


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
    detector = _Detector(factory)
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
