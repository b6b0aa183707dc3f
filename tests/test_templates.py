"""The shipped templates render for every stage and language; operator mistakes name file and line."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import Company, Settings, Stage, load_settings
from bot.errors import TemplateError
from bot.ledger import Customer, Invoice
from bot.messages import Rendered
from bot.policy import Line, Reminder
from bot.templates import TemplateProblem, Templates, check, context

CONFIG = Path(__file__).resolve().parents[1] / "config.toml"
SETTINGS = load_settings(CONFIG)
TODAY = date(2025, 12, 15)
HOSTILE = "<script>alert(1)</script> {{ 7*7 }} {% raw %}"
STAGES = [(track.name, stage) for track in SETTINGS.schedule.tracks.values() for stage in track.stages]
DISREGARD = {"en": "disregard", "es": "no tenga en cuenta"}


def customer(name: str = "Acme Distribución S.L.", contact: str = "Ana López") -> Customer:
    return Customer("C1", name, contact, "ap@acme.example", ("cfo@acme.example",), "", "ES", "Europe/Madrid",
                    "", "")


def line(invoice_id: str, days: int, amount: str = "4250.00", balance: str | None = None,
         currency: str = "EUR", who: Customer | None = None) -> Line:
    due = TODAY - timedelta(days=days)
    invoice = Invoice(invoice_id, who or customer(), currency, Decimal(amount), Decimal(balance or amount),
                      due - timedelta(days=30), due, 2)
    return Line(invoice, days)


def reminder(stage: Stage, lines: tuple[Line, ...], language: str = "en", locale: str = "en_GB",
             track: str = "standard") -> Reminder:
    return Reminder(
        customer=lines[0].invoice.customer, track=track, stage=stage, language=language, locale=locale,
        timezone="Europe/Madrid", lines=lines, to="ap@acme.example",
        cc=("cfo@acme.example",) if stage.cc else (),
        local_date=TODAY, deadline=TODAY + timedelta(days=10), message_id="<m@northwind.example>",
        in_reply_to=None, references=(),
    )


def several(stage: Stage, who: Customer | None = None) -> tuple[Line, ...]:
    """Most overdue first, as the policy orders them: two currencies, one partly paid, one not yet due."""
    days = max(stage.offset, 1)
    return (
        line("INV-1042", days, who=who),
        line("INV-1077", days - 2, "12840.50", "7840.50", who=who),
        line("INV-1103", -2, "980.00", currency="USD", who=who),
    )


def stage(template: str, name: str = "first", offset: int = 7, cc: bool = False) -> Stage:
    return Stage(name, offset, template, cc)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(SETTINGS.templates_dir, SETTINGS.languages, SETTINGS.company.language)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A private copy of the shipped templates, for tests to break."""
    root = tmp_path / "templates"
    shutil.copytree(SETTINGS.templates_dir, root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


@pytest.mark.parametrize("language", SETTINGS.languages)
@pytest.mark.parametrize(("track", "stage_"), STAGES, ids=[f"{t}-{s.name}" for t, s in STAGES])
def test_every_template_renders(templates: Templates, track: str, stage_: Stage, language: str) -> None:
    locale = {"en": "en_GB", "es": "es_ES"}[language]
    many = templates.render(reminder(stage_, several(stage_), language, locale, track), SETTINGS.company)
    one = templates.render(reminder(stage_, several(stage_)[:1], language, locale, track), SETTINGS.company)
    company = SETTINGS.company
    for out in (many, one):
        assert isinstance(out, Rendered)
        assert "\n" not in out.subject
        assert "\r" not in out.subject
        assert "INV-1042" in out.subject
        assert company.name in out.subject
        for body in (out.text, out.html):
            assert "INV-1042" in body
            assert company.bank.iban in body
            assert company.bank.bic in body
            assert DISREGARD[language] in body
        assert "<table" in out.html
        assert "<img" not in out.html
        assert "src=" not in out.html
        assert "<style" not in out.html
        assert "<link" not in out.html
    for invoice_id in ("INV-1077", "INV-1103"):
        assert invoice_id in many.text
        assert invoice_id in many.html
    # Both currencies' totals, the partly paid balance and the amount received.
    for amount in ("12.090,50 €", "980,00 US$", "7.840,50 €", "5.000,00 €") if language == "es" else (
            "€12,090.50", "US$980.00", "€7,840.50", "€5,000.00"):
        assert amount.replace(" ", "\xa0") in many.text
    if stage_.name == "final":
        deadline = "25 de diciembre de 2025" if language == "es" else "25 December 2025"
        assert deadline in many.text
        assert deadline in many.html


def test_context_variables() -> None:
    first = stage("first_reminder")
    ctx = context(reminder(first, several(first)), SETTINGS.company)
    assert ctx["count"] == 3
    assert ctx["oldest_days"] == 7
    assert ctx["invoice_ids"] == ["INV-1042", "INV-1077", "INV-1103"]
    assert ctx["totals"] == [{"currency": "EUR", "balance": Decimal("12090.50")},
                             {"currency": "USD", "balance": Decimal("980.00")}]
    invoices = ctx["invoices"]
    assert isinstance(invoices, list)
    assert invoices[1]["partly_paid"]
    assert invoices[1]["paid"] == Decimal("5000.00")
    assert not invoices[0]["partly_paid"]
    assert invoices[2]["days_overdue"] == -2
    assert ctx["stage"] == "first"
    assert ctx["track"] == "standard"
    assert ctx["today"] == TODAY


def test_hostile_ledger_values_are_escaped_in_html_and_literal_in_text(templates: Templates) -> None:
    who = customer(name=HOSTILE, contact="")
    third = stage("third_reminder", "third", 14, cc=True)
    lines = (line("INV-{{7*7}}", 14, who=who), line("INV-2", 3, who=who))
    out = templates.render(reminder(third, lines), SETTINGS.company)
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} {% raw %}" in out.html
    assert HOSTILE in out.text
    assert "INV-{{7*7}}" in out.subject
    assert "INV-{{7*7}}" in out.text
    assert "49" not in out.text + out.html + out.subject


