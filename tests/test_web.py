"""The triage web page in process: log-in, CSRF, who sees what, every action, escaping, bad input.

The store is made the way production makes it: a ledger sent through `dunbot send`, customers'
replies read by `dunbot inbox poll` (escalations, holds, a promise), built once per module and
copied for every test.
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import mailbox
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sample import row, write_config, write_ledger
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Route

from bot.casebook import CaseBook
from bot.cli import main
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.schema import case_events, feedback
from bot.store import Queued, Store
from bot.users import add_user
from bot.web import create_app
from bot.web.app import WebSettings, session_secret, web_settings
from bot.web.auth import Throttle

with warnings.catch_warnings():  # starlette asks for httpx2; the project pins httpx, which works the same
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ZONE = ZoneInfo("Europe/Madrid")
SENT = "2026-11-24T11:00:00+01:00"
POLLED = "2026-11-24T14:00:00+01:00"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=ZONE)
SECRET = "a-test-secret-that-is-long-enough-for-the-check"
PASSWORDS = {"laura": "laura-secret-pw", "daniel": "daniel-secret-pw", "fin": "finance-secret-pw"}
HOSTILE_NAME = "<script>alert(1)</script> {{ 7*7 }} & Co"
HOSTILE_TEXT = ("<script>alert('reply')</script> {{ 7*7 }} The goods arrived damaged and we will not pay "
                "until you replace them.")


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1), result.output
    return result.output


def customer(invoice: str, cid: str, address: str, manager: str, **kw: Any) -> str:
    return row(invoice, cid, address, **kw).replace('"Laura"', f'"{manager}"')


def answer(original: EmailMessage, text: str) -> bytes:
    """The customer's reply in the thread of one of our reminders, quoting it as mail clients do."""
    reply = EmailMessage(policy=email.policy.SMTP)
    reply["From"] = original["To"]
    reply["To"] = original["From"]
    reply["Subject"] = f"Re: {original['Subject']}"
    reply["Date"] = "Tue, 24 Nov 2026 13:05:00 +0100"
    reply["Message-ID"] = f"<reply.{abs(hash(text))}@customer.test>"
    reply["In-Reply-To"] = original["Message-ID"]
    reply["References"] = original["Message-ID"]
    quoted = "\n".join("> " + line for line in original.get_body(("plain",)).get_content().splitlines())
    reply.set_content(f"{text}\n\nOn Tue, 24 Nov 2026 Northwind wrote:\n{quoted}\n")
    return reply.as_bytes()


def build_world(folder: Path, *, smtp: str = "", domain: str = "") -> Path:
    """Six customers of laura and daniel, reminded, some replying; users laura, daniel (sales) and fin (finance).

    With `domain`, every contact lives there (ap@lumen.test becomes ap.lumen@<domain>), for a real mail server.
    """

    def to(address: str) -> str:
        local, _, host = address.partition("@")
        return f"{local}.{host.split('.')[0]}@{domain}" if domain else address

    ledger = write_ledger(folder / "ledger.csv", [
        customer("INV-101", "C1", to("ap@lumen.test"), "Laura Gómez", days_overdue=20, name="Lumen Ltd"),
        customer("INV-102", "C1", to("ap@lumen.test"), "Laura Gómez", days_overdue=5, balance="600.00",
                 name="Lumen Ltd"),
        customer("INV-201", "C2", to("ap@hostile.test"), "Laura Gómez", days_overdue=14, name=HOSTILE_NAME),
        customer("INV-301", "C3", to("pagos@sol.test"), "Daniel Pérez", days_overdue=30, language="es",
                 name="Sol y Mar S.A."),
        customer("INV-401", "C4", to("ap@vega.test"), "Laura Gómez", days_overdue=95, name="Vega GmbH"),
        customer("INV-501", "C5", to("pagos@nube.test"), "Daniel Pérez", days_overdue=10, language="es",
                 name="Nube SL"),
    ])
    config = write_config(folder, ledger, smtp=smtp)
    cli("send", "--config", str(config), "--now", SENT)
    settings = load_settings(config)
    store = Store.open(settings.store_url)
    try:
        sent = {r["customer_id"]: email.message_from_bytes(r["raw"], policy=email.policy.default)
                for r in store.reminders_for()}
        inbox = mailbox.Maildir(folder / "var" / "inbox", create=True)
        inbox.add(answer(sent["C1"], "Half of the goods arrived damaged. We will not pay until you replace them."))
        inbox.add(answer(sent["C2"], HOSTILE_TEXT))
        inbox.add(answer(sent["C3"], "Estamos pasando por dificultades económicas y no podemos pagar ahora. "
                                     "¿Podemos pagar a plazos?"))
        inbox.add(answer(sent["C5"], "Buenos días, les pagaremos la factura el 15 de diciembre. Saludos"))
        cli("inbox", "poll", "--config", str(config), "--now", POLLED)
        for name, password in PASSWORDS.items():
            add_user(store, name, password, "finance" if name == "fin" else "sales", NOW,
                     display_name={"laura": "Laura Gómez", "daniel": "Daniel Pérez"}.get(name, "Finance Team"),
                     email=f"{name}@northwind.example")
    finally:
        store.close()
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("web-world"))


