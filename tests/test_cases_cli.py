"""`dunbot cases`, `users` and `report` on a store made by the real `send`: each change shows in `cases show`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sample import row, write_config, write_ledger

from bot.cli import main
from bot.schema import users
from bot.store import Store

T0 = "2026-11-24T11:00:00+01:00"
LATER = "2026-11-25T10:00:00+01:00"


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def config(tmp_path: Path) -> str:
    ledger = write_ledger(tmp_path / "ledger.csv", [
        row("INV-1", "C1", "ap@one.test", days_overdue=40),
        row("INV-2", "C1", "ap@one.test", days_overdue=7, balance="750.00"),
        row("INV-3", "C2", "pagos@dos.test", days_overdue=95, language="es", name="Dos <script>[b]x[/b]"),
        row("INV-4", "C3", "ap@tres.test", days_overdue=-10),
    ])
    path = write_config(tmp_path, ledger)
    code, out = run("send", "--config", str(path), "--now", T0)
    assert code == 0, out
    return str(path)


def show(config: str, cid: str) -> dict:
    code, out = run("cases", "show", cid, "--config", config, "--json")
    assert code == 0, out
    return json.loads(out)


def act(config: str, *args: str, now: str = LATER) -> tuple[int, str]:
    return run("cases", *args, "--config", config, "--now", now, "--as-user", "alice")


def test_list_and_show(config: str) -> None:
    code, out = run("cases", "list", "--config", config, "--json")
    assert code == 0, out
    listed = {c["customer_id"]: c for c in json.loads(out)}
    assert listed["C2"]["state"] == "escalated"  # 95 days overdue: the pass escalated it
    assert listed["C1"]["state"] == "active" and listed["C1"]["balances"] == {"EUR": "2000.00"}
    assert list(listed) == ["C1", "C2", "C3"]  # largest, then oldest first
    code, out = run("cases", "list", "--config", config, "--state", "escalated")
    assert code == 0 and "Dos <script>[b]x[/b]" in out and "1 cases" in out
    case = show(config, "C2")
    assert case["escalation"]["reason"] == "age"
    assert [e["kind"] for e in case["timeline"]] == ["state"]
    code, out = run("cases", "show", "C1", "--config", config)
    assert code == 0 and "INV-1" in out and "INV-2" in out and "reminder" in out


def test_every_action_changes_the_case_and_is_recorded(config: str, tmp_path: Path) -> None:
    code, out = act(config, "pause", "C1", "--until", "2026-12-10", "--reason", "customer on holiday")
    assert code == 0, out
    assert "paused until 2026-12-10" in out and "alice" in out
    case = show(config, "C1")
    assert case["state"] == "paused" and case["until"].startswith("2026-12-09T23:00")
    assert case["timeline"][-1]["actor"] == "alice"

    assert act(config, "promise", "C1", "--date", "2026-12-01", "--amount", "2000.00")[0] == 0
    case = show(config, "C1")
    assert case["state"] == "paused" and any(e["kind"] == "promise" for e in case["timeline"])

    code, out = act(config, "plan", "C1", "--installment", "2026-12-15:1000.00", "--installment", "2027-01-15:1000")
    assert code == 0, out
    case = show(config, "C1")
    assert case["state"] == "payment_plan"
    assert [(p["due_date"], p["amount"]) for p in case["installments"]] == [("2026-12-15", "1000.00"),
                                                                              ("2027-01-15", "1000")]

    assert act(config, "note", "C1", "Called", "Ana:", "the", "plan", "holds")[0] == 0
    assert show(config, "C1")["timeline"][-1]["summary"] == "Called Ana: the plan holds"

    assert act(config, "escalate", "C1", "--why", "asks for a discount")[0] == 0
    case = show(config, "C1")
    assert case["state"] == "escalated" and case["escalation"]["detail"] == "asks for a discount"

    assert act(config, "resume", "C1")[0] == 0
    case = show(config, "C1")
    assert case["state"] == "active" and case["escalation"] is None and case["installments"] == []

    assert act(config, "agency", "C2", "--to", "Cobros Legales S.L.")[0] == 0
    assert show(config, "C2")["reason"] == "handed to Cobros Legales S.L."
    assert act(config, "resolve", "C3", "--as", "credited")[0] == 0
    assert show(config, "C3")["state"] == "resolved"

    target = tmp_path / "c1.zip"
    code, out = run("cases", "export", "C1", "--config", config, "--output", str(target))
    assert code == 0 and "wrote" in out
    with zipfile.ZipFile(target) as archive:
        assert archive.namelist() == ["summary.html", "reminders/001-firm.eml", "manifest.json"]
        assert "Called Ana: the plan holds" in archive.read("summary.html").decode()


@pytest.mark.parametrize(("args", "code", "message"), [
    (("resume", "NOPE"), 1, "no customer 'NOPE'"),
    (("pause", "C1", "--until", "15/12/2026"), 2, "is not a date"),
    (("pause", "C1", "--until", "2026-11-01"), 1, "is not in the future"),
    (("promise", "C1", "--date", "2026-11-01"), 1, "is in the past"),
    (("promise", "C1", "--date", "2026-12-01", "--amount", "1.250,00"), 2, "no thousands separators"),
    (("plan", "C1", "--installment", "2026-12-15:500"), 1, "add up to 500 EUR, but 2000.00 EUR is owed"),
    (("plan", "C1", "--installment", "2026-12-15"), 2, "DATE:AMOUNT"),
    (("resolve", "C1", "--as", "forgiven"), 2, "forgiven"),
    (("note", "C1", " "), 1, "a note needs some text"),
    (("escalate", "C1", "--why", " "), 2, "say why"),
])
def test_bad_input_is_refused_clearly(config: str, args: tuple[str, ...], code: int, message: str) -> None:
    got, out = act(config, *args)
    assert got == code, out
    assert message in " ".join(out.split())
    assert show(config, "C1")["state"] == "active"


def test_users_add_stores_only_an_argon2_hash(config: str, tmp_path: Path) -> None:
    secret = "correct horse battery"
    code, out = run("users", "add", "laura", "--role", "sales", "--email", "laura@northwind.example",
                    "--language", "es", "--display-name", "Laura Gómez", "--password-stdin", "--config", config,
                    stdin=secret + "\n")
    assert code == 0, out
    assert secret not in out
    code, out = run("users", "add", "marta", "--role", "finance", "--config", config,
                    stdin="another long secret\nanother long secret\n")
    assert code == 0, out
    assert "another long secret" not in out
    store = Store.open(f"sqlite:///{tmp_path / 'var' / 'dunbot.db'}")
    with store.engine.begin() as c:
        rows = {r.username: r for r in c.execute(sa.select(users))}
    store.close()
    assert rows["laura"].password_hash.startswith("$argon2id$") and rows["laura"].language == "es"
    assert rows["marta"].language == "en" and rows["marta"].role == "finance"
    database = b"".join(p.read_bytes() for p in (tmp_path / "var").glob("dunbot.db*"))
    assert secret.encode() not in database
    code, out = run("users", "list", "--config", config)
    assert "laura\tsales\tes\tlaura@northwind.example\tLaura Gómez" in out

    code, out = run("users", "add", "x", "--role", "sales", "--password-stdin", "--config", config, stdin="short\n")
    assert code == 1 and "at least 10 characters" in out and "short" not in out.replace("short\n", "")
    code, out = run("users", "add", "x", "--role", "boss", "--password-stdin", "--config", config, stdin="x" * 12)
    assert code == 2
    code, out = run("users", "add", "x", "--role", "sales", "--email", "nope", "--config", config, stdin="x" * 12)
    assert code == 2 and "not an email address" in out


def test_report_aging(config: str) -> None:
    code, out = run("report", "aging", "--config", config, "--now", T0, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["by_currency"]["EUR"] == {"current": "1250.00", "1-30": "750.00", "31-60": "1250.00",
                                            "61-90": "0", "90+": "1250.00"}
    assert set(report["by_owner"]) == {"Laura"}  # the sample ledger's account manager, unmapped
    code, out = run("report", "aging", "--config", config, "--now", T0)
    assert code == 0 and "31-60" in out and "4,500.00" in out