@pytest.mark.parametrize(("locale", "currency", "expected"), [
    ("es_ES", "USD", "4.250,00\xa0US$"),
    ("en_US", "USD", "$4,250.00"),
    ("es_ES", "EUR", "4.250,00\xa0€"),
    ("en_GB", "EUR", "€4,250.00"),
])
def test_money_follows_the_locale(templates: Templates, locale: str, currency: str, expected: str) -> None:
    out = templates.env.from_string("{{ amount|money(currency) }}").render(
        amount=Decimal("4250"), currency=currency, locale=locale)
    assert out == expected


@pytest.mark.parametrize(("locale", "long", "short"), [
    ("es_ES", "15 de diciembre de 2025", "15 dic 2025"),
    ("en_US", "December 15, 2025", "Dec 15, 2025"),
    ("en_GB", "15 December 2025", "15 Dec 2025"),
])
def test_dates_follow_the_locale(templates: Templates, locale: str, long: str, short: str) -> None:
    out = templates.env.from_string("{{ d|longdate }}|{{ d|shortdate }}").render(d=TODAY, locale=locale)
    assert out == f"{long}|{short}"


def test_text_and_subject_are_not_html_escaped(templates: Templates) -> None:
    who = customer(name="Smith & Sons <UK>", contact="")
    first = stage("first_reminder")
    out = templates.render(reminder(first, (line("INV-1", 7, who=who),)), SETTINGS.company)
    assert "Dear Smith & Sons <UK> team," in out.text
    assert "Smith &amp; Sons &lt;UK&gt;" in out.html


def test_subject_is_one_line_even_with_a_hostile_name(broken: Path) -> None:
    subject = broken / "en" / "first_reminder" / "subject.txt"
    subject.write_text("{{ customer.name }}\r\n  {{ invoice_ids|join(', ') }}\n\n")
    who = customer(name="Evil\r\nBcc: victim@example.com\u2028Corp\x85Ltd\tX\x0b", contact="")
    templates = Templates(broken, SETTINGS.languages, "en")
    out = templates.render(reminder(stage("first_reminder"), (line("INV-9", 7, who=who),)), SETTINGS.company)
    assert out.subject == "Evil Bcc: victim@example.com Corp Ltd X INV-9"
    assert not any(c in out.subject for c in "\r\n\u2028\x85\x0b\t")


