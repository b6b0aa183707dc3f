"""Transports against real servers: Postfix + Dovecot for the happy paths and what Postfix refuses,
a scripted aiosmtpd for the failures a healthy server will not produce on demand."""

from __future__ import annotations

import asyncio
import logging
import mailbox
import time
from collections.abc import Callable, Coroutine, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, make_msgid
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mailstack import CUSTOMERS, DISCARD, REJECT, MailStack, free_port
from scripted_smtp import ScriptedSMTP

from bot.config import Secret, SmtpSettings
from bot.errors import ConfigurationFailure, DeliveryError, PermanentFailure, StoreError, TemporaryFailure
from bot.transports import (
    Accepted,
    Envelope,
    MaildirTransport,
    SmtpTransport,
    Transport,
)

T = TypeVar("T")
SENDER = "billing@dunbot.test"
Scripted = Callable[..., ScriptedSMTP]


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def envelope(
    to: Sequence[str] = (f"ana@{CUSTOMERS}",), cc: Sequence[str] = (), subject: str = "Invoice 42"
) -> Envelope:
    msg = EmailMessage()
    msg["From"] = f"Acme Billing <{SENDER}>"
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="dunbot.test")
    msg.set_content("Invoice 42 is 10 days overdue.\n")
    msg.add_alternative("<p>Invoice 42 is 10 days overdue.</p>\n", subtype="html")
    return Envelope(sender=SENDER, recipients=(*to, *cc), message=msg.as_bytes(policy=SMTP),
                    message_id=msg["Message-ID"])


def smtp(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "security": "none", "username": "", "password": None,
        "oauth_token": None, "verify": True, "ca_file": None, "timeout": 5.0, "connections": 1,
        "rate_per_minute": 0, "max_attempts": 3, "backoff_initial": 1.0, "backoff_max": 2.0,
    }
    values.update(overrides)
    return SmtpSettings(**values)


async def send_all(settings: SmtpSettings, envelopes: Sequence[Envelope]) -> list[Accepted | DeliveryError]:
    """Send concurrently on one transport; failures come back as values so a test can check each."""
    transport = SmtpTransport(settings)
    await transport.open()
    try:
        results = await asyncio.gather(*(transport.send(e) for e in envelopes), return_exceptions=True)
    finally:
        await transport.close()
    for result in results:
        if not isinstance(result, Accepted | DeliveryError):
            raise result
    return results  # type: ignore[return-value]


def send_one(settings: SmtpSettings, env: Envelope | None = None) -> Accepted:
    result = run(send_all(settings, [env or envelope()]))[0]
    if isinstance(result, DeliveryError):
        raise result
    return result


def connects(stack: MailStack, since: int, expect: int) -> int:
    """smtpd sessions opened since a log offset, counted once Postfix has logged all `expect` endings."""
    stack.wait_for_log(r"smtpd\[\d+\]: disconnect from", count=expect, since=since)
    return len(stack.wait_for_log(r"smtpd\[\d+\]: connect from", since=since))


# ---- Postfix + Dovecot ---------------------------------------------------------------------


