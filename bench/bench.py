"""Benchmark: the watcher against the simulator at production scale, and the official SDK as baseline.

    python -m bench.bench              # 200 vaults x 50 jobs = 10,000 jobs; about 3 minutes on 2 cores
    python -m bench.bench --quick      # 5 vaults x 10 jobs; a smoke run of about 15 seconds

The simulator runs in a child process (`bench.simserver`), so the CPU seconds and peak RSS this process
reports are the watcher's (plus this script's small bookkeeping). The watcher (`watcher.app.Watcher`, as
`backup-watcher run` builds it) discovers every job: each vault is configured with `discover: true` and
no job ids, which is how an estate of thousands of jobs is watched in production (job ids are named for
the few jobs a pipeline triggers). The run goes through these phases:

1. the first round, which discovers the estate (one listing per vault); then /metrics with every job
   running, rendered in-process (what the /metrics handler runs) and fetched over HTTP;
2. `--cpu-rounds` quiet rounds: requests, round time and CPU per 1,000 job checks, nothing else running;
3. `--scrape-rounds` rounds while /metrics is scraped every `--scrape-every` seconds, as Prometheus
   would; then /metrics again (by now some jobs have finished and have per-item series);
4. with the watcher stopped and its peak RSS read: the estate once every job has ended, in a fresh
   process (a tracker fed each job's final body: the largest /metrics this estate makes, and that
   process's peak RSS); then the same sample of single-job GETs sent with our client and with the
   official async SDK.

A "job check" is one job's status refreshed in a round, by a batched listing or a GET (each job that a
`Tracker.observe_many` call records). Detection latency is, for each job seen running that then ends,
the time from its end in the simulator to the moment its final status reaches the tracker's memory,
which the very next /metrics renders (`Tracker.listeners` is told right then); the scrapes of phase 3
check that claim against /metrics itself. The benchmark observes the watcher by wrapping three of its
methods on the instances (`run_round`, `discover`, `observe_many`); it changes no behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from bench.simserver import ARM_BURST, ARM_PER_SECOND
from watcher import __version__
from watcher.app import Watcher, build_azure
from watcher.azure.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.azure.recoveryservices import parse_job
from watcher.config import Config, validate_config
from watcher.logs import configure_logging
from watcher.metrics import Metrics
from watcher.scheduler import RoundStats
from watcher.sim import SIM_TOKEN, bench_estate
from watcher.sim.bodies import job_body
from watcher.state import TrackedJob, Tracker, VaultState
from watcher.store import Store

TOKEN_ENV = "BACKUP_WATCHER_BENCH_TOKEN"  # noqa: S105 - the name of an env var, not a secret
RUNNING_SERIES = b"azure_backup_job_running_start_timestamp_seconds{"
_JOB_ID_LABEL = re.compile(rb'job_id="([^"]+)"')

# What the project promises at 10,000 jobs (docs/performance.md).
TARGET_RSS_MB = 150.0
TARGET_ROUND_REQUESTS = 250
TARGET_CPU_RATIO = 1 / 3
TARGET_METRICS_MS = 100.0


# -- measuring this process ---------------------------------------------------------------------


def cpu_seconds() -> float:
    """User plus system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spawned_peak_rss_mb() -> float:
    """`peak_rss_mb` for a process spawned from a big one: Linux carries ru_maxrss over fork and exec,
    so this reads the peak of the process's own memory instead (VmHWM), where /proc has it."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    """Seconds written as milliseconds."""
    return f"{seconds * 1000:.1f} ms"


# -- the simulator's process --------------------------------------------------------------------


class SimProcess:
    """`python -m bench.simserver` as a child: started on enter, stopped (however we leave) on exit."""

    def __init__(self, vaults: int, jobs: int, spread: float, workdir: Path) -> None:
        self.manifest_path = workdir / "estate.json"
        self.argv = [
            sys.executable,
            "-m",
            "bench.simserver",
            f"--vaults={vaults}",
            f"--jobs={jobs}",
            f"--spread={spread}",
            f"--manifest={self.manifest_path}",
            "--stop-on-eof",
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.answered: dict[str, int] = {}

    def __enter__(self) -> SimProcess:
        # stdin stays an open pipe: if this process dies, the child reads end of file and stops.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = self._read_line(timeout=60.0)
            if not line.startswith("ready "):
                raise RuntimeError(f"the simulator did not start (it said {line!r})")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.url = line.split()[1]
        return self

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else ""

    def manifest(self) -> dict[str, Any]:
        """The estate the simulator serves: vaults, and each job's id and end time."""
        data: dict[str, Any] = json.loads(self.manifest_path.read_text())
        return data

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("requests "):
                self.answered = json.loads(line.split(" ", 1)[1])


