"""Wiring and lifecycle: config -> store -> tracker -> client -> scheduler -> metrics -> HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl
from aiohttp import web
from prometheus_client import CollectorRegistry

from watcher import __version__
from watcher.azure.auth import CLOUDS, TokenProvider, build_credential, management_endpoint
from watcher.azure.backup import BackupApi
from watcher.azure.client import ArmClient
from watcher.azure.ratelimit import Backoff, SubscriptionLimiter
from watcher.config import Config, apply_env_overrides, load_config, parse_listen
from watcher.errors import ConfigError, WatcherError
from watcher.logs import configure_logging, get_logger
from watcher.metrics import Metrics
from watcher.scheduler import Scheduler
from watcher.state import Tracker
from watcher.store import Store
from watcher.ui import StatusPage
from watcher.web import create_app

log = get_logger("backup_watcher")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The system trust store plus `ca_bundle`, when one is configured."""
    if config.azure.ca_bundle is None:
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(config.azure.ca_bundle))
    return ctx


@dataclass
class AzureSide:
    """The pieces that talk to Azure; rebuilt as one when a reload changes `azure`."""

    session: aiohttp.ClientSession
    tokens: TokenProvider
    client: ArmClient
    api: BackupApi

    async def close(self) -> None:
        await self.session.close()
        await self.tokens.close()

    async def retire(self, wait: float) -> None:
        """End retries now, let requests in flight finish (at most `wait` seconds), then close."""
        self.client.retire()
        with contextlib.suppress(TimeoutError):  # closing the session ends what is left
            await asyncio.wait_for(self.client.idle.wait(), wait)
        await self.close()


def env_proxy(url: str) -> str | None:
    """The proxy HTTPS_PROXY (HTTP_PROXY for a plain-http endpoint, else ALL_PROXY) names for `url`,
    unless NO_PROXY exempts its host; credentials in the proxy's URL are sent to it."""
    target = yarl.URL(url)
    if urllib.request.proxy_bypass(target.host or ""):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def client_settings(config: Config, *, daemon: bool) -> dict[str, Any]:
    """The client's poll settings; the daemon waits in place for a retry no longer than an interval."""
    return {
        "backoff": Backoff(config.poll.backoff_initial, config.poll.backoff_max),
        "concurrency": config.poll.concurrency,
        "request_timeout": config.poll.request_timeout,
        "max_retry_wait": min(config.poll.interval, config.poll.backoff_max) if daemon else None,
    }


