"""The case file: a ZIP an agency can trust, from a store made by the real send, inbox and cases commands."""

from __future__ import annotations

import hashlib
import io
import json
import mailbox
import zipfile
from datetime import datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample import row, write_config, write_ledger

from bot.casebook import CaseError
from bot.casefile import export
from bot.cli import main
from bot.config import load_settings
from bot.store import Store

T0 = "2026-11-24T11:00:00+01:00"
HOSTILE_NAME = "Acme <script>alert('name')</script> & Co"
HOSTILE_WORDS = "Half the goods arrived damaged <img src=x onerror=alert(1)>. We will not pay until you replace them."


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def reply_to(original: bytes, text: str) -> bytes:
    sent = EmailMessage(policy=policy.SMTP)
    parsed = __import__("email").message_from_bytes(original, policy=policy.default)
    sent["From"] = "ap@acme.test"
    sent["To"] = "accounts@northwind.example"
    sent["Subject"] = f"Re: {parsed['Subject']}"
    sent["Date"] = "Tue, 24 Nov 2026 13:05:00 +0100"
    sent["Message-ID"] = "<answer.1@acme.test>"
    sent["In-Reply-To"] = parsed["Message-ID"]
    sent.set_content(f"{text}\n\n> quoted reminder\n")
    return sent.as_bytes()


@pytest.fixture
def store_and_config(tmp_path: Path) -> tuple[Store, Path]:
    ledger = write_ledger(tmp_path / "ledger.csv", [
        row("INV-1", "C1", "ap@acme.test", days_overdue=7, name=HOSTILE_NAME),
        row("INV-2", "C1", "ap@acme.test", days_overdue=2, balance="400.00", name=HOSTILE_NAME),
        row("INV-3", "C2", "ap@other.test", days_overdue=7),
    ])
    config = write_config(tmp_path, ledger)
    assert run("send", "--config", str(config), "--now", T0)[0] == 0
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    mailbox.Maildir(tmp_path / "var" / "inbox", create=True).add(
        reply_to(store.reminders_for("C1")[0]["raw"], HOSTILE_WORDS))
    assert run("inbox", "poll", "--config", str(config), "--now", "2026-11-24T14:00:00+01:00")[0] == 0
    for args in (("promise", "C1", "--date", "2026-12-04", "--amount", "400.00"),
                 ("note", "C1", "Called <b>the</b> CFO")):
        code, out = run("cases", *args, "--config", str(config), "--now", "2026-11-25T10:00:00+01:00",
                        "--as-user", "marta")
        assert code == 0, out
    yield store, config
    store.close()


def test_case_file_holds_the_original_messages_and_a_verifiable_manifest(store_and_config: tuple[Store, Path]
                                                                         ) -> None:
    store, config = store_and_config
    settings = load_settings(config)
    now = datetime.fromisoformat("2026-11-26T09:00:00+01:00")
    data = export(store, settings, "C1", now=now)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert archive.namelist() == ["summary.html", "reminders/001-second.eml", "replies/001.eml", "manifest.json"]

    assert archive.read("reminders/001-second.eml") == store.reminders_for("C1")[0]["raw"]
    assert archive.read("replies/001.eml") == store.replies_for("C1")[0]["raw"]

    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["customer_id"] == "C1" and manifest["algorithm"] == "sha256"
    assert [f["path"] for f in manifest["files"]] == archive.namelist()[:-1]
    for entry in manifest["files"]:
        content = archive.read(entry["path"])
        assert entry["sha256"] == hashlib.sha256(content).hexdigest() and entry["bytes"] == len(content)

    html = archive.read("summary.html").decode()
    assert "<script>" not in html and "<img" not in html and "<b>the</b>" not in html
    assert "Acme &lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt; &amp; Co" in html
    assert "Half the goods arrived damaged &lt;img src=x onerror=alert(1)&gt;" in html
    assert "Called &lt;b&gt;the&lt;/b&gt; CFO" in html
    assert "> quoted reminder" not in html  # the customer's own words, not the quoted reminder
    for expected in ("Northwind Trading S.L.", "ES91 2100 0418 4502 0005 1332",  # creditor and bank
                     "ap@acme.test", "INV-1", "INV-2", "1,650.00 EUR",            # debtor and what is owed
                     "second", "sent", "dispute",                                  # reminder, delivery, answer
                     "promised to pay on 2026-12-04", "pending", "marta"):        # promise and who acted
        assert expected in html, expected
    assert export(store, settings, "C1", now=now) == data  # reproducible: the same file, the same hashes


def test_unknown_customer_and_the_command(store_and_config: tuple[Store, Path], tmp_path: Path) -> None:
    store, config = store_and_config
    with pytest.raises(CaseError):
        export(store, load_settings(config), "NOPE")
    code, out = run("cases", "export", "NOPE", "--config", str(config))
    assert code == 1 and "no customer 'NOPE'" in out
    target = tmp_path / "out" / "c2.zip"
    target.parent.mkdir()
    code, out = run("cases", "export", "C2", "--config", str(config), "--output", str(target))
    assert code == 0, out
    assert zipfile.ZipFile(target).namelist() == ["summary.html", "reminders/001-second.eml", "manifest.json"]
