"""Owners hear of their escalations through the real Postfix into the real Dovecot: once, in their language."""

from __future__ import annotations

import email
import mailbox
import re
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from mailstack import MailStack
from sample import row, write_config, write_ledger

from bot.cli import main
from bot.config import load_settings
from bot.notify import check_templates
from bot.store import Store

pytestmark = pytest.mark.mail

T0 = "2026-11-24T11:00:00+01:00"      # a Tuesday
NOTIFY = "2026-11-24T14:30:00+01:00"
SPANISH_WORDS = "La mitad de la mercancía llegó dañada. No pagaremos la factura hasta que la repongan."
ENGLISH_WORDS = "Half the goods arrived damaged <b>{{ 7*7 }}</b>. We will not pay until you replace them."


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def managed(line: str, manager: str) -> str:
    return line.replace(',"Laura",', f',"{manager}",')


def answer(original: bytes, sender: str, text: str) -> bytes:
    parsed = email.message_from_bytes(original, policy=policy.default)
    reply = EmailMessage(policy=policy.SMTP)
    reply["From"] = sender
    reply["To"] = "accounts@northwind.example"
    reply["Subject"] = f"Re: {parsed['Subject']}"
    reply["Date"] = "Tue, 24 Nov 2026 13:05:00 +0100"
    reply["Message-ID"] = f"<answer.{sender}>"
    reply["In-Reply-To"] = parsed["Message-ID"]
    reply.set_content(f"{text}\n\n> {parsed['Subject']}\n")
    return reply.as_bytes()


def body(message: EmailMessage, kind: str) -> str:
    return message.get_body((kind,)).get_content()


def test_templates_check_covers_the_notifications() -> None:
    assert check_templates(load_settings(Path(__file__).resolve().parent.parent / "config.toml")) == []


