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
- A customer who broke a promise gets the next stage at once, not the one they were already at.
- Never two reminders to a customer within `min_gap_days`.
- Only inside the customer's send window: business hours and working days in their time zone,
  optionally not on their country's public holidays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from importlib.resources import files
from operator import attrgetter
from zoneinfo import ZoneInfo

import holidays as holidays_lib
from babel import Locale, UnknownLocaleError
from babel.languages import get_official_languages

from bot.config import Settings, Stage, Track
from bot.ledger import Customer, Invoice, gc_paused

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
    bump: frozenset[str] = frozenset()


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


@cache
def _zone(name: str) -> ZoneInfo:
    """ZoneInfo's own cache holds only 8 zones strongly; a ledger has dozens, and each miss rereads the file."""
    return ZoneInfo(name)


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
    tz = _zone(timezone)
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
    with gc_paused():
        moment = _Moment(now, settings)
        groups = _contacts(invoices)
        groups.reverse()
        while groups:  # each group is freed as soon as it is planned, while its invoices are still in cache
            _plan_contact(groups.pop(), history, now, settings, result, moment)
    return result


_ZERO = Decimal(0)
_DUE = attrgetter("due_date")
# Most overdue first, then by invoice number: the order (-days overdue, id) without computing days.
_BY_AGE = attrgetter("due_date", "invoice_id")


def _contacts(invoices: Iterable[Invoice]) -> list[list[Invoice]]:
    """Open invoices grouped by contact (customer id, address), contacts and invoices in ledger order.

    The ledger shares one Customer object among a customer's rows, so grouping goes by object identity
    (no key built and hashed per invoice); Customer objects that turn out to share a contact (the same
    customer spelt two ways) are then regrouped in ledger order.
    """
    items = invoices if isinstance(invoices, list | tuple) else list(invoices)
    by_object: dict[int, list[Invoice]] = {}
    for invoice in items:
        if invoice.balance > _ZERO:
            group = by_object.get(id(invoice.customer))
            if group is None:
                by_object[id(invoice.customer)] = [invoice]
            else:
                group.append(invoice)
    contacts: dict[tuple[str, str], list[Invoice]] = {}
    shared: set[tuple[str, str]] = set()
    for group in by_object.values():
        customer = group[0].customer
        key = (customer.customer_id, customer.contact_email.lower())
        if key in contacts:
            shared.add(key)
        else:
            contacts[key] = group
    if shared:
        for key in shared:
            contacts[key] = []
        for invoice in items:
            if invoice.balance > _ZERO:
                key = (invoice.customer.customer_id, invoice.customer.contact_email.lower())
                if key in shared:
                    contacts[key].append(invoice)
    return list(contacts.values())


class _Moment:
    """What depends only on `now` and a zone or country, worked out once per plan instead of once per contact."""

    def __init__(self, now: datetime, settings: Settings) -> None:
        self.now, self.settings = now, settings
        self.dates: dict[str, date] = {}
        self.cutoffs: dict[tuple[date, int], date] = {}
        self.windows: dict[tuple[str, str], tuple[bool, datetime]] = {}

    def today(self, timezone: str) -> date:
        today = self.dates.get(timezone)
        if today is None:
            today = self.dates[timezone] = self.now.astimezone(_zone(timezone)).date()
        return today

    def cutoff(self, today: date, offset: int) -> date:
        """The latest due date that is `offset` days overdue (or more) on `today`."""
        cutoff = self.cutoffs.get((today, offset))
        if cutoff is None:
            cutoff = self.cutoffs[today, offset] = today - timedelta(days=offset)
        return cutoff

    def window(self, timezone: str, country: str) -> tuple[bool, datetime]:
        window = self.windows.get((timezone, country))
        if window is None:
            window = self.windows[timezone, country] = next_window(self.now, timezone, country, self.settings)
        return window


def _plan_contact(group: list[Invoice], history: History, now: datetime, settings: Settings, out: Plan,
                  moment: _Moment) -> None:
    customer = group[0].customer
    cid = customer.customer_id
    track = track_for(customer, settings)
    tz_name = timezone_for(customer, settings)
    today = moment.today(tz_name)
    cutoff = moment.cutoff(today, track.stages[0].offset)
    riding = [invoice for invoice in group if invoice.due_date <= cutoff]
    if not riding:
        return
    oldest = (today - min(map(_DUE, riding))).days
    if oldest >= track.escalate_after:
        if cid not in history.escalated:
            riding.sort(key=_BY_AGE)
            out.escalations.append(Escalation(customer, "age", oldest, tuple(i.invoice_id for i in riding),
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
    if cid in history.bump:
        reached = max((track.rank(name) for invoice in riding for name in sent.get(invoice.invoice_id, ())),
                      default=-1)
        stage = track.stages[min(max(reached + 1, track.rank(stage.name)), len(track.stages) - 1)]
    if sent and any(stage.name in sent.get(invoice.invoice_id, ()) for invoice in riding):
        return
    last = history.last_sent.get(cid)
    if last is not None and now - last < timedelta(days=settings.schedule.min_gap_days):
        gap_end = last + timedelta(days=settings.schedule.min_gap_days)
        out.waiting.append(Waiting(customer, stage.name, "minimum gap since the last reminder", gap_end))
        return
    open_now, opens = moment.window(tz_name, customer.country)
    if not open_now:
        out.waiting.append(Waiting(customer, stage.name, "outside the customer's send window", opens))
        return
    riding.sort(key=_BY_AGE)
    lines = tuple(Line(invoice, (today - invoice.due_date).days) for invoice in riding)
    language = language_for(customer, settings)
    invoice_ids = tuple(invoice.invoice_id for invoice in riding)
    thread = history.thread.get(cid, ())
    cc = tuple(a for a in customer.cc_emails if a.lower() not in history.invalid_contacts) if stage.cc else ()
    out.reminders.append(Reminder(
        customer=customer,
        track=track.name,
        stage=stage,
        language=language,
        locale=locale_for(language, customer.country),
        timezone=tz_name,
        lines=lines,
        to=customer.contact_email,
        cc=cc,
        local_date=today,
        deadline=today + timedelta(days=settings.schedule.deadline_days),
        message_id=message_id(cid, invoice_ids, stage.name, settings.company.message_id_domain),
        in_reply_to=thread[-1] if thread else None,
        references=thread[-10:],
    ))
