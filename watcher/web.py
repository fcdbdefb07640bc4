"""The HTTP side: /metrics, /healthz, /readyz, /api/jobs, and the status page's routes."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from watcher import __version__
from watcher.azure.models import VaultKind
from watcher.config import parse_duration
from watcher.metrics import WRITE_BYTES, Body

API_LIMIT_DEFAULT = 100
API_LIMIT_MAX = 1000
_API_PARAMS = ("subscription", "vault", "vault_type", "status", "since", "limit", "cursor")


class JobPages(Protocol):
    def __call__(
        self,
        *,
        subscription: str | None = ...,
        vault: str | None = ...,
        vault_type: str | None = ...,
        status: str | None = ...,
        since: float | None = ...,
        limit: int = ...,
        cursor: str | None = ...,
    ) -> tuple[list[dict[str, Any]], str | None]: ...


class Page(Protocol):
    """The status page's handlers (watcher.ui.StatusPage)."""

    def enabled(self) -> bool: ...
    async def index(self, request: web.Request) -> web.StreamResponse: ...
    async def job(self, request: web.Request) -> web.StreamResponse: ...
    async def stylesheet(self, request: web.Request) -> web.StreamResponse: ...


class BadQuery(ValueError):
    """A query string the API cannot answer; the message names the parameter."""


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (and does not refuse it with q=0)."""
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() not in ("gzip", "x-gzip"):
            continue
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        try:
            return match is None or float(match.group(1)) > 0
        except ValueError:
            return False
    return False


def parse_since(value: str, now: float) -> float:
    """`24h`-style durations back from now, an ISO 8601 time, or Unix seconds."""
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+", text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadQuery(
            "since: expected a duration back from now (24h, 30m), an ISO 8601 time or Unix seconds, "
            f"got {value[:40]!r}"
        ) from None
    if moment.tzinfo is None:
        raise BadQuery(f"since: an ISO 8601 time needs a zone (Z or +00:00), got {value[:40]!r}")
    return moment.timestamp()


def job_query(query: Any, now: float) -> dict[str, Any]:
    """The filters and paging of /api/jobs from a query string; BadQuery names what is wrong."""
    unknown = sorted(set(query) - set(_API_PARAMS))
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; known: {', '.join(_API_PARAMS)}")
    args: dict[str, Any] = {}
    for name in ("subscription", "vault", "status", "cursor"):
        value = query.get(name)
        if value:
            args[name] = value
    vault_type = query.get("vault_type")
    if vault_type:
        kinds = [kind.value for kind in VaultKind]
        if vault_type not in kinds:
            raise BadQuery(f"vault_type: expected one of {', '.join(kinds)}, got {vault_type[:40]!r}")
        args["vault_type"] = vault_type
    if query.get("since"):
        args["since"] = parse_since(query["since"], now)
    limit = query.get("limit")
    if limit:
        if not re.fullmatch(r"\d{1,6}", limit) or not 1 <= int(limit) <= API_LIMIT_MAX:
            raise BadQuery(f"limit: expected a whole number from 1 to {API_LIMIT_MAX}, got {limit[:40]!r}")
        args["limit"] = int(limit)
    else:
        args["limit"] = API_LIMIT_DEFAULT
    return args


async def write_body(request: web.Request, body: Body, headers: dict[str, str]) -> web.StreamResponse:
    """Send a body already in pieces, a few hundred KiB per write, without joining it whole."""
    response = web.StreamResponse(headers=headers)
    if body.gzip:
        response.headers["Content-Encoding"] = "gzip"
    response.content_length = body.length
    await response.prepare(request)
    pending: list[bytes] = []
    size = 0
    for part in body.parts:
        pending.append(part)
        size += len(part)
        if size >= WRITE_BYTES:
            await response.write(b"".join(pending))
            pending, size = [], 0
    if pending:
        await response.write(b"".join(pending))
    await response.write_eof()
    return response


def create_app(
    *,
    render: Callable[[bool, bool], Awaitable[Body]],
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    jobs: JobPages,
    stale: Callable[[], list[str]] = list,
    clock: Callable[[], float] = time.time,
    page: Page | None = None,
) -> web.Application:
    """An aiohttp application serving the watcher's endpoints."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        _encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        body = await render(content_type.startswith("application/openmetrics-text"), gzip)
        return await write_body(request, body, {"Content-Type": content_type, "Vary": "Accept-Encoding"})

    async def healthz(_request: web.Request) -> web.Response:
        # The process's health: a vault that cannot be polled is reported here (and alerted on through
        # the metrics), but a restart would not cure it, so it does not turn the answer into a 503.
        if not healthy():
            return web.Response(status=503, text="scheduler loop is stuck or has stopped\n")
        lagging = stale()
        if not lagging:
            return web.Response(text="ok\n")
        lines = "".join(f"  {line}\n" for line in lagging)
        return web.Response(
            text=f"ok, but {len(lagging)} vault problem(s) lasting several intervals:\n{lines}"
        )

    async def readyz(_request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first poll round not complete yet\n")

    async def api_jobs(request: web.Request) -> web.Response:
        try:
            args = job_query(request.query, clock())
            listed, cursor = jobs(**args)
        except ValueError as exc:  # BadQuery, or a cursor the store did not give
            return web.json_response({"error": str(exc)}, status=400)
        following = None
        if cursor is not None:
            params = {k: v for k, v in request.query.items() if k != "cursor"} | {"cursor": cursor}
            following = f"{request.path}?{urlencode(params)}"
        return web.json_response(
            {
                "version": __version__,
                "count": len(listed),
                "jobs": listed,
                "next_cursor": cursor,
                "next": following,
            }
        )

    async def endpoints(_request: web.Request) -> web.Response:
        return web.Response(
            text="backup-watcher\n/metrics  Prometheus metrics\n/healthz  liveness\n"
            "/readyz   readiness\n/api/jobs tracked jobs as JSON\n"
        )

    async def index(request: web.Request) -> web.StreamResponse:
        if page is None or not page.enabled():
            return await endpoints(request)
        return await page.index(request)

    async def job(request: web.Request) -> web.StreamResponse:
        if page is None or not page.enabled():
            raise web.HTTPNotFound(text="the status page is off (http.ui: false)\n")
        return await page.job(request)

    async def stylesheet(request: web.Request) -> web.StreamResponse:
        if page is None or not page.enabled():
            raise web.HTTPNotFound()
        return await page.stylesheet(request)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/jobs/{job_id}", job)
    app.router.add_get("/static/watcher.css", stylesheet)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/jobs", api_jobs)
    return app
