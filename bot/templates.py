"""Turns a Reminder into subject, plain text and HTML from the operator's Jinja templates.

Templates live in `<root>/<language>/<template>/{subject.txt,body.txt,body.html}`, with shared
partials (`_invoices.txt`, `_layout.html`, ...) in each language folder. Operators edit them, so
every failure names the file and line, and `check()` finds every problem before a run does.

Ledger values are data, never template code: `{{ 7*7 }}` in a customer name prints as written,
and HTML bodies are autoescaped. Rendering thousands of messages is cheap: one environment with
compiled templates cached, Babel locales and formatted values memoised. Files edited while the daemon
runs are picked up at the next pass (`refresh`), not checked on every render: Jinja's auto-reload
stats each template and partial every time it is used, ~10 stats per message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    pass_context,
    select_autoescape,
)
from jinja2 import TemplateError as JinjaError
from jinja2.runtime import Context

from bot.config import Company, Settings, Stage
from bot.errors import TemplateError
from bot.ledger import Customer, Invoice
from bot.messages import Rendered
from bot.policy import Line, Reminder, locale_for

log = logging.getLogger(__name__)

PARTS = ("subject.txt", "body.txt", "body.html")
_ONE_LINE = re.compile(r"[\s\x00-\x1f\x7f]+")
_TAG = re.compile(r"<[^>]*>")
# Sample data for check(): hostile on purpose, so a template that evaluates or fails to escape it shows.
HOSTILE = "<b>{{ 7*7 }}</b>"


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """One thing wrong with a template file, located for the operator who has to fix it."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class _Environment(Environment):
    def join_path(self, template: str, parent: str) -> str:
        """`{% include "_invoices.txt" %}` means the partial in the including template's language folder,
        so a language folder can be copied to start a new language without editing a single include."""
        language, sep, _ = parent.partition("/")
        if "/" in template or not sep:
            return template
        return f"{language}/{template}"


@lru_cache(maxsize=256)
def _locale(name: str) -> Locale:
    return Locale.parse(name)


@lru_cache(maxsize=65536)
def _money(amount: Decimal, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=_locale(locale))


@lru_cache(maxsize=65536)
def _date(day: date, form: str, locale: str) -> str:
    return format_date(day, format=form, locale=_locale(locale))


@pass_context
def money(ctx: Context, amount: Decimal, currency: str) -> str:
    """`{{ 4250|money("USD") }}`: "$4,250.00" for en_US, "4.250,00 US$" for es_ES."""
    return _money(amount, currency, ctx["locale"])


@pass_context
def longdate(ctx: Context, day: date) -> str:
    """`{{ deadline|longdate }}`: "December 15, 2025", "15 de diciembre de 2025"."""
    return _date(day, "long", ctx["locale"])


@pass_context
def shortdate(ctx: Context, day: date) -> str:
    """`{{ invoice.due_date|shortdate }}`: "Dec 15, 2025", "15 dic 2025". Babel's "medium" form: its "short"
    form has two-digit years and day/month orders that are easy to misread across borders."""
    return _date(day, "medium", ctx["locale"])


def context(reminder: Reminder, company: Company) -> dict[str, object]:
    """The variables every template sees; the partials' header comments document them for operators."""
    invoices: list[dict[str, object]] = []
    totals: dict[str, Decimal] = {}
    for line in reminder.lines:
        inv = line.invoice
        invoices.append({
            "id": inv.invoice_id,
            "issue_date": inv.issue_date,
            "due_date": inv.due_date,
            "amount": inv.amount,
            "balance": inv.balance,
            "currency": inv.currency,
            "days_overdue": line.days_overdue,
            "partly_paid": 0 < inv.balance < inv.amount,
            "paid": inv.amount - inv.balance,
        })
        totals[inv.currency] = totals.get(inv.currency, Decimal(0)) + inv.balance
    return {
        "company": company,
        "customer": reminder.customer,
        "stage": reminder.stage.name,
        "track": reminder.track,
        "invoices": invoices,
        "invoice_ids": list(reminder.invoice_ids),
        "totals": [{"currency": c, "balance": totals[c]} for c in sorted(totals)],
        "today": reminder.local_date,
        "deadline": reminder.deadline,
        "language": reminder.language,
        "locale": reminder.locale,
        "count": len(invoices),
        "oldest_days": max((line.days_overdue for line in reminder.lines), default=0),
        "cc": list(reminder.cc),
    }


