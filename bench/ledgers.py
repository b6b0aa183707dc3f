"""Deterministic synthetic ledgers for the benchmarks, cached in bench/out/ (git-ignored).

Seeded, so every run and every machine measures the same rows; the file name carries the
parameters and a format version, so a change to the generator never reuses a stale file.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from bot.config import LEDGER_FIELDS

OUT = Path(__file__).resolve().parent / "out"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    currency: str
    language: str  # what the ledger usually says; often left empty by the operator
    zones: tuple[str, ...]


COUNTRIES = (
    Country("ES", "EUR", "es", ("Europe/Madrid", "Atlantic/Canary")),
    Country("GB", "GBP", "en", ("Europe/London",)),
    Country("US", "USD", "en", ("America/New_York", "America/Chicago", "America/Los_Angeles")),
    Country("MX", "MXN", "es", ("America/Mexico_City",)),
    Country("CO", "COP", "es", ("America/Bogota",)),
    Country("AR", "USD", "es", ("America/Argentina/Buenos_Aires",)),
    Country("CL", "CLP", "es", ("America/Santiago",)),
    Country("PE", "USD", "es", ("America/Lima",)),
    Country("DE", "EUR", "de", ("Europe/Berlin",)),
    Country("FR", "EUR", "fr", ("Europe/Paris",)),
    Country("IT", "EUR", "it", ("Europe/Rome",)),
    Country("PT", "EUR", "pt", ("Europe/Lisbon",)),
    Country("NL", "EUR", "nl", ("Europe/Amsterdam",)),
    Country("IE", "EUR", "en", ("Europe/Dublin",)),
    Country("SE", "SEK", "sv", ("Europe/Stockholm",)),
    Country("CH", "CHF", "de", ("Europe/Zurich",)),
    Country("CA", "CAD", "en", ("America/Toronto", "America/Vancouver")),
    Country("AU", "AUD", "en", ("Australia/Sydney",)),
    Country("BR", "BRL", "pt", ("America/Sao_Paulo",)),
    Country("JP", "JPY", "ja", ("Asia/Tokyo",)),
)
# Where the customers are: mostly Spain, Latin America, the UK and the US, a long tail elsewhere.
COUNTRY_WEIGHTS = (22, 14, 12, 9, 5, 4, 3, 3, 5, 4, 3, 2, 2, 2, 1, 2, 2, 2, 2, 1)
# Customers a Madrid office can write to at 11:30 on a Tuesday (send window open everywhere).
EUROPE = ("ES", "GB", "DE", "FR", "IT", "PT", "NL", "IE")

FIRST = ("Lumen", "Harbor", "Sol", "Andina", "Maple", "Río de la Plata", "Nordic", "Pacific", "Azteca", "Oak & Iron",
         "Berger", "Müller", "Café Ñandú", "Atlántico", "Hanse", "Bellavista", "Zenit", "Iberia", "Cóndor", "Alpine",
         "Sakura", "Thames", "Prairie", "Volta", "Brisa", "Orión", "Granite", "Lotus", "Quetzal", "Polaris")
SECOND = ("Imports", "Foods", "Distribuciones", "Wholesale", "Ferretería", "Supply", "Traders", "Comercial",
          "Handels", "Logística", "Textiles", "Metals", "Farma", "Papelería", "Electric", "Agro", "Motors",
          "Construcciones", "Software", "Vinos")
FORMS = {"ES": "S.L.", "GB": "Ltd", "US": "Inc.", "MX": "S.A. de C.V.", "CO": "SAS", "AR": "S.R.L.", "CL": "SpA",
         "PE": "S.A.C.", "DE": "GmbH", "FR": "SARL", "IT": "S.r.l.", "PT": "Lda.", "NL": "B.V.", "IE": "Ltd",
         "SE": "AB", "CH": "AG", "CA": "Corp.", "AU": "Pty Ltd", "BR": "Ltda.", "JP": "K.K."}
PEOPLE = ("Sarah Collins", "Mike Turner", "Carmen Vidal", "Andrés Rojas", "Jenny Wu", "Martín Sosa", "Erik Lund",
          "Grace Kim", "Lucía Hernández", "Tom Baker", "Jonas Weber", "Chloé Martin", "Giulia Rossi", "João Silva",
          "Sven Berg", "Yuki Tanaka", "Aoife Byrne", "Pieter de Vries", "Olivia Brown", "José Ramírez", "")
BOXES = ("ap", "accounts", "payables", "pagos", "cuentas", "facturas", "buchhaltung", "compta", "invoices", "finance")
MANAGERS = ("Laura Gómez", "Daniel Pérez", "Marta Ruiz", "Óscar Navarro", "Elena Torres", "Jordi Puig", "", "")


def ledger_path(kind: str, rows: int, customers: int, seed: int) -> Path:
    return OUT / f"ledger-{kind}-{rows}x{customers}-s{seed}-v{VERSION}.csv"


def _customer(rng: random.Random, n: int, country: Country, domain: str | None) -> list[str]:
    name = f"{rng.choice(FIRST)} {rng.choice(SECOND)} {FORMS[country.code]}"
    if rng.random() < 0.05:
        name = name.replace(" ", ", ", 1)  # a comma: the CSV writer has to quote it
    slug = f"c{n}-{rng.randrange(10**6):06d}"
    host = domain or f"{slug}.test"
    email = f"{rng.choice(BOXES)}@{host}" if domain is None else f"{rng.choice(BOXES)}.{slug}@{host}"
    r = rng.random()
    cc = "" if r < 0.7 else (f"cfo.{slug}@{host}" if r < 0.92 else f"cfo.{slug}@{host}; owner.{slug}@{host}")
    r = rng.random()
    language = country.language if r < 0.7 else ("" if r < 0.9 else rng.choice(("en", "es")))
    timezone = rng.choice(country.zones) if rng.random() < 0.1 else ""
    r = rng.random()
    tier = "" if r < 0.95 else ("key" if r < 0.98 else rng.choice(("vip", "key_account")))
    return [f"C{n:06d}", name, rng.choice(PEOPLE), email, cc, language, country.code, timezone,
            rng.choice(MANAGERS), tier]


def _amounts(rng: random.Random, country: Country) -> tuple[str, str]:
    scale = {"JPY": 100, "CLP": 700, "COP": 3000, "MXN": 17, "BRL": 5}.get(country.currency, 1)
    amount = round(min(rng.lognormvariate(7.5, 1.2), 500_000) * scale, 0 if scale >= 100 else 2)
    r = rng.random()
    balance = amount if r < 0.85 else round(amount * rng.uniform(0.05, 0.95), 0 if scale >= 100 else 2)
    balance = max(balance, 0.01 if scale < 100 else 1)
    fmt = "{:.0f}" if scale >= 100 else "{:.2f}"
    return fmt.format(amount), fmt.format(balance)


def generate(path: Path, rows: int, customers: int, seed: int, today: date, *, countries: tuple[str, ...] = (),
             domain: str | None = None, overdue: tuple[int, int] = (-25, 150)) -> Path:
    """Write `rows` open invoices over `customers` customers; return the path (reused when already there).

    Each customer's most overdue invoice is spread over `overdue` days (before due to past escalation),
    so every stage of both tracks is represented; its other invoices are younger.
    """
    if path.exists():
        return path
    rng = random.Random(seed)
    pool = [c for c in COUNTRIES if not countries or c.code in countries]
    weights = [w for c, w in zip(COUNTRIES, COUNTRY_WEIGHTS, strict=True) if not countries or c.code in countries]
    people = []
    for n in range(customers):
        country = rng.choices(pool, weights)[0]
        people.append((country, _customer(rng, n + 1, country, domain)))
    # One invoice each, the rest spread unevenly: a few big accounts, many small ones.
    counts = [1] * customers
    if rows > customers:
        weights_c = [rng.paretovariate(1.5) for _ in range(customers)]
        for i in rng.choices(range(customers), weights_c, k=rows - customers):
            counts[i] += 1
    records = []
    serial = 0
    for (country, cells), count in zip(people, counts, strict=True):
        oldest = rng.randint(*overdue)
        for k in range(count):
            days = oldest if k == 0 else rng.randint(min(overdue[0], oldest), oldest)
            due = today - timedelta(days=days)
            issue = due - timedelta(days=rng.choice((15, 30, 30, 30, 45, 60)))
            serial += 1
            amount, balance = _amounts(rng, country)
            records.append((issue, serial, cells, country.currency, amount, balance, due))
    records.sort(key=lambda r: (r[0], r[1]))  # an export in issue-date order interleaves the customers
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LEDGER_FIELDS)
        for number, (issue, _serial, cells, currency, amount, balance, due) in enumerate(records, 1):
            cid, name, contact, email, cc, language, country_code, tz, manager, tier = cells
            writer.writerow((f"INV-{number:07d}", cid, name, contact, email, cc, language, country_code, tz,
                             currency, amount, balance, issue.isoformat(), due.isoformat(), manager, tier))
    tmp.replace(path)
    return path
