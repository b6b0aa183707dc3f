"""Who gets which reminder, and when: pure functions over the ledger, the history and a moment.

No I/O here. The store reads the history and the clock is a parameter, so "what would happen on
15 March" is a function call, and every rule below is tested without servers.

The rules, in the order they are applied to each contact (a customer's address; one email each):
- Only open invoices count: a balance of 0 or an invoice gone from the ledger stops everything.
- Each invoice sits on the latest stage of its track whose offset it has reached. The message's
  stage is the stage of the most overdue invoice; every invoice that has reached a stage rides in it.
- Never the same stage twice for an invoice: if any invoice in the message already had that stage,
  nothing is sent until the most overdue invoice reaches its next stage. After downtime this also
  means only the latest due stage goes out, never a burst of the missed ones.
- At `escalate_after` days overdue no more email: the customer waits for a person.
- Held customers (escalated, paused, contact known invalid) get nothing.
- Never two reminders to a customer within `min_gap_days`.
- Only inside the customer's send window: business hours and working days in their time zone,
  optionally not on their country's public holidays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from zoneinfo import ZoneInfo

import holidays as holidays_lib
from babel import Locale, UnknownLocaleError
from babel.languages import get_official_languages

from bot.config import Settings, Stage, Track
from bot.ledger import Customer, Invoice

AGENCY_RECOMMENDATION = (
    "Three months of our own reminders have not brought payment: hand the case to a third-party collection "
    "agency now; the sooner, the better the chance of recovery."
)


@dataclass(frozen=True, slots=True)
class Line:
    """An invoice as a reminder shows it."""

    invoice: Invoice
    days_overdue: int


@dataclass(frozen=True, slots=True)
class Reminder:
    """One email to send: a contact, the stage, and every invoice that rides in it."""

    customer: Customer
    track: str
    stage: Stage
    language: str
    locale: str
    timezone: str
    lines: tuple[Line, ...]
    to: str
    cc: tuple[str, ...]
    local_date: date
    deadline: date
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]

    @property
    def invoice_ids(self) -> tuple[str, ...]:
        return tuple(line.invoice.invoice_id for line in self.lines)


@dataclass(frozen=True, slots=True)
class Escalation:
    """A customer whose case now needs a person, with the step collection practice recommends."""

    customer: Customer
    reason: str
    days_overdue: int
    invoice_ids: tuple[str, ...]
    recommendation: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """A customer with a reminder due but not yet allowed to get it, and until when."""

    customer: Customer
    stage: str
    reason: str
    not_before: datetime | None


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a customer is to get no automated email at all until a person acts."""

    reason: str
    until: datetime | None = None


@dataclass(slots=True)
class History:
    """What the store knows, as plain data: what each invoice was sent, and each customer's state."""

    stages_sent: Mapping[str, frozenset[str]] = field(default_factory=dict)
    last_sent: Mapping[str, datetime] = field(default_factory=dict)
    thread: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    holds: Mapping[str, Hold] = field(default_factory=dict)
    invalid_contacts: frozenset[str] = frozenset()
    escalated: frozenset[str] = frozenset()


@dataclass(slots=True)
class Plan:
    now: datetime
    reminders: list[Reminder] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    held: list[tuple[Customer, str]] = field(default_factory=list)


def message_id(customer_id: str, invoice_ids: Iterable[str], stage: str, domain: str) -> str:
    """The same customer, invoices and stage always give the same Message-ID: a resend is recognisable."""
    key = "\x1f".join((customer_id, stage, *sorted(invoice_ids)))
    return f"<dunbot.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def track_for(customer: Customer, settings: Settings) -> Track:
    schedule = settings.schedule
    override = schedule.overrides.get(customer.customer_id)
    if override and override.track:
        return schedule.tracks[override.track]
    if customer.tier:
        for track in schedule.tracks.values():
            if customer.tier in track.tiers:
                return track
    return schedule.tracks[schedule.default_track]


def language_for(customer: Customer, settings: Settings) -> str:
    """The customer's language: override, ledger, country, company default; always one we have templates for."""
    override = settings.schedule.overrides.get(customer.customer_id)
    if override and override.language:
        wanted = override.language
    elif customer.language:
        wanted = customer.language
    elif customer.country:
        wanted = _country_language(customer.country, tuple(sorted(settings.schedule.language_by_country.items())))
    else:
        wanted = ""
    return wanted if wanted in settings.languages else settings.company.language


@lru_cache(maxsize=512)
def _country_language(country: str, by_country: tuple[tuple[str, str], ...]) -> str:
    explicit = dict(by_country).get(country)
    if explicit:
        return explicit
    official = get_official_languages(country, de_facto=True)
    return official[0].split("_")[0] if official else ""


@lru_cache(maxsize=4096)
def locale_for(language: str, country: str) -> str:
    """A Babel locale such as es_ES, for formatting money and dates the way the customer reads them."""
    if country:
        try:
            return str(Locale.parse(f"{language}_{country}"))
        except (UnknownLocaleError, ValueError):
            pass
    try:
        return str(Locale.parse(language))
    except (UnknownLocaleError, ValueError):
        return "en"


def timezone_for(customer: Customer, settings: Settings) -> str:
    if customer.timezone:
        return customer.timezone
    return _first_zones().get(customer.country, settings.company.timezone)