class Templates:
    """The operator's templates, loaded once; safe to share between threads."""

    def __init__(self, root: Path, languages: tuple[str, ...], default_language: str) -> None:
        self.root = Path(os.path.normpath(Path(root).absolute()))
        self.languages = languages
        self.default_language = default_language
        self._prefix = str(self.root) + os.sep
        self._warned: set[tuple[str, str]] = set()
        self.env = _Environment(
            loader=FileSystemLoader(self.root),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=(),
                                         default_for_string=False, default=False),
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,
        )
        self.env.filters.update(money=money, longdate=longdate, shortdate=shortdate)
        self._files = self._scan()
        self._completeness: dict[tuple[str, str], bool] = {}

    def _scan(self) -> dict[str, tuple[int, int]]:
        """Every file under the root with its modification time and size: what `refresh` compares."""
        found: dict[str, tuple[int, int]] = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):  # removed while we looked: absent, as it now is
                    stat = os.stat(path)
                    found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def refresh(self) -> bool:
        """Forget compiled templates if any file was added, removed or changed since the last look.

        Called once per pass, so operators' edits take effect at the next pass and every message of a
        pass comes from the same templates. True when something changed.
        """
        files = self._scan()
        if files == self._files:
            return False
        self._files = files
        self.env.cache.clear()  # type: ignore[union-attr]
        self._completeness.clear()
        log.info("templates in %s changed: reloaded", self.root)
        return True

    def _complete(self, language: str, template: str) -> bool:
        key = (language, template)
        if key not in self._completeness:
            folder = self.root / language / template
            self._completeness[key] = all((folder / part).is_file() for part in PARTS)
        return self._completeness[key]

    def language_for(self, language: str, template: str) -> str:
        """`language` if its folder has all three files for `template`, else the default language.

        A missing translation should cost the customer their language, not their reminder; the
        warning is logged once per language and template so the log stays readable.
        """
        if language == self.default_language or (language in self.languages
                                                  and self._complete(language, template)):
            return language
        if (language, template) not in self._warned:
            self._warned.add((language, template))
            log.warning("no complete template %s/%s in %s: using %r instead",
                        language, template, self.root, self.default_language)
        return self.default_language

    def render(self, reminder: Reminder, company: Company) -> Rendered:
        """Raises TemplateError naming the template file and line when a file is missing or fails."""
        language = self.language_for(reminder.language, reminder.stage.template)
        ctx = context(reminder, company)
        if language != reminder.language:
            ctx["language"] = language
            ctx["locale"] = locale_for(language, reminder.customer.country)
        return self.render_folder(f"{language}/{reminder.stage.template}", ctx)

    def render_folder(self, folder: str, ctx: Mapping[str, object]) -> Rendered:
        """The subject, text and HTML of one template folder; raises TemplateError naming the file and line."""
        subject, text, html = (self._render(f"{folder}/{part}", ctx) for part in PARTS)
        return Rendered(subject=one_line(subject), text=text, html=html)

    def problems_in(self, samples: Iterable[tuple[str, Mapping[str, object]]]) -> list[TemplateProblem]:
        """Render every part of each (template folder, context) sample and report every problem once, with its
        file and line: what `dunbot templates check` shows for reminders and notifications alike."""
        problems: dict[tuple[str, int | None, str], TemplateProblem] = {}
        for folder, ctx in samples:
            for part in PARTS:
                name = f"{folder}/{part}"
                if not (self.root / name).is_file():
                    found = [TemplateProblem(name, None, "template file is missing")]
                else:
                    try:
                        output = self.env.get_template(name).render(ctx)
                    except Exception as exc:
                        found = [self._problem(name, exc)]
                    else:
                        found = [TemplateProblem(name, None, message) for message in _output_problems(part, output)]
                for problem in found:
                    problems.setdefault((problem.file, problem.line, problem.message), problem)
        return list(problems.values())

    def _render(self, name: str, ctx: Mapping[str, object]) -> str:
        try:
            return self.env.get_template(name).render(ctx)
        except Exception as exc:
            raise TemplateError(str(self._problem(name, exc))) from exc

    def _problem(self, name: str, exc: BaseException) -> TemplateProblem:
        """Locate a failure of template `name`: the innermost template frame, so a partial's error names
        the partial. Jinja rewrites tracebacks so those frames carry the template's file and line."""
        if isinstance(exc, TemplateSyntaxError):
            file = exc.name or (self._relative(exc.filename) if exc.filename else name)
            return TemplateProblem(file, exc.lineno, f"syntax error: {exc.message}")
        where = self._template_frame(exc)
        if isinstance(exc, TemplateNotFound):
            if where is None:
                return TemplateProblem(exc.name or name, None, "template file is missing")
            return TemplateProblem(*where, f"needs {exc.name}, which does not exist")
        file, line = where or (name, None)
        if isinstance(exc, JinjaError):
            return TemplateProblem(file, line, exc.message or type(exc).__name__)
        return TemplateProblem(file, line, f"{type(exc).__name__}: {exc}")

    def _template_frame(self, exc: BaseException) -> tuple[str, int] | None:
        found = None
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename.startswith(self._prefix) and filename.endswith((".txt", ".html")):
                found = (self._relative(filename), tb.tb_lineno)
            tb = tb.tb_next
        return found

    def _relative(self, filename: str) -> str:
        return os.path.relpath(filename, self.root).replace(os.sep, "/")


