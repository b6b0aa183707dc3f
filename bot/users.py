"""The people who log in to the triage page: sales see their own cases, finance sees all.

Passwords are stored as argon2 hashes only; a hash made with older parameters is upgraded at the
next successful log-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bot.errors import DunbotError
from bot.schema import users
from bot.store import Store

ROLES = ("sales", "finance")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_hasher = PasswordHasher()


class UserError(DunbotError):
    """A user that cannot be added as asked (bad name, role or password)."""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    email: str
    language: str
    display_name: str

    @property
    def sees_all(self) -> bool:
        return self.role == "finance"


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    return User(row.username, row.role, row.email, row.language, row.display_name)  # type: ignore[attr-defined]


def add_user(store: Store, username: str, password: str, role: str, now: datetime, *, email: str = "",
             language: str = "en", display_name: str = "") -> User:
    if not _NAME.match(username):
        raise UserError(f"user name {username!r}: use lower-case letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role {role!r}: choose sales or finance")
    if len(password) < 10:
        raise UserError("the password needs at least 10 characters")
    row = {"password_hash": _hasher.hash(password), "role": role, "email": email, "language": language,
           "display_name": display_name or username}
    with store.engine.begin() as c:
        if c.execute(users.update().where(users.c.username == username).values(**row)).rowcount == 0:
            c.execute(users.insert().values(username=username, created_at=now, **row))
    return User(username, role, email, language, row["display_name"])


def authenticate(store: Store, username: str, password: str) -> User | None:
    """The user if the password is right, else None; the same work is done for unknown names."""
    with store.engine.begin() as c:
        row = c.execute(sa.select(users).where(users.c.username == username)).first()
    stored = row.password_hash if row is not None else _DUMMY
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):
        with store.engine.begin() as c:
            c.execute(users.update().where(users.c.username == username).values(password_hash=_hasher.hash(password)))
    return _user(row)


def get_user(store: Store, username: str) -> User | None:
    with store.engine.begin() as c:
        row = c.execute(sa.select(users).where(users.c.username == username)).first()
    return _user(row) if row is not None else None


def all_users(store: Store) -> list[User]:
    with store.engine.begin() as c:
        return [_user(r) for r in c.execute(sa.select(users).order_by(users.c.username))]


_DUMMY = _hasher.hash("not a real password: keeps timing the same for unknown users")
