"""The triage page in a real browser: uvicorn on a loopback port, Debian's Chromium driven by Playwright.

What only a browser shows: forms that really submit (hidden CSRF fields, <details>, date inputs),
redirects and flash messages, the download of a case file, and how the pages look (screenshots
in bench/out/). The hand-written reply goes through the real Postfix into the real Dovecot.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from mailstack import MailStack
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_web import NOW, PASSWORDS, SECRET, build_world

from bot.casebook import CaseBook
from bot.config import load_settings
from bot.schema import feedback
from bot.store import Store
from bot.web import create_app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "bench" / "out"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def world(folder: Path, **kw: Any) -> Path:
    """build_world in a thread of its own: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(build_world, folder, **kw).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The real app under uvicorn in a thread, on 127.0.0.1 only."""

    def __init__(self, config: Path) -> None:
        self.settings = load_settings(config)
        self.store = Store.open(self.settings.store_url)
        self.book = CaseBook(self.store, self.settings)
        app = create_app(self.settings, self.store, clock=lambda: NOW, secret=SECRET, login_delay=0)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: run `sudo bash scripts/test-deps.sh`"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(world(tmp_path)) as running:
        yield running


def log_in(page: Page, server: Server, user: str) -> None:
    page.goto(f"{server.url}/cases")
    expect(page).to_have_url(f"{server.url}/login?next=%2Fcases")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{server.url}/cases")


def flash(page: Page, text: str) -> None:
    expect(page.locator(".flash.ok")).to_contain_text(text)


def test_a_salesperson_works_a_case(browser: Browser, server: Server) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, server, "laura")
    queue = page.locator("table.queue")
    expect(queue).to_contain_text("Lumen Ltd")
    expect(queue).to_contain_text("Vega GmbH")
    expect(queue).not_to_contain_text("Sol y Mar")  # daniel's
    expect(page.locator("header.top")).to_contain_text("Laura Gómez")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-queue.png"), full_page=True)

    page.get_by_role("link", name="Lumen Ltd").click()
    expect(page.locator("h1")).to_contain_text("Lumen Ltd")
    expect(page.locator("mark").first).to_be_visible()
    page.screenshot(path=str(SHOTS / "web-case.png"), full_page=True)

    # Correct the bot's reading of the reply.
    reply = page.locator("li.entry.kind-reply").first
    reply.get_by_text("Correct the reading").click()
    reply.get_by_label("It means").select_option("hardship")
    reply.get_by_role("button", name="Save correction").click()
    flash(page, "Reply read as hardship")
    with server.store.engine.begin() as c:
        assert c.execute(sa.select(feedback.c.intent, feedback.c.actor)).one() == ("hardship", "laura")

    # A payment plan: a bad sum first (the typed rows stay), then the right one.
    page.get_by_text("Set up a payment plan").click()
    page.get_by_label("Date of installment 1").fill("2026-12-15")
    page.get_by_label("Amount of installment 1").fill("1000")
    page.get_by_label("Date of installment 2").fill("2027-01-15")
    page.get_by_label("Amount of installment 2").fill("800")
    page.get_by_role("button", name="Set plan").click()
    expect(page.locator(".flash.error")).to_contain_text("1,850.00 EUR is owed")
    expect(page.get_by_label("Amount of installment 1")).to_have_value("1000")
    page.get_by_label("Amount of installment 2").fill("850")
    page.get_by_role("button", name="Set plan").click()
    flash(page, "Payment plan set: 2 installments")
    assert server.book.case("C1")["state"] == "payment_plan"
    assert [p["due_date"] for p in server.book.plan_installments("C1")] == [date(2026, 12, 15), date(2027, 1, 15)]

    page.get_by_role("button", name="Resume reminders").click()
    flash(page, "Reminders resume")
    assert server.book.case("C1")["state"] == "active"

    with page.expect_download() as download:
        page.get_by_role("link", name="Download case file").click()
    saved = Path(download.value.path())
    assert download.value.suggested_filename == "case-C1.zip"
    with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as archive:
        assert "summary.html" in archive.namelist()
        assert b"Lumen Ltd" in archive.read("summary.html")

    page.goto(f"{server.url}/cases/C3")  # daniel's case
    expect(page.locator("main")).to_contain_text("only its owner and finance can open it")
    context.close()


def test_a_phone_sees_the_queue_as_cards(browser: Browser, server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    log_in(page, server, "fin")
    first = page.locator("table.queue tbody tr").first
    assert first.bounding_box()["width"] <= 390  # type: ignore[index]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    page.screenshot(path=str(SHOTS / "web-queue-phone.png"), full_page=True)
    page.goto(f"{server.url}/cases/C3")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(SHOTS / "web-case-phone.png"), full_page=True)
    page.goto(f"{server.url}/reports")
    expect(page.locator("svg.chart").first).to_be_visible()
    page.screenshot(path=str(SHOTS / "web-reports.png"), full_page=True)
    context.close()


def test_no_session_or_no_csrf_token_is_refused(browser: Browser, server: Server) -> None:
    stranger = browser.new_context()
    anonymous = stranger.request.post(f"{server.url}/cases/C1/note", form={"text": "hi"}, max_redirects=0)
    assert anonymous.status == 401
    page = stranger.new_page()
    page.goto(f"{server.url}/cases/C1")
    expect(page).to_have_url(f"{server.url}/login?next=%2Fcases%2FC1")
    stranger.close()

    context = browser.new_context()
    page = context.new_page()
    log_in(page, server, "laura")
    page.goto(f"{server.url}/cases/C1")
    forged = page.request.post(f"{server.url}/cases/C1/note", form={"text": "forged"}, max_redirects=0)
    assert forged.status == 403  # the session cookie went along; the token did not
    page.get_by_text("Add a note").click()
    page.locator("form[action$='/note'] input[name=csrf_token]").evaluate("input => input.value = 'stale'")
    page.get_by_label("Note").fill("tampered token")
    page.get_by_role("button", name="Add note").click()
    expect(page.locator("main")).to_contain_text("This form has expired or did not come from this site")
    notes = [e for e in server.book.timeline("C1") if e.kind == "note"]
    assert notes == []
    context.close()


@pytest.mark.mail
def test_a_hand_written_reply_arrives_in_the_thread(browser: Browser, clean_mailstack: MailStack,
                                                    tmp_path: Path) -> None:
    smtp = f'host = "{clean_mailstack.host}"\nport = {clean_mailstack.smtp_port}\nsecurity = "none"\n'
    config = world(tmp_path, smtp=smtp, domain="customers.test")
    clean_mailstack.wait_queue_empty()
    clean_mailstack.clear()
    with Server(config) as server:
        thread = [r["message_id"] for r in server.store.reminders_for("C1")]
        customer_reply = server.store.replies_for("C1")[0]["message_id"]
        context = browser.new_context()
        page = context.new_page()
        log_in(page, server, "laura")
        page.goto(f"{server.url}/cases/C1")
        page.get_by_text("Write a reply").click()
        page.get_by_label("Message").fill("Dear Ana,\n\nwe will replace the damaged goods on Friday.")
        started = time.monotonic()
        page.get_by_role("button", name="Send reply").click()
        flash(page, "queued and being sent")
        assert time.monotonic() - started < 2
        arrived: list[Any] = clean_mailstack.wait_for(1)
        message = arrived[0]
        assert message["In-Reply-To"] == customer_reply
        assert all(mid in message["References"] for mid in (*thread, customer_reply))
        assert message["To"].addresses[0].addr_spec == "ap.lumen@customers.test"
        assert message["Subject"].startswith("Re: ")
        body = message.get_body(("plain",)).get_content()
        assert "replace the damaged goods on Friday" in body and "Laura Gómez" in body
        mine = [r for r in server.store.reminders_for("C1") if r["stage"] == "handwritten"]
        assert [(r["message_id"], r["status"]) for r in mine] == [(message["Message-ID"], "sent")]
        page.reload()
        expect(page.locator("#timeline")).to_contain_text("replace the damaged goods on Friday")
        context.close()