# -- the watcher, observed ----------------------------------------------------------------------


@dataclass
class RoundRecord:
    """What one round of the watcher cost."""

    index: int
    seconds: float
    units: int
    requests: int
    lists: int
    gets: int
    discoveries: int
    checks: int
    cpu: float
    errors: int


@dataclass
class Probe:
    """Records what a started watcher does, round by round, and when jobs end.

    The scheduler has no global rounds (each vault keeps its own interval), so a round here is a window:
    the first lasts until every vault has had its first pass; each after it lasts one poll interval. The
    probe counts passes (`Scheduler.on_pass`) and wraps two methods (`discover`, `observe_many`) to count
    discovery listings and job checks; it changes no behaviour. `after_round` runs at the end of a window,
    while the watcher goes on polling.
    """

    watcher: Watcher
    after_round: Callable[[RoundRecord], Awaitable[None]] | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    checks: int = 0
    discoveries: int = 0
    passes: int = 0
    errors: int = 0
    ended_at: dict[str, float] = field(default_factory=dict)
    _round_done: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        scheduler, tracker = self.watcher.scheduler, self.watcher.tracker
        assert scheduler is not None
        assert tracker is not None
        discover, observe_many = scheduler.discover, tracker.observe_many

        def counted_observe(vault: VaultRef, jobs: list[Job], *, detailed: bool = True) -> list[TrackedJob]:
            self.checks += len(jobs)
            return observe_many(vault, jobs, detailed=detailed)

        async def counted_discover(state: VaultState, outcome: Any = None) -> int:
            self.discoveries += 1
            return await discover(state, outcome)

        def counted_pass(_vault: VaultRef, stats: RoundStats) -> None:
            self.passes += 1
            self.errors += stats.errors

        scheduler.discover = counted_discover  # type: ignore[method-assign]
        scheduler.on_pass = counted_pass
        tracker.observe_many = counted_observe  # type: ignore[method-assign]
        tracker.listeners.append(self._status_changed)
        self._task = asyncio.create_task(self._windows())

    async def _windows(self) -> None:
        scheduler = self.watcher.scheduler
        assert scheduler is not None
        interval = self.watcher.config.poll.interval
        while not self.watcher.stop_event.is_set():
            cpu, checks, discoveries, passes, errors = (
                cpu_seconds(),
                self.checks,
                self.discoveries,
                self.passes,
                self.errors,
            )
            requests = self.requests_by_endpoint()
            started = time.monotonic()
            if not self.rounds:
                while not scheduler.ready and not self.watcher.stop_event.is_set():
                    with contextlib.suppress(TimeoutError):  # readiness is a flag: look every 50 ms
                        await asyncio.wait_for(self.watcher.stop_event.wait(), 0.05)
            else:
                await asyncio.sleep(interval)
            after = self.requests_by_endpoint()
            record = RoundRecord(
                index=len(self.rounds) + 1,
                seconds=time.monotonic() - started,
                units=self.passes - passes,
                requests=sum(after.values()) - sum(requests.values()),
                lists=after.get("list_jobs", 0) - requests.get("list_jobs", 0),
                gets=after.get("get_job", 0) - requests.get("get_job", 0),
                discoveries=self.discoveries - discoveries,
                checks=self.checks - checks,
                cpu=cpu_seconds() - cpu,
                errors=self.errors - errors,
            )
            self.rounds.append(record)
            if self.after_round is not None:
                await self.after_round(record)
            self._round_done.set()

    async def close(self) -> None:
        """Stop counting windows."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _status_changed(self, tj: TrackedJob, from_status: str | None, to_status: str) -> None:
        # Told right after the tracker's memory changed: the next /metrics shows the job as ended.
        if from_status in ACTIVE_STATUSES and to_status in FINAL_STATUSES:
            self.ended_at.setdefault(tj.job_id.lower(), time.time())

    def requests_by_endpoint(self) -> dict[str, int]:
        """Requests sent so far by endpoint (`list_jobs`, `get_job`), from the watcher's own counter."""
        return self._count_requests("endpoint")

    def responses_by_code(self) -> dict[str, int]:
        """Requests sent so far by HTTP status (`error`: no answer)."""
        return self._count_requests("code")

    def _count_requests(self, label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for metric in self.watcher.metrics.api_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels[label]] = out.get(sample.labels[label], 0) + int(sample.value)
        return out

    async def wait_rounds(self, count: int, within: float) -> None:
        """Until `count` rounds have finished in all; fail after `within` seconds."""
        deadline = time.monotonic() + within
        while len(self.rounds) < count:
            left = deadline - time.monotonic()
            if left <= 0 or self.watcher.stop_event.is_set():
                raise RuntimeError(f"the watcher finished {len(self.rounds)} of {count} rounds in time")
            self._round_done.clear()
            try:
                await asyncio.wait_for(self._round_done.wait(), timeout=min(left, 5.0))
            except TimeoutError:
                continue


