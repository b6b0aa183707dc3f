"""Replies acted on end to end on the embedded default: reminders out, replies in, holds, escalations, resumes."""

from __future__ import annotations

import email
import json
import mailbox
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample import row, write_config, write_ledger

from bot.cli import main
from bot.store import Store

T0 = "2026-11-24T11:00:00+01:00"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def answer(to: EmailMessage, sender: str, text: str, date: str = "Tue, 24 Nov 2026 13:05:00 +0100",
           **headers: str) -> bytes:
    reply = EmailMessage(policy=policy.SMTP)
    reply["From"] = sender
    reply["To"] = "accounts@northwind.example"
    reply["Subject"] = f"Re: {to['Subject']}"
    reply["Date"] = date
    reply["Message-ID"] = f"<reply.{abs(hash((sender, text)))}@customer.test>"
    reply["In-Reply-To"] = to["Message-ID"]
    reply["References"] = to["Message-ID"]
    for name, value in headers.items():
        del reply[name.replace("_", "-")]
        reply[name.replace("_", "-")] = value
    quoted = "\n".join("> " + line for line in to.get_body(("plain",)).get_content().splitlines())
    reply.set_content(f"{text}\n\nOn Tue, Nov 24, 2026 at 11:00 AM Northwind <accounts@northwind.example> wrote:\n"
                      f"{quoted}\n")
    return reply.as_bytes()


def dsn(original: EmailMessage, recipient: str) -> bytes:
    """A Postfix-shaped RFC 3464 delivery status notification for `original`."""
    return f"""From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)
To: accounts@northwind.example
Subject: Undelivered Mail Returned to Sender
Date: Tue, 24 Nov 2026 11:01:00 +0100
Message-ID: <dsn.1@mx.customer.test>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b0und"

--b0und
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--b0und
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.test

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown

--b0und
Content-Type: text/rfc822-headers

Message-ID: {original['Message-ID']}
From: accounts@northwind.example
To: {recipient}
Subject: {original['Subject']}

--b0und--
""".replace("\n", "\r\n").encode()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    ledger = write_ledger(tmp_path / "ledger.csv", [
        row("INV-1", "C1", "ap@paid.test"),
        row("INV-2", "C2", "pagos@promesa.test", language="es"),
        row("INV-3", "C3", "ap@damaged.test"),
        row("INV-4", "C4", "ap@away.test"),
        row("INV-5", "C5", "gone@bounce.test"),
    ])
    config = write_config(tmp_path, ledger)
    code, out = run("send", "--config", str(config), "--now", T0)
    assert code == 0 and "sent 5" in out
    return config, ledger


def sent_to(tmp_path: Path) -> dict[str, EmailMessage]:
    box = mailbox.Maildir(tmp_path / "var" / "sent", create=False)
    messages = [email.message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.keys()]  # noqa: SIM118
    return {m["To"].addresses[0].addr_spec: m for m in messages}


