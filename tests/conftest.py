"""Shared fixtures. Mail servers here are real: Postfix + Dovecot (mailstack) and a scripted aiosmtpd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mailstack import MailStack, make_untrusted_certificate
from scripted_smtp import Script, ScriptedSMTP
from stores import BACKENDS, store_url

from bot.store import Store

# ---- the store on every backend under test -----------------------------------------------------


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """SQLite, and PostgreSQL too when DUNBOT_TEST_PG_URL is set: a store test runs once on each."""
    with store_url(request.param, tmp_path) as url:
        opened = Store.open(url)
        yield opened
        opened.close()


# ---- real mail stack ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mailstack() -> Iterator[MailStack]:
    """One Postfix + Dovecot for the whole session (~0.5 s to start); fails, never skips, if not installed."""
    with MailStack() as stack:
        yield stack


@pytest.fixture
def clean_mailstack(mailstack: MailStack) -> MailStack:
    """The session's stack with the `inbox` and `dunbot` mailboxes emptied, after earlier mail has settled."""
    mailstack.wait_queue_empty()
    for user in mailstack.users:
        mailstack.clear(user)
    return mailstack


# ---- scripted SMTP server ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def untrusted_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tls = make_untrusted_certificate(tmp_path_factory.mktemp("untrusted-tls"))
    return tls.cert, tls.key


@pytest.fixture
def scripted_smtp(untrusted_cert: tuple[Path, Path]) -> Iterator[Callable[..., ScriptedSMTP]]:
    """Factory: `scripted_smtp(greetings=["421 4.3.2 busy"])` starts a server running that Script."""
    servers: list[ScriptedSMTP] = []

    def start(script: Script | None = None, **behaviour: object) -> ScriptedSMTP:
        server = ScriptedSMTP(script or Script(**behaviour), untrusted_cert)  # type: ignore[arg-type]
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()
