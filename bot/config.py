"""One validated settings object, loaded once from config.toml and passed explicitly.

Every error names the key and the file, so an operator can fix it without reading code.
Secrets never live in the file: the file names the environment variable that holds them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import ConfigError

LEDGER_FIELDS = (
    "invoice_id", "customer_id", "customer_name", "contact_name", "contact_email", "cc_emails",
    "language", "country", "timezone", "currency", "amount", "balance", "issue_date", "due_date",
    "account_manager", "tier",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_LANG = re.compile(r"^[a-z]{2}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")


class Secret:
    """A value read from the environment that prints as stars, so it cannot leak into a log by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Stage:
    """One rung of a track: an email sent `offset` days after the due date (negative: before)."""

    name: str
    offset: int
    template: str
    cc: bool = False


@dataclass(frozen=True, slots=True)
class Track:
    """A ladder of stages; at `escalate_after` days overdue the case goes to a person and emails stop."""

    name: str
    stages: tuple[Stage, ...]
    escalate_after: int
    tiers: tuple[str, ...] = ()

    def rank(self, stage_name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == stage_name:
                return i
        return -1


@dataclass(frozen=True, slots=True)
class SendWindow:
    start: time
    end: time
    working_days: frozenset[int]
    skip_holidays: bool


@dataclass(frozen=True, slots=True)
class Bank:
    name: str = ""
    iban: str = ""
    bic: str = ""
    account_name: str = ""


@dataclass(frozen=True, slots=True)
class Company:
    name: str
    email: str
    reply_to: str
    language: str
    country: str
    timezone: str
    phone: str = ""
    signature: str = ""
    payment_url: str = ""
    bank: Bank = field(default_factory=Bank)
    message_id_domain: str = ""


@dataclass(frozen=True, slots=True)
class CustomerOverride:
    track: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    min_gap_days: int
    deadline_days: int
    window: SendWindow
    default_track: str
    tracks: Mapping[str, Track]
    overrides: Mapping[str, CustomerOverride]
    language_by_country: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    path: Path
    columns: Mapping[str, str]
    date_order: Literal["dmy", "mdy"]
    encoding: str
    delimiter: str


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: Literal["starttls", "tls", "none"]
    username: str
    password: Secret | None
    oauth_token: Secret | None
    verify: bool
    ca_file: Path | None
    timeout: float
    connections: int
    rate_per_minute: int
    max_attempts: int
    backoff_initial: float
    backoff_max: float


@dataclass(frozen=True, slots=True)
class TransportSettings:
    kind: Literal["maildir", "smtp"]
    maildir: Path | None
    smtp: SmtpSettings | None


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    security: Literal["tls", "starttls", "none"]
    username: str
    password: Secret | None
    oauth_token: Secret | None
    verify: bool
    ca_file: Path | None
    timeout: float
    idle_seconds: float
    poll_seconds: float


@dataclass(frozen=True, slots=True)
class InboxSettings:
    """Where replies arrive, and the folders handled messages are moved to."""

    kind: Literal["maildir", "imap"]
    maildir: Path | None
    imap: ImapSettings | None
    folder: str
    handled_folder: str
    human_folder: str
    max_bytes: int


@dataclass(frozen=True, slots=True)
class TriageSettings:
    """How the bot acts on what a reply says."""

    payment_pause_days: int
    promise_grace_days: int
    broken_promises_to_escalate: int
    min_confidence: float


@dataclass(frozen=True, slots=True)
class Route:
    """A routing rule: cases matching every given condition go to `owner`."""

    owner: str
    tier: str = ""
    country: str = ""
    min_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CaseSettings:
    default_owner: str
    managers: Mapping[str, str]
    routes: tuple[Route, ...]
    base_url: str


@dataclass(frozen=True, slots=True)
class Settings:
    source: Path
    company: Company
    ledger: LedgerSettings
    store_url: str
    transport: TransportSettings
    schedule: Schedule
    templates_dir: Path
    languages: tuple[str, ...]
    inbox: InboxSettings
    triage: TriageSettings
    cases: CaseSettings


class Reader:
    """Typed access to one TOML table that reports the dotted key and the file on every mistake."""

    def __init__(self, data: Mapping[str, Any], prefix: str, source: Path) -> None:
        self.data, self.prefix, self.source = data, prefix, source

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: [{self.key(name)}] {why}")

    def table(self, name: str, required: bool = False) -> Reader:
        value = self.data.get(name, None)
        if value is None:
            if required:
                raise self.fail(name, "is missing")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(name, "must be a table")
        return Reader(value, self.key(name), self.source)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        if name not in self.data:
            if required or default is ...:
                raise self.fail(name, "is missing, and has no default")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise self.fail(name, f"must be a {expected}, not {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in options:
            raise self.fail(name, f"must be one of {', '.join(options)}, not {value!r}")
        return value

    def path(self, name: str, default: Any = ...) -> Path:
        raw = self.get(name, str, default)
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.source.parent / path)

    def secret(self, name: str) -> Secret | None:
        var = self.get(name, str, "")
        if not var:
            return None
        value = os.environ.get(var)
        if value is None:
            raise self.fail(name, f"names the environment variable {var}, which is not set")
        return Secret(value)


def _timezone(reader: Reader, name: str, value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise reader.fail(name, f"is not a known time zone: {value!r}") from exc
    return value


def _clock(reader: Reader, name: str, value: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError as exc:
        raise reader.fail(name, f"must be HH:MM, not {value!r}") from exc


def _company(r: Reader) -> Company:
    email = r.get("email", str, required=True)
    if not _EMAIL.match(email):
        raise r.fail("email", f"is not an email address: {email!r}")
    reply_to = r.get("reply_to", str, email)
    if not _EMAIL.match(reply_to):
        raise r.fail("reply_to", f"is not an email address: {reply_to!r}")
    language = r.get("language", str, "en")
    if not _LANG.match(language):
        raise r.fail("language", f"must be an ISO 639-1 code such as 'en', not {language!r}")
    country = r.get("country", str, "")
    if country and not _COUNTRY.match(country):
        raise r.fail("country", f"must be an ISO 3166 code such as 'ES', not {country!r}")
    bank = r.table("bank")
    return Company(
        name=r.get("name", str, required=True),
        email=email,
        reply_to=reply_to,
        language=language,
        country=country,
        timezone=_timezone(r, "timezone", r.get("timezone", str, "UTC")),
        phone=r.get("phone", str, ""),
        signature=r.get("signature", str, ""),
        payment_url=r.get("payment_url", str, ""),
        bank=Bank(**{k: bank.get(k, str, "") for k in ("name", "iban", "bic", "account_name")}),
        message_id_domain=r.get("message_id_domain", str, email.rpartition("@")[2]),
    )


def _stage(r: Reader, index: int, raw: Any) -> Stage:
    key = f"stages[{index}]"
    if not isinstance(raw, dict):
        raise r.fail(key, "must be a table like { name = 'first', offset = 1, template = 'first' }")
    s = Reader(raw, r.key(key), r.source)
    name = s.get("name", str, required=True)
    if not _NAME.match(name):
        raise s.fail("name", f"must be lower-case letters, digits and _, not {name!r}")
    return Stage(
        name=name,
        offset=s.get("offset", int, required=True),
        template=s.get("template", str, name),
        cc=s.get("cc", bool, False),
    )


def _track(r: Reader, name: str) -> Track:
    raw = r.get("stages", list, required=True)
    stages = tuple(_stage(r, i, item) for i, item in enumerate(raw))
    if not stages:
        raise r.fail("stages", "needs at least one stage")
    offsets = [s.offset for s in stages]
    if offsets != sorted(set(offsets)):
        raise r.fail("stages", f"offsets must rise strictly, got {offsets}")
    if len({s.name for s in stages}) != len(stages):
        raise r.fail("stages", "stage names must be unique within a track")
    escalate_after = r.get("escalate_after", int, 90)
    if escalate_after <= offsets[-1]:
        raise r.fail("escalate_after", f"must come after the last stage ({offsets[-1]} days), not {escalate_after}")
    tiers = r.get("tiers", list, [])
    if not all(isinstance(t, str) for t in tiers):
        raise r.fail("tiers", "must be a list of strings")
    return Track(name=name, stages=stages, escalate_after=escalate_after, tiers=tuple(t.lower() for t in tiers))


def _schedule(r: Reader) -> Schedule:
    window = r.table("window")
    days = window.get("working_days", list, ["mon", "tue", "wed", "thu", "fri"])
    bad = [d for d in days if not isinstance(d, str) or d.lower() not in WEEKDAYS]
    if bad or not days:
        raise window.fail("working_days", f"must list days from {', '.join(WEEKDAYS)}; bad: {bad}")
    start = _clock(window, "start", window.get("start", str, "09:00"))
    end = _clock(window, "end", window.get("end", str, "17:00"))
    if end <= start:
        raise window.fail("end", "must be later than start")
    min_gap = r.get("min_gap_days", int, 3)
    if min_gap < 0:
        raise r.fail("min_gap_days", "must be zero or more")
    tracks_table = r.table("tracks", required=True)
    tracks = {name: _track(tracks_table.table(name), name) for name in tracks_table.data}
    if not tracks:
        raise r.fail("tracks", "needs at least one track")
    default_track = r.get("default_track", str, "standard")
    if default_track not in tracks:
        raise r.fail("default_track", f"names no track: {default_track!r}; tracks are {', '.join(tracks)}")
    overrides_table = r.table("customers")
    overrides: dict[str, CustomerOverride] = {}
    for customer_id in overrides_table.data:
        o = overrides_table.table(customer_id)
        track = o.get("track", str, None)
        if track is not None and track not in tracks:
            raise o.fail("track", f"names no track: {track!r}")
        language = o.get("language", str, None)
        if language is not None and not _LANG.match(language):
            raise o.fail("language", f"must be an ISO 639-1 code, not {language!r}")
        overrides[customer_id] = CustomerOverride(track=track, language=language)
    by_country = r.table("language_by_country")
    language_by_country = {k.upper(): by_country.get(k, str) for k in by_country.data}
    deadline_days = r.get("deadline_days", int, 10)
    if deadline_days < 1:
        raise r.fail("deadline_days", "must be at least 1")
    return Schedule(
        min_gap_days=min_gap,
        deadline_days=deadline_days,
        window=SendWindow(
            start=start,
            end=end,
            working_days=frozenset(WEEKDAYS.index(d.lower()) for d in days),
            skip_holidays=window.get("skip_holidays", bool, True),
        ),
        default_track=default_track,
        tracks=tracks,
        overrides=overrides,
        language_by_country=language_by_country,
    )


def _ledger(r: Reader) -> LedgerSettings:
    columns = r.table("columns")
    mapping = {name: name for name in LEDGER_FIELDS}
    for ours in columns.data:
        if ours not in LEDGER_FIELDS:
            raise columns.fail(ours, f"is not a ledger field; fields are {', '.join(LEDGER_FIELDS)}")
        mapping[ours] = columns.get(ours, str)
    delimiter = r.get("delimiter", str, ",")
    if len(delimiter) != 1:
        raise r.fail("delimiter", "must be one character")
    encoding = r.get("encoding", str, "utf-8-sig")
    try:
        "".encode(encoding)
    except LookupError as exc:
        raise r.fail("encoding", f"is not a known encoding: {encoding!r}") from exc
    return LedgerSettings(
        path=r.path("path"),
        columns=mapping,
        date_order=r.choice("date_order", ("dmy", "mdy"), "dmy"),  # type: ignore[arg-type]
        encoding=encoding,
        delimiter=delimiter,
    )


def _server(r: Reader, ports: Mapping[str, int], *, username_required: bool) -> dict[str, Any]:
    """The settings SMTP and IMAP share: where the server is, how to reach it safely, who we are."""
    security = r.choice("security", tuple(ports), next(iter(ports)))
    port = r.get("port", int, ports[security])
    if not 0 < port < 65536:
        raise r.fail("port", f"must be a TCP port, not {port}")
    return {
        "host": r.get("host", str, required=True),
        "port": port,
        "security": security,
        "username": r.get("username", str, required=True) if username_required else r.get("username", str, ""),
        "password": r.secret("password_env"),
        "oauth_token": r.secret("oauth_token_env"),
        "verify": r.get("verify", bool, True),
        "ca_file": r.path("ca_file") if "ca_file" in r.data else None,
        "timeout": r.get("timeout", float, 30.0),
    }


def _smtp(r: Reader) -> SmtpSettings:
    settings = SmtpSettings(
        **_server(r, {"starttls": 587, "tls": 465, "none": 25}, username_required=False),
        connections=r.get("connections", int, 4),
        rate_per_minute=r.get("rate_per_minute", int, 0),
        max_attempts=r.get("max_attempts", int, 8),
        backoff_initial=r.get("backoff_initial", float, 60.0),
        backoff_max=r.get("backoff_max", float, 3600.0),
    )
    if settings.connections < 1:
        raise r.fail("connections", "must be at least 1")
    if settings.rate_per_minute < 0:
        raise r.fail("rate_per_minute", "must be zero (no limit) or more")
    if settings.max_attempts < 1:
        raise r.fail("max_attempts", "must be at least 1")
    return settings


def _transport(r: Reader) -> TransportSettings:
    kind = r.choice("kind", ("maildir", "smtp"), "maildir")
    if kind == "maildir":
        return TransportSettings(kind="maildir", maildir=r.path("maildir", "var/sent"), smtp=None)
    return TransportSettings(kind="smtp", maildir=None, smtp=_smtp(r.table("smtp", required=True)))


def _imap(r: Reader) -> ImapSettings:
    settings = ImapSettings(
        **_server(r, {"tls": 993, "starttls": 143, "none": 143}, username_required=True),
        idle_seconds=r.get("idle_seconds", float, 540.0),
        poll_seconds=r.get("poll_seconds", float, 60.0),
    )
    if settings.password is None and settings.oauth_token is None:
        raise r.fail("password_env", "or oauth_token_env must name the environment variable holding the secret")
    if not 0 < settings.idle_seconds <= 1740:
        raise r.fail("idle_seconds", "must be between 0 and 1740 (IDLE must be re-issued before 29 minutes)")
    return settings


def _inbox(r: Reader) -> InboxSettings:
    kind = r.choice("kind", ("maildir", "imap"), "maildir")
    max_bytes = r.get("max_bytes", int, 10_000_000)
    if max_bytes < 10_000:
        raise r.fail("max_bytes", "must be at least 10000")
    return InboxSettings(
        kind=kind,  # type: ignore[arg-type]
        maildir=r.path("maildir", "var/inbox") if kind == "maildir" else None,
        imap=_imap(r.table("imap", required=True)) if kind == "imap" else None,
        folder=r.get("folder", str, "INBOX"),
        handled_folder=r.get("handled_folder", str, "Dunbot/Handled"),
        human_folder=r.get("human_folder", str, "Dunbot/Needs human"),
        max_bytes=max_bytes,
    )


def _triage(r: Reader) -> TriageSettings:
    settings = TriageSettings(
        payment_pause_days=r.get("payment_pause_days", int, 10),
        promise_grace_days=r.get("promise_grace_days", int, 3),
        broken_promises_to_escalate=r.get("broken_promises_to_escalate", int, 2),
        min_confidence=r.get("min_confidence", float, 0.6),
    )
    for name in ("payment_pause_days", "promise_grace_days", "broken_promises_to_escalate"):
        if getattr(settings, name) < 0:
            raise r.fail(name, "must be zero or more")
    if not 0 <= settings.min_confidence <= 1:
        raise r.fail("min_confidence", "must be between 0 and 1")
    return settings


def _cases(r: Reader) -> CaseSettings:
    managers = r.table("managers")
    routes = []
    for i, raw in enumerate(r.get("routes", list, [])):
        if not isinstance(raw, dict):
            raise r.fail(f"routes[{i}]", "must be a table like { tier = 'key', owner = 'laura' }")
        route = Reader(raw, r.key(f"routes[{i}]"), r.source)
        amount = route.get("min_amount", (int, float, str), None)  # type: ignore[arg-type]
        try:
            min_amount = Decimal(str(amount)) if amount is not None else None
        except ArithmeticError as exc:
            raise route.fail("min_amount", f"must be a number, not {amount!r}") from exc
        routes.append(Route(owner=route.get("owner", str, required=True), tier=route.get("tier", str, "").lower(),
                            country=route.get("country", str, "").upper(), min_amount=min_amount))
    return CaseSettings(
        default_owner=r.get("default_owner", str, "finance"),
        managers={name: managers.get(name, str) for name in managers.data},
        routes=tuple(routes),
        base_url=r.get("base_url", str, "http://127.0.0.1:8080").rstrip("/"),
    )


def parse_settings(data: Mapping[str, Any], source: Path) -> Settings:
    """Validate a parsed config; `source` anchors relative paths and names the file in errors."""
    root = Reader(data, "", source)
    company = _company(root.table("company", required=True))
    templates = root.table("templates")
    languages = tuple(templates.get("languages", list, ["en", "es"]))
    if not languages or not all(isinstance(x, str) and _LANG.match(x) for x in languages):
        raise templates.fail("languages", "must list ISO 639-1 codes such as ['en', 'es']")
    if company.language not in languages:
        raise root.table("company").fail("language", f"{company.language!r} is not in templates.languages")
    store = root.table("store")
    return Settings(
        source=source,
        company=company,
        ledger=_ledger(root.table("ledger", required=True)),
        store_url=_store_url(store, source),
        transport=_transport(root.table("transport")),
        schedule=_schedule(root.table("schedule", required=True)),
        templates_dir=templates.path("dir", "templates"),
        languages=languages,
        inbox=_inbox(root.table("inbox")),
        triage=_triage(root.table("triage")),
        cases=_cases(root.table("cases")),
    )


def _store_url(r: Reader, source: Path) -> str:
    url = os.environ.get(r.get("url_env", str, "")) if "url_env" in r.data else None
    url = url or r.get("url", str, "sqlite:///var/dunbot.db")
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        url = prefix + str((source.parent / url[len(prefix):]).resolve())
    return url


def load_settings(path: str | os.PathLike[str]) -> Settings:
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration file ({exc.strerror})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: the configuration file is not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return parse_settings(data, source.resolve())
