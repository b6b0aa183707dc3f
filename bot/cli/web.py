"""`dunbot serve`: the triage web page for salespeople and finance, behind uvicorn."""

from __future__ import annotations

import ipaddress
import logging

import click
import uvicorn

from bot.cli.common import _common, _open_store, main
from bot.config import Settings

log = logging.getLogger("bot.web")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@main.command("serve")
@_common
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="The TCP port.")
def serve_command(settings: Settings, host: str, port: int) -> None:
    """Serve the triage page: log in, work the queue of cases, see the reports.

    Listen on loopback and put an HTTPS reverse proxy in front for anyone else: cookies are marked
    Secure when the proxy says the request came over https (X-Forwarded-Proto, trusted from
    127.0.0.1 only). The session key comes from the environment variable named by [web] secret_env
    (default DUNBOT_WEB_SECRET).
    """
    from bot.web import create_app  # the web stack is imported only by the command that needs it

    if not _loopback(host):
        log.warning("serving on %s, not a loopback address: the page is plain HTTP; put it behind an HTTPS "
                    "reverse proxy", host)
    logging.getLogger("bot").setLevel(min(logging.getLogger("bot").getEffectiveLevel(), logging.INFO))
    store = _open_store(settings)
    try:
        app = create_app(settings, store)
        click.echo(f"Dunbot triage page on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
        uvicorn.run(app, host=host, port=port, proxy_headers=True, forwarded_allow_ips="127.0.0.1",
                    server_header=False, log_level="info", access_log=False)
    finally:
        store.close()
