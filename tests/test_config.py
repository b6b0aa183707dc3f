"""Configuration errors name the key and the file; secrets never print."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bot.config import Secret, load_settings, parse_settings
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def example() -> dict[str, Any]:
    return tomllib.loads((ROOT / "config.toml").read_text())


def test_example_config_loads() -> None:
    settings = load_settings(ROOT / "config.toml")
    assert settings.transport.kind == "maildir"
    assert set(settings.schedule.tracks) == {"standard", "key_account"}
    assert settings.schedule.tracks["standard"].escalate_after == 90
    assert [s.offset for s in settings.schedule.tracks["standard"].stages] == [-3, 1, 7, 14, 30, 60]


def _break(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("company.email", "not-an-address", "[company.email] is not an email address"),
    ("company.name", None, "[company.name] is missing"),
    ("company.timezone", "Mars/Base", "[company.timezone] is not a known time zone"),
    ("company.language", "english", "[company.language] must be an ISO 639-1 code"),
    ("ledger.path", None, "[ledger.path] is missing"),
    ("ledger.date_order", "ymd", "[ledger.date_order] must be one of dmy, mdy"),
    ("ledger.columns.invoice_number", "x", "[ledger.columns.invoice_number] is not a ledger field"),
    ("schedule.min_gap_days", "3", "[schedule.min_gap_days] must be a int"),
    ("schedule.window.end", "08:00", "[schedule.window.end] must be later than start"),
    ("schedule.window.working_days", ["mon", "funday"], "[schedule.window.working_days] must list days"),
    ("schedule.default_track", "gold", "[schedule.default_track] names no track"),
    ("schedule.tracks.standard.escalate_after", 30, "[schedule.tracks.standard.escalate_after] must come after"),
    ("schedule.tracks.standard.stages", [{"name": "a", "offset": 5}, {"name": "b", "offset": 1}],
     "[schedule.tracks.standard.stages] offsets must rise strictly"),
    ("schedule.tracks.standard.stages", [{"name": "Bad Name", "offset": 5}],
     "[schedule.tracks.standard.stages[0].name] must be lower-case"),
    ("transport.kind", "pigeon", "[transport.kind] must be one of maildir, smtp"),
])
def test_errors_name_the_key_and_the_file(path: str, value: Any, message: str) -> None:
    source = Path("/etc/dunbot/config.toml")
    with pytest.raises(ConfigError) as info:
        parse_settings(_break(example(), path, value), source)
    assert str(info.value).startswith(f"{source}: {message}")


def test_smtp_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _break(example(), "transport", {"kind": "smtp", "smtp": {"host": "127.0.0.1",
                                                                    "password_env": "DUNBOT_TEST_PW"}})
    with pytest.raises(ConfigError, match=r"\[transport.smtp.password_env\] names the environment variable "
                                          r"DUNBOT_TEST_PW, which is not set"):
        parse_settings(data, Path("c.toml"))
    monkeypatch.setenv("DUNBOT_TEST_PW", "hunter2-secret")
    settings = parse_settings(data, Path("c.toml"))
    smtp = settings.transport.smtp
    assert smtp is not None and smtp.password is not None and smtp.password.reveal() == "hunter2-secret"
    assert smtp.port == 587 and smtp.security == "starttls" and smtp.verify is True
    assert "hunter2" not in repr(settings) and "hunter2" not in str(smtp.password)


def test_secret_prints_as_stars() -> None:
    assert str(Secret("x")) == repr(Secret("x")) == "Secret('**********')"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[company\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    data = example()
    settings = parse_settings(data, tmp_path / "config.toml")
    assert settings.ledger.path == tmp_path / "examples" / "ledger.csv"
    assert settings.store_url == f"sqlite:///{tmp_path.resolve()}/var/dunbot.db"