# -- /metrics -----------------------------------------------------------------------------------


@dataclass
class RenderFigures:
    """/metrics rendered in-process a few times in a row (wall and CPU seconds), and over HTTP."""

    first: float
    repeated: list[float]
    cpu: list[float]
    size: int
    series: int
    http: list[float] = field(default_factory=list)


def time_render(render: Callable[[], bytes], reps: int) -> RenderFigures:
    """Time what the /metrics handler renders; the first call after a change also rebuilds the snapshot."""
    times, cpu = [], []
    body = b""
    for _ in range(reps):
        started, cpu_started = time.perf_counter(), time.process_time()
        body = render()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return RenderFigures(times[0], times[1:] or times, cpu[1:] or cpu, len(body), series)


async def measure_metrics(watcher: Watcher, session: aiohttp.ClientSession, reps: int) -> RenderFigures:
    """`time_render` of the watcher's /metrics body, then as many GET /metrics through its HTTP server."""
    figures = time_render(lambda: watcher.metrics.render(False), reps)
    for _ in range(reps):
        started = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{watcher.port}/metrics") as resp:
            await resp.read()
        figures.http.append(time.perf_counter() - started)
    return figures


@dataclass
class FinishedState:
    """A fresh process holding the estate with every job ended, rendering its /metrics."""

    render: RenderFigures
    rss_before: float
    rss_peak: float


def finished_state(settings: Settings, workdir: Path) -> FinishedState:
    """The bench estate once every job has ended, in this (fresh) process: a tracker fed each job's
    final GET body, as the watcher is after a round that saw them end; then its /metrics."""
    with open(os.devnull, "w") as devnull:
        configure_logging("json", "info", stream=devnull)
        rss_before = spawned_peak_rss_mb()
        now = time.time()
        estate = bench_estate(settings.vaults, settings.jobs, now=now, spread=settings.spread)
        later = now + settings.spread + 1
        refs = [VaultRef(*vault) for vault in estate.vaults()]
        store = Store.open(workdir / "finished.sqlite3")
        try:
            tracker = Tracker(store)
            tracker.set_vaults(VaultState(ref, discover=True) for ref in refs)
            for ref in refs:
                jobs = estate.jobs_in(ref.subscription_id, ref.resource_group, ref.name)
                bodies = [job_body(job, estate.status_of(job, later), later, extended=True) for job in jobs]
                tracker.observe_many(ref, [parse_job(body) for body in bodies], detailed=True)
            del estate
            metrics = Metrics(CollectorRegistry(), __version__)
            metrics.watch(tracker.snapshot)
            render = time_render(lambda: metrics.render(False), settings.render_reps)
        finally:
            store.close()
    return FinishedState(render, rss_before, spawned_peak_rss_mb())


