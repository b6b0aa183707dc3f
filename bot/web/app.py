"""The triage web app: its settings, its shared state, its routes, and the factory that ties them together.

`create_app` is all `dunbot serve` and the tests need. Everything a handler uses lives on one
`Web` object (request.app.state.web), built here and passed nowhere else implicitly.
"""

from __future__ import annotations

import logging
import os
import secrets
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bot.casebook import CaseBook
from bot.config import Settings
from bot.errors import ConfigError
from bot.store import Store
from bot.web import actions, auth, views
from bot.web.pages import make_templates, render
from bot.web.reporting import Reports
from bot.web.sessions import AuthMiddleware, Sessions

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The [web] table of config.toml; every key is optional."""

    secret_env: str = "DUNBOT_WEB_SECRET"
    session_hours: float = 12.0
    login_delay: float = 1.0


def web_settings(settings: Settings) -> WebSettings:
    """Read [web] from the config file itself: bot.config does not know the table, and need not."""
    try:
        data = tomllib.loads(settings.source.read_text(encoding="utf-8")).get("web", {})
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{settings.source}: [web] must be a table")
    defaults = WebSettings()
    try:
        result = WebSettings(secret_env=str(data.get("secret_env", defaults.secret_env)),
                             session_hours=float(data.get("session_hours", defaults.session_hours)),
                             login_delay=float(data.get("login_delay", defaults.login_delay)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{settings.source}: [web] {exc}") from exc
    if not 0 < result.session_hours <= 24 * 30:
        raise ConfigError(f"{settings.source}: [web.session_hours] must be between 0 and 720")
    return result


def session_secret(config: WebSettings) -> str:
    """The key that signs session cookies: from the environment, else random (sessions end with the process)."""
    secret = os.environ.get(config.secret_env, "")
    if secret:
        if len(secret) < 32:
            raise ConfigError(f"the environment variable {config.secret_env} holds a session secret shorter than 32 "
                              "characters; use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
        return secret
    log.warning("no session secret in the environment variable %s: using a random one, so everyone must log in "
                "again after a restart, and several server processes cannot share sessions", config.secret_env)
    return secrets.token_urlsafe(48)


@dataclass(slots=True)
class Web:
    """What every handler shares: configuration, the store, the clock and the pieces built from them."""

    settings: Settings
    store: Store
    clock: Callable[[], datetime]
    sessions: Sessions
    login_delay: float
    book: CaseBook = field(init=False)
    templates: Jinja2Templates = field(init=False)
    throttle: auth.Throttle = field(default_factory=auth.Throttle)
    reports: Reports = field(init=False)

    def __post_init__(self) -> None:
        self.book = CaseBook(self.store, self.settings)
        self.templates = make_templates(self)
        self.reports = Reports(self)

    def today(self) -> date:
        return self.clock().astimezone(ZoneInfo(self.settings.company.timezone)).date()


async def error_page(request: Request, exc: Exception) -> Response:
    """Errors as a page in the site's layout; never a traceback."""
    if isinstance(exc, HTTPException):
        status, message = exc.status_code, exc.detail
    else:
        log.exception("error on %s %s", request.method, request.url.path, exc_info=exc)
        status, message = 500, "Something went wrong on our side; it has been logged. Go back and try again."
    if "dunbot.session" not in request.scope:
        return Response(message, status, media_type="text/plain")
    return render(request, "error.html", {"status": status, "message": message}, status)


def routes() -> list[Route | Mount]:
    return [
        Route("/", views.home),
        Route("/login", auth.login_page, methods=["GET"]),
        Route("/login", auth.login, methods=["POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/cases", views.queue),
        Route("/cases/{customer_id}", views.case_page),
        Route("/cases/{customer_id}/export", views.export),
        *(Route(f"/cases/{{customer_id}}/{name}", actions.endpoint(name, action), methods=["POST"])
          for name, action in actions.ACTIONS.items()),
        Route("/reports", views.reports),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def create_app(settings: Settings, store: Store | None = None, *, clock: Callable[[], datetime] | None = None,
               secret: str | None = None, login_delay: float | None = None) -> Starlette:
    """The ASGI app. Without a store it opens (and at shutdown closes) the one in the settings."""
    config = web_settings(settings)
    owned = store is None
    the_store = store if store is not None else Store.open(settings.store_url)
    zone = ZoneInfo(settings.company.timezone)
    web = Web(settings=settings, store=the_store, clock=clock or (lambda: datetime.now(zone)),
              sessions=Sessions(secret or session_secret(config), int(config.session_hours * 3600)),
              login_delay=config.login_delay if login_delay is None else login_delay)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        web.reports.warm()
        yield
        if owned:
            the_store.close()

    handlers: dict[Any, Any] = {HTTPException: error_page, Exception: error_page}
    app = Starlette(routes=routes(), middleware=[Middleware(AuthMiddleware, web=web)],
                    exception_handlers=handlers, lifespan=lifespan)
    app.state.web = web
    return app