def one_line(subject: str) -> str:
    """A subject goes into a mail header: any run of whitespace or control characters becomes one space."""
    return _ONE_LINE.sub(" ", subject).strip()


def check(settings: Settings) -> list[TemplateProblem]:
    """Render every stage of every track in every language with awkward sample data; report every problem.

    Each template is rendered twice (one invoice, several in two currencies with one partly paid) so
    both sides of the usual `count == 1` branches run. Nothing is sent and nothing falls back: a
    missing translation is reported here even though a real run would quietly use the default language.
    """
    templates = Templates(settings.templates_dir, settings.languages, settings.company.language)
    if not templates.root.is_dir():
        return [TemplateProblem(str(templates.root), None, "the templates directory does not exist")]
    return templates.problems_in(
        (f"{language}/{stage.template}", context(sample, settings.company))
        for track in settings.schedule.tracks.values()
        for stage in track.stages
        for language in settings.languages
        for sample in _samples(track.name, stage, language, settings)
    )


def _output_problems(part: str, output: str) -> list[str]:
    found = []
    if part == "subject.txt":
        if re.search(r"[\r\n\u2028\u2029\x85]", output.strip()):
            found.append("the subject spans several lines; a subject must be one line")
        if not output.strip():
            found.append("the subject is empty")
    elif part == "body.html":
        if not _TAG.sub("", output).strip():
            found.append("the HTML body has no visible text")
        if HOSTILE in output:
            found.append("ledger data appears unescaped in HTML (is `|safe` used on a ledger value?)")
    elif not output.strip():
        found.append("the body is empty")
    return found


def _samples(track: str, stage: Stage, language: str, settings: Settings) -> tuple[Reminder, Reminder]:
    """Realistic but awkward reminders at `stage`: a long name with HTML and Jinja in it, two currencies,
    a partly paid invoice, one not yet due; plus a single-invoice reminder without Cc."""
    customer = Customer(
        customer_id="C-SAMPLE",
        name=f"Distribuidora Internacional de Alimentos y Bebidas del Mediterráneo {HOSTILE} S.A. de C.V.",
        contact_name=f"María José Fernández-Castillo {HOSTILE}",
        contact_email="ap@customer.example",
        cc_emails=("cfo@customer.example",),
        language=language,
        country=settings.company.country,
        timezone=settings.company.timezone,
        account_manager="Sam Lee",
        tier="",
    )
    today = date(2025, 12, 15)
    oldest = stage.offset

    def line(invoice_id: str, currency: str, amount: str, balance: str, days: int) -> Line:
        due = today - timedelta(days=days)
        return Line(Invoice(invoice_id, customer, currency, Decimal(amount), Decimal(balance),
                            due - timedelta(days=30), due, 2), days)

    lines = (
        line("INV-1042", "EUR", "4250.00", "4250.00", oldest),
        line("INV-1077", "EUR", "12840.50", "7840.50", max(oldest - 6, -2)),
        line("INV-1103", "USD", "980.00", "980.00", min(oldest, -1)),
    )
    several = Reminder(
        customer=customer, track=track, stage=stage, language=language,
        locale=locale_for(language, customer.country), timezone=customer.timezone, lines=lines,
        to=customer.contact_email, cc=customer.cc_emails if stage.cc else (), local_date=today,
        deadline=today + timedelta(days=settings.schedule.deadline_days),
        message_id="<sample@dunbot.invalid>", in_reply_to=None, references=(),
    )
    return several, replace(several, lines=lines[:1], cc=())