def finished_state_apart(settings: Settings, workdir: Path) -> FinishedState:
    """`finished_state` in a spawned process, so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(finished_state, settings, workdir).result(timeout=600)


@dataclass
class Scraper:
    """Scrapes /metrics on a period, as Prometheus does; notes between which scrapes each job left it."""

    url: str
    every: float
    running: set[bytes] = field(default_factory=set)
    # job id -> (when the last scrape still showing it was sent, when the first not showing it came back)
    left: dict[str, tuple[float, float]] = field(default_factory=dict)
    fetch_seconds: list[float] = field(default_factory=list)
    _last_sent: float = 0.0

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Scrape every `every` seconds until `stop` is set."""
        while not stop.is_set():
            sent = time.time()
            started = time.perf_counter()
            running = set()
            async with session.get(self.url) as resp:
                # Line by line: a 10 MB page is never held whole on this side.
                async for line in resp.content:
                    if line.startswith(RUNNING_SERIES):
                        match = _JOB_ID_LABEL.search(line)
                        if match:
                            running.add(match.group(1).lower())
            self.fetch_seconds.append(time.perf_counter() - started)
            back = time.time()
            if len(self.fetch_seconds) > 1:
                for job_id in self.running - running:
                    self.left[job_id.decode()] = (self._last_sent, back)
            self.running, self._last_sent = running, sent
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, self.every - (time.time() - sent)))
            except TimeoutError:
                continue


# -- single-job GETs: our client and the official SDK -------------------------------------------


class SimCredential:
    """An azure-core async token credential that hands out the simulator's token."""

    async def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
        """An AccessToken for any scope, valid for an hour."""
        from azure.core.credentials import AccessToken

        return AccessToken(SIM_TOKEN, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SimCredential:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


SampleJob = tuple[str, str, str, str]  # subscription_id, resource_group, vault, job_id


def sample_jobs(manifest: dict[str, Any], count: int) -> list[SampleJob]:
    """Up to `count` jobs taken round-robin over the vaults (so over every subscription)."""
    per_vault = [
        [(v["subscription_id"], v["resource_group"], v["name"], job_id) for job_id in v["jobs"]]
        for v in manifest["vaults"]
    ]
    out: list[SampleJob] = []
    depth = 0
    while len(out) < count and any(depth < len(jobs) for jobs in per_vault):
        out.extend(jobs[depth] for jobs in per_vault if depth < len(jobs))
        depth += 1
    return out[:count]


@dataclass
class GetFigures:
    """CPU and wall time of a sample of single-job GETs."""

    gets: int
    cpu: float
    seconds: float
    failed: int

    @property
    def cpu_per_1000(self) -> float:
        """CPU seconds per 1,000 GETs."""
        return 1000 * self.cpu / max(self.gets, 1)


async def timed_gets(
    jobs: list[SampleJob], concurrency: int, get: Callable[[SampleJob], Awaitable[None]]
) -> GetFigures:
    """`get` each job, `concurrency` at once, paced by ARM's budget per subscription; the first
    `concurrency` GETs warm up (connections, first-call setup) and are not counted."""
    # A little under ARM's refill rate: jitter between our bucket and the server's would otherwise
    # draw the odd 429, and a retry's cost is not what is compared here.
    limiter = SubscriptionLimiter(ARM_BURST, 0.9 * ARM_PER_SECOND)
    slots = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(job: SampleJob) -> None:
        nonlocal failed
        async with slots:
            await limiter.acquire(job[0])
            try:
                await get(job)
            except Exception:
                failed += 1

    warmup, measured = jobs[:concurrency], jobs[concurrency:]
    await asyncio.gather(*(one(job) for job in warmup))
    cpu, started = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(job) for job in measured))
    return GetFigures(len(measured), cpu_seconds() - cpu, time.perf_counter() - started, failed)


