"""Language knowledge for reply triage, loaded from the commented TOML files in ``lang/``.

Everything that depends on a language (intent phrases, date words, quote and signature shapes,
auto-reply subjects) lives in one file per language, so supporting a language means adding a file,
never a branch in the code. Patterns are regular expressions matched against :func:`fold`-ed text.
``common.toml`` holds what no language owns (invoice number shapes, currency signs).
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

LANG_DIR = Path(__file__).parent / "lang"

TIERS = {
    "strong": (3.0, False),
    "normal": (2.0, False),
    "weak": (1.0, False),
    "dated": (2.0, True),
    "dated_weak": (1.0, True),
}
"""Weight of each intent phrase tier, and whether it counts only beside a future date.

One "normal" phrase is enough evidence to compete for a label (see intent.py)."""

_PUNCT = str.maketrans({"’": "'", "‘": "'", "´": "'", "`": "'", "“": '"', "”": '"', "\u00a0": " ", "\u202f": " "})


class _FoldTable(dict[int, str]):
    """str.translate table that folds each character to exactly one character, built lazily."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)).lower()
        if len(base) != 1:
            base = char.lower() if len(char.lower()) == 1 else char
        folded = base.translate(_PUNCT)
        self[code] = folded
        return folded


_FOLD = _FoldTable()


def fold(text: str) -> str:
    """Lower-case, accent-free, typographic quotes made plain; same length, so offsets map back."""
    return text.translate(_FOLD)


_SPACES = re.compile(r"\s+")


def squeeze(text: str) -> tuple[str, list[int]]:
    """Folded text with each whitespace run made one space (a newline if it held a blank line).

    Patterns can then be written with single spaces whatever the line wrapping; the list gives, for
    each character of the result, its offset in ``text``, so matches map back to the customer's words.
    """
    folded = fold(text)
    out: list[str] = []
    offsets: list[int] = []
    pos = 0
    for match in _SPACES.finditer(folded):
        out.append(folded[pos : match.start()])
        offsets.extend(range(pos, match.start()))
        out.append("\n" if match.group().count("\n") >= 2 else " ")
        offsets.append(match.start())
        pos = match.end()
    out.append(folded[pos:])
    offsets.extend(range(pos, len(folded)))
    return "".join(out), offsets


@dataclass(frozen=True)
class Phrase:
    intent: str
    weight: float
    pattern: re.Pattern[str]
    needs_date: bool  # counts only when the text also holds a future date


@dataclass(frozen=True)
class DateSpan:
    kind: str  # how dates.py resolves the match: parse, numeric, weekday, day_of_month, ...
    pattern: re.Pattern[str]
    value: int  # a kind-specific number (days to add, months ahead, weekday)


@dataclass(frozen=True)
class Language:
    code: str
    reads_intents: bool
    detect_words: frozenset[str]
    ack_words: frozenset[str]
    ack_phrases: tuple[re.Pattern[str], ...]
    attribution: tuple[re.Pattern[str], ...]
    header_from: frozenset[str]
    header_fields: frozenset[str]
    valediction: tuple[re.Pattern[str], ...]
    footer: tuple[re.Pattern[str], ...]
    auto_subject: tuple[re.Pattern[str], ...]
    auto_body: tuple[re.Pattern[str], ...]
    bounce_subject: tuple[re.Pattern[str], ...]
    bounce_delay: tuple[re.Pattern[str], ...]  # a bounce that only warns of a delay: transient
    moved: tuple[re.Pattern[str], ...]
    return_marker: tuple[re.Pattern[str], ...]
    until_marker: tuple[re.Pattern[str], ...]
    date_order: str
    weekdays: dict[str, int]
    months: dict[str, int]
    numbers: dict[str, int]
    date_spans: tuple[DateSpan, ...]
    currency_words: tuple[str, ...]
    invoice: tuple[re.Pattern[str], ...]
    negation: re.Pattern[str] | None
    conditional: re.Pattern[str] | None
    clause_break: re.Pattern[str] | None
    negation_after: re.Pattern[str] | None  # right after a phrase: "we've paid NOTHING"
    hedge: re.Pattern[str] | None  # "I DON'T THINK we paid": negates a statement with its own subject
    subjects: frozenset[str]  # words a phrase may open with that make it a statement with a subject
    habitual: re.Pattern[str] | None  # "we ALWAYS pay on time": a habit, no statement about this debt
    aside: dict[str, re.Pattern[str]]  # "the dispute LAST MONTH is RESOLVED": by intent, "all" for any
    past: re.Pattern[str] | None  # "yesterday", "last week": a statement about what was done
    future: re.Pattern[str] | None  # "tomorrow", "next week": a statement about what will be done
    remainder: re.Pattern[str] | None  # "the rest", "the other half": only part was paid
    anaphora: re.Pattern[str] | None  # "on that date": the date is the one written before
    phrases: tuple[Phrase, ...]
    screens: tuple[tuple[re.Pattern[str], tuple[Phrase, ...]], ...]  # the phrases in order, SCREEN at a time
    date_screens: tuple[tuple[re.Pattern[str], tuple[DateSpan, ...]], ...]  # date_spans alike
    past_screens: tuple[tuple[re.Pattern[str], tuple[DateSpan, ...]], ...]  # those of EXACT_KINDS alike


