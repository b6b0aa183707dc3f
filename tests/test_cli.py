"""The `dunbot` command end to end on the embedded default (Maildir transport, SQLite store)."""

from __future__ import annotations

import email
import json
import mailbox
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import main

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-24T16:30:00+01:00"


def make_config(tmp_path: Path, ledger: Path | None = None, extra: str = "") -> Path:
    text = (ROOT / "config.toml").read_text()
    text = text.replace('path = "examples/ledger.csv"', f'path = "{ledger or ROOT / "examples" / "ledger.csv"}"')
    text = text.replace('dir = "templates"', f'dir = "{ROOT / "templates"}"')
    config = tmp_path / "config.toml"
    config.write_text(text + extra)
    return config


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def sent(tmp_path: Path) -> list[email.message.EmailMessage]:
    box = mailbox.Maildir(tmp_path / "var" / "sent", create=False)
    return [email.message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.keys()]  # noqa: SIM118 (a Maildir is not a dict)


def test_plan_json_names_every_decision(tmp_path: Path) -> None:
    code, out, _ = run("plan", "--config", str(make_config(tmp_path)), "--now", NOW, "--json")
    assert code == 0
    data = json.loads(out)
    stages = {r["customer_id"]: r["stage"] for r in data["reminders"]}
    assert stages == {"C1001": "courtesy", "C1002": "first", "C1003": "second", "C1004": "third",
                      "C1005": "firm", "C1006": "final", "C1009": "third", "C1011": "first"}
    assert [e["customer_id"] for e in data["escalations"]] == ["C1007"]
    assert [w["customer_id"] for w in data["waiting"]] == ["C1008"]  # 07:30 in Los Angeles
    assert not (tmp_path / "var" / "sent").exists()


def test_send_writes_each_reminder_once(tmp_path: Path) -> None:
    config = str(make_config(tmp_path))
    code, out, _ = run("send", "--config", config, "--now", NOW)
    assert code == 0, out
    assert "queued 8, sent 8" in out and "escalated 1" in out
    messages = sent(tmp_path)
    assert len(messages) == 8
    spanish = next(m for m in messages if m["To"].addresses[0].addr_spec == "pagos@distsol.test")
    assert spanish["X-Dunbot-Invoices"] == "INV-1004"
    assert spanish.get_content_type() == "multipart/alternative"
    assert "3.650,00" in spanish.get_body(("plain",)).get_content()
    code, out, _ = run("send", "--config", config, "--now", NOW)
    assert code == 0 and "queued 0, sent 0" in out
    assert len(sent(tmp_path)) == 8


def test_dry_run_records_and_sends_nothing(tmp_path: Path) -> None:
    config = str(make_config(tmp_path))
    code, out, _ = run("send", "--config", config, "--now", NOW, "--dry-run")
    assert code == 0 and "8 to send" in out
    assert not (tmp_path / "var" / "sent").exists()
    code, out, _ = run("send", "--config", config, "--now", NOW)
    assert "sent 8" in out


def test_preview_prints_an_eml(tmp_path: Path) -> None:
    code, out, _ = run("preview", "INV-1004", "--config", str(make_config(tmp_path)), "--now", NOW,
                       "--stage", "final", "--lang", "en")
    assert code == 0
    message = email.message_from_string(out, policy=policy.default)
    assert message["X-Dunbot-Stage"] == "standard/final"
    assert "INV-1004" in message.get_body(("plain",)).get_content()
    code, _, err = run("preview", "INV-1004", "--config", str(make_config(tmp_path)), "--stage", "nope")
    assert code == 2 and "no stage 'nope'" in err
    code, _, err = run("preview", "INV-0000", "--config", str(make_config(tmp_path)))
    assert code == 1 and "no open invoice 'INV-0000'" in err


def test_templates_and_ledger_check(tmp_path: Path) -> None:
    config = str(make_config(tmp_path))
    assert run("templates", "check", "--config", config)[0] == 0
    code, out, _ = run("ledger", "check", "--config", config)
    assert code == 0 and "14 rows: 13 open, 1 paid, 0 bad" in out