async def our_gets(config: Config, jobs: list[SampleJob]) -> GetFigures:
    """The sample through the watcher's own client (`BackupApi.get_job`: request and parse)."""
    azure = build_azure(config, None, SubscriptionLimiter(ARM_BURST, ARM_PER_SECOND))

    async def get(job: SampleJob) -> None:
        subscription_id, resource_group, vault, job_id = job
        await azure.api.get_job(VaultRef(subscription_id, resource_group, vault), job_id)

    try:
        return await timed_gets(jobs, config.poll.concurrency, get)
    finally:
        await azure.close()


async def sdk_gets(url: str, api_version: str, jobs: list[SampleJob], concurrency: int) -> GetFigures:
    """The sample through the official async SDK: `job_details.get`, reading status and end time.

    The SDK's bearer-token policy refuses plain http; `enforce_https=False` on each call is azure-core's
    own switch for that (the simulator serves http on loopback). Nothing else is changed.
    """
    from azure.mgmt.recoveryservicesbackup.aio import RecoveryServicesBackupClient

    credential = SimCredential()
    clients = {
        sub: RecoveryServicesBackupClient(credential, sub, base_url=url, api_version=api_version)
        for sub in sorted({job[0] for job in jobs})
    }

    async def get(job: SampleJob) -> None:
        subscription_id, resource_group, vault, job_id = job
        resource = await clients[subscription_id].job_details.get(
            vault, resource_group, job_id, enforce_https=False
        )
        properties = resource.properties
        if properties is None or properties.status is None:
            raise ValueError(f"the SDK read no status for job {job_id}")
        _ = properties.end_time

    try:
        return await timed_gets(jobs, concurrency, get)
    finally:
        for client in clients.values():
            await client.close()


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Settings:
    """The size and pace of a run."""

    vaults: int
    jobs: int
    spread: float
    interval: float
    discovery_interval: float
    cpu_rounds: int
    scrape_rounds: int
    scrape_every: float
    render_reps: int
    sample: int
    refill_pause: float

    @property
    def total_jobs(self) -> int:
        """Jobs in the estate."""
        return self.vaults * self.jobs


def watcher_config(settings: Settings, url: str, manifest: dict[str, Any], store: Path) -> Config:
    """Every vault discovering, 16 requests in flight, ARM's default read budget, production logging."""
    return validate_config(
        {
            "azure": {
                "management_endpoint": url,
                "credential": "static_token",
                "static_token_env": TOKEN_ENV,
            },
            "poll": {
                "interval": settings.interval,
                "discovery_interval": settings.discovery_interval,
                "concurrency": 16,
                "request_timeout": 30,
                "ratelimit_burst": ARM_BURST,
                "ratelimit_per_second": ARM_PER_SECOND,
            },
            "discovery": {"enabled": True},
            "store": {"path": str(store)},
            "http": {"listen": "127.0.0.1:0"},
            "logging": {"format": "json", "level": "info"},
            "vaults": [
                {
                    "subscription_id": v["subscription_id"],
                    "resource_group": v["resource_group"],
                    "name": v["name"],
                    "discover": True,
                }
                for v in manifest["vaults"]
            ],
        },
        "bench",
    )


@dataclass
class Results:
    """Everything a run measured, for the report."""

    settings: Settings
    rounds: list[RoundRecord] = field(default_factory=list)
    cpu_rounds: list[RoundRecord] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)
    renders: dict[str, RenderFigures] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    scrapes: list[float] = field(default_factory=list)
    scraped_left: int = 0
    scraped_agree: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    finished: FinishedState | None = None
    load: list[float] = field(default_factory=list)
    ours: GetFigures | None = None
    sdk: GetFigures | None = None
    answered: dict[str, int] = field(default_factory=dict)


