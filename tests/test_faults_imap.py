"""The daemon's inbox watcher against the real Dovecot: restarted during IDLE, credentials rejected, the watched
folder renamed away and recreated (UIDVALIDITY reset). The Watcher alone is tested in test_mailboxes.py; here
it is the daemon: the error shows in `dunbot status`, nothing is missed, nothing is handled twice."""

from __future__ import annotations

import asyncio
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from mailstack import MailStack
from test_daemon import daemon_config, ledger_rows, pass_done, run, running, store_of, until

from bot.cli import main

pytestmark = pytest.mark.mail
TO = "accounts@dunbot.test"


def imap_config(stack: MailStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, folder: str = "INBOX",
                password: str | None = None, count: int = 3) -> Path:
    monkeypatch.setenv("DUNBOT_TEST_IMAP_PASSWORD", password or stack.users["dunbot"])
    inbox = (f'[inbox.imap]\nhost = "{stack.host}"\nport = {stack.imap_port}\nsecurity = "none"\n'
             'username = "dunbot"\npassword_env = "DUNBOT_TEST_IMAP_PASSWORD"\nidle_seconds = 30\ntimeout = 5\n')
    config = daemon_config(tmp_path, ledger_rows(count), inbox=inbox)
    if folder != "INBOX":
        config.write_text(config.read_text().replace('folder = "INBOX"', f'folder = "{folder}"', 1))
    return config


def reply(config: Path, customer: str, text: str, n: int) -> bytes:
    """A reply to the reminder the daemon sent this customer (through the Maildir transport)."""
    original = next(r for r in store_of(config).reminders_for(customer))
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = original["contact"]
    msg["To"] = TO
    msg["Subject"] = "Re: " + original["subject"]
    msg["Date"] = "Tue, 24 Nov 2026 12:00:00 +0100"
    msg["Message-ID"] = f"<daemon-reply{n}@customers.test>"
    msg["In-Reply-To"] = original["message_id"]
    msg.set_content(text)
    return msg.as_bytes()


def folders(stack: MailStack, *names: str) -> dict[str, list[str]]:
    """Message-IDs per folder; a folder not created yet is empty."""
    with stack.imap("dunbot") as client:
        existing = {name for _flags, _sep, name in client.list_folders()}
    return {name: [str(m["Message-ID"]) for m in stack.messages("dunbot", name)] if name in existing else []
            for name in names}


def test_dovecot_restart_during_idle_shows_in_status_and_loses_nothing(
        clean_mailstack: MailStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = clean_mailstack
    config = imap_config(stack, tmp_path, monkeypatch)

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            store = store_of(config)
            await asyncio.to_thread(stack.deliver, reply(config, "C0", "We paid it yesterday by wire.", 1), TO)
            await until(lambda: len(store.replies_for()) == 1, 15, "the first reply")
            try:
                await asyncio.to_thread(stack.stop_dovecot)
                await until(lambda: "inbox" in daemon.problems, 15, "the outage to show")
                await asyncio.sleep(0.6)  # a heartbeat writes it down
                result = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--config", str(config)])
                assert result.exit_code == 1 and "inbox:" in result.output and "127.0.0.1" in result.output
                await asyncio.to_thread(stack.deliver, reply(config, "C1", "Could you send the invoice again?", 2),
                                        TO)  # Postfix defers it while Dovecot is down
            finally:
                await asyncio.to_thread(stack.start_dovecot)
            await asyncio.to_thread(stack.flush)
            await until(lambda: len(store.replies_for()) == 2, 30, "the reply delivered during the outage")
            await until(lambda: "inbox" not in daemon.problems, 10, "the problem to clear")

    run(scenario(), timeout=90)
    store = store_of(config)
    assert sorted(r["message_id"] for r in store.replies_for()) == ["<daemon-reply1@customers.test>",
                                                                   "<daemon-reply2@customers.test>"]
    seen = folders(stack, "INBOX", "Dunbot/Handled", "Dunbot/Needs human")
    assert seen["INBOX"] == [] and sorted(seen["Dunbot/Handled"] + seen["Dunbot/Needs human"]) == [
        "<daemon-reply1@customers.test>", "<daemon-reply2@customers.test>"]


def test_rejected_credentials_show_in_status_and_healthz(mailstack: MailStack, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = imap_config(mailstack, tmp_path, monkeypatch, password="Wr0ng-Pa55-for-dunbot")

    async def scenario() -> None:
        async with running(config) as daemon:
            await until(lambda: "refused the login" in daemon.problems.get("inbox", ""), 15, "the login error")
            ok, doc = daemon.healthz()
            assert not ok and "refused the login" in doc["problems"]["inbox"]
            await asyncio.sleep(0.6)
            result = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--config", str(config)])
            assert result.exit_code == 1 and "refused the login" in result.output
            assert "Wr0ng-Pa55" not in result.output
            assert daemon.state == "running"

    run(scenario())


def test_watched_folder_renamed_away_then_recreated_misses_and_repeats_nothing(
        clean_mailstack: MailStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = clean_mailstack
    config = imap_config(stack, tmp_path, monkeypatch, folder="Replies")
    with stack.imap("dunbot") as client:
        client.create_folder("Replies")
    stranger = EmailMessage()
    stranger["From"], stranger["Subject"], stranger["Message-ID"] = "x@else.test", "hello", "<stranger@else.test>"
    stranger.set_content("not about an invoice")

    async def scenario() -> None:
        async with running(config) as daemon:
            await pass_done(daemon)
            store = store_of(config)
            first = reply(config, "C0", "We will pay on Friday.", 1)
            with stack.imap("dunbot") as client:
                client.append("Replies", first)
                client.append("Replies", stranger.as_bytes())
            await until(lambda: len(store.replies_for()) == 1, 15, "the first reply")
            filed = ("Dunbot/Handled", "Dunbot/Needs human")
            await until(lambda: sum(map(len, folders(stack, *filed).values())) == 1, 15, "the first reply's move")
            with stack.imap("dunbot") as client:
                client.rename_folder("Replies", "Replies-old")
            # Dovecot tells an IDLE client at once, as a rule; on a loaded machine it was seen to take until the
            # watcher's next IDLE (idle_seconds = 30), which finds the folder gone.
            await until(lambda: "'Replies' does not exist" in daemon.problems.get("inbox", ""), 40, "the error")
            with stack.imap("dunbot") as client:  # recreated: a new UIDVALIDITY, old mail copied back, one new
                client.create_folder("Replies")
                for raw in (first, stranger.as_bytes(), reply(config, "C2", "The goods arrived broken.", 3)):
                    client.append("Replies", raw)
            await until(lambda: len(store.replies_for()) == 2, 20, "the new reply")
            await until(lambda: "inbox" not in daemon.problems, 10, "the problem to clear")
            await asyncio.sleep(1.0)  # more wake-ups: still nothing twice

    run(scenario(), timeout=120)
    assert sorted(r["message_id"] for r in store_of(config).replies_for()) == [
        "<daemon-reply1@customers.test>", "<daemon-reply3@customers.test>"]
    seen = folders(stack, "Replies", "Replies-old")
    assert sorted(seen["Replies"]) == ["<daemon-reply1@customers.test>", "<stranger@else.test>"]
    assert seen["Replies-old"] == ["<stranger@else.test>"]