def test_bad_rows_give_exit_1_but_good_rows_go_out(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.csv"
    rows = (ROOT / "examples" / "ledger.csv").read_text().splitlines()
    rows.insert(2, "INV-9,C9,Bad,,,,en,GB,,GBP,10,10,2026-01-01,2026-02-01,,")
    ledger.write_text("\n".join(rows) + "\n")
    config = str(make_config(tmp_path, ledger))
    code, out, _ = run("ledger", "check", "--config", config)
    assert code == 1 and f"{ledger}:3: contact_email is empty" in out
    code, out, err = run("send", "--config", config, "--now", NOW)
    assert code == 1 and "sent 8" in out and "contact_email is empty" in err


@pytest.mark.parametrize(("setup", "message"), [
    ("no-config", "cannot read the configuration file"),
    ("bad-key", "[schedule.min_gap_days] must be a int"),
    ("no-ledger", "cannot open the ledger"),
])
def test_configuration_errors_exit_2(tmp_path: Path, setup: str, message: str) -> None:
    if setup == "no-config":
        config = tmp_path / "missing.toml"
    elif setup == "bad-key":
        config = make_config(tmp_path)
        config.write_text(config.read_text().replace("min_gap_days = 3", 'min_gap_days = "3"'))
    else:
        config = make_config(tmp_path, tmp_path / "nope.csv")
    code, _, err = run("plan", "--config", str(config))
    assert code == 2 and message in err


def test_bad_now_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("plan", "--config", str(make_config(tmp_path)), "--now", "next tuesday")
    assert code == 2 and "--now" in err


def test_send_refuses_while_the_daemon_holds_the_store(tmp_path: Path) -> None:
    from bot.config import load_settings
    from bot.instance_lock import InstanceLock

    config = make_config(tmp_path)
    lock = InstanceLock(load_settings(config).store_url)
    lock.acquire()
    try:
        code, _, err = run("send", "--config", str(config), "--now", NOW)
    finally:
        lock.release()
    assert code == 1 and "already works on the store" in err
    assert not (tmp_path / "var" / "sent").exists()


def test_every_command_is_found_through_the_table_of_modules_and_help_lists_them_all() -> None:
    from bot.cli.common import COMMANDS

    code, out, _ = run("--help")
    assert code == 0
    listed = {line.split()[0] for line in out.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == set(main.commands) == set(COMMANDS)  # a command missing from COMMANDS would not be found
    assert run("ledger", "accept", "--help")[0] == 0


def _imported(script: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `script`."""
    import subprocess
    import sys

    return set(subprocess.run([sys.executable, "-c", f"import sys\n{script}\nprint(' '.join(sys.modules))"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())


def test_the_store_does_not_import_the_ledger_reader() -> None:
    assert not _imported("import bot.store") & {"bot.ledger", "babel"}


def test_the_daemons_command_imports_the_daemon_and_not_the_other_commands() -> None:
    loaded = _imported("import click\nfrom bot.cli import main\nmain.get_command(click.Context(main), 'run')")
    assert {"bot.cli.daemon", "bot.daemon"} <= loaded
    assert not loaded & {"bot.cli.cases", "bot.cli.dunning", "bot.cli.replies", "bot.cli.web", "bot.casefile",
                         "bot.reports", "rich", "uvicorn", "starlette"}
    # Planning and rendering run in the pass's child process: the daemon that delivers does not carry them.
    assert not loaded & {"bot.policy", "bot.templates", "bot.ledger", "bot.dunning", "holidays", "jinja2", "babel"}


@pytest.mark.parametrize("command", [["inbox", "poll"], ["inbox", "watch"]])
def test_reading_the_inbox_refuses_while_the_daemon_holds_the_store(tmp_path: Path, command: list[str]) -> None:
    from bot.config import load_settings
    from bot.instance_lock import InstanceLock

    config = make_config(tmp_path)
    inbox = tmp_path / "var" / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    (inbox / "new" / "1.eml").write_bytes(b"From: ap@customer.test\r\nSubject: paid\r\n"
                                          b"Message-ID: <x@c.test>\r\n\r\nok\r\n")
    lock = InstanceLock(load_settings(config).store_url)
    lock.acquire()
    try:
        code, _, err = run(*command, "--config", str(config))
    finally:
        lock.release()
    assert code == 1 and "already works on the store" in err
    assert [p.name for p in (inbox / "new").iterdir()] == ["1.eml"]  # nothing read, nothing moved
