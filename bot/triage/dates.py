"""Future dates in a reply: "next Friday", "el viernes", "15/12", "fin de mes", "on the 15th".

dateparser's ``search_dates`` over a whole reply invents dates ("We" -> a Wednesday, "may" -> May),
knows no "fin de mes", and guesses the language slowly. So candidate spans are found with each
language file's own patterns, computed kinds (weekday, day of month, end of month...) are resolved
here, and only month-name dates go to dateparser, with the language given explicitly. Everything is
relative to ``base`` (the reply's Date header): no clock is read. A date before the message or more
than ``HORIZON_DAYS`` ahead is no promise and is dropped.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import dateparser

from bot.triage.phrases import DateSpan, Language, fold, squeeze

HORIZON_DAYS = 120


@dataclass(frozen=True)
class FoundDate:
    start: int  # offsets in the original text
    end: int
    text: str
    value: date
    exact: bool  # a calendar date was written, not a weekday or a relative phrase
    rolled: bool = False  # "the 10th" written on the 18th: read as next month's, though it may be past



def find_dates(text: str, base: date, langs: Iterable[Language], *, past: bool = False) -> list[FoundDate]:
    """Future dates (within the horizon) written in ``text``, in reading order; with ``past``, the
    calendar dates written that fall before the message instead ("paid on 14/11"), which tell that
    a statement is about something already done.

    Languages are tried in order; a later language only adds spans that do not overlap earlier ones,
    so the reply's own language decides how "05/12" reads.
    """
    squeezed, offsets = squeeze(text)
    taken: list[tuple[int, int]] = []
    found: list[FoundDate] = []
    for lang in langs:
        screens = lang.past_screens if past else lang.date_screens  # the spans, less those matching nowhere
        matches = [(m, span) for screen, spans in screens if screen.search(squeezed)
                   for span in spans for m in span.pattern.finditer(squeezed)]
        matches.sort(key=lambda ms: (ms[0].start(), -(ms[0].end() - ms[0].start())))
        spent: list[tuple[int, int]] = []  # resolved outside the window, in this language's reading
        for match, span in matches:
            start, end = match.span()
            if start == end or any(start < e and s < end for s, e in (*taken, *spent)):
                continue
            o_start, o_end = offsets[start], offsets[end - 1] + 1
            value = _resolve(span, match, text[o_start:o_end], lang, base, past)
            low, high = (
                (base - timedelta(days=HORIZON_DAYS), base - timedelta(days=1))
                if past
                else (base, base + timedelta(days=HORIZON_DAYS))
            )
            if value is not None and not low <= value <= high:
                spent.append((start, end))  # "el viernes 5" that was last week: its "viernes" is no other date
            if value is None or not low <= value <= high:
                continue
            taken.append((start, end))
            exact = span.kind in ("parse", "numeric")
            rolled = span.kind == "day_of_month" and not span.value and value.month != base.month
            found.append(FoundDate(o_start, o_end, text[o_start:o_end], value, exact, rolled))
    return sorted(found, key=lambda f: f.start)


def _resolve(
    span: DateSpan, match: re.Match[str], original: str, lang: Language, base: date, past: bool = False
) -> date | None:
    groups = match.groupdict()
    kind, value = span.kind, span.value
    if kind == "parse":
        return _dateparser(original, lang.code, lang.date_order, base, "past" if past else "future")
    if kind == "numeric":
        return _numeric(groups["a"], groups["b"], groups.get("y"), lang.date_order, base)
    if kind == "weekday":
        weekday = lang.weekdays.get(fold(groups["weekday"]))
        if weekday is None:
            return None
        if value:
            return base - timedelta(days=base.weekday()) + timedelta(weeks=value, days=weekday)
        return base + timedelta(days=(weekday - base.weekday()) % 7 or 7)
    if kind == "day_of_month":
        return _day_of_month(int(groups["day"]), base, value)
    if kind == "weekday_day":
        return _weekday_day(lang.weekdays.get(fold(groups["weekday"])), int(groups["day"]), base)
    if kind == "end_of_month":
        year, month = _add_months(base, value)
        return date(year, month, calendar.monthrange(year, month)[1])
    if kind == "start_of_month":
        year, month = _add_months(base, value)
        return date(year, month, 1)
    if kind == "days":
        return base + timedelta(days=value)
    if kind == "in_days":
        n = groups["n"]
        count = int(n) if n.isdigit() else lang.numbers.get(fold(n))
        return base + timedelta(days=count * value) if count else None
    if kind == "next_week":  # by convention the Friday: "next week" promises the whole working week
        return base - timedelta(days=base.weekday()) + timedelta(weeks=1, days=4)
    if kind == "end_of_week":
        friday = base - timedelta(days=base.weekday()) + timedelta(days=4, weeks=value)
        return friday if friday >= base else friday + timedelta(weeks=1)
    raise ValueError(f"unknown date span kind {kind!r} in {lang.code}.toml")


@lru_cache(maxsize=4096)
def _dateparser(original: str, code: str, order: str, base: date, prefer: str) -> date | None:
    settings = {
        "PREFER_DATES_FROM": prefer,
        "RELATIVE_BASE": datetime(base.year, base.month, base.day),
        "DATE_ORDER": order,
        "REQUIRE_PARTS": ["day", "month"],
    }
    try:
        parsed = dateparser.parse(original, languages=[code], settings=settings)
    except Exception:  # dateparser raises assorted errors on odd input; a missed date is not fatal
        return None
    return parsed.date() if parsed else None


def _numeric(a: str, b: str, y: str | None, order: str, base: date) -> date | None:
    first, second = int(a), int(b)
    day, month = (second, first) if order.startswith("M") else (first, second)
    if month > 12 >= day:
        day, month = month, day
    if y:
        year = int(y) + (2000 if len(y) == 2 else 0)
        return _date(year, month, day)
    # Without a year, the reading nearest the message: "3/11" written on 25/11 is past, "15/01" on 20/12 is next year.
    candidates = [d for d in (_date(base.year + k, month, day) for k in (-1, 0, 1)) if d]
    return min(candidates, key=lambda d: abs(d - base), default=None)


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _weekday_day(weekday: int | None, day: int, base: date) -> date | None:
    """ "el lunes 1", "Friday the 5th": the nearest such day of a month that falls on that weekday."""
    candidates = [d for d in (_date(*_add_months(base, k), day) for k in range(-2, 4)) if d]
    matching = [d for d in candidates if d.weekday() == weekday] or candidates
    return min(matching, key=lambda d: abs(d - base), default=None)


def _day_of_month(day: int, base: date, months_ahead: int) -> date | None:
    if day < 1 or day > 31:
        return None
    if months_ahead:
        year, month = _add_months(base, months_ahead)
        return date(year, month, min(day, calendar.monthrange(year, month)[1]))
    for offset in range(months_ahead, months_ahead + 3):
        year, month = _add_months(base, offset)
        if day <= calendar.monthrange(year, month)[1] and date(year, month, day) >= base:
            return date(year, month, day)
    return None


def _add_months(base: date, months: int) -> tuple[int, int]:
    index = base.year * 12 + base.month - 1 + months
    return index // 12, index % 12 + 1