@dataclass(frozen=True)
class Common:
    invoice_shapes: tuple[re.Pattern[str], ...]
    currency_signs: tuple[str, ...]


def _compile(patterns: list[str], flags: int = 0, words: dict[str, str] | None = None) -> tuple[re.Pattern[str], ...]:
    out = []
    for pattern in patterns:
        for key, alternation in (words or {}).items():
            pattern = pattern.replace("{" + key + "}", alternation)
        out.append(re.compile(pattern, flags))
    return tuple(out)


T = TypeVar("T")

EXACT_KINDS = ("parse", "numeric", "weekday_day")
"""Date spans that name a calendar date; the others (weekdays, "next week") always point forward."""

SCREEN = 8
"""Patterns per screen: one search for any of them rules them all out at once. A reply matches two or three
of some 250 intent phrases and few date shapes, and one search of an alternation costs less than eight."""

_GROUP_NAME = re.compile(r"\(\?P<\w+>")
_NO_SCREEN = re.compile(r"\(\?P=|\(\?\(|\\[1-9]")
"""Backreferences and conditionals would change meaning in an alternation: such patterns are refused."""


def _screens(items: Sequence[T], pattern: Callable[[T], re.Pattern[str]]) -> tuple[tuple[re.Pattern[str],
                                                                                    tuple[T, ...]], ...]:
    """(an alternation of the items' patterns, the items), SCREEN at a time, in order: the alternation finds a
    match wherever one of them would. Group names are dropped from it (they would clash), flags kept."""
    screens = []
    for i in range(0, len(items), SCREEN):
        chunk = tuple(items[i : i + SCREEN])
        patterns = [pattern(item) for item in chunk]
        flags = {p.flags for p in patterns}
        if len(flags) != 1 or any(_NO_SCREEN.search(p.pattern) for p in patterns):
            raise ValueError(f"patterns {[p.pattern for p in patterns]} cannot share a screen")
        either = "|".join(f"(?:{_GROUP_NAME.sub('(?:', p.pattern)})" for p in patterns)
        screens.append((re.compile(either, flags.pop()), chunk))
    return tuple(screens)


def _any(patterns: list[str], words: dict[str, str] | None = None) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p.pattern})" for p in _compile(patterns, words=words))) if patterns else None


def _alternation(words: list[str]) -> str:
    """Longest first, so "sept" is tried before "sep"."""
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def _lexicon(table: dict[str, list[str]], known: dict[str, str]) -> dict[str, str]:
    """The [words] section: named lists of regular-expression fragments, used in patterns as {name}.

    A list may use the lists defined before it ({pay_participle} inside {pay_passive}), so a
    vocabulary (payment nouns, verbs of paying in each tense) is written once and shared.
    """
    out: dict[str, str] = {}
    for name, fragments in table.items():
        if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
            raise ValueError(f"[words] {name} must be a list of strings")
        joined = "(?:" + "|".join(fragments) + ")" if fragments else "(?!)"
        for key, alternation in {**known, **out}.items():
            joined = joined.replace("{" + key + "}", alternation)
        out[name] = joined
    return out


def _indexed(groups: list[list[str]], start: int) -> dict[str, int]:
    return {fold(word): i + start for i, words in enumerate(groups) for word in words}