@lru_cache(maxsize=1)
def _first_zones() -> dict[str, str]:
    """Each country's first zone in the IANA zone.tab, which lists the most populous area first."""
    zones: dict[str, str] = {}
    text = files("tzdata.zoneinfo").joinpath("zone.tab").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            country, _coords, zone = line.split("\t")[:3]
            zones.setdefault(country, zone)
    return zones


@lru_cache(maxsize=256)
def _holiday_calendar(country: str) -> holidays_lib.HolidayBase | None:
    try:
        return holidays_lib.country_holidays(country)
    except NotImplementedError:
        return None


def is_sending_day(day: date, country: str, settings: Settings) -> bool:
    window = settings.schedule.window
    if day.weekday() not in window.working_days:
        return False
    if window.skip_holidays and country:
        calendar = _holiday_calendar(country)
        if calendar is not None and day in calendar:
            return False
    return True


def next_window(now: datetime, timezone: str, country: str, settings: Settings) -> tuple[bool, datetime]:
    """Whether `now` is inside the customer's send window, and if not, when the next window opens."""
    window = settings.schedule.window
    tz = ZoneInfo(timezone)
    local = now.astimezone(tz)
    if is_sending_day(local.date(), country, settings) and window.start <= local.time() < window.end:
        return True, now
    day = local.date() if local.time() < window.start else local.date() + timedelta(days=1)
    for _ in range(60):
        if is_sending_day(day, country, settings):
            break
        day += timedelta(days=1)
    return False, datetime.combine(day, window.start, tzinfo=tz)


def current_stage(track: Track, days_overdue: int) -> Stage | None:
    """The latest stage whose offset the invoice has reached; None before the first."""
    reached = None
    for stage in track.stages:
        if stage.offset <= days_overdue:
            reached = stage
        else:
            break
    return reached


def plan(invoices: Iterable[Invoice], history: History, now: datetime, settings: Settings) -> Plan:
    """Decide every reminder and escalation due at `now` (timezone-aware)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    result = Plan(now=now)
    contacts: dict[tuple[str, str], list[Invoice]] = {}
    for invoice in invoices:
        if invoice.balance > 0:
            key = (invoice.customer.customer_id, invoice.customer.contact_email.lower())
            contacts.setdefault(key, []).append(invoice)
    for group in contacts.values():
        _plan_contact(group, history, now, settings, result)
    return result


def _plan_contact(group: list[Invoice], history: History, now: datetime, settings: Settings, out: Plan) -> None:
    customer = group[0].customer
    cid = customer.customer_id
    track = track_for(customer, settings)
    tz_name = timezone_for(customer, settings)
    today = now.astimezone(ZoneInfo(tz_name)).date()
    lines = []
    oldest = None
    for invoice in group:
        days = (today - invoice.due_date).days
        if days >= track.stages[0].offset:
            lines.append(Line(invoice, days))
            if oldest is None or days > oldest:
                oldest = days
    if oldest is None:
        return
    lines.sort(key=lambda line: (-line.days_overdue, line.invoice.invoice_id))
    if oldest >= track.escalate_after:
        if cid not in history.escalated:
            out.escalations.append(Escalation(customer, "age", oldest, tuple(ln.invoice.invoice_id for ln in lines),
                                              AGENCY_RECOMMENDATION))
        out.held.append((customer, f"{oldest} days overdue: waiting for a person"))
        return
    if cid in history.escalated:
        out.held.append((customer, "escalated: waiting for a person"))
        return
    hold = history.holds.get(cid)
    if hold is not None and (hold.until is None or hold.until > now):
        out.held.append((customer, hold.reason))
        return
    if customer.contact_email.lower() in history.invalid_contacts:
        out.held.append((customer, f"contact {customer.contact_email} is known invalid"))
        return
    stage = current_stage(track, oldest)
    assert stage is not None
    sent = history.stages_sent
    if any(stage.name in sent.get(line.invoice.invoice_id, ()) for line in lines):
        return
    last = history.last_sent.get(cid)
    if last is not None and now - last < timedelta(days=settings.schedule.min_gap_days):
        gap_end = last + timedelta(days=settings.schedule.min_gap_days)
        out.waiting.append(Waiting(customer, stage.name, "minimum gap since the last reminder", gap_end))
        return
    open_now, opens = next_window(now, tz_name, customer.country, settings)
    if not open_now:
        out.waiting.append(Waiting(customer, stage.name, "outside the customer's send window", opens))
        return
    language = language_for(customer, settings)
    invoice_ids = tuple(line.invoice.invoice_id for line in lines)
    thread = history.thread.get(cid, ())
    cc = tuple(a for a in customer.cc_emails if a.lower() not in history.invalid_contacts) if stage.cc else ()
    out.reminders.append(Reminder(
        customer=customer,
        track=track.name,
        stage=stage,
        language=language,
        locale=locale_for(language, customer.country),
        timezone=tz_name,
        lines=tuple(lines),
        to=customer.contact_email,
        cc=cc,
        local_date=today,
        deadline=today + timedelta(days=settings.schedule.deadline_days),
        message_id=message_id(cid, invoice_ids, stage.name, settings.company.message_id_domain),
        in_reply_to=thread[-1] if thread else None,
        references=thread[-10:],
    ))
