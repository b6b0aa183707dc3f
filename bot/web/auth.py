"""Log-in and log-out, with failed log-ins slowed down.

Passwords are checked by `bot.users.authenticate` (argon2, in a worker thread: it is slow on
purpose). A successful log-in starts a fresh session (new id, new CSRF token), so a session id
planted before log-in is worthless; log-out revokes the id and clears the cookie.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bot.users import authenticate
from bot.web.pages import render
from bot.web.sessions import Session, checked_form, session_of

if TYPE_CHECKING:
    from bot.web.app import Web

log = logging.getLogger(__name__)


class Throttle:
    """Slows down guessing: after `limits[kind]` failures within `window` seconds a key waits, twice as long each time.

    Keys are "user:<name>" and "ip:<address>": one attacker can try neither many passwords for one
    name nor many names from one address quickly. An address gets more tries than a name, since an
    office behind one NAT shares it.
    """

    def __init__(self, limits: dict[str, int] | None = None, window: float = 900.0, base: float = 30.0,
                 longest: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or {"user": 5, "ip": 20}
        self.window, self.base, self.longest, self.clock = window, base, longest, clock
        self.failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        recent = [t for t in self.failures.get(key, []) if t > now - self.window]
        if recent:
            self.failures[key] = recent
        else:
            self.failures.pop(key, None)
        return recent

    def wait(self, keys: tuple[str, ...]) -> float:
        """Seconds until these keys may try again (0: now)."""
        now, longest = self.clock(), 0.0
        for key in keys:
            recent, limit = self._recent(key, now), self.limits.get(key.partition(":")[0], 5)
            if len(recent) >= limit:
                pause = min(self.base * 2 ** (len(recent) - limit), self.longest)
                longest = max(longest, recent[-1] + pause - now)
        return max(longest, 0.0)

    def fail(self, keys: tuple[str, ...]) -> None:
        now = self.clock()
        if len(self.failures) > 10_000:
            for key in list(self.failures):
                self._recent(key, now)
        for key in keys:
            self.failures.setdefault(key, []).append(now)

    def succeed(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.failures.pop(key, None)


def _next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/cases"


def login_page(request: Request) -> Response:
    if request.scope.get("user") is not None:
        return RedirectResponse(_next(request.query_params.get("next")), 303)
    session_of(request).modified = True  # an anonymous session carries the log-in form's CSRF token
    return render(request, "login.html", {"next": _next(request.query_params.get("next")), "error": None,
                                          "username": ""})


async def login(request: Request) -> Response:
    web: Web = request.app.state.web
    form = await checked_form(request)
    username = str(form.get("username", "")).strip().lower()[:64]
    password = str(form.get("password", ""))[:1024]
    target = _next(str(form.get("next", "")))
    keys = (f"user:{username}", f"ip:{request.client.host if request.client else '-'}")
    wait = web.throttle.wait(keys)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        return render(request, "login.html", {"next": target, "username": username,
                                              "error": f"Too many failed log-ins. Try again in {minutes} "
                                                       f"minute{'s' if minutes > 1 else ''}."}, 429)
    user = await run_in_threadpool(authenticate, web.store, username, password) if username and password else None
    if user is None:
        web.throttle.fail(keys)
        log.warning("failed log-in for %r from %s", username, keys[1][3:])
        await asyncio.sleep(web.login_delay)
        return render(request, "login.html", {"next": target, "username": username,
                                              "error": "Wrong user name or password."}, 401)
    web.throttle.succeed(keys[:1])
    fresh = Session.new(user.username, time.time())  # a new id and token at log-in: no session fixation
    request.scope["dunbot.session"] = fresh
    log.info("%s logged in from %s", user.username, keys[1][3:])
    return RedirectResponse(target, 303)


async def logout(request: Request) -> Response:
    web: Web = request.app.state.web
    await checked_form(request)
    web.sessions.revoke(session_of(request), time.time())
    fresh = Session.new(now=time.time())
    fresh.flash("ok", "You are logged out.")
    request.scope["dunbot.session"] = fresh
    return RedirectResponse("/login", 303)