@dataclass
class Site:
    config: Path
    settings: Settings
    store: Store
    app: Any

    @property
    def book(self) -> CaseBook:
        return CaseBook(self.store, self.settings)

    def client(self, user: str | None = None, *, base_url: str = "http://testserver") -> Visitor:
        visitor = Visitor(TestClient(self.app, base_url=base_url, follow_redirects=False))
        if user:
            visitor.login(user)
        return visitor

    def events(self, cid: str) -> int:
        with self.store.engine.begin() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(case_events)
                                 .where(case_events.c.customer_id == cid)).scalar_one())


class Visitor:
    """A browser in miniature: keeps the cookie, reads the CSRF token off each page, posts forms with it."""

    def __init__(self, client: TestClient) -> None:
        self.http, self.csrf = client, ""

    def get(self, path: str, **kw: Any) -> Any:
        response = self.http.get(path, **kw)
        found = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: str | None = None) -> Any:
        form = dict(data or {})
        if csrf is None:
            form["csrf_token"] = self.csrf
        elif csrf:
            form["csrf_token"] = csrf
        return self.http.post(path, data=form)

    def login(self, user: str, password: str | None = None) -> Any:
        self.get("/login")
        response = self.post("/login", {"username": user, "password": password or PASSWORDS[user], "next": "/cases"})
        if response.status_code == 303:
            self.get("/cases")
        return response


@pytest.fixture
def site(world: Path, tmp_path: Path) -> Iterator[Site]:
    folder = tmp_path / "site"
    shutil.copytree(world.parent, folder)
    settings = load_settings(folder / "config.toml")
    store = Store.open(settings.store_url)
    yield Site(folder / "config.toml", settings, store,
               create_app(settings, store, clock=lambda: NOW, secret=SECRET, login_delay=0))
    store.close()


def post_routes(app: Any) -> list[str]:
    return [r.path.replace("{customer_id}", "C1") for r in app.routes if isinstance(r, Route) and "POST" in r.methods]


# ---- Log-in, sessions, CSRF --------------------------------------------------------------------------------


def test_nothing_is_shown_without_logging_in(site: Site) -> None:
    anonymous = site.client()
    for path in ("/", "/cases", "/cases?state=all", "/cases/C1", "/cases/C1/export", "/reports", "/nowhere"):
        response = anonymous.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next="), path
        assert "Lumen" not in response.text
    for path in post_routes(site.app):
        if path != "/login":
            assert anonymous.post(path, {"text": "x"}).status_code == 401, path
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/static/style.css").status_code == 200


def test_log_in_with_the_right_password_only_and_log_out(site: Site) -> None:
    visitor = site.client()
    refused = visitor.login("laura", "not-the-password")
    assert refused.status_code == 401 and "Wrong user name or password" in refused.text
    assert visitor.login("nobody", "whatever-password").status_code == 401
    assert visitor.get("/cases").status_code == 303
    response = visitor.login("laura")
    assert response.status_code == 303 and response.headers["location"] == "/cases"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    page = visitor.get("/cases")
    assert page.status_code == 200 and "Lumen Ltd" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    stolen = visitor.http.cookies.get("dunbot_session")
    assert visitor.post("/logout").status_code == 303
    assert visitor.get("/cases").status_code == 303
    replay = site.client()
    replay.http.cookies.set("dunbot_session", stolen)
    assert replay.get("/cases").status_code == 303  # the logged-out session is revoked, not just forgotten