def test_owners_get_one_notice_per_escalation_and_a_daily_digest(clean_mailstack: MailStack, tmp_path: Path) -> None:
    # Customers write from @discard.test: their reminders are accepted and dropped, so only the
    # owners' mail (@customers.test) lands in the `inbox` mailbox.
    laura, daniel = "Laura Gómez", "Daniel Pérez"
    ledger = write_ledger(tmp_path / "ledger.csv", [
        managed(row("INV-1", "C1", "pagos.uno@discard.test", days_overdue=20, language="es"), laura),
        managed(row("INV-2", "C2", "ap.two@discard.test", days_overdue=7, name="Two <script>x</script> Ltd"), daniel),
        managed(row("INV-3", "C3", "ap.three@discard.test", days_overdue=95), ""),   # default owner: no user
        managed(row("INV-4", "C4", "ap.four@discard.test", days_overdue=95, balance="300.00"), laura),
        managed(row("INV-5", "C5", "ap.five@discard.test", days_overdue=95, balance="5000.00"), laura),
    ])
    smtp = f'host = "{clean_mailstack.host}"\nport = {clean_mailstack.smtp_port}\nsecurity = "none"\n'
    config = str(write_config(tmp_path, ledger, smtp=smtp))
    code, out = run("send", "--config", config, "--now", T0)
    assert code == 0 and "escalated 3" in out, out
    for name, shown, language in (("laura", laura, "es"), ("daniel", daniel, "en")):
        code, out = run("users", "add", name, "--role", "sales", "--email", f"{name}@customers.test", "--language",
                        language, "--display-name", shown, "--password-stdin", "--config", config,
                        stdin="a long enough password\n")
        assert code == 0, out

    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    inbox = mailbox.Maildir(tmp_path / "var" / "inbox", create=True)
    inbox.add(answer(store.reminders_for("C1")[0]["raw"], "pagos.uno@discard.test", SPANISH_WORDS))
    inbox.add(answer(store.reminders_for("C2")[0]["raw"], "ap.two@discard.test", ENGLISH_WORDS))
    code, out = run("inbox", "poll", "--config", config, "--now", "2026-11-24T14:00:00+01:00")
    assert "for a person 2" in out, out
    assert {e["customer_id"]: e["reason"] for e in store.open_escalations()} == {
        "C1": "dispute", "C2": "dispute", "C3": "age", "C4": "age", "C5": "age"}

    code, out = run("notify", "--config", config, "--now", NOTIFY)
    assert code == 1, out  # the default owner "finance" has no user: reported, not sent
    assert "queued 4 escalation notices and 2 digests; sent 6, failed 0, waiting for retry 0; skipped 2" in out
    assert "owner 'finance' is not a user" in " ".join(out.split())
    messages = clean_mailstack.fetch_all()
    assert len(messages) == 6
    notices = [m for m in messages if m["X-Dunbot-Notification"] == "escalation"]
    links = sorted(re.search(r"/cases/(C\d)", body(m, "plain")).group(1) for m in notices)  # type: ignore[union-attr]
    assert links == ["C1", "C2", "C4", "C5"]  # exactly one notice per escalation with an owner
    assert all(m["Auto-Submitted"] == "auto-generated" for m in messages)

    spanish = next(m for m in notices if "/cases/C1" in body(m, "plain"))
    assert [a.addr_spec for a in spanish["To"].addresses] == ["laura@customers.test"]
    assert spanish["Subject"].startswith("Caso escalado: Customer C1 – el cliente discute la factura")
    text = body(spanish, "plain")
    assert "Hola, Laura Gómez" in text and "1.250,00\xa0€" in text and "20" in text
    assert "pagos.uno@discard.test escribió el 24 de noviembre de 2026" in text
    assert "La mitad de la mercancía llegó dañada. No pagaremos la factura hasta que la repongan." in text
    assert "Siguiente paso sugerido: Revise los documentos" in text
    assert "Abrir el caso: http://127.0.0.1:8080/cases/C1" in text
    assert 'href="http://127.0.0.1:8080/cases/C1"' in body(spanish, "html")

    english = next(m for m in notices if "/cases/C2" in body(m, "plain"))
    assert [a.addr_spec for a in english["To"].addresses] == ["daniel@customers.test"]
    assert "Hello Daniel Pérez" in body(english, "plain") and "Suggested next step: Check the documents" in body(
        english, "plain")
    assert "Half the goods arrived damaged <b>{{ 7*7 }}</b>." in body(english, "plain")
    html = body(english, "html")
    assert "&lt;b&gt;{{ 7*7 }}&lt;/b&gt;" in html and "Two &lt;script&gt;x&lt;/script&gt; Ltd" in html
    assert "<script>" not in html

    digests = {m["To"].addresses[0].addr_spec: m for m in messages if m["X-Dunbot-Notification"] == "digest"}
    assert set(digests) == {"laura@customers.test", "daniel@customers.test"}
    listing = body(digests["laura@customers.test"], "plain")
    assert digests["laura@customers.test"]["Subject"].startswith("3 casos escalados le esperan")
    order = [listing.index(f"(C{n})") for n in (5, 4, 1)]
    assert order == sorted(order)  # oldest first (95 days), then the largest of equal age (5000 before 300)
    assert "Total: 6.550,00\xa0€" in listing

    # Nothing is sent twice: not later the same day, not by a second pass.
    code, out = run("notify", "--config", config, "--now", "2026-11-24T16:00:00+01:00")
    assert "queued 0 escalation notices and 0 digests; sent 0" in out, out
    # The next working day brings a new digest, and still no second notice.
    code, out = run("notify", "--config", config, "--now", "2026-11-25T07:30:00+01:00")
    assert "queued 0 escalation notices and 0 digests; sent 0" in out, out  # before 08:00
    code, out = run("notify", "--config", config, "--now", "2026-11-25T08:05:00+01:00")
    assert "queued 0 escalation notices and 2 digests; sent 2" in out, out
    messages = clean_mailstack.fetch_all()
    assert len(messages) == 8
    assert len({m["Message-ID"] for m in messages}) == 8
    store.close()
