"""Hostile input end to end through the daemon: replies with header injection attempts, a 50 MB attachment,
deeply nested MIME and broken charsets, delivered to the real Dovecot; ledger fields with HTML and template
syntax. The daemon keeps running, files every message once, and renders ledger values as text."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest
from mailstack import MailStack
from sample import row
from test_daemon import daemon_config, maildir_sent, pass_done, run, running, store_of, until
from test_faults_imap import folders

pytestmark = pytest.mark.mail
HOSTILE_NAME = "<script>alert(1)</script> {{ 7*7 }} {% for x in range(9) %}X{% endfor %} ${jndi:x}"


def hostile_replies(original: dict[str, object]) -> dict[str, bytes]:
    mid, contact = str(original["message_id"]), str(original["contact"])
    head = (f"From: {contact}\r\nTo: accounts@dunbot.test\r\nDate: Tue, 24 Nov 2026 12:00:00 +0100\r\n"
            f"In-Reply-To: {mid}\r\nReferences: {mid}\r\nMIME-Version: 1.0\r\n")
    injection = (head + "Message-ID: <inject@customers.test>\r\n"
                 "Subject: =?utf-8?q?Re=3A_pago=0D=0ABcc=3A_victim=40evil.test=0D=0A=0D=0Abody?=\r\n"
                 "Reply-To: =?utf-8?q?x=40y.test=0D=0ATo=3A_victim=40evil.test?=\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n\r\nWe paid yesterday.\r\nBcc: victim@evil.test\r\n")
    big_payload = b"A" * 76 + b"\r\n"
    attachment = (head + "Message-ID: <big@customers.test>\r\nSubject: Re: remittance\r\n"
                  'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
                  "Paid, see the attachment.\r\n--b\r\nContent-Type: application/pdf\r\n"
                  "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    attachment += big_payload * (50_000_000 // len(big_payload)) + b"--b--\r\n"
    depth = 300
    nested = "".join(f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(depth))
    nested += "Content-Type: text/plain\r\n\r\nWe will pay on Friday.\r\n"
    nested += "".join(f"--n{i}--\r\n" for i in reversed(range(depth)))
    deep = head + "Message-ID: <deep@customers.test>\r\nSubject: Re: nested\r\n" + nested
    charsets = (head.encode() + b"Message-ID: <charset@customers.test>\r\nSubject: Re: \xff\xfe pago \xe9\r\n"
                b'Content-Type: text/plain; charset="x-no-such-charset-\xff"\r\nContent-Transfer-Encoding: 8bit\r\n'
                b"\r\nPagamos la factura ayer, gracias. \xc3\x28 \xa0\xe9\xff\r\n")
    return {"<inject@customers.test>": injection.encode(), "<big@customers.test>": attachment,
            "<deep@customers.test>": deep.encode(), "<charset@customers.test>": charsets}


def test_hostile_replies_and_ledger_fields_through_the_daemon(clean_mailstack: MailStack, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stack = clean_mailstack
    monkeypatch.setenv("DUNBOT_TEST_IMAP_PASSWORD", stack.users["dunbot"])
    inbox = (f'[inbox.imap]\nhost = "{stack.host}"\nport = {stack.imap_port}\nsecurity = "none"\n'
             'username = "dunbot"\npassword_env = "DUNBOT_TEST_IMAP_PASSWORD"\nidle_seconds = 30\ntimeout = 30\n')
    hostile = row("INV-1", "C1", "ap1@customers.test", name=HOSTILE_NAME).replace('"Ana Ruiz"', f'"{HOSTILE_NAME}"')
    config = daemon_config(tmp_path, [hostile], inbox=inbox)  # customer and contact names both hostile
    expected: dict[str, bytes] = {}

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            store = store_of(config)
            expected.update(hostile_replies(store.reminders_for("C1")[0]))
            with stack.imap("dunbot", timeout=60) as client:
                for raw in expected.values():
                    client.append("INBOX", raw)
            handled = ("Dunbot/Handled", "Dunbot/Needs human")
            await until(lambda: sum(map(len, folders(stack, *handled).values())) == len(expected), 60,
                        "every hostile reply to be filed")
            assert daemon.state == "running" and "inbox" not in daemon.problems

    run(scenario(), timeout=120)
    filed = folders(stack, "INBOX", "Dunbot/Handled", "Dunbot/Needs human")
    assert filed["INBOX"] == []
    assert sorted(filed["Dunbot/Handled"] + filed["Dunbot/Needs human"]) == sorted(expected)
    assert "<big@customers.test>" in filed["Dunbot/Needs human"]  # over max_bytes: headers only, for a person
    recorded = {r["message_id"]: r for r in store_of(config).replies_for()}
    assert len(recorded) == len(store_of(config).replies_for())  # each at most once
    injected = recorded["<inject@customers.test>"]
    assert "\n" not in injected["subject"] and "\r" not in injected["subject"]
    assert all(m.get("To") != "victim@evil.test" for m in stack.messages("inbox"))

    (sent,) = maildir_sent(tmp_path)
    message = email.message_from_bytes(sent, policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "{{ 7*7 }}" in text and "{% for x in range(9) %}X{% endfor %}" in text  # printed, never run
    assert "<script>" not in html and "&lt;script&gt;" in html