def test_the_session_cookie_is_secure_over_https(site: Site) -> None:
    visitor = site.client(base_url="https://testserver")
    visitor.get("/login")
    response = visitor.post("/login", {"username": "fin", "password": PASSWORDS["fin"]})
    assert response.status_code == 303 and "; Secure" in response.headers["set-cookie"]


def test_a_forged_or_tampered_cookie_is_not_a_session(site: Site) -> None:
    visitor = site.client("laura")
    value = visitor.http.cookies.get("dunbot_session")
    visitor.http.cookies.set("dunbot_session", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    assert visitor.get("/cases").status_code == 303


def test_failed_log_ins_are_slowed_down(site: Site) -> None:
    site.app.state.web.throttle = Throttle({"user": 5, "ip": 8})  # an address's limit (20) made quicker to reach
    visitor = site.client()
    for _ in range(5):
        assert visitor.login("laura", "wrong-password!").status_code == 401
    locked = visitor.login("laura")  # even the right password waits now
    assert locked.status_code == 429 and "Too many failed log-ins" in locked.text
    assert site.client().login("fin").status_code == 303  # a colleague at the same address is not held up
    for n in range(3):
        assert visitor.login(f"guess{n}", "wrong-password!").status_code == 401
    assert site.client().login("daniel").status_code == 429  # but many failures from one address are too many


def test_the_throttle_waits_longer_each_time_and_forgets() -> None:
    now = [0.0]
    throttle = Throttle({"user": 2}, window=100, base=10, longest=25, clock=lambda: now[0])
    keys = ("user:x",)
    waits = []
    for _ in range(4):
        throttle.fail(keys)
        waits.append(throttle.wait(keys))
    assert waits == [0, 10, 20, 25]  # doubling, capped
    throttle.succeed(keys)
    assert throttle.wait(keys) == 0
    throttle.fail(keys)
    throttle.fail(keys)
    now[0] = 150
    assert throttle.wait(keys) == 0 and throttle.failures == {}  # forgotten after the window


def test_every_post_route_refuses_a_missing_or_wrong_csrf_token(site: Site) -> None:
    visitor = site.client("fin")
    before = site.events("C1")
    routes = post_routes(site.app)
    assert len(routes) >= 12
    for path in routes:
        data = {"text": "note", "until": "2026-12-20", "how": "paid", "who": "Agency", "why": "x", "reply_id": "1",
                "intent": "dispute", "on": "2026-12-20", "subject": "s", "body": "b", "username": "fin",
                "password": PASSWORDS["fin"]}
        assert visitor.post(path, data, csrf="").status_code == 403, path
        assert visitor.post(path, data, csrf="forged-token").status_code == 403, path
    assert site.events("C1") == before
    assert visitor.get("/cases").status_code == 200  # still logged in: neither log-out nor log-in happened


# ---- Who sees what -----------------------------------------------------------------------------------------


def test_a_salesperson_sees_only_their_own_cases(site: Site) -> None:
    laura = site.client("laura")
    page = laura.get("/cases?state=all&owner=daniel")
    assert "Lumen Ltd" in page.text and "Vega GmbH" in page.text
    assert "Sol y Mar" not in page.text and "Nube SL" not in page.text
    assert 'name="owner"' not in page.text  # no owner filter for sales
    for path in ("/cases/C3", "/cases/C3/export"):
        refused = laura.get(path)
        assert refused.status_code == 403 and "Sol y Mar" not in refused.text
    laura.get("/cases/C1")
    for path in post_routes(site.app):
        if path.startswith("/cases/"):
            assert laura.post(path.replace("C1", "C3"), {"text": "mine now", "how": "paid"}).status_code == 403
    assert site.book.case("C3")["state"] == "escalated"
    assert laura.get("/cases/C404").status_code == 404


def test_finance_sees_everyone_and_filters_by_owner(site: Site) -> None:
    fin = site.client("fin")
    everyone = fin.get("/cases?state=all").text
    for name in ("Lumen Ltd", "Sol y Mar", "Vega GmbH", "Nube SL"):
        assert name in everyone
    daniels = fin.get("/cases?state=all&owner=daniel").text
    assert "Sol y Mar" in daniels and "Lumen Ltd" not in daniels
    assert fin.get("/cases/C3").status_code == 200


def test_the_queue_sorts_filters_searches_and_pages(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    fin = site.client("fin")
    escalated = fin.get("/cases").text  # escalated by default, largest balance first
    assert re.findall(r'href="/cases/(C\d)"', escalated) == ["C1", "C4", "C3", "C2"]  # then the oldest first
    assert "Nube SL" not in escalated  # paused by its promise
    assert "1,850.00 EUR" in escalated and "95 d" in escalated
    assert "Nube SL" in fin.get("/cases?state=paused").text
    disputes = fin.get("/cases?reason=dispute").text
    assert "Lumen Ltd" in disputes and "Vega GmbH" not in disputes and "Sol y Mar" not in disputes
    spanish = fin.get("/cases?state=all&language=es").text
    assert "Sol y Mar" in spanish and "Lumen Ltd" not in spanish
    by_invoice = fin.get("/cases?state=all&q=inv-401").text
    assert "Vega GmbH" in by_invoice and "Lumen Ltd" not in by_invoice
    assert "No escalated cases match" in fin.get("/cases?q=nothing-like-this").text
    assert fin.get("/cases?state=bogus&page=-4&reason=%3Cx%3E").status_code == 200
    monkeypatch.setattr("bot.web.views.PER_PAGE", 2)
    first, second = fin.get("/cases").text, fin.get("/cases?page=2").text
    assert 'rel="next"' in first and 'rel="prev"' in second
    assert set(re.findall(r'href="/cases/(C\d)"', first)).isdisjoint(re.findall(r'href="/cases/(C\d)"', second))


# ---- The case page and its actions -----------------------------------------------------------------------


def test_the_case_page_shows_invoices_timeline_reading_and_next_step(site: Site) -> None:
    page = site.client("laura").get("/cases/C1").text
    assert "INV-101" in page and "INV-102" in page and "1,250.00 EUR" in page and "600.00 EUR" in page
    assert "21 d" in page  # days overdue on the page's today (25 November)
    assert "<mark>arrived damaged</mark>" in page and "<mark>will not pay</mark>" in page
    assert "dispute" in page and "% sure" in page
    assert "Check the documents and the goods" in page  # the suggested step for a dispute
    for action in ("resume", "pause", "promise", "plan", "resolve", "agency", "note", "reply", "correct"):
        assert f'action="/cases/C1/{action}"' in page
    assert 'href="/cases/C1/export"' in page


def test_hostile_names_and_replies_are_escaped(site: Site) -> None:
    laura = site.client("laura")
    pages = [laura.get("/cases").text, laura.get("/cases/C2").text, laura.get("/cases?q=script").text]
    for page in pages:
        assert "<script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} &amp; Co" in page
        assert ">49<" not in page and " 49 " not in page
    case = pages[1]
    assert "&lt;script&gt;alert(&#39;reply&#39;)&lt;/script&gt; {{ 7*7 }}" in case
    assert "<mark>arrived damaged</mark>" in case


def test_resume_pause_promise_resolve_agency_escalate_note(site: Site) -> None:
    laura = site.client("laura")
    laura.get("/cases/C1")
    steps: list[tuple[str, dict[str, str], str]] = [
        ("resume", {}, "active"),
        ("pause", {"until": "2026-12-10", "reason": "waiting for a credit note"}, "paused"),
        ("promise", {"on": "2026-12-04", "amount": "1.850,00"}, "paused"),
        ("escalate", {"why": "asks for a call"}, "escalated"),
        ("agency", {"who": "Cobros Rápidos"}, "with_agency"),
        ("resolve", {"how": "written_off"}, "resolved"),
    ]
    for action, data, state in steps:
        response = laura.post(f"/cases/C1/{action}", data)
        assert response.status_code == 303, (action, response.text[:500])
        assert response.headers["location"].startswith("/cases/C1")
        assert site.book.case("C1")["state"] == state, action
        page = laura.get("/cases/C1").text
        assert 'class="flash ok"' in page, action
    assert [h for h in site.store.active_holds(NOW) if h["customer_id"] == "C1"] == []  # resolving ended them
    assert laura.post("/cases/C1/note", {"text": "Called Ana: the credit note is on its way."}).status_code == 303
    timeline = site.book.timeline("C1")
    kinds = [(e.kind, e.actor) for e in timeline if e.actor == "laura"]
    assert ("promise", "laura") in kinds and ("note", "laura") in kinds
    promise = next(e for e in timeline if e.kind == "promise")
    assert promise.detail == {"date": "2026-12-04", "amount": "1850.00"}
    assert "written off" in site.book.case("C1")["reason"]


def test_a_payment_plan_from_rows_of_inputs(site: Site) -> None:
    laura = site.client("laura")
    split = laura.get("/cases/C1?split=3&currency=EUR").text
    assert split.count('value="616.67"') == 2 and 'value="616.66"' in split  # even parts, the rest last
    response = laura.post("/cases/C1/plan", {"currency": "EUR", "due": ["2026-12-15", "2027-01-15", "", ""],
                                             "amount": ["1000", "850.00", "", ""]})
    assert response.status_code == 303
    assert site.book.case("C1")["state"] == "payment_plan"
    parts = [(p["due_date"], Decimal(p["amount"])) for p in site.book.plan_installments("C1")]
    assert parts == [(date(2026, 12, 15), Decimal("1000.00")), (date(2027, 1, 15), Decimal("850.00"))]
    assert "Payment plan set: 2 installments" in laura.get("/cases/C1").text


def test_correcting_a_reading_is_kept_as_feedback(site: Site) -> None:
    laura = site.client("laura")
    reply_id = site.store.replies_for("C1")[0]["id"]
    laura.get("/cases/C1")
    response = laura.post("/cases/C1/correct", {"reply_id": str(reply_id), "intent": "promise_to_pay",
                                                "promised_date": "2026-12-01"})
    assert response.status_code == 303 and response.headers["location"] == f"/cases/C1#reply-{reply_id}"
    with site.store.engine.begin() as c:
        kept = c.execute(sa.select(feedback)).mappings().one()
    assert (kept["reply_id"], kept["intent"], kept["promised_date"], kept["actor"]) == \
        (reply_id, "promise_to_pay", date(2026, 12, 1), "laura")
    assert "corrected to promise to pay" in laura.get("/cases/C1").text
    other = site.store.replies_for("C3")[0]["id"]  # daniel's customer's reply, through laura's own case
    refused = laura.post("/cases/C1/correct", {"reply_id": str(other), "intent": "dispute"})
    assert refused.status_code == 400 and "does not belong to this case" in refused.text


def test_a_hand_written_reply_goes_out_in_the_thread(site: Site) -> None:
    # A dunning pass is mid-send elsewhere: its reminders are none of the page's business.
    others = [Queued(f"<other.{n}@northwind.example>", "C3", "pagos@sol.test", "standard", f"extra{n}", "es",
                     "accounts@northwind.example", ("pagos@sol.test",), "Recordatorio", b"Subject: x\r\n\r\nx\r\n",
                     (("INV-301", "1250.00"),)) for n in (1, 2)]
    site.store.enqueue(others, NOW)
    sending = next(r["id"] for r in site.store.reminders_for("C3") if r["message_id"] == others[1].message_id)
    site.store.mark_sending(sending)
    laura = site.client("laura")
    page = laura.get("/cases/C1").text
    assert 'value="Re: Third reminder' in page
    customer_reply = site.store.replies_for("C1")[0]["message_id"]
    response = laura.post("/cases/C1/reply", {"subject": "Re: your invoices\r\nBcc: evil@x.test",
                                              "body": "Dear Ana,\nwe will replace the damaged goods this week."})
    assert response.status_code == 303
    handwritten = [r for r in site.store.reminders_for("C1") if r["stage"] == "handwritten"]
    assert len(handwritten) == 1 and handwritten[0]["status"] == "sent"  # the background task ran
    box = mailbox.Maildir(site.config.parent / "var" / "sent", create=False)
    found = [email.message_from_bytes(box.get_bytes(k), policy=email.policy.default) for k in box.keys()]  # noqa: SIM118
    message = next(m for m in found if m["Message-ID"] == handwritten[0]["message_id"])
    assert message["In-Reply-To"] == customer_reply
    assert customer_reply in message["References"] and site.store.reminders_for("C1")[0]["message_id"] in \
        message["References"]
    assert message["To"].addresses[0].addr_spec == "ap@lumen.test"
    assert message["From"].addresses[0].addr_spec == "accounts@northwind.example"
    assert message["Message-ID"].endswith("@northwind.example>") and message["Bcc"] is None
    assert message["Subject"] == "Re: your invoices Bcc: evil@x.test"
    body = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "replace the damaged goods" in body and "-- \nLaura Gómez\nNorthwind Trading S.L." in body
    timeline = laura.get("/cases/C1").text
    assert "we will replace the damaged goods this week." in timeline and "handwritten reminder sent" in timeline
    status = {r["message_id"]: r["status"] for r in site.store.reminders_for("C3")}
    assert (status[others[0].message_id], status[others[1].message_id]) == ("queued", "sending")


@pytest.mark.parametrize(("action", "data", "message"), [
    ("pause", {"until": "2026-11-20"}, "is in the past"),
    ("pause", {"until": "2026-11-25"}, "Pause until a day after today"),
    ("pause", {"until": "next friday"}, "is not a date"),
    ("pause", {"until": "2031-01-01"}, "more than two years away"),
    ("promise", {"on": "2026-12-04", "amount": "lots"}, "is not a number"),
    ("promise", {"on": "2026-12-04", "amount": "-5"}, "must be more than zero"),
    ("promise", {"on": "2026-12-04", "amount": "10.001"}, "more than two decimals"),
    ("promise", {"on": ""}, "Give the promised date"),
    ("plan", {"currency": "EUR", "due": ["2026-12-15", "2027-01-15"], "amount": ["1000", "800"]},
     "add up to 1,800.00 EUR, but 1,850.00 EUR is owed"),
    ("plan", {"currency": "EUR", "due": ["2026-12-15", "2026-12-15"], "amount": ["925", "925"]}, "same day"),
    ("plan", {"currency": "EUR", "due": ["2026-12-15", ""], "amount": ["925", "925"]}, "give both a date and"),
    ("plan", {"currency": "EUR", "due": [], "amount": []}, "at least one installment"),
    ("plan", {"currency": "USD", "due": ["2026-12-15"], "amount": ["1850"]}, "Choose one of the currencies"),
    ("resolve", {"how": "forgotten"}, "Choose how the case was resolved"),
    ("agency", {"who": "  "}, "Name the agency"),
    ("note", {"text": ""}, "The note is empty"),
    ("correct", {"reply_id": "x", "intent": "dispute"}, "Choose the reply"),
    ("correct", {"reply_id": "1", "intent": "bogus"}, "is not one of the intents"),
    ("reply", {"subject": "Hello", "body": "   "}, "the reply is empty"),
])
def test_bad_input_is_explained_not_a_crash(site: Site, action: str, data: dict[str, Any], message: str) -> None:
    laura = site.client("laura")
    laura.get("/cases/C1")
    before = (site.events("C1"), site.book.case("C1")["state"], len(site.store.reminders_for("C1")))
    response = laura.post(f"/cases/C1/{action}", data)
    assert response.status_code == 400, response.text[:300]
    assert message in response.text.replace("&#39;", "'").replace("&#34;", '"')
    assert 'class="flash error"' in response.text
    assert (site.events("C1"), site.book.case("C1")["state"], len(site.store.reminders_for("C1"))) == before
    if action == "plan" and data["amount"]:
        assert f'value="{data["amount"][0]}"' in response.text  # what was typed is kept


def test_the_case_file_downloads_as_a_zip(site: Site) -> None:
    response = site.client("laura").get("/cases/C1/export")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert 'filename="case-C1.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert "summary.html" in archive.namelist() and "manifest.json" in archive.namelist()
        assert json.loads(archive.read("manifest.json"))["customer_id"] == "C1"


def test_reports_draw_aging_dso_promises_and_replies(site: Site) -> None:
    fin = site.client("fin")
    page = fin.get("/reports").text
    assert page.count('<svg class="chart"') == 3
    assert "Open balance by days overdue, EUR" in page and "DSO" in page
    assert "Replies by intent per week" in page and "dispute" in page
    for bucket in ("current", "1-30", "31-60", "61-90", "90+"):
        assert f">{bucket}<" in page
    everyone = re.search(r"<strong>([\d,.]+) EUR</strong></td>", page)
    assert everyone and everyone.group(1) == "6,850.00"  # every open balance, in the aging table's total
    laura = site.client("laura")
    mine = laura.get("/reports?owner=daniel").text  # sales see their own customers' figures, whatever they ask
    assert "laura's customers" in mine
    assert re.search(r"<strong>([\d,.]+) EUR</strong></td>", mine).group(1) == "4,350.00"  # type: ignore[union-attr]
    assert "4,350.00 EUR</strong> open" in laura.get("/cases").text  # the queue's summary


def test_unknown_pages_methods_and_failures_get_an_error_page(site: Site, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fin = site.client("fin")
    assert fin.get("/nowhere").status_code == 404
    wrong_method = fin.get("/cases/C1/resume")
    assert wrong_method.status_code == 405 and "Back to the cases" in wrong_method.text

    def broken(_customer_id: str) -> None:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(site.app.state.web.book, "case", broken)
    fin.http = TestClient(site.app, raise_server_exceptions=False, follow_redirects=False, cookies=fin.http.cookies)
    failed = fin.get("/cases/C1")
    assert failed.status_code == 500 and "Something went wrong on our side" in failed.text
    assert "disk caught fire" not in failed.text and "disk caught fire" in caplog.text


def test_a_case_with_nothing_left_open(site: Site) -> None:
    with site.store.engine.begin() as c:
        c.exec_driver_sql("UPDATE customers SET balances = '{}', invoices = '[]', open_amount = 0 "
                          "WHERE customer_id = 'C5'")
    fin = site.client("fin")
    page = fin.get("/cases/C5")
    assert page.status_code == 200 and "shows nothing open" in page.text
    refused = fin.post("/cases/C5/plan", {"currency": "EUR", "due": ["2026-12-15"], "amount": ["10"]})
    assert refused.status_code == 400 and "currencies owed: none" in refused.text


# ---- Configuration ---------------------------------------------------------------------------------------


def test_web_settings_and_the_session_secret(site: Site, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    assert web_settings(site.settings) == WebSettings()
    site.config.write_text(site.config.read_text() + '\n[web]\nsecret_env = "MY_WEB_KEY"\nsession_hours = 8\n')
    config = web_settings(load_settings(site.config))
    assert config.secret_env == "MY_WEB_KEY" and config.session_hours == 8
    monkeypatch.delenv("MY_WEB_KEY", raising=False)
    assert len(session_secret(config)) >= 32 and "no session secret" in caplog.text
    monkeypatch.setenv("MY_WEB_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 32"):
        session_secret(config)
    monkeypatch.setenv("MY_WEB_KEY", "k" * 40)
    assert session_secret(config) == "k" * 40


def test_dunbot_serve_runs_the_page(world: Path, tmp_path: Path) -> None:
    shutil.copytree(world.parent, tmp_path / "site")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DUNBOT_WEB_SECRET"}
    server = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--config", str(tmp_path / "site" / "config.toml"),
                               "--port", str(port)], stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "dunbot serve did not start"
                time.sleep(0.1)
        assert login.status_code == 200 and "Log in" in login.text and "server" not in login.headers
        assert httpx.get(f"http://127.0.0.1:{port}/cases/C1").status_code == 303
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=10)
    assert "no session secret in the environment variable DUNBOT_WEB_SECRET" in errors.decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
