"""One daemon per store: the lock a second `dunbot run` (or `dunbot send`) finds held, and what `dunbot status`
asks to tell whether a daemon runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from bot.errors import DunbotError, StoreError
from bot.store import engine_safe


class AlreadyRunning(DunbotError):
    """Another daemon holds the store's lock."""


class InstanceLock:
    """Held for the daemon's life. SQLite: flock() on `<database>.lock` (released by the kernel when the process
    dies, even by kill -9). PostgreSQL: a session advisory lock on a connection of its own (released when the
    connection closes). An in-memory SQLite store needs none."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path: Path | None = None
        self._fd: int | None = None
        self._engine: Engine | None = None
        self._connection: Connection | None = None
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            self.path = Path(url[len("sqlite:///"):] + ".lock")

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def acquire(self) -> None:
        if self.path is not None:
            self._acquire_file(self.path)
        elif self.is_postgres:
            self._acquire_advisory()

    def _acquire_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another `dunbot run` (pid {holder}) already works on the store "
                                 f"{engine_safe(self.url)} (lock {path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    _KEY = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '/dunbot.daemon'))"
    _UNLOCK = "SELECT pg_advisory_unlock(hashtext(current_schema() || '/dunbot.daemon'))"

    def _acquire_advisory(self) -> None:
        try:
            self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
            self._connection = self._engine.connect()
            got = bool(self._connection.execute(sa.text(self._KEY)).scalar())
            self._connection.commit()
        except SQLAlchemyError as exc:
            self.release()
            raise StoreError(f"cannot take the daemon lock on {engine_safe(self.url)}: {exc}") from exc
        if not got:
            self.release()
            raise AlreadyRunning(f"another `dunbot run` already works on the store {engine_safe(self.url)} "
                                 "(its PostgreSQL advisory lock is held); stop it first")

    def verify(self) -> bool:
        """False when the PostgreSQL connection holding the lock was lost (another daemon could now start)."""
        if self._connection is None:
            return True
        try:
            self._connection.execute(sa.text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except SQLAlchemyError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @classmethod
    def held(cls, url: str) -> bool:
        """Whether a daemon holds the lock now (for `dunbot status`); takes and drops it when free."""
        probe = cls(url)
        try:
            probe.acquire()
        except AlreadyRunning:
            return True
        except (StoreError, OSError):
            return False
        probe.release()
        return False