async def run_watcher(settings: Settings, url: str, manifest: dict[str, Any], workdir: Path) -> Results:
    """Phases 1-3: the watcher polling the estate; returns with the watcher stopped."""
    results = Results(settings)
    results.rss["before the watcher started"] = peak_rss_mb()
    config = watcher_config(settings, url, manifest, workdir / "state.sqlite3")
    ends = {job_id.lower(): end for v in manifest["vaults"] for job_id, end in v["jobs"].items()}
    watcher = Watcher(config, registry=CollectorRegistry(), grace=2.0)
    round_timeout = 3 * settings.interval + 60
    probe: Probe | None = None
    async with aiohttp.ClientSession() as session:
        await watcher.start()
        try:

            async def after_round(record: RoundRecord) -> None:
                if record.index == 1:
                    results.rss["after round 1"] = peak_rss_mb()
                    results.renders["every job running"] = await measure_metrics(
                        watcher, session, settings.render_reps
                    )
                    results.rss["after /metrics with every job running"] = peak_rss_mb()

            probe = Probe(watcher, after_round)
            await probe.wait_rounds(1, round_timeout)
            print(f"# round 1 done: {probe.checks} jobs discovered", flush=True)
            quiet_end = 1 + settings.cpu_rounds
            await probe.wait_rounds(quiet_end, round_timeout * settings.cpu_rounds)
            results.cpu_rounds = probe.rounds[1:quiet_end]
            results.rss[f"after round {quiet_end}"] = peak_rss_mb()
            print(f"# rounds 2-{quiet_end} done; scraping /metrics now", flush=True)

            scraper = Scraper(f"http://127.0.0.1:{watcher.port}/metrics", settings.scrape_every)
            stop_scraping = asyncio.Event()
            scraping = asyncio.create_task(scraper.run(session, stop_scraping))
            try:
                last = quiet_end + settings.scrape_rounds
                await probe.wait_rounds(last, round_timeout * settings.scrape_rounds)
            finally:
                stop_scraping.set()
                await scraping
            results.renders["end of run"] = await measure_metrics(watcher, session, settings.render_reps)
            results.rss["end of run"] = peak_rss_mb()
            results.rounds = list(probe.rounds)
            results.codes = probe.responses_by_code()
            results.latencies = [at - ends[job_id] for job_id, at in probe.ended_at.items() if job_id in ends]
            results.scrapes = scraper.fetch_seconds
            results.scraped_left = len(scraper.left)
            results.scraped_agree = sum(
                1
                for job_id, (still, gone) in scraper.left.items()
                if job_id in probe.ended_at and still <= probe.ended_at[job_id] <= gone
            )
        finally:
            if probe is not None:
                await probe.close()
            await watcher.stop()
    return results


async def run_baselines(
    settings: Settings, url: str, manifest: dict[str, Any], workdir: Path, results: Results
) -> None:
    """Phase 4's GETs: the same jobs with our client and with the SDK, each after ARM's budget refills."""
    config = watcher_config(settings, url, manifest, workdir / "baseline.sqlite3")
    jobs = sample_jobs(manifest, settings.sample + config.poll.concurrency)
    print(f"# single-job GETs: {len(jobs)} with our client, then with the SDK", flush=True)
    await asyncio.sleep(settings.refill_pause)
    results.ours = await our_gets(config, jobs)
    await asyncio.sleep(settings.refill_pause)
    results.sdk = await sdk_gets(url, config.azure.api_version, jobs, config.poll.concurrency)


# -- the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    """How a target came out."""
    return "met" if ok else "MISSED"


