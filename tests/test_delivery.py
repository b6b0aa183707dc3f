"""Reminders through the real Postfix into the real Dovecot, read back header by header."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest
from click.testing import CliRunner
from mailstack import MailStack
from sample import row, write_config, write_ledger

from bot.cli import main
from bot.store import Store

pytestmark = pytest.mark.mail


def send(config: Path, now: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["send", "--config", str(config), "--now", now, *extra])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def smtp_table(stack: MailStack) -> str:
    return (f'host = "{stack.host}"\nport = {stack.submission_port}\nsecurity = "starttls"\n'
            f'username = "{stack.smtp_user}"\npassword_env = "DUNBOT_TEST_SMTP_PASSWORD"\n'
            f'ca_file = "{stack.ca_file}"\nconnections = 2\n')


def test_reminders_arrive_with_every_header_and_thread(clean_mailstack: MailStack, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUNBOT_TEST_SMTP_PASSWORD", clean_mailstack.smtp_password)
    ledger = write_ledger(tmp_path / "ledger.csv", [
        row("INV-1", "C1", "ap@customers.test", days_overdue=14, cc="boss@customers.test",
            name='Acme <b>{{ 7*7 }}</b> Ltd'),
        row("INV-2", "C1", "ap@customers.test", days_overdue=3),
        row("INV-3", "C2", "pagos@customers.test", days_overdue=7, language="es", balance="600.00"),
    ])
    config = write_config(tmp_path, ledger, smtp=smtp_table(clean_mailstack))
    code, out = send(config, "2026-11-24T11:00:00+01:00")
    assert code == 0, out
    assert "sent 2" in out
    messages = {m["Message-ID"]: m for m in clean_mailstack.fetch_all()}
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    rows = {r["customer_id"]: r for r in store.reminders_for()}
    assert set(messages) == {r["message_id"] for r in rows.values()}

    english = messages[rows["C1"]["message_id"]]
    assert english["From"].addresses[0].addr_spec == "accounts@northwind.example"
    assert english["Reply-To"].addresses[0].addr_spec == "accounts@northwind.example"
    assert [a.addr_spec for a in english["To"].addresses] == ["ap@customers.test"]
    assert [a.addr_spec for a in english["Cc"].addresses] == ["boss@customers.test"]
    assert email.utils.parsedate_to_datetime(english["Date"]).isoformat() == "2026-11-24T11:00:00+01:00"
    assert english["X-Dunbot-Invoices"] == "INV-1, INV-2"
    assert english["X-Dunbot-Stage"] == "standard/third"
    assert "INV-1" in english["Subject"] and "\n" not in english["Subject"]
    assert english["Auto-Submitted"] is None and english["In-Reply-To"] is None
    assert english.get_content_type() == "multipart/alternative"
    text = english.get_body(("plain",)).get_content()
    html = english.get_body(("html",)).get_content()
    assert "Acme <b>{{ 7*7 }}</b> Ltd" in text and "49" not in text.split("INV-1")[0]
    assert "Acme &lt;b&gt;{{ 7*7 }}&lt;/b&gt; Ltd" in html
    assert english["Message-ID"].startswith("<dunbot.") and english["Message-ID"].endswith("@northwind.example>")

    spanish = messages[rows["C2"]["message_id"]]
    assert spanish["Cc"] is None and spanish["X-Dunbot-Stage"] == "standard/second"
    assert "600,00" in spanish.get_body(("plain",)).get_content()

    # On day 30 of the oldest invoice the next stage goes out, in the same thread.
    clean_mailstack.clear()
    code, out = send(config, "2026-12-10T11:00:00+01:00")
    assert code == 0 and "sent 2" in out
    later = {m["X-Dunbot-Invoices"]: m for m in clean_mailstack.fetch_all()}
    assert later["INV-1, INV-2"]["In-Reply-To"] == english["Message-ID"]
    assert english["Message-ID"] in later["INV-1, INV-2"]["References"]
    assert later["INV-3"]["In-Reply-To"] == spanish["Message-ID"]
    assert {r["status"] for r in store.reminders_for()} == {"sent"}


def test_refused_recipient_marks_the_contact(clean_mailstack: MailStack, tmp_path: Path) -> None:
    ledger = write_ledger(tmp_path / "ledger.csv", [
        row("INV-1", "C1", "gone@reject.test", days_overdue=7),
        row("INV-2", "C2", "ap@customers.test", days_overdue=14, cc="left@reject.test"),
    ])
    smtp = f'host = "{clean_mailstack.host}"\nport = {clean_mailstack.smtp_port}\nsecurity = "none"\n'
    config = write_config(tmp_path, ledger, smtp=smtp)
    code, out = send(config, "2026-11-24T11:00:00+01:00")
    assert code == 1 and "sent 1, failed 1" in out
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    assert store.invalid_contacts() == frozenset({"gone@reject.test", "left@reject.test"})
    status = {r["customer_id"]: r["status"] for r in store.reminders_for()}
    assert status == {"C1": "failed", "C2": "sent"}
    assert len(clean_mailstack.fetch_all()) == 1