def _language(code: str, data: dict[str, Any]) -> Language:
    def get(section: str, key: str) -> list[str]:
        return data.get(section, {}).get(key, [])

    dates = data.get("dates", {})
    weekdays = _indexed(dates.get("weekdays", []), 0)
    months = _indexed(dates.get("months", []), 1)
    numbers = {fold(k): int(v) for k, v in dates.get("numbers", {}).items()}
    words = {
        "weekday": _alternation(list(weekdays)) if weekdays else "(?!)",
        "month": _alternation(list(months)) if months else "(?!)",
        "number": _alternation(list(numbers)) if numbers else "(?!)",
    }
    words.update(_lexicon(data.get("words", {}), words))
    phrases = []
    for intent, tiers in data.get("intent", {}).items():
        for tier, (weight, needs_date) in TIERS.items():
            phrases += [Phrase(intent, weight, p, needs_date) for p in _compile(tiers.get(tier, []), words=words)]
    spans = tuple(
        DateSpan(s["kind"], _compile([s["re"]], words=words)[0], int(s.get("value", 0))) for s in dates.get("span", [])
    )
    return Language(
        code=code,
        reads_intents=bool(phrases),
        detect_words=frozenset(fold(w) for w in get("detect", "words")),
        ack_words=frozenset(fold(w) for w in get("ack", "words")),
        ack_phrases=_compile(get("ack", "phrases")),
        attribution=_compile(get("quote", "attribution")),
        header_from=frozenset(get("quote", "header_from")),
        header_fields=frozenset(get("quote", "header_fields")),
        valediction=_compile(get("signature", "valediction")),
        footer=_compile(get("signature", "footer")),
        auto_subject=_compile(get("auto", "subject")),
        auto_body=_compile(get("auto", "body")),
        bounce_subject=_compile(get("auto", "bounce_subject")),
        bounce_delay=_compile(get("auto", "bounce_delay")),
        moved=_compile(get("auto", "moved")),
        return_marker=_compile(get("auto", "return")),
        until_marker=_compile(get("auto", "until")),
        date_order=dates.get("order", "DMY"),
        weekdays=weekdays,
        months=months,
        numbers=numbers,
        date_spans=spans,
        currency_words=tuple(get("amounts", "currency")),
        invoice=_compile(get("invoices", "patterns")),
        negation=_any(get("negation", "cues"), words),
        conditional=_any(get("negation", "conditional"), words),
        clause_break=_any(get("negation", "clause"), words),
        negation_after=_any(get("negation", "after"), words),
        hedge=_any(get("negation", "hedge"), words),
        subjects=frozenset(get("negation", "subjects")),
        habitual=_any(get("negation", "habitual"), words),
        aside={k: p for k, v in data.get("aside", {}).items() if (p := _any(v, words)) is not None},
        past=_any(get("tense", "past"), words),
        future=_any(get("tense", "future"), words),
        remainder=_any(get("tense", "remainder"), words),
        anaphora=_any(dates.get("anaphora", []), words),
        phrases=tuple(phrases),
        screens=_screens(phrases, lambda p: p.pattern),
        date_screens=_screens(spans, lambda d: d.pattern),
        past_screens=_screens([d for d in spans if d.kind in EXACT_KINDS], lambda d: d.pattern),
    )


@cache
def languages() -> dict[str, Language]:
    """Every language file, by ISO 639-1 code (the file name)."""
    out = {}
    for path in sorted(LANG_DIR.glob("*.toml")):
        if path.stem != "common":
            try:
                out[path.stem] = _language(path.stem, tomllib.loads(path.read_text("utf-8")))
            except (tomllib.TOMLDecodeError, re.error, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: {exc}") from exc  # operators edit these files: name the file
    return out


@cache
def common() -> Common:
    data = tomllib.loads((LANG_DIR / "common.toml").read_text("utf-8"))
    return Common(
        invoice_shapes=_compile(data["invoices"]["shapes"], re.IGNORECASE),
        currency_signs=tuple(data["amounts"]["signs"]),
    )


def ordered(first: str, among: tuple[str, ...]) -> list[Language]:
    """The language files for ``among``, ``first`` leading; codes without a file are skipped."""
    table = languages()
    codes = [first, *among] if first in among else list(among)
    return [table[c] for c in dict.fromkeys(codes) if c in table]