def report(results: Results, command: str) -> None:
    """Print the per-round table, every figure as one `name: value` line, then the targets."""
    s = results.settings
    first, steady = results.rounds[0], results.rounds[1:]
    checks = sum(r.checks for r in results.cpu_rounds)
    cpu = sum(r.cpu for r in results.cpu_rounds)
    ours_per_1000 = 1000 * cpu / max(checks, 1)
    print()
    print(f"command: {command}")
    print(
        f"estate: {s.vaults} vaults x {s.jobs} jobs = {s.total_jobs} jobs, ending over {s.spread:g} s; "
        f"interval {s.interval:g} s, discovery every {s.discovery_interval:g} s"
    )
    print()
    print("round  units  requests  list   get  discovering  job-checks  seconds  cpu-s  errors")
    for r in results.rounds:
        print(
            f"{r.index:5d}  {r.units:5d}  {r.requests:8d}  {r.lists:4d}  {r.gets:4d}  {r.discoveries:11d}  "
            f"{r.checks:10d}  {r.seconds:7.2f}  {r.cpu:5.2f}  {r.errors:6d}"
        )
    print()
    print(
        f"requests first round: {first.requests} ({first.lists} listings, {first.gets} GETs of jobs "
        f"that had already ended); {first.checks} jobs discovered"
    )
    own = [r.lists - r.discoveries for r in steady]
    print(
        f"requests steady round: mean {statistics.mean(r.requests for r in steady):.0f}, "
        f"max {max(r.requests for r in steady)} over {len(steady)} rounds; in a round at most {max(own)} "
        f"listings to watch the unfinished jobs, {max(r.discoveries for r in steady)} discovery listings "
        f"(in {sum(1 for r in steady if r.discoveries)} rounds) and {max(r.gets for r in steady)} GETs of "
        f"jobs that ended (mean {statistics.mean(r.gets for r in steady):.0f})"
    )
    times = [r.seconds for r in steady]
    print(
        f"round time: first {first.seconds:.2f} s; then median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s (a round starts its units over its first {0.5 * s.interval:g} s)"
    )
    cpu_first, cpu_last = results.cpu_rounds[0].index, results.cpu_rounds[-1].index
    print(
        f"cpu per 1000 job checks: {ours_per_1000 * 1000:.1f} ms ({cpu:.2f} s CPU for {checks} checks "
        f"in rounds {cpu_first}-{cpu_last})"
    )
    checkpoints = ", ".join(f"{name} {mb:.0f}" for name, mb in results.rss.items())
    print(f"peak rss: {max(results.rss.values()):.1f} MB (the watcher run; peak so far, MB: {checkpoints})")
    finished = results.finished
    assert finished is not None
    print(
        f"peak rss every job ended: {finished.rss_peak:.1f} MB (a fresh process, "
        f"{finished.rss_before:.0f} MB after imports, holding {s.total_jobs} ended jobs and rendering "
        f"/metrics; no HTTP server or client)"
    )
    for name, render in results.renders.items():
        print(
            f"metrics render ({name}): median {ms(statistics.median(render.repeated))} wall, "
            f"{ms(statistics.median(render.cpu))} CPU (first, snapshot rebuilt: {ms(render.first)}); "
            f"{render.size / 1e6:.2f} MB, {render.series} series"
        )
        if render.http:
            print(
                f"metrics via http ({name}): median {ms(statistics.median(render.http))}, "
                f"max {ms(max(render.http))}"
            )
    if results.latencies:
        lat = results.latencies
        print(
            f"detection latency: median {statistics.median(lat):.1f} s, p95 {percentile(lat, 0.95):.1f} s, "
            f"max {max(lat):.1f} s over {len(lat)} jobs seen running, then ending"
        )
    else:
        print("detection latency: no job seen running ended; lengthen the run")
    scrapes = results.scrapes
    print(
        f"metrics scrapes: {len(scrapes)} every {s.scrape_every:g} s while polling (read line by line "
        f"here), median "
        f"{ms(statistics.median(scrapes))}, max {ms(max(scrapes))}; of {results.scraped_left} jobs that "
        f"left /metrics between two scrapes, {results.scraped_agree} reached the tracker in between"
    )
    print(f"watcher responses: {dict(sorted(results.codes.items()))}")
    ours, sdk = results.ours, results.sdk
    assert ours is not None
    assert sdk is not None
    for name, figures in (("our client", ours), ("sdk", sdk)):
        print(
            f"cpu per 1000 GETs ({name}): {figures.cpu_per_1000 * 1000:.1f} ms ({figures.gets} GETs, "
            f"{figures.cpu:.2f} s CPU, {figures.seconds:.1f} s, {figures.failed} failed)"
        )
    ratio = ours_per_1000 / sdk.cpu_per_1000
    print(
        f"cpu ratio ours/sdk: {ratio:.3f} per job check (watcher rounds vs SDK GETs); "
        f"{ours.cpu_per_1000 / sdk.cpu_per_1000:.3f} per GET (our client vs SDK)"
    )
    print(f"simulator answered: {results.answered}")
    print(f"load average (1 min) at start and end: {results.load[0]:.2f}, {results.load[1]:.2f}")
    print()
    listings = max(r.lists for r in results.rounds)
    peak = max(results.rss.values())
    slowest = max(statistics.median(r.cpu) for r in results.renders.values())
    print(
        f"target peak rss <= {TARGET_RSS_MB:g} MB: "
        f"{verdict(max(peak, finished.rss_peak) <= TARGET_RSS_MB)} "
        f"({peak:.0f} MB in the run; {finished.rss_peak:.0f} MB with every job ended)"
    )
    print(
        f"target round <= {TARGET_ROUND_REQUESTS} requests: {verdict(listings <= TARGET_ROUND_REQUESTS)} "
        f"(at most {listings} listings in a round, discovery included; plus one GET per job that ended)"
    )
    print(f"target cpu <= 1/3 of sdk: {verdict(ratio <= TARGET_CPU_RATIO)} ({ratio:.3f})")
    print(
        f"target metrics < {TARGET_METRICS_MS:g} ms: {verdict(slowest * 1000 < TARGET_METRICS_MS)} "
        f"(slowest median render {ms(slowest)} CPU)"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags over the defaults of a full run or of `--quick`."""
    quick = args.quick
    defaults: dict[str, Any] = {
        "vaults": 5 if quick else 200,
        "jobs": 10 if quick else 50,
        "spread": 20.0 if quick else 600.0,
        "interval": 2.0 if quick else 10.0,
        "discovery_interval": 6.0 if quick else 60.0,
        "cpu_rounds": 2 if quick else 6,
        "scrape_rounds": 3 if quick else 6,
        "scrape_every": 1.0 if quick else 15.0,
        "render_reps": 3 if quick else 5,
        "sample": 40 if quick else 2000,
        "refill_pause": 0.0 if quick else ARM_BURST / ARM_PER_SECOND,
    }
    return Settings(**{k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; unset size and pace flags stay None (see `settings_from`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny estate and short phases (smoke test)")
    parser.add_argument("--vaults", type=int)
    parser.add_argument("--jobs", type=int, help="jobs per vault")
    parser.add_argument("--spread", type=float, help="jobs end within this many seconds of the start")
    parser.add_argument("--interval", type=float, help="poll interval, seconds")
    parser.add_argument("--discovery-interval", type=float, help="seconds between listings for new jobs")
    parser.add_argument("--cpu-rounds", type=int, help="quiet rounds measured for CPU")
    parser.add_argument("--scrape-rounds", type=int, help="rounds while /metrics is scraped")
    parser.add_argument("--scrape-every", type=float, help="seconds between /metrics scrapes")
    parser.add_argument("--render-reps", type=int, help="repetitions of each /metrics measurement")
    parser.add_argument("--sample", type=int, help="single-job GETs per client in the baseline")
    parser.add_argument(
        "--refill-pause", type=float, help="seconds to let ARM's read budget refill before each GET sample"
    )
    return parser.parse_args(argv)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the simulator's process is always stopped."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; the simulator's process ends with it, however it ends."""
    args = parse_args(argv)
    settings = settings_from(args)
    command = " ".join(["python -m bench.bench", *(sys.argv[1:] if argv is None else argv)])
    os.environ[TOKEN_ENV] = SIM_TOKEN
    with tempfile.TemporaryDirectory(prefix="backup-watcher-bench-") as tmp, _sigterm_as_interrupt():
        workdir = Path(tmp)
        with (
            (workdir / "watcher.log").open("w") as log,
            SimProcess(settings.vaults, settings.jobs, settings.spread, workdir) as sim,
        ):
            configure_logging("json", "info", stream=log)
            print(f"# simulator at {sim.url}; watcher log {workdir / 'watcher.log'}", flush=True)
            manifest = sim.manifest()
            load = os.getloadavg()[0]
            results = asyncio.run(run_watcher(settings, sim.url, manifest, workdir))
            print("# every job ended: that state in a fresh process", flush=True)
            results.finished = finished_state_apart(settings, workdir)
            results.renders["every job ended"] = results.finished.render
            asyncio.run(run_baselines(settings, sim.url, manifest, workdir, results))
            results.load = [load, os.getloadavg()[0]]
        results.answered = sim.answered
        report(results, command)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
