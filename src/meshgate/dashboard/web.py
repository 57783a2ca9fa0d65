"""The dashboard's routes on the admin server: the page at / and /api/*.

`dashboard_routes(state)` returns aiohttp route definitions that the admin
server adds to its one application, so whatever guards the admin API
(its middlewares, a future bearer token) guards the page too.

The page is three static files shipped in the package (static/), read once
when the routes are made and served from memory: no build step, no CDN (a
mesh gateway often has no internet), nothing written at run time. The page
gets a strict Content-Security-Policy: it loads only its own script and
style and talks only to this server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from aiohttp import hdrs, web

from meshgate.dashboard import api

if TYPE_CHECKING:
    from meshgate.admin import AdminState

# name -> content type; nothing else under /static/ is served.
STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The files change only with the package; "no-cache" still makes the browser
# ask (cheaply) after an upgrade instead of running an old script.
_STATIC_HEADERS: Final = {
    hdrs.CACHE_CONTROL: "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
}

# Live numbers: no HTTP cache may keep them.
_API_HEADERS: Final = {hdrs.CACHE_CONTROL: "no-store"}

# /api/stats collects every metric (about 18 ms for 4,000 series) on the
# event loop the data plane shares; one collection answers every request
# within this age, so more open pages (each polls every 1.5 s) cost no more.
STATS_MAX_AGE: Final = 1.0


def _load_static() -> dict[str, bytes]:
    folder = resources.files("meshgate.dashboard").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}


def dashboard_routes(
    state: AdminState, clock: Callable[[], float] = time.time
) -> list[web.RouteDef]:
    """The page, its files and the JSON documents it polls."""
    files = _load_static()

    def static(name: str) -> web.Response:
        return web.Response(
            body=files[name], headers={hdrs.CONTENT_TYPE: STATIC_FILES[name], **_STATIC_HEADERS}
        )

    async def page(request: web.Request) -> web.Response:
        return static("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return static(name)

    async def overview(request: web.Request) -> web.Response:
        return _json(api.overview(state, clock()))

    latest: dict[str, Any] | None = None

    async def stats(request: web.Request) -> web.Response:
        nonlocal latest
        now = clock()
        # A clock set back also collects anew.
        if latest is None or not 0 <= now - latest["time"] < STATS_MAX_AGE:
            latest = api.stats(state, now)
        return _json(latest)

    async def errors(request: web.Request) -> web.Response:
        return _json(api.errors(state))

    return [
        web.get("/", page),
        web.get("/static/{name}", asset),
        web.get("/api/overview", overview),
        web.get("/api/stats", stats),
        web.get("/api/errors", errors),
    ]


def _json(data: Any) -> web.Response:
    # Compact: the page polls these every 1-2 s; people can pipe them to jq.
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        content_type="application/json",
        headers=_API_HEADERS,
    )
