"""The HTTP side: /metrics, /healthz, /readyz and /api/jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from watcher import __version__


def create_app(
    *,
    render: Callable[[bool], bytes],
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    jobs: Callable[[], list[dict[str, Any]]],
    stale: Callable[[], list[str]] = list,
) -> web.Application:
    """An aiohttp application serving the watcher's endpoints."""

    async def metrics(request: web.Request) -> web.Response:
        _encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = render(content_type.startswith("application/openmetrics-text"))
        return web.Response(body=body, headers={"Content-Type": content_type})

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

    async def api_jobs(_request: web.Request) -> web.Response:
        listed = jobs()
        return web.json_response({"version": __version__, "count": len(listed), "jobs": listed})

    async def index(_request: web.Request) -> web.Response:
        return web.Response(
            text="backup-watcher\n/metrics  Prometheus metrics\n/healthz  liveness\n"
            "/readyz   readiness\n/api/jobs tracked jobs as JSON\n"
        )

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/jobs", api_jobs)
    return app
