"""Who is asking: signed session cookies, and a CSRF token on every form.

The session is a cookie signed with HMAC-SHA256 (itsdangerous): user name, session id, CSRF token,
log-in time and pending flash messages. Nothing in it is secret, and nothing can be changed
without the key. The cookie is HttpOnly and SameSite=Lax, and Secure when the request came over
https, directly or through a proxy uvicorn trusts (`--forwarded-allow-ips`). A session ends after
`session_hours`, at log-out (its id is revoked in this process), or once its user leaves the store.

Default deny: the middleware sends anyone not logged in to /login (GET) or refuses with 401
(anything else); only the paths in PUBLIC are open. Every POST handler reads its form through
`checked_form`, which refuses a missing or wrong CSRF token with 403 before anything else happens.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.users import User, get_user

if TYPE_CHECKING:
    from bot.web.app import Web

log = logging.getLogger(__name__)

COOKIE = "dunbot_session"
CSRF_FIELD = "csrf_token"
PUBLIC = ("/login", "/static/")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


@dataclass(slots=True)
class Session:
    """One browser's session; `modified` tells the middleware to send the cookie again."""

    sid: str
    csrf: str
    user: str | None = None
    issued: float = 0.0
    flashes: list[list[str]] = field(default_factory=list)
    modified: bool = False

    @classmethod
    def new(cls, user: str | None = None, now: float = 0.0) -> Session:
        return cls(secrets.token_urlsafe(18), secrets.token_urlsafe(32), user, now, modified=True)

    def flash(self, level: str, text: str) -> None:
        self.flashes.append([level, text])
        self.modified = True

    def pop_flashes(self) -> list[list[str]]:
        shown, self.flashes = self.flashes, []
        if shown:
            self.modified = True
        return shown


class Sessions:
    """Encodes sessions into signed cookies and remembers the ids revoked by log-out."""

    def __init__(self, secret: str, max_age: int) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="dunbot.web.session",
                                                 signer_kwargs={"digest_method": hashlib.sha256})
        self.max_age = max_age
        self.revoked: dict[str, float] = {}

    def load(self, cookie: str | None, now: float) -> Session:
        if not cookie:
            return Session.new(now=now)
        try:
            data: Any = self.serializer.loads(cookie, max_age=self.max_age)
            session = Session(str(data["s"]), str(data["c"]), data.get("u"), float(data.get("t", 0)),
                              [list(map(str, f)) for f in data.get("f", [])][:10])
        except (BadSignature, KeyError, TypeError, ValueError):
            return Session.new(now=now)
        if session.user and (session.issued + self.max_age < now or session.sid in self.revoked):
            return Session.new(now=now)
        return session

    def cookie(self, session: Session, secure: bool) -> str:
        value = self.serializer.dumps({"s": session.sid, "c": session.csrf, "u": session.user, "t": session.issued,
                                       "f": session.flashes})
        return (f"{COOKIE}={value}; Path=/; Max-Age={self.max_age}; HttpOnly; SameSite=Lax"
                + ("; Secure" if secure else ""))

    def revoke(self, session: Session, now: float) -> None:
        self.revoked = {sid: until for sid, until in self.revoked.items() if until > now}
        self.revoked[session.sid] = session.issued + self.max_age


def session_of(request: HTTPConnection) -> Session:
    session: Session = request.scope["dunbot.session"]
    return session


def user_of(request: HTTPConnection) -> User:
    """The logged-in user; the middleware guarantees one on every non-public path."""
    user: User | None = request.scope.get("user")
    if user is None:
        raise HTTPException(401, "log in first")
    return user


def _public(path: str) -> bool:
    return path == PUBLIC[0] or path.startswith(PUBLIC[1])


class AuthMiddleware:
    """Loads the session and its user into the scope, refuses strangers, and writes the cookie back."""

    def __init__(self, app: ASGIApp, web: Web) -> None:
        self.app, self.web = app, web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        session = self.web.sessions.load(connection.cookies.get(COOKIE), time.time())
        user = None
        if session.user:
            user = await run_in_threadpool(get_user, self.web.store, session.user)
            if user is None:
                session = Session.new(now=time.time())
        scope["dunbot.session"], scope["user"] = session, user
        secure = scope.get("scheme") == "https"
        static = scope["path"].startswith(PUBLIC[1])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                current: Session = scope["dunbot.session"]  # log-in and log-out replace it
                if current.modified:
                    headers.append("set-cookie", self.web.sessions.cookie(current, secure))
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("cache-control", "no-store")
            await send(message)

        if user is None and not _public(scope["path"]):
            response: Response
            if scope["method"] in ("GET", "HEAD"):
                query = scope["query_string"].decode("latin-1")
                target = scope["path"] + (f"?{query}" if query else "")
                response = RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
            else:
                response = PlainTextResponse("Log in first.", 401)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def checked_form(request: Request) -> FormData:
    """The POSTed form, only if it carries this session's CSRF token; 403 otherwise."""
    form = await request.form(max_files=0, max_fields=200)
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), session_of(request).csrf.encode()):
        raise HTTPException(403, "This form has expired or did not come from this site. Reload the page and try "
                                 "again.")
    return form


