"""The policy at many moments: pure, no servers, the clock given."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.config import Settings, load_settings
from bot.ledger import Customer, Invoice
from bot.policy import History, Hold, current_stage, message_id, plan

ROOT = Path(__file__).resolve().parent.parent
MADRID = ZoneInfo("Europe/Madrid")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config.toml")


def customer(cid: str = "C1", *, email: str = "ap@cust.test", country: str = "ES", tz: str = "", language: str = "",
             tier: str = "", cc: tuple[str, ...] = ("boss@cust.test",)) -> Customer:
    return Customer(cid, f"Customer {cid}", "Ana", email, cc, language, country, tz, "Laura", tier)


def invoice(inv: str, due: date, cust: Customer | None = None, balance: str = "100.00",
            amount: str = "100.00") -> Invoice:
    return Invoice(inv, cust or customer(), "EUR", Decimal(amount), Decimal(balance), due - timedelta(days=30), due, 2)


def at(day: date, hour: int = 10, tz: ZoneInfo = MADRID) -> datetime:
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=tz)


# Tuesday 2026-11-24, 10:00 in Madrid: a plain working day.
TUESDAY = date(2026, 11, 24)


def test_courtesy_notice_three_days_before_due(settings: Settings) -> None:
    result = plan([invoice("I1", TUESDAY + timedelta(days=3))], History(), at(TUESDAY), settings)
    assert [r.stage.name for r in result.reminders] == ["courtesy"]
    assert result.reminders[0].lines[0].days_overdue == -3


def test_nothing_four_days_before_due(settings: Settings) -> None:
    result = plan([invoice("I1", TUESDAY + timedelta(days=4))], History(), at(TUESDAY), settings)
    assert result.reminders == [] and result.waiting == []


@pytest.mark.parametrize("track_name", ["standard", "key_account"])
def test_each_stage_boundary(settings: Settings, track_name: str) -> None:
    track = settings.schedule.tracks[track_name]
    tier = track.tiers[0] if track.tiers else ""
    cust = customer(tier=tier)
    previous: frozenset[str] = frozenset()
    for stage in track.stages:
        due = TUESDAY - timedelta(days=stage.offset)
        history = History(stages_sent={"I1": previous})
        on_day = plan([invoice("I1", due, cust)], history, at(TUESDAY), settings)
        assert [(r.track, r.stage.name) for r in on_day.reminders] == [(track_name, stage.name)], stage
        day_before = plan([invoice("I1", due + timedelta(days=1), cust)], history, at(TUESDAY), settings)
        assert day_before.reminders == [], f"{stage.name} must not go out a day early"
        previous = previous | {stage.name}


def test_current_stage_is_latest_reached(settings: Settings) -> None:
    track = settings.schedule.tracks["standard"]
    assert current_stage(track, -4) is None
    assert current_stage(track, -3).name == "courtesy"  # type: ignore[union-attr]
    assert current_stage(track, 0).name == "courtesy"  # type: ignore[union-attr]
    assert current_stage(track, 13).name == "second"  # type: ignore[union-attr]
    assert current_stage(track, 89).name == "final"  # type: ignore[union-attr]


def test_weekend_waits_for_monday(settings: Settings) -> None:
    saturday = date(2026, 11, 28)
    result = plan([invoice("I1", saturday - timedelta(days=1))], History(), at(saturday), settings)
    assert result.reminders == []
    (waiting,) = result.waiting
    assert waiting.not_before == datetime(2026, 11, 30, 9, 0, tzinfo=MADRID)


def test_public_holiday_of_the_customers_country(settings: Settings) -> None:
    immaculate = date(2026, 12, 8)  # a national holiday in Spain, not in the UK
    spanish = invoice("I1", immaculate - timedelta(days=1), customer("ES1", country="ES"))
    british = invoice("I2", immaculate - timedelta(days=1), customer("GB1", email="x@gb.test", country="GB"))
    result = plan([spanish, british], History(), at(immaculate, 11, ZoneInfo("Europe/London")), settings)
    assert [r.customer.customer_id for r in result.reminders] == ["GB1"]
    assert [w.customer.customer_id for w in result.waiting] == ["ES1"]
    assert result.waiting[0].not_before == datetime(2026, 12, 9, 9, 0, tzinfo=MADRID)


def test_holidays_can_be_ignored(settings: Settings) -> None:
    window = replace(settings.schedule.window, skip_holidays=False)
    relaxed = replace(settings, schedule=replace(settings.schedule, window=window))
    immaculate = date(2026, 12, 8)
    result = plan([invoice("I1", immaculate - timedelta(days=1))], History(), at(immaculate), relaxed)
    assert len(result.reminders) == 1


def test_outside_business_hours(settings: Settings) -> None:
    early = plan([invoice("I1", TUESDAY - timedelta(days=1))], History(), at(TUESDAY, 8), settings)
    assert early.reminders == [] and early.waiting[0].not_before == at(TUESDAY, 9)
    late = plan([invoice("I1", TUESDAY - timedelta(days=1))], History(), at(TUESDAY, 17), settings)
    assert late.reminders == [] and late.waiting[0].not_before == at(TUESDAY + timedelta(days=1), 9)


def test_time_zones_on_both_sides_of_midnight(settings: Settings) -> None:
    # 23:30 UTC on Tuesday 24th: already Wednesday 08:30 in Tokyo, still Tuesday 15:30 in Los Angeles.
    now = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    due = date(2026, 11, 24)
    tokyo = invoice("T1", due, customer("JP1", email="a@jp.test", country="JP", tz="Asia/Tokyo"))
    la = invoice("L1", due - timedelta(days=1), customer("US1", email="a@us.test", country="US",
                                                           tz="America/Los_Angeles"))
    result = plan([tokyo, la], History(), now, settings)
    assert [(r.customer.customer_id, r.lines[0].days_overdue) for r in result.reminders] == [("US1", 1)]
    (waiting,) = result.waiting
    assert waiting.customer.customer_id == "JP1" and waiting.stage == "first"  # 1 day overdue in Tokyo already
    assert waiting.not_before == datetime(2026, 11, 25, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))


def test_timezone_from_country_then_company(settings: Settings) -> None:
    now = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)  # 15:30 Madrid, 09:30 New York, 06:30 Los Angeles
    us = invoice("I1", TUESDAY - timedelta(days=1), customer("US", email="a@us.test", country="US"))
    nowhere = invoice("I2", TUESDAY - timedelta(days=1), customer("XX", email="a@xx.test", country=""))
    result = plan([us, nowhere], History(), now, settings)
    assert {r.customer.customer_id: r.timezone for r in result.reminders} == {"US": "America/New_York",
                                                                            "XX": "Europe/Madrid"}


def test_after_downtime_only_the_latest_stage(settings: Settings) -> None:
    history = History(stages_sent={"I1": frozenset({"courtesy", "first"})},
                      last_sent={"C1": at(TUESDAY - timedelta(days=40))})
    result = plan([invoice("I1", TUESDAY - timedelta(days=35))], history, at(TUESDAY), settings)
    assert [r.stage.name for r in result.reminders] == ["firm"]


def test_never_the_same_stage_twice(settings: Settings) -> None:
    history = History(stages_sent={"I1": frozenset({"second"})}, last_sent={"C1": at(TUESDAY - timedelta(days=5))})
    result = plan([invoice("I1", TUESDAY - timedelta(days=10))], history, at(TUESDAY), settings)
    assert result.reminders == [] and result.waiting == []


def test_a_riding_invoice_that_had_the_stage_blocks_a_repeat(settings: Settings) -> None:
    cust = customer()
    history = History(stages_sent={"I2": frozenset({"firm"})})
    invoices = [invoice("I1", TUESDAY - timedelta(days=31), cust), invoice("I2", TUESDAY - timedelta(days=20), cust)]
    assert plan(invoices, history, at(TUESDAY), settings).reminders == []


def test_partial_payment_is_dunned_for_the_balance(settings: Settings) -> None:
    result = plan([invoice("I1", TUESDAY - timedelta(days=7), balance="40.00", amount="100.00")], History(),
                  at(TUESDAY), settings)
    assert result.reminders[0].lines[0].invoice.balance == Decimal("40.00")


def test_paid_or_gone_stops_everything(settings: Settings) -> None:
    history = History(stages_sent={"I1": frozenset({"first"})})
    paid = invoice("I1", TUESDAY - timedelta(days=7), balance="0")
    assert plan([paid], history, at(TUESDAY), settings).reminders == []
    assert plan([], history, at(TUESDAY), settings).reminders == []


def test_minimum_gap_between_reminders(settings: Settings) -> None:
    inv = invoice("I1", TUESDAY - timedelta(days=7))
    history = History(stages_sent={"I1": frozenset({"first"})}, last_sent={"C1": at(TUESDAY) - timedelta(days=2)})
    result = plan([inv], history, at(TUESDAY), settings)
    assert result.reminders == []
    assert result.waiting[0].not_before == at(TUESDAY) + timedelta(days=1)
    history.last_sent = {"C1": at(TUESDAY) - timedelta(days=3)}
    assert len(plan([inv], history, at(TUESDAY), settings).reminders) == 1


def test_one_email_per_contact_at_the_most_overdue_stage(settings: Settings) -> None:
    cust = customer()
    other_contact = replace(cust, contact_email="finance@cust.test")
    invoices = [
        invoice("I1", TUESDAY - timedelta(days=8), cust),
        invoice("I2", TUESDAY - timedelta(days=15), cust),
        invoice("I3", TUESDAY + timedelta(days=20), cust),   # not yet in any stage: not listed
        invoice("I4", TUESDAY - timedelta(days=2), other_contact),
    ]
    result = plan(invoices, History(), at(TUESDAY), settings)
    by_contact = {r.to: r for r in result.reminders}
    assert set(by_contact) == {"ap@cust.test", "finance@cust.test"}
    main = by_contact["ap@cust.test"]
    assert main.stage.name == "third" and main.invoice_ids == ("I2", "I1")
    assert by_contact["finance@cust.test"].stage.name == "first"


def test_escalation_at_ninety_days_and_no_more_email(settings: Settings) -> None:
    invoices = [invoice("I1", TUESDAY - timedelta(days=90)), invoice("I2", TUESDAY - timedelta(days=10))]
    result = plan(invoices, History(), at(TUESDAY), settings)
    assert result.reminders == []
    (esc,) = result.escalations
    assert esc.reason == "age" and esc.days_overdue == 90 and "agency" in esc.recommendation
    again = plan(invoices, History(escalated=frozenset({"C1"})), at(TUESDAY), settings)
    assert again.escalations == [] and again.reminders == [] and len(again.held) == 1


def test_escalated_customer_gets_nothing(settings: Settings) -> None:
    result = plan([invoice("I1", TUESDAY - timedelta(days=7))], History(escalated=frozenset({"C1"})),
                  at(TUESDAY), settings)
    assert result.reminders == [] and result.held


def test_paused_until_a_date(settings: Settings) -> None:
    inv = invoice("I1", TUESDAY - timedelta(days=7))
    paused = History(holds={"C1": Hold("payment reported", at(TUESDAY) + timedelta(days=1))})
    assert plan([inv], paused, at(TUESDAY), settings).reminders == []
    expired = History(holds={"C1": Hold("payment reported", at(TUESDAY) - timedelta(hours=1))})
    assert len(plan([inv], expired, at(TUESDAY), settings).reminders) == 1


def test_invalid_contact_is_held_and_invalid_cc_dropped(settings: Settings) -> None:
    inv = invoice("I1", TUESDAY - timedelta(days=15))
    held = plan([inv], History(invalid_contacts=frozenset({"ap@cust.test"})), at(TUESDAY), settings)
    assert held.reminders == [] and "invalid" in held.held[0][1]
    no_cc = plan([inv], History(invalid_contacts=frozenset({"boss@cust.test"})), at(TUESDAY), settings)
    assert no_cc.reminders[0].cc == ()


def test_cc_only_on_later_stages(settings: Settings) -> None:
    early = plan([invoice("I1", TUESDAY - timedelta(days=7))], History(), at(TUESDAY), settings)
    assert early.reminders[0].cc == ()
    late = plan([invoice("I1", TUESDAY - timedelta(days=14))], History(), at(TUESDAY), settings)
    assert late.reminders[0].cc == ("boss@cust.test",)


def test_tracks_by_tier_and_override(settings: Settings) -> None:
    due = TUESDAY - timedelta(days=3)
    key = plan([invoice("I1", due, customer(tier="vip"))], History(), at(TUESDAY), settings)
    assert (key.reminders[0].track, key.reminders[0].stage.name) == ("key_account", "first")
    standard = plan([invoice("I1", due, customer())], History(), at(TUESDAY), settings)
    assert standard.reminders[0].track == "standard"
    from bot.config import CustomerOverride
    overridden = replace(settings, schedule=replace(settings.schedule,
                                                    overrides={"C1": CustomerOverride(track="key_account")}))
    assert plan([invoice("I1", due)], History(), at(TUESDAY), overridden).reminders[0].track == "key_account"


@pytest.mark.parametrize(("language", "country", "expected", "locale"), [
    ("es", "US", "es", "es_US"),
    ("", "MX", "es", "es_MX"),
    ("", "GB", "en", "en_GB"),
    ("", "DE", "en", "en_DE"),    # German has no templates yet: the company default, never a crash
    ("fr", "FR", "en", "en_FR"),
    ("", "", "en", "en"),
])
def test_language_and_locale(settings: Settings, language: str, country: str, expected: str, locale: str) -> None:
    cust = customer(language=language, country=country, tz="UTC")
    result = plan([invoice("I1", TUESDAY - timedelta(days=1), cust)], History(), at(TUESDAY, 12, ZoneInfo("UTC")),
                  settings)
    assert (result.reminders[0].language, result.reminders[0].locale) == (expected, locale)


def test_message_id_is_deterministic_and_threads(settings: Settings) -> None:
    assert message_id("C1", ["B", "A"], "first", "x.test") == message_id("C1", ["A", "B"], "first", "x.test")
    assert message_id("C1", ["A"], "first", "x.test") != message_id("C1", ["A"], "second", "x.test")
    history = History(thread={"C1": ("<a@x>", "<b@x>")}, stages_sent={"I1": frozenset({"first"})})
    reminder = plan([invoice("I1", TUESDAY - timedelta(days=7))], history, at(TUESDAY), settings).reminders[0]
    assert reminder.in_reply_to == "<b@x>" and reminder.references == ("<a@x>", "<b@x>")
    assert reminder.message_id == message_id("C1", ["I1"], "second", "northwind.example")


def test_final_notice_deadline(settings: Settings) -> None:
    result = plan([invoice("I1", TUESDAY - timedelta(days=60))], History(), at(TUESDAY), settings)
    assert result.reminders[0].stage.name == "final"
    assert result.reminders[0].deadline == TUESDAY + timedelta(days=settings.schedule.deadline_days)


def test_now_must_be_aware(settings: Settings) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan([], History(), datetime(2026, 11, 24, 10), settings)


def test_a_broken_promise_moves_to_the_next_stage_at_once(settings: Settings) -> None:
    inv = invoice("I1", TUESDAY - timedelta(days=9))  # "second" by its days, and "second" was sent
    history = History(stages_sent={"I1": frozenset({"first", "second"})},
                      last_sent={"C1": at(TUESDAY) - timedelta(days=5)})
    assert plan([inv], history, at(TUESDAY), settings).reminders == []
    history.bump = frozenset({"C1"})
    assert [r.stage.name for r in plan([inv], history, at(TUESDAY), settings).reminders] == ["third"]
    at_the_top = History(stages_sent={"I1": frozenset({"final"})}, bump=frozenset({"C1"}))
    late = invoice("I1", TUESDAY - timedelta(days=70))
    assert plan([late], at_the_top, at(TUESDAY), settings).reminders == []


def test_one_contact_under_customer_rows_spelt_two_ways(settings: Settings) -> None:
    first = customer()
    spelt = replace(first, name="Customer C1 S.L.")  # same id and address, another Customer object
    invoices = [invoice("I1", TUESDAY - timedelta(days=8), first), invoice("I2", TUESDAY - timedelta(days=15), spelt),
                invoice("I3", TUESDAY - timedelta(days=9), first)]
    (reminder,) = plan(invoices, History(), at(TUESDAY), settings).reminders
    assert reminder.customer is first and reminder.invoice_ids == ("I2", "I3", "I1")
    assert plan(iter(invoices), History(), at(TUESDAY), settings).reminders == [reminder]