@pytest.mark.mail
def test_plain_port_delivers_to_every_envelope_recipient(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    env = envelope(to=[f"ana@{CUSTOMERS}"], cc=[f"ben@{CUSTOMERS}"], subject="Factura 42 — vencida")
    accepted = send_one(smtp(stack.smtp_port), env)
    assert accepted.refused == {}
    assert accepted.server_reply.startswith("250 2.0.0 Ok: queued as ")

    copies = stack.wait_for(2)
    assert sorted(m["Delivered-To"] for m in copies) == [f"ana@{CUSTOMERS}", f"ben@{CUSTOMERS}"]
    for message in copies:
        assert message["Message-ID"] == env.message_id
        assert message["To"] == f"ana@{CUSTOMERS}"
        assert message["Cc"] == f"ben@{CUSTOMERS}"
        assert message["Subject"] == "Factura 42 — vencida"
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


@pytest.mark.mail
def test_starttls_with_the_test_ca(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    env = envelope()
    send_one(smtp(stack.submission_port, security="starttls", ca_file=stack.ca_file), env)
    [message] = stack.wait_for(1)
    assert message["Message-ID"] == env.message_id
    assert any("with ESMTPS" in hop for hop in message.get_all("Received", []))  # Postfix's mark of TLS


@pytest.mark.mail
def test_certificates_are_verified_by_default(mailstack: MailStack) -> None:
    with pytest.raises(ConfigurationFailure, match=r"failed verification.*ca_file"):
        send_one(smtp(mailstack.submission_port, security="starttls"))
    with pytest.raises(ConfigurationFailure, match="failed verification"):
        send_one(smtp(mailstack.smtps_port, security="tls"))


@pytest.mark.mail
def test_starttls_never_falls_back_to_clear_text(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    since = stack.postfix_log_size()
    with pytest.raises(ConfigurationFailure, match="does not offer STARTTLS"):
        send_one(smtp(stack.smtp_port, security="starttls", ca_file=stack.ca_file))
    stack.wait_for_log(r"smtpd\[\d+\]: disconnect from", since=since)
    assert "MAIL" not in stack.postfix_log(since) and "mail=" not in stack.postfix_log(since)


@pytest.mark.mail
def test_implicit_tls_with_login(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    since = stack.postfix_log_size()
    settings = smtp(stack.smtps_port, security="tls", ca_file=stack.ca_file,
                    username=stack.smtp_user, password=Secret(stack.smtp_password))
    send_one(settings)
    stack.wait_for(1)
    stack.wait_for_log(r"sasl_method=PLAIN, sasl_username=dunbot", since=since)


@pytest.mark.mail
def test_implicit_tls_port_demands_a_login(mailstack: MailStack) -> None:
    with pytest.raises(ConfigurationFailure, match=r"530 5\.7\.0"):
        send_one(smtp(mailstack.smtps_port, security="tls", ca_file=mailstack.ca_file))


@pytest.mark.mail
def test_wrong_password_never_shows_the_password(mailstack: MailStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Wr0ng-Pa55word-9f3k"
    settings = smtp(mailstack.smtps_port, security="tls", ca_file=mailstack.ca_file,
                    username=mailstack.smtp_user, password=Secret(secret))
    with pytest.raises(ConfigurationFailure, match="535") as caught:
        send_one(settings)
    assert "password_env" in str(caught.value)
    assert all(secret not in repr(e) for e in (caught.value, caught.value.__cause__))
    assert secret not in caplog.text


@pytest.mark.mail
def test_twenty_messages_over_two_reused_connections(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    since = stack.postfix_log_size()
    settings = smtp(stack.submission_port, security="starttls", ca_file=stack.ca_file, connections=2)
    envelopes = [envelope(to=[f"n{i}@{DISCARD}"]) for i in range(20)]
    results = run(send_all(settings, envelopes))
    assert all(isinstance(r, Accepted) and not r.refused for r in results)
    assert connects(stack, since, expect=2) == 2
    stack.wait_for_log(r"to=<n\d+@discard\.test>.*status=sent", count=20, since=since)
    assert stack.fetch_all() == []  # discarded mail reaches no mailbox


@pytest.mark.mail
def test_some_recipients_refused(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    env = envelope(to=[f"ana@{CUSTOMERS}", f"gone@{REJECT}"])
    accepted = send_one(smtp(stack.smtp_port), env)
    assert list(accepted.refused) == [f"gone@{REJECT}"]
    assert accepted.refused[f"gone@{REJECT}"].startswith("550 5.1.1")
    [message] = stack.wait_for(1)
    assert message["Delivered-To"] == f"ana@{CUSTOMERS}"


@pytest.mark.mail
def test_all_recipients_refused_is_permanent_and_the_connection_survives(clean_mailstack: MailStack) -> None:
    stack = clean_mailstack
    since = stack.postfix_log_size()
    refused = envelope(to=[f"a@{REJECT}", f"b@{REJECT}"])
    results = run(send_all(smtp(stack.smtp_port), [refused, envelope()]))
    assert isinstance(results[0], PermanentFailure)
    assert results[0].recipients == (f"a@{REJECT}", f"b@{REJECT}")
    assert isinstance(results[1], Accepted)
    stack.wait_for(1)
    assert connects(stack, since, expect=1) == 1


# ---- scripted server -----------------------------------------------------------------------


def test_421_greeting_is_temporary(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(greetings=["421 4.3.2 Too busy, try later"])
    with pytest.raises(TemporaryFailure, match="421"):
        send_one(smtp(server.port))
    send_one(smtp(server.port))
    assert server.connections == 2
    assert len(server.messages) == 1


def test_connection_refused_is_temporary() -> None:
    with pytest.raises(TemporaryFailure, match="cannot reach"):
        send_one(smtp(free_port()))


def test_451_at_data_is_temporary_and_the_connection_is_kept(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(data_replies=["451 4.3.0 Mail server temporarily rejected message"])
    first, second = run(send_all(smtp(server.port), [envelope(), envelope()]))
    assert isinstance(first, TemporaryFailure)
    assert "451 4.3.0" in str(first)
    assert isinstance(second, Accepted)
    assert server.connections == 1


def test_5xx_at_data_is_permanent_for_the_whole_message(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(data_replies=["554 5.6.0 Message content rejected"])
    with pytest.raises(PermanentFailure, match=r"554 5\.6\.0") as caught:
        send_one(smtp(server.port))
    assert caught.value.recipients == ()


def test_drop_mid_data_is_temporary_and_the_next_send_reconnects(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(drop_in_data=1)
    first, second = run(send_all(smtp(server.port), [envelope(), envelope()]))
    assert isinstance(first, TemporaryFailure)
    assert isinstance(second, Accepted)
    assert server.connections == 2
    assert len(server.messages) == 1


async def _send_with_go(settings: SmtpSettings, server: ScriptedSMTP, go: Callable[[asyncio.Future[bool]], None],
                        ) -> tuple[list[str], Accepted | BaseException | None, Accepted | None]:
    """One message sent with a go that the transaction waits for, given once its DATA is through;
    then a second message, without one, on the same transport. Returns what the server had seen before the go."""
    transport = SmtpTransport(settings)
    await transport.open()
    try:
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        sending = asyncio.ensure_future(transport.send(envelope(), ready=ready))
        while "DATA" not in server.commands:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        before = [*server.commands, f"{len(server.messages)} accepted"]
        go(ready)
        first: Accepted | BaseException | None
        try:
            first = await sending
        except Exception as exc:
            first = exc
        return before, first, await transport.send(envelope())
    finally:
        await transport.close()


def test_the_transaction_waits_for_its_go_before_the_end_of_data(scripted_smtp: Scripted) -> None:
    """The outbox's claim is committed while the transaction goes out; the "." that ends DATA, after which
    the server may accept the message, waits for it."""
    server = scripted_smtp()
    before, first, second = run(_send_with_go(smtp(server.port), server, lambda ready: ready.set_result(True)))
    assert before == ["MAIL", "RCPT", "DATA", "0 accepted"]
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert len(server.messages) == 2 and server.connections == 1


def test_no_go_abandons_the_transaction_with_its_connection(scripted_smtp: Scripted) -> None:
    """Mid-DATA, only hanging up ends a transaction without delivering it; the next message reconnects."""
    server = scripted_smtp()
    _, first, second = run(_send_with_go(smtp(server.port), server, lambda ready: ready.set_result(False)))
    assert first is None and isinstance(second, Accepted)
    assert server.commands == ["MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"]
    assert len(server.messages) == 1 and server.connections == 2


def test_a_failed_go_abandons_the_transaction_and_is_raised(scripted_smtp: Scripted) -> None:
    server = scripted_smtp()
    failure = StoreError("the store could not record the change: disk I/O error")
    _, first, second = run(_send_with_go(smtp(server.port), server, lambda ready: ready.set_exception(failure)))
    assert first is failure and isinstance(second, Accepted)
    assert server.commands == ["MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"] and len(server.messages) == 1
    assert server.connections == 2


def test_maildir_writes_nothing_without_its_go(tmp_path: Path) -> None:
    async def scenario() -> tuple[Accepted | None, Accepted | None]:
        transport = MaildirTransport(tmp_path / "sent")
        await transport.open()
        no, yes = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
        no.set_result(False)
        yes.set_result(True)
        return await transport.send(envelope(), ready=no), await transport.send(envelope(), ready=yes)

    refused, accepted = run(scenario())
    assert refused is None and isinstance(accepted, Accepted)
    assert len(list((tmp_path / "sent" / "new").iterdir())) == 1


def test_connection_closed_while_idle_is_reopened_transparently(
    scripted_smtp: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.transports")
    server = scripted_smtp()

    async def scenario() -> None:
        transport = SmtpTransport(smtp(server.port))
        await transport.open()
        try:
            await transport.send(envelope())
            server.hang_up()  # blocks this loop: the client sees the hang-up only when it next talks
            await transport.send(envelope())
        finally:
            await transport.close()

    run(scenario())
    assert server.connections == 2
    assert len(server.messages) == 2
    assert "closed by the server; reconnecting" in caplog.text  # found dead on use, not before


def test_concurrent_sends_use_separate_connections(scripted_smtp: Scripted) -> None:
    server = scripted_smtp()
    results = run(send_all(smtp(server.port, connections=3), [envelope() for _ in range(3)]))
    assert all(isinstance(r, Accepted) for r in results)
    assert server.connections == 3


def test_a_deferred_recipient_among_accepted_ones_is_not_reported_as_refused(
    scripted_smtp: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    server = scripted_smtp(refuse={f"busy@{CUSTOMERS}": "450 4.2.1 Mailbox busy, try later"})
    accepted = send_one(smtp(server.port), envelope(to=[f"ana@{CUSTOMERS}", f"busy@{CUSTOMERS}"]))
    assert accepted.refused == {}  # a 4xx is no reason to call the address dead
    assert f"busy@{CUSTOMERS} (450 4.2.1" in caplog.text
    assert server.messages[0].recipients == (f"ana@{CUSTOMERS}",)


def test_rejected_login_is_a_configuration_failure_without_the_password(
    scripted_smtp: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-that-must-not-leak"
    server = scripted_smtp(credentials=("dunbot", "the-right-one"))
    with pytest.raises(ConfigurationFailure, match="535") as caught:
        send_one(smtp(server.port, username="dunbot", password=Secret(secret)))
    assert "'dunbot'" in str(caught.value)
    assert all(secret not in repr(e) for e in (caught.value, caught.value.__cause__))
    assert secret not in caplog.text
    assert server.messages == []


def test_login_and_xoauth2(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(credentials=("dunbot", "pw"), oauth_token="ya29.token")
    send_one(smtp(server.port, username="dunbot", password=Secret("pw")))
    send_one(smtp(server.port, username="dunbot", oauth_token=Secret("ya29.token")))
    assert [m.login for m in server.messages] == ["dunbot", "dunbot"]
    with pytest.raises(ConfigurationFailure, match="535"):
        send_one(smtp(server.port, username="dunbot", oauth_token=Secret("expired")))


def test_login_where_the_server_offers_none(scripted_smtp: Scripted) -> None:
    server = scripted_smtp()  # no TLS, so no AUTH advertised
    with pytest.raises(ConfigurationFailure, match="offers no password login"):
        send_one(smtp(server.port, username="dunbot", password=Secret("pw")))


def test_untrusted_certificate_is_a_configuration_failure(scripted_smtp: Scripted) -> None:
    server = scripted_smtp(starttls=True)
    with pytest.raises(ConfigurationFailure, match="failed verification"):
        send_one(smtp(server.port, security="starttls"))
    assert server.messages == []


def test_clear_text_is_only_for_loopback() -> None:
    with pytest.raises(ConfigurationFailure, match="only for test servers"):
        run(SmtpTransport(smtp(25, host="smtp.example.com")).open())


@pytest.mark.parametrize(
    ("reply", "kind", "says"),
    [
        ("550 5.4.5 Daily user sending limit exceeded.", TemporaryFailure, "quota"),
        ("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", TemporaryFailure, "quota"),
        ("550 5.7.30 Basic authentication is not supported for Client Submission.", ConfigurationFailure, "OAuth"),
        ("454 4.7.0 Throttling failure: Maximum sending rate exceeded.", TemporaryFailure, "454"),
    ],
)
def test_provider_replies(scripted_smtp: Scripted, reply: str, kind: type[DeliveryError], says: str) -> None:
    server = scripted_smtp(data_replies=[reply])
    with pytest.raises(kind, match=says):
        send_one(smtp(server.port))


def test_rate_limit_spaces_messages_across_the_pool(scripted_smtp: Scripted) -> None:
    server = scripted_smtp()
    started = time.monotonic()
    results = run(send_all(smtp(server.port, connections=2, rate_per_minute=600), [envelope() for _ in range(12)]))
    elapsed = time.monotonic() - started
    assert all(isinstance(r, Accepted) for r in results)
    assert elapsed >= 0.9  # 11 gaps of 0.1 s


# ---- Maildir -------------------------------------------------------------------------------


def test_maildir_is_idempotent_by_message_id_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "sent"
    env, other = envelope(cc=[f"ben@{CUSTOMERS}"]), envelope()

    async def session(transport: Transport, *envelopes: Envelope) -> list[Accepted]:
        await transport.open()
        try:
            return [await transport.send(e) for e in envelopes]
        finally:
            await transport.close()

    first = run(session(MaildirTransport(path), env, env))
    assert "already stored" in first[1].server_reply
    run(session(MaildirTransport(path), env, other))  # a restart: the new instance must find env on disk

    stored = {m["Message-ID"]: m for m in mailbox.Maildir(path, create=False)}
    assert sorted(stored) == sorted([env.message_id, other.message_id])
    trace = stored[env.message_id]
    assert trace["Return-Path"] == f"<{SENDER}>"
    assert [a for _, a in getaddresses([trace["X-Envelope-To"]])] == [f"ana@{CUSTOMERS}", f"ben@{CUSTOMERS}"]


def test_a_message_with_lone_dots_arrives_whole_when_the_end_waits_for_a_go(scripted_smtp: Scripted) -> None:
    """Lines that are, or start with, "." are doubled on the wire (RFC 5321 4.5.2): none can end DATA early."""
    server = scripted_smtp()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Message-ID"] = SENDER, f"ana@{CUSTOMERS}", make_msgid(domain="dunbot.test")
    msg.set_content("Totals:\n.\n..two\n.three\n", cte="8bit")
    raw = msg.as_bytes(policy=SMTP)
    dotted = Envelope(SENDER, (f"ana@{CUSTOMERS}",), raw, msg["Message-ID"])

    async def scenario() -> Accepted | None:
        transport = SmtpTransport(smtp(server.port))
        await transport.open()
        try:
            ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            ready.set_result(True)
            return await transport.send(dotted, ready=ready)
        finally:
            await transport.close()

    assert isinstance(run(scenario()), Accepted)
    (received,) = server.messages
    assert b"\r\n.\r\n..two\r\n.three\r\n" in raw and received.data == raw