def test_replies_are_understood_acted_on_and_filed(world: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ledger = world
    sent = sent_to(tmp_path)
    inbox = mailbox.Maildir(tmp_path / "var" / "inbox", create=True)
    inbox.add(answer(sent["ap@paid.test"], "ap@paid.test", "Hi, we paid this yesterday by wire transfer. Regards"))
    inbox.add(answer(sent["pagos@promesa.test"], "pagos@promesa.test",
                     "Buenos días, les pagaremos la factura el 15 de diciembre. Saludos"))
    inbox.add(answer(sent["ap@damaged.test"], "ap@damaged.test",
                     "Half of the goods arrived damaged. We will not pay until you replace them."))
    inbox.add(answer(sent["ap@away.test"], "ap@away.test",
                     "I am out of the office until 2 December 2026 with limited access to email.",
                     Auto_Submitted="auto-replied", Subject="Automatic reply: out of office"))
    inbox.add(dsn(sent["gone@bounce.test"], "gone@bounce.test"))
    newsletter = EmailMessage()
    newsletter["From"], newsletter["Subject"], newsletter["Message-ID"] = "news@shop.test", "Deals", "<n@shop.test>"
    newsletter.set_content("Big sale this week")
    inbox.add(newsletter.as_bytes())

    code, out = run("inbox", "poll", "--config", str(config), "--now", "2026-11-24T14:00:00+01:00")
    assert code == 0, out
    assert "handled 3, for a person 2, unmatched (left in the inbox) 1" in out

    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    intents = {r["customer_id"]: r["intent"] for r in store.replies_for()}
    assert intents == {"C1": "payment_sent", "C2": "promise_to_pay", "C3": "dispute", "C4": "out_of_office",
                       "C5": "bounce"}
    holds = {h["customer_id"]: (h["kind"], h["until"].date().isoformat()) for h in
             store.active_holds(store.replies_for()[0]["created_at"])}
    assert holds == {"C1": ("payment_reported", "2026-12-04"), "C2": ("promise", "2026-12-18"),
                     "C4": ("out_of_office", "2026-12-01")}
    assert {e["customer_id"]: e["reason"] for e in store.open_escalations()} == {"C3": "dispute", "C5": "bounce"}
    assert [f["customer_id"] for f in store.open_flags()] == ["C1"]
    assert "gone@bounce.test" in store.invalid_contacts()
    dispute = next(r for r in store.replies_for() if r["customer_id"] == "C3")
    assert "damaged" in json.loads(dispute["classification"])["new_text"]
    assert len(inbox) == 1  # only the newsletter stays in the inbox

    code, out = run("inbox", "poll", "--config", str(config), "--now", "2026-11-24T15:00:00+01:00")
    assert "handled 0, for a person 0, unmatched (left in the inbox) 0" in out

    # Day 14 of the invoices: the third stage is due for everyone still dunned.
    code, out = run("plan", "--config", str(config), "--now", "2026-12-01T11:00:00+01:00", "--json")
    plan = json.loads(out)
    assert [r["customer_id"] for r in plan["reminders"]] == []
    held = {h["customer_id"]: h["reason"] for h in plan["held"]}
    assert set(held) == {"C1", "C2", "C3", "C4", "C5"}
    code, out = run("plan", "--config", str(config), "--now", "2026-12-02T11:00:00+01:00", "--json")
    assert [r["customer_id"] for r in json.loads(out)["reminders"]] == ["C4"]

    # The payment pause ends and the ledger still shows the balance: reminders resume.
    code, out = run("plan", "--config", str(config), "--now", "2026-12-04T15:00:00+01:00", "--json")
    assert {r["customer_id"] for r in json.loads(out)["reminders"]} == {"C1", "C4"}


def test_a_broken_promise_moves_up_and_two_escalate(world: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ledger = world
    inbox = mailbox.Maildir(tmp_path / "var" / "inbox", create=True)
    inbox.add(answer(sent_to(tmp_path)["pagos@promesa.test"], "pagos@promesa.test",
                     "Les pagaremos el viernes sin falta."))
    run("inbox", "poll", "--config", str(config), "--now", "2026-11-24T14:00:00+01:00")
    code, out = run("send", "--config", str(config), "--now", "2026-12-02T11:00:00+01:00")
    assert code == 0 and "sent 5" in out  # everyone reaches the third stage; C2 after its broken promise
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    assert store.broken_promises()["C2"]
    stages = [r["stage"] for r in store.reminders_for("C2")]
    assert stages == ["second", "third"]
    latest = store.reminders_for("C2")[-1]
    inbox.add(answer(email.message_from_bytes(latest["raw"], policy=policy.default), "pagos@promesa.test",
                     "Perdón por el retraso, les pagaremos el lunes 7 de diciembre.",
                     date="Wed, 2 Dec 2026 12:00:00 +0100"))
    run("inbox", "poll", "--config", str(config), "--now", "2026-12-02T13:00:00+01:00")
    run("send", "--config", str(config), "--now", "2026-12-14T11:00:00+01:00")
    assert {e["customer_id"]: e["reason"] for e in store.open_escalations()}["C2"] == "broken_promises"
    assert [r["stage"] for r in store.reminders_for("C2")] == ["second", "third"]


def test_corrected_readings_become_a_labelled_set_for_eval(world: tuple[Path, Path], tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from bot.casebook import CaseBook
    from bot.config import load_settings

    config, _ledger = world
    inbox = mailbox.Maildir(tmp_path / "var" / "inbox", create=True)
    inbox.add(answer(sent_to(tmp_path)["ap@damaged.test"], "ap@damaged.test",
                     "We sent the transfer for half; the rest follows when the replacement arrives."))
    run("inbox", "poll", "--config", str(config), "--now", "2026-11-24T14:00:00+01:00")
    settings = load_settings(config)
    store = Store.open(settings.store_url)
    (reply,) = store.replies_for("C3")
    CaseBook(store, settings).correct(reply["id"], "dispute", None, "laura", datetime(2026, 11, 24, 15, tzinfo=UTC))
    folder = tmp_path / "feedback"
    code, out = run("triage", "feedback", str(folder), "--config", str(config))
    assert code == 0 and "1 corrected replies written" in out
    label = json.loads((folder / "labels-feedback.jsonl").read_text())
    assert label == {"file": f"reply-{reply['id']}.eml", "intent": "dispute", "language": reply["language"],
                     "promised_date": None}
    assert (folder / label["file"]).read_bytes() == reply["raw"]
    code, out = run("triage", "eval", str(folder))
    assert code == 0 and "messages            1" in out


def test_a_reply_recorded_but_not_yet_filed_is_filed_where_its_decision_sent_it(
        world: tuple[Path, Path], tmp_path: Path) -> None:
    """A crash between a batch's commit and its moves hands the mail over again: not acted on twice, and a
    reply that needs a person must not end up among the handled ones."""
    from datetime import UTC, datetime

    from bot.config import load_settings
    from bot.inbox import Processor

    config, _ledger = world
    sent = sent_to(tmp_path)
    paid = answer(sent["ap@paid.test"], "ap@paid.test", "We paid this yesterday by wire transfer.")
    disputed = answer(sent["ap@damaged.test"], "ap@damaged.test", "The goods arrived damaged; we will not pay.")
    settings = load_settings(config)
    store = Store.open(settings.store_url)
    processor = Processor(store, settings, lambda: datetime(2026, 11, 24, 13, tzinfo=UTC))
    first = [processor.handle(paid), processor.handle(disputed)]
    assert first == [settings.inbox.handled_folder, settings.inbox.human_folder]
    again = [processor.handle(paid), processor.handle(disputed)]
    assert again == first and processor.tally.repeated == 2
    assert len(store.replies_for()) == 2 and len(store.open_escalations()) == 1