def test_undefined_variable_names_file_and_line(broken: Path) -> None:
    body = broken / "en" / "second_reminder" / "body.txt"
    edit(body, "If you have already paid", "{{ customer.nickname }} If you have already paid")
    templates = Templates(broken, SETTINGS.languages, "en")
    second = stage("second_reminder", "second")
    with pytest.raises(TemplateError) as caught:
        templates.render(reminder(second, several(second)), SETTINGS.company)
    message = str(caught.value)
    assert message.startswith(f"en/second_reminder/body.txt:{line_of(body, 'nickname')}: ")
    assert "nickname" in message


def test_undefined_variable_in_a_partial_names_the_partial(broken: Path) -> None:
    partial = broken / "es" / "_invoices.html"
    edit(partial, "<strong>{{ invoice.id }}</strong>", "<strong>{{ invoice.number }}</strong>")
    templates = Templates(broken, SETTINGS.languages, "en")
    first = stage("first_reminder")
    where = f"es/_invoices.html:{line_of(partial, 'invoice.number')}: "
    with pytest.raises(TemplateError, match=rf"^{re.escape(where)}.*number"):
        templates.render(reminder(first, several(first), "es", "es_ES"), SETTINGS.company)


def test_syntax_error_names_file_and_line(broken: Path) -> None:
    body = broken / "en" / "final_notice" / "body.html"
    edit(body, '{% include "_payment.html" %}', '{% include "_payment.html" %}\n{% if %}')
    templates = Templates(broken, SETTINGS.languages, "en")
    final = stage("final_notice", "final", 60, cc=True)
    where = f"en/final_notice/body.html:{line_of(body, '{% if %}')}: syntax error"
    with pytest.raises(TemplateError, match=rf"^{re.escape(where)}"):
        templates.render(reminder(final, several(final)), SETTINGS.company)


def test_missing_template_in_the_default_language_is_a_template_error(broken: Path) -> None:
    (broken / "en" / "courtesy" / "body.html").unlink()
    templates = Templates(broken, SETTINGS.languages, "en")
    courtesy = stage("courtesy", "courtesy", -3)
    with pytest.raises(TemplateError, match=r"en/courtesy/body\.html"):
        templates.render(reminder(courtesy, (line("INV-1", -3),)), SETTINGS.company)


