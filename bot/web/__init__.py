"""The triage web page for salespeople and finance: `dunbot serve`.

Server-rendered pages (Starlette + Jinja2, plain HTML forms, no JavaScript) over the same
CaseBook the command line uses. Modules: app (settings, routes, factory), sessions (cookies,
CSRF, default-deny middleware), auth (log-in), views (pages), actions (forms), handwritten
(replies written by a person), reporting + charts (figures as inline SVG), pages (templates),
queries (the few direct reads).
"""

from bot.web.app import create_app

__all__ = ["create_app"]
