"""Ledgers and configs written for a test: real files, read by the real commands."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from bot.config import LEDGER_FIELDS

ROOT = Path(__file__).resolve().parent.parent
# Tuesday 24 November 2026, 11:00 in Madrid: inside every European customer's send window.
NOW = "2026-11-24T11:00:00+01:00"
TODAY = date(2026, 11, 24)


def row(invoice: str, customer: str, email: str, *, days_overdue: int = 7, language: str = "en",
        country: str = "ES", cc: str = "", balance: str = "1250.00", tier: str = "", name: str = "") -> str:
    due = TODAY - timedelta(days=days_overdue)
    cells = {
        "invoice_id": invoice, "customer_id": customer, "customer_name": name or f"Customer {customer}",
        "contact_name": "Ana Ruiz", "contact_email": email, "cc_emails": cc, "language": language,
        "country": country, "timezone": "Europe/Madrid", "currency": "EUR", "amount": "1250.00",
        "balance": balance, "issue_date": (due - timedelta(days=30)).isoformat(), "due_date": due.isoformat(),
        "account_manager": "Laura", "tier": tier,
    }
    return ",".join(f'"{cells[f]}"' for f in LEDGER_FIELDS)


def write_ledger(path: Path, rows: list[str]) -> Path:
    path.write_text(",".join(LEDGER_FIELDS) + "\n" + "\n".join(rows) + "\n")
    return path


def write_config(folder: Path, ledger: Path, *, smtp: str = "", store_url: str = "") -> Path:
    """The example config with this ledger, the repository's templates, and optionally an SMTP table."""
    text = (ROOT / "config.toml").read_text()
    text = text.replace('path = "examples/ledger.csv"', f'path = "{ledger}"')
    text = text.replace('dir = "templates"', f'dir = "{ROOT / "templates"}"')
    if store_url:
        text = text.replace('url = "sqlite:///var/dunbot.db"', f'url = "{store_url}"')
    if smtp:
        text = text.replace('kind = "maildir"           #', 'kind = "smtp"           #', 1)
        text += f"\n[transport.smtp]\n{smtp}\n"
    config = folder / "config.toml"
    config.write_text(text)
    return config