def test_missing_language_falls_back_with_one_warning(broken: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree(broken / "es" / "key_first")
    templates = Templates(broken, SETTINGS.languages, "en")
    key_first = stage("key_first", "first", 3)
    spanish = reminder(key_first, several(key_first), "es", "es_ES", "key_account")
    with caplog.at_level(logging.WARNING, logger="bot.templates"):
        out = templates.render(spanish, SETTINGS.company)
        templates.render(spanish, SETTINGS.company)
        assert templates.language_for("fr", "key_first") == "en"
    assert out.subject.startswith("A quick reminder: invoices INV-1042")
    assert '<html lang="en">' in out.html
    # English words, with the customer's country's number formats (locale en_ES).
    assert "due on 12 December 2025" in out.text
    assert "12.090,50\xa0€" in out.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "es/key_first" in warnings[0].getMessage()
    assert "fr/key_first" in warnings[1].getMessage()
    assert templates.language_for("es", "key_second") == "es"


def test_edited_templates_are_picked_up(broken: Path) -> None:
    templates = Templates(broken, SETTINGS.languages, "en")
    first = stage("first_reminder")
    sample = reminder(first, (line("INV-1", 7),))
    before = templates.render(sample, SETTINGS.company).subject
    assert before == "Invoice INV-1 is now 7 days overdue – Northwind Trading S.L."
    subject = broken / "en" / "first_reminder" / "subject.txt"
    subject.write_text("Edited {{ invoice_ids[0] }}\n")
    later = subject.stat().st_mtime + 5
    os.utime(subject, (later, later))
    # Within a pass every message comes from the templates the pass started with; the next pass sees the edit.
    assert templates.render(sample, SETTINGS.company).subject == before
    assert templates.refresh() is True
    assert templates.render(sample, SETTINGS.company).subject == "Edited INV-1"
    assert templates.refresh() is False


def test_a_translation_added_later_is_used_from_the_next_pass(broken: Path) -> None:
    shutil.rmtree(broken / "es" / "first_reminder")
    templates = Templates(broken, SETTINGS.languages, "en")
    sample = reminder(stage("first_reminder"), (line("INV-1", 7),), language="es")
    assert templates.language_for("es", "first_reminder") == "en"
    fallback = templates.render(sample, SETTINGS.company).subject
    shutil.copytree(SETTINGS.templates_dir / "es" / "first_reminder", broken / "es" / "first_reminder")
    assert templates.language_for("es", "first_reminder") == "en"
    assert templates.refresh() is True
    assert templates.language_for("es", "first_reminder") == "es"
    spanish = templates.render(sample, SETTINGS.company).subject
    assert spanish != fallback
    shipped = Templates(SETTINGS.templates_dir, SETTINGS.languages, "en")
    assert spanish == shipped.render(sample, SETTINGS.company).subject


def test_check_passes_the_shipped_templates() -> None:
    assert check(SETTINGS) == []


def test_check_reports_every_problem(broken: Path) -> None:
    (broken / "es" / "second_reminder" / "body.html").unlink()
    syntax = broken / "en" / "third_reminder" / "body.txt"
    edit(syntax, "{% include \"_invoices.txt\" %}", "{% for x in %}\n{% include \"_invoices.txt\" %}")
    undefined = broken / "es" / "_payment.txt"
    edit(undefined, "{{ company.bank.iban }}", "{{ company.bank.swift }}")
    (broken / "en" / "courtesy" / "subject.txt").write_text("Invoice {{ invoice_ids[0] }}\ndue soon\n")
    (broken / "es" / "key_firm" / "body.txt").write_text("{# nothing to say #}\n")
    settings: Settings = replace(SETTINGS, templates_dir=broken)

    problems = check(settings)
    found = {(p.file, p.line) for p in problems}
    messages = "\n".join(str(p) for p in problems)
    assert ("es/second_reminder/body.html", None) in found
    assert ("en/third_reminder/body.txt", line_of(syntax, "{% for x in %}")) in found
    assert ("es/_payment.txt", line_of(undefined, "swift")) in found
    assert ("en/courtesy/subject.txt", None) in found
    assert ("es/key_firm/body.txt", None) in found
    assert "missing" in messages
    assert "syntax error" in messages
    assert "swift" in messages
    assert "one line" in messages
    assert "empty" in messages
    assert len(problems) == len({(p.file, p.line, p.message) for p in problems}), "reported once each"


def test_check_reports_unescaped_ledger_data(broken: Path) -> None:
    edit(broken / "en" / "_greeting.html", "Dear {{ customer.contact_name }},",
         "Dear {{ customer.contact_name|safe }},")
    problems = check(replace(SETTINGS, templates_dir=broken))
    assert problems
    assert all("unescaped" in p.message for p in problems)
    assert {p.file.split("/")[0] for p in problems} == {"en"}


def test_check_reports_a_missing_directory(tmp_path: Path) -> None:
    problems = check(replace(SETTINGS, templates_dir=tmp_path / "nowhere"))
    assert len(problems) == 1
    assert "does not exist" in problems[0].message


def test_problem_formats_as_file_line_message() -> None:
    assert str(TemplateProblem("en/x/body.txt", 3, "boom")) == "en/x/body.txt:3: boom"
    assert str(TemplateProblem("en/x/body.html", None, "template file is missing")) == \
        "en/x/body.html: template file is missing"


def test_company_without_bank_details_asks_the_customer_to_reply(templates: Templates) -> None:
    no_bank = replace(SETTINGS.company.bank, iban="", bic="", name="")
    company: Company = replace(SETTINGS.company, bank=no_bank)
    out = templates.render(reminder(stage("first_reminder"), (line("INV-1", 7),)), company)
    assert "IBAN" not in out.text
    assert "IBAN" not in out.html
    assert "we will send you our bank details" in out.text


def test_missing_partial_names_the_including_file_and_line(broken: Path) -> None:
    (broken / "es" / "_signature.txt").unlink()
    body = broken / "es" / "courtesy" / "body.txt"
    templates = Templates(broken, SETTINGS.languages, "en")
    courtesy = stage("courtesy", "courtesy", -3)
    where = f"es/courtesy/body.txt:{line_of(body, '_signature.txt')}: needs es/_signature.txt"
    with pytest.raises(TemplateError, match=rf"^{re.escape(where)}"):
        templates.render(reminder(courtesy, (line("INV-1", -3),), "es", "es_ES"), SETTINGS.company)
