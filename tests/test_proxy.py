"""The daemon honours the environment's proxy settings (looked up once, not per request)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import SUB, make_config, running_watcher, wait_for
from watcher.app import env_proxy
from watcher.sim import Simulator

PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class Proxy:
    """A forward HTTP proxy on loopback that records what it carried and the credentials it was given."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.auth: set[str | None] = set()
        self.port = 0

    async def forward(self, request: web.Request) -> web.Response:
        self.urls.append(str(request.url))
        self.auth.add(request.headers.get("Proxy-Authorization"))
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-authorization")
        }
        async with (
            aiohttp.ClientSession() as http,
            http.request(request.method, request.url, headers=headers, data=await request.read()) as resp,
        ):
            body = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "retry-after")}
            return web.Response(status=resp.status, body=body, headers=kept)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy.port = runner.addresses[0][1]
    yield proxy
    await runner.cleanup()


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _config(sim: Simulator, tmp_path: Path) -> object:
    vault = {"subscription_id": SUB, "resource_group": "rg-proxy", "name": "vault-proxy", "discover": True}
    return make_config(sim.url, [vault], tmp_path / "s.sqlite3")


async def test_requests_to_azure_go_through_the_proxy_the_environment_names(
    tmp_path: Path, sim: Simulator, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set (the simulator speaks plain http), job listings reach Azure through the
    proxy, with the credentials its URL carries."""
    monkeypatch.setenv("HTTP_PROXY", f"http://watcher:s%40cret@127.0.0.1:{proxy.port}")
    async with running_watcher(_config(sim, tmp_path)) as watcher:  # type: ignore[arg-type]
        await wait_for(lambda: watcher.scheduler is not None and watcher.scheduler.ready)
    assert any("/backupJobs" in url for url in proxy.urls)
    assert proxy.auth == {"Basic " + base64.b64encode(b"watcher:s@cret").decode()}


async def test_no_proxy_exempts_a_host(
    tmp_path: Path, sim: Simulator, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    async with running_watcher(_config(sim, tmp_path)) as watcher:  # type: ignore[arg-type]
        await wait_for(lambda: watcher.scheduler is not None and watcher.scheduler.ready)
    assert proxy.urls == []


def test_an_https_endpoint_uses_https_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://other.example:8080")
    assert env_proxy("https://management.azure.com") == "http://proxy.corp.example:3128"
    monkeypatch.setenv("NO_PROXY", ".azure.com")
    assert env_proxy("https://management.azure.com") is None