def build_azure(
    config: Config, metrics: Metrics | None, limiter: SubscriptionLimiter, *, daemon: bool = False
) -> AzureSide:
    """Session, credential, token cache and client for a config (for the daemon, or for one command)."""
    credential = build_credential(config.azure)
    tokens = TokenProvider(credential, CLOUDS[config.azure.cloud].scope)
    connector = aiohttp.TCPConnector(
        limit=config.poll.concurrency, ssl=ssl_context(config) or True, ttl_dns_cache=300
    )
    # The environment's proxy is looked up once here: with trust_env aiohttp would look proxies and netrc
    # up again, in a thread, for every request.
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        raise_for_status=False,
        proxy=env_proxy(management_endpoint(config.azure)),
    )
    client = ArmClient(
        session=session,
        tokens=tokens,
        endpoint=management_endpoint(config.azure),
        limiter=limiter,
        observer=metrics,
        **client_settings(config, daemon=daemon),
    )
    return AzureSide(session, tokens, client, BackupApi.for_config(client, config))


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The last SIGHUP reload: when, whether it applied, and why not."""

    at: float
    ok: bool
    errors: tuple[str, ...] = ()


@dataclass
class Watcher:
    """The daemon: start() it, stop() it; reload() swaps the config all-or-nothing."""

    config: Config
    config_path: str | None = None
    shard: tuple[int, int] | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    clock: Callable[[], float] = time.time
    listen: str | None = None
    grace: float = 5.0

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        self.last_reload: ReloadOutcome | None = None
        self.metrics = Metrics(self.registry, __version__)
        self.stop_event = asyncio.Event()
        self.store: Store | None = None
        self.tracker: Tracker | None = None
        self.azure: AzureSide | None = None
        self.scheduler: Scheduler | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.failure: BaseException | None = None
        # One limiter for the daemon's life: what it learnt of throttling survives a reload.
        self.limiter = SubscriptionLimiter(
            self.config.poll.ratelimit_burst,
            self.config.poll.ratelimit_per_second,
            on_remaining=self.metrics.remaining,
        )

    async def start(self) -> None:
        """Open the store, restore state, start serving and polling."""
        self.store = Store.open(self.config.store.path)
        try:
            self.tracker = Tracker(self.store, clock=self.clock)
            self.metrics.watch(self.tracker)
            self.azure = build_azure(self.config, self.metrics, self.limiter, daemon=True)
            self.scheduler = Scheduler(
                self.tracker, self.azure.client, self.config, shard=self.shard, clock=self.clock
            )
            await self._serve()
        except BaseException:
            await self.close()
            raise
        self._loop_task = asyncio.create_task(self._guarded_loop(), name="scheduler")
        log.info(
            "watcher_started",
            version=__version__,
            vaults=len(self.tracker.vaults),
            subscriptions=len(self.config.subscriptions),
            jobs=sum(len(data.active) for data in self.tracker.data.values()),
            listen=f"{self.listen_host}:{self.port}",
            endpoint=self.azure.client.endpoint,
            cloud=self.config.azure.cloud,
            auth=self.config.azure.credential,
            shard=f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            store=str(self.config.store.path),
        )

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen or self.config.http.listen)[0]

    async def _serve(self) -> None:
        assert self.tracker is not None
        app = create_app(
            render=self.metrics.body,
            healthy=self.healthy,
            ready=lambda: self.scheduler is not None and self.scheduler.ready,
            jobs=self.tracker.api_jobs,
            stale=self.stale_vaults,
            clock=self.clock,
            page=StatusPage(self),
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site, self.port = await self._bind(self.listen or self.config.http.listen)

    async def _bind(self, listen: str) -> tuple[web.TCPSite, int]:
        assert self._runner is not None
        host, port = parse_listen(listen)
        site = web.TCPSite(self._runner, host, port)
        before = set(map(str, self._runner.addresses))
        try:
            await site.start()
        except OSError as exc:
            raise WatcherError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # The port actually bound (port 0 asks for any): the address the runner gained.
        new = [a for a in self._runner.addresses if str(a) not in before]
        return site, int(new[0][1]) if new else port

    def healthy(self) -> bool:
        return (
            self.scheduler is not None
            and self._loop_task is not None
            and not self._loop_task.done()
            and self.scheduler.healthy()
        )

    def stale_vaults(self) -> list[str]:
        """One line per vault without a good poll for several intervals, or whose inventory keeps failing."""
        if self.scheduler is None:
            return []
        out = []
        now = self.scheduler.monotonic()
        for s in self.scheduler.stale_vaults():
            ref = s.ref
            why = s.why(now)
            out.append(
                f"{ref.subscription_id}/{ref.resource_group}/{ref.name}: no good poll for "
                f"{int(now - (s.last_ok or s.watched_since))}s" + (f" ({why})" if why else "")
            )
        for s in self.scheduler.stale_inventories():
            ref = s.ref
            out.append(
                f"{ref.subscription_id}/{ref.resource_group}/{ref.name}: inventory failing for "
                f"{int(now - (s.inventory_failing_since or now))}s ({s.last_inventory_error}); "
                "its items left /metrics"
            )
        return out

    async def _guarded_loop(self) -> None:
        assert self.scheduler is not None
        try:
            await self.scheduler.run(self.stop_event, grace=self.grace)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A crashed loop must not leave a daemon that serves stale metrics as if all were well.
            self.failure = exc
            log.exception("scheduler_crashed", error=str(exc))
            self.stop_event.set()

    async def wait(self) -> None:
        """Until stop() is asked for (a signal) or the loop fails."""
        await self.stop_event.wait()

    async def reload(self, path: str | None = None) -> bool:
        """Re-read the config; apply it whole, or keep the old one whole."""
        source = path or self.config_path
        if source is None:
            return False
        site: tuple[web.TCPSite, int] | None = None
        try:
            new = apply_env_overrides(load_config(source))
            if str(new.store.path) != str(self.config.store.path):
                raise ConfigError(
                    source, [("store.path", "cannot change while running; restart to move the store")]
                )
            if self.listen is None and new.http.listen != self.config.http.listen:
                site = await self._bind(new.http.listen)
            azure = build_azure(new, self.metrics, self.limiter) if new.azure != self.config.azure else None
        except WatcherError as exc:
            if site is not None:
                await site[0].stop()
            self.metrics.config_reload_ok.set(0)
            lines = exc.lines() if isinstance(exc, ConfigError) else [str(exc)]
            self.last_reload = ReloadOutcome(self.clock(), ok=False, errors=tuple(lines))
            log.error("config_reload_failed", config=source, errors=lines)
            return False
        assert self.tracker is not None
        assert self.scheduler is not None
        assert self.azure is not None
        old = self.config
        old_azure = self.azure
        if site is not None:
            old_site, (self._site, self.port) = self._site, site
            if old_site is not None:
                await old_site.stop()
        if new.logging != old.logging:
            configure_logging(new.logging.format, new.logging.level)
        self.limiter.reconfigure(new.poll.ratelimit_burst, new.poll.ratelimit_per_second)
        if azure is not None:
            self.azure = azure
            # Retries still waiting on the old client end now; what is in flight finishes, then it closes.
            task = asyncio.create_task(old_azure.retire(new.poll.request_timeout + 1))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        else:
            self.azure.client.reconfigure(**client_settings(new, daemon=True))
        self.config = new
        removed = self.scheduler.reconfigure(new, azure.client if azure else None)
        self.metrics.forget_subscriptions(v.ref.subscription_id for v in self.tracker.vaults.values())
        self.metrics.config_reload_ok.set(1)
        self.last_reload = ReloadOutcome(self.clock(), ok=True)
        log.info(
            "config_reloaded",
            config=source,
            vaults=len(self.tracker.vaults),
            removed=[r.name for r in removed],
            azure_rebuilt=azure is not None,
            listen=f"{self.listen_host}:{self.port}",
            ignored=["http.listen (--listen given)"]
            if self.listen is not None and new.http.listen != old.http.listen
            else [],
        )
        return True

    async def stop(self) -> None:
        """Stop intake, let in-flight requests finish within the grace period, close everything."""
        self.stop_event.set()
        if self.azure is not None:
            self.azure.client.stopping.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=self.grace + 2)
            except TimeoutError:
                self._loop_task.cancel()
                await asyncio.gather(self._loop_task, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.azure is not None:
            await self.azure.close()
            self.azure = None
        if self.store is not None:
            self.store.close()
            self.store = None


async def _freeze_after_first_round(watcher: Watcher) -> None:
    """Once the first round is done, move what it built out of the garbage collector's sight.

    The restored store, the inventory and every vault's state live as long as the process: left in the
    collector's oldest generation, each full collection walks them all again (at a thousand vaults a
    pause of over 100 ms on the event loop). Frozen, they are still freed when no longer referenced; only
    a reference cycle among them would now stay, which the daemon's long-lived state does not make.
    """
    while not watcher.stop_event.is_set():
        scheduler = watcher.scheduler
        if scheduler is not None and scheduler.ready:
            gc.collect()
            gc.freeze()
            log.debug("first_round_frozen", objects=gc.get_freeze_count())
            return
        await asyncio.sleep(1.0)


async def run_daemon(
    config: Config,
    *,
    config_path: str | None,
    shard: tuple[int, int] | None = None,
    listen: str | None = None,
    on_started: Callable[[Watcher], Any] | None = None,
    setup: Callable[[Watcher], Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit status."""
    watcher = Watcher(config, config_path=config_path, shard=shard, listen=listen)
    if setup is not None:
        setup(watcher)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        if watcher.tracker is None:
            return  # still starting: the config being loaded is the newest anyway
        task = asyncio.ensure_future(watcher.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_stop(signame: str) -> None:
        if not watcher.stop_event.is_set():
            log.info("shutdown_requested", signal=signame)
        watcher.stop_event.set()

    # Handlers first: a SIGTERM while the store opens or the port binds still ends cleanly.
    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    freezing: asyncio.Task[None] | None = None
    try:
        await watcher.start()
        if on_started is not None:
            on_started(watcher)
        freezing = asyncio.create_task(_freeze_after_first_round(watcher), name="gc freeze")
        await watcher.wait()
    finally:
        if freezing is not None:
            freezing.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await watcher.stop()
    if watcher.failure is not None:
        return 1
    log.info("watcher_stopped")
    return 0
