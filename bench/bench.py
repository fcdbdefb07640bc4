"""Benchmark: the watcher against the simulator at production scale, and the official SDK as baseline.

    python -m bench.bench              # 200 vaults x 50 jobs = 10,000 jobs; about 4 minutes on 2 cores
    python -m bench.bench --quick      # 5 vaults x 10 jobs; a smoke run of about 30 seconds

The simulator runs in a child process (`bench.simserver`), so every CPU second and byte this process
reports belongs to the watcher. The watcher (`watcher.app.Watcher`, as `backup-watcher run` builds it)
discovers every job: each vault is configured with `discover: true` and no job ids, which is how an
estate of thousands of jobs is watched in production (job ids are named for the few jobs a pipeline
triggers). The run goes through four phases:

1. the first round, which discovers the estate (one listing per vault), then /metrics at its largest
   (every job running) rendered in-process (`generate_latest`) and over HTTP;
2. `--cpu-rounds` quiet rounds: requests, round time and CPU per 1,000 job checks, nothing else running;
3. `--latency-rounds` rounds with /metrics scraped every `--scrape-every` seconds: how long after a job
   ends in the simulator its running series leaves /metrics (and it is counted as finished);
4. after the watcher has stopped and its peak RSS is read: the same sample of single-job GETs sent with
   our client and with the official async SDK, CPU per 1,000 GETs each.

A "job check" is one job's status refreshed in a round, by a batched listing or a GET (each job a
`Tracker.observe_many` call records). The benchmark observes the watcher by wrapping three of its
methods on the instances (`run_round`, `discover`, `observe_many`); it changes no behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest

from watcher.app import Watcher, build_azure
from watcher.azure.models import Job, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.config import Config, validate_config
from watcher.logs import configure_logging
from watcher.scheduler import RoundStats
from watcher.sim import SIM_TOKEN
from watcher.state import TrackedJob

from bench.simserver import ARM_BURST, ARM_PER_SECOND

TOKEN_ENV = "BACKUP_WATCHER_BENCH_TOKEN"
RUNNING_SERIES = "azure_backup_job_running_start_timestamp_seconds{"
FINISHED_SERIES = "azure_backup_jobs_finished_total{"
_JOB_ID_LABEL = re.compile(r'job_id="([^"]+)"')

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
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def ms(seconds: float) -> str:
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
        line = self._read_line(timeout=60.0)
        if not line.startswith("ready "):
            raise RuntimeError(f"simulator did not start (it said {line!r})")
        self.url = line.split()[1]
        return self

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else ""

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

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
    """Counts what a started watcher does per round by wrapping three methods of its instances."""

    watcher: Watcher
    after_round: Callable[[RoundRecord], Awaitable[None]] | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    checks: int = 0
    discoveries: int = 0
    _round_done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        scheduler, tracker = self.watcher.scheduler, self.watcher.tracker
        assert scheduler is not None and tracker is not None
        run_round, discover, observe_many = scheduler.run_round, scheduler.discover, tracker.observe_many

        def counted_observe(vault: VaultRef, jobs: list[Job], *, detailed: bool = True) -> list[TrackedJob]:
            self.checks += len(jobs)
            return observe_many(vault, jobs, detailed=detailed)

        async def counted_discover(state: Any) -> int:
            self.discoveries += 1
            return await discover(state)

        async def recorded_round(stop: asyncio.Event | None = None) -> RoundStats:
            before = (cpu_seconds(), self.checks, self.discoveries, self.requests_by_endpoint())
            started = time.monotonic()
            stats = await run_round(stop)
            seconds = time.monotonic() - started
            cpu, checks, discoveries, requests = before
            after = self.requests_by_endpoint()
            record = RoundRecord(
                index=len(self.rounds) + 1,
                seconds=seconds,
                units=stats.units,
                requests=stats.requests,
                lists=after.get("list_jobs", 0) - requests.get("list_jobs", 0),
                gets=after.get("get_job", 0) - requests.get("get_job", 0),
                discoveries=self.discoveries - discoveries,
                checks=self.checks - checks,
                cpu=cpu_seconds() - cpu,
                errors=stats.errors,
            )
            self.rounds.append(record)
            # Measurements between rounds run here, before the scheduler plans its next round.
            if self.after_round is not None:
                await self.after_round(record)
            self._round_done.set()
            return stats

        scheduler.run_round = recorded_round  # type: ignore[method-assign]
        scheduler.discover = counted_discover  # type: ignore[method-assign]
        tracker.observe_many = counted_observe  # type: ignore[method-assign]

    def requests_by_endpoint(self) -> dict[str, int]:
        """Requests sent so far by endpoint (`list_jobs`, `get_job`), from the watcher's own counter."""
        return self._count_requests(lambda labels: labels["endpoint"])

    def responses_by_code(self) -> dict[str, int]:
        """Requests sent so far by HTTP status (`error`: no answer)."""
        return self._count_requests(lambda labels: labels["code"])

    def _count_requests(self, key: Callable[[dict[str, str]], str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for metric in self.watcher.metrics.api_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    name = key(sample.labels)
                    out[name] = out.get(name, 0) + int(sample.value)
        return out

    async def wait_rounds(self, count: int, timeout: float) -> None:
        """Until `count` rounds have finished in all; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
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
    """/metrics rendered in-process and fetched over HTTP a few times in a row."""

    first: float
    repeated: list[float]
    http: list[float]
    size: int
    series: int


async def measure_metrics(watcher: Watcher, session: aiohttp.ClientSession, reps: int) -> RenderFigures:
    """Time `generate_latest` (the first call rebuilds the tracker's snapshot) and GET /metrics."""
    times = []
    body = b""
    for _ in range(reps):
        started = time.perf_counter()
        body = generate_latest(watcher.registry)
        times.append(time.perf_counter() - started)
    http = []
    for _ in range(reps):
        started = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{watcher.port}/metrics") as resp:
            await resp.read()
        http.append(time.perf_counter() - started)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return RenderFigures(times[0], times[1:] or times, http, len(body), series)


@dataclass
class Scraper:
    """Scrapes /metrics on a period; notes when each running job's series disappears."""

    url: str
    every: float
    running: set[str] = field(default_factory=set)
    gone_at: dict[str, float] = field(default_factory=dict)
    fetch_seconds: list[float] = field(default_factory=list)
    finished_total: float = 0.0

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.time()
            started = time.perf_counter()
            async with session.get(self.url) as resp:
                text = await resp.text()
            self.fetch_seconds.append(time.perf_counter() - started)
            self.read(text, sent)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, self.every - (time.time() - sent)))
            except TimeoutError:
                continue

    def read(self, text: str, sent: float) -> None:
        """Take one scrape: running job ids and the finished total, as of when it was sent."""
        running = set()
        finished = 0.0
        for line in text.splitlines():
            if line.startswith(RUNNING_SERIES):
                match = _JOB_ID_LABEL.search(line)
                if match:
                    running.add(match.group(1).lower())
            elif line.startswith(FINISHED_SERIES):
                finished += float(line.rsplit(" ", 1)[1])
        # The scrape sent at `sent` is the first to miss the job: it was seen within one period of this.
        for job_id in self.running - running:
            self.gone_at.setdefault(job_id, sent)
        self.running = running
        self.finished_total = finished


# -- single-job GETs: our client and the official SDK -------------------------------------------


class SimCredential:
    """An azure-core async token credential that hands out the simulator's token."""

    async def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
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
    """`count` jobs taken round-robin over the vaults (so over every subscription)."""
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
        return 1000 * self.cpu / max(self.gets, 1)


async def timed_gets(
    jobs: list[SampleJob], concurrency: int, get: Callable[[SampleJob], Awaitable[None]]
) -> GetFigures:
    """Send `get` for each job, `concurrency` at once, paced by ARM's budget per subscription."""
    limiter = SubscriptionLimiter(ARM_BURST, ARM_PER_SECOND)
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
    """The sample through the watcher's own client (`ArmClient.get_job`: request and parse)."""
    azure = build_azure(config, None, SubscriptionLimiter(ARM_BURST, ARM_PER_SECOND))

    async def get(job: SampleJob) -> None:
        subscription_id, resource_group, vault, job_id = job
        await azure.client.get_job(VaultRef(subscription_id, resource_group, vault), job_id)

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
    latency_rounds: int
    scrape_every: float
    render_reps: int
    sample: int
    refill_pause: float

    @property
    def total_jobs(self) -> int:
        return self.vaults * self.jobs


def watcher_config(settings: Settings, url: str, manifest: dict[str, Any], store: Path) -> Config:
    """Every vault discovering, ARM's default read budget, production logging."""
    return validate_config(
        {
            "azure": {"management_endpoint": url, "credential": "static_token", "static_token_env": TOKEN_ENV},
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
    baseline_rss: float = 0.0
    peak_rss: float = 0.0
    render_full: RenderFigures | None = None
    render_end: RenderFigures | None = None
    latencies: list[float] = field(default_factory=list)
    scrapes: list[float] = field(default_factory=list)
    finished_counted: float = 0.0
    finished_ended: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    ours: GetFigures | None = None
    sdk: GetFigures | None = None
    answered: dict[str, int] = field(default_factory=dict)


async def run_watcher(settings: Settings, url: str, manifest: dict[str, Any], workdir: Path) -> Results:
    """Phases 1-3: the watcher polling the estate; returns with the watcher stopped."""
    results = Results(settings, baseline_rss=peak_rss_mb())
    config = watcher_config(settings, url, manifest, workdir / "state.sqlite3")
    ends = {job_id.lower(): end for v in manifest["vaults"] for job_id, end in v["jobs"].items()}
    watcher = Watcher(config, registry=CollectorRegistry(), grace=2.0)
    per_round_timeout = 3 * settings.interval + 60
    async with aiohttp.ClientSession() as session:
        await watcher.start()
        try:

            async def after_round(record: RoundRecord) -> None:
                if record.index == 1:
                    results.render_full = await measure_metrics(watcher, session, settings.render_reps)

            probe = Probe(watcher, after_round)
            first = 1
            await probe.wait_rounds(first, per_round_timeout)
            print(f"# round 1 done: {probe.checks} jobs discovered", flush=True)
            await probe.wait_rounds(first + settings.cpu_rounds, per_round_timeout * (settings.cpu_rounds + 1))
            results.cpu_rounds = probe.rounds[first : first + settings.cpu_rounds]
            print(f"# {settings.cpu_rounds} quiet rounds done; scraping /metrics now", flush=True)

            scraper = Scraper(f"http://127.0.0.1:{watcher.port}/metrics", settings.scrape_every)
            stop_scraping = asyncio.Event()
            scraping = asyncio.create_task(scraper.run(session, stop_scraping))
            try:
                await probe.wait_rounds(
                    first + settings.cpu_rounds + settings.latency_rounds,
                    per_round_timeout * (settings.latency_rounds + 1),
                )
            finally:
                stop_scraping.set()
                await scraping
            results.render_end = await measure_metrics(watcher, session, settings.render_reps)
            results.rounds = list(probe.rounds)
            results.codes = probe.responses_by_code()
            results.latencies = [at - ends[job_id] for job_id, at in scraper.gone_at.items() if job_id in ends]
            results.scrapes = scraper.fetch_seconds
            results.finished_counted = scraper.finished_total
            last_scrape = max(scraper.gone_at.values(), default=time.time())
            results.finished_ended = sum(1 for end in ends.values() if end <= last_scrape)
        finally:
            await watcher.stop()
    results.peak_rss = peak_rss_mb()
    return results


async def run_baselines(
    settings: Settings, url: str, manifest: dict[str, Any], workdir: Path, results: Results
) -> None:
    """Phase 4: the same GETs with our client and with the official SDK, each after the budget refills."""
    config = watcher_config(settings, url, manifest, workdir / "unused.sqlite3")
    jobs = sample_jobs(manifest, settings.sample + config.poll.concurrency)
    print(f"# single-job GETs: {len(jobs)} with our client, then with the SDK", flush=True)
    await asyncio.sleep(settings.refill_pause)
    results.ours = await our_gets(config, jobs)
    await asyncio.sleep(settings.refill_pause)
    results.sdk = await sdk_gets(url, config.azure.api_version, jobs, config.poll.concurrency)


# -- the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: Results, command: str) -> None:
    """Print every figure, one `name: value` line each, then the targets."""
    s = results.settings
    first, steady = results.rounds[0], results.rounds[1:]
    quiet = [r for r in steady if not r.discoveries]
    discovering = [r for r in steady if r.discoveries]
    cpu_rounds = results.cpu_rounds
    checks = sum(r.checks for r in cpu_rounds)
    cpu = sum(r.cpu for r in cpu_rounds)
    ours_per_1000 = 1000 * cpu / max(checks, 1)
    print()
    print(f"command: {command}")
    print(
        f"estate: {s.vaults} vaults x {s.jobs} jobs = {s.total_jobs} jobs, ending over {s.spread:g} s; "
        f"interval {s.interval:g} s, discovery every {s.discovery_interval:g} s"
    )
    print()
    print("round  units  requests  list  get  discovered-vaults  job-checks  seconds  cpu-s  errors")
    for r in results.rounds:
        print(
            f"{r.index:5d}  {r.units:5d}  {r.requests:8d}  {r.lists:4d}  {r.gets:3d}  {r.discoveries:17d}  "
            f"{r.checks:10d}  {r.seconds:7.2f}  {r.cpu:5.2f}  {r.errors:6d}"
        )
    print()
    print(
        f"requests first round: {first.requests} ({first.lists} listings, {first.gets} GETs of jobs "
        f"already finished), {first.checks} jobs discovered"
    )
    if quiet:
        print(
            f"requests steady round: mean {statistics.mean(r.requests for r in quiet):.0f}, "
            f"max {max(r.requests for r in quiet)} over {len(quiet)} rounds without discovery "
            f"(listings mean {statistics.mean(r.lists for r in quiet):.0f}, max {max(r.lists for r in quiet)}; "
            f"GETs of jobs that ended mean {statistics.mean(r.gets for r in quiet):.0f}, "
            f"max {max(r.gets for r in quiet)})"
        )
    else:
        print("requests steady round: no round without discovery; lengthen the run")
    if discovering:
        print(
            f"requests discovery round: max {max(r.requests for r in discovering)} "
            f"(listings max {max(r.lists for r in discovering)}) over {len(discovering)} rounds"
        )
    times = [r.seconds for r in steady]
    print(
        f"round time: first {first.seconds:.2f} s; steady median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s (units start over the first {0.5 * s.interval:g} s by design)"
    )
    print(
        f"cpu per 1000 job checks: {ours_per_1000 * 1000:.1f} ms ({cpu:.2f} s CPU for {checks} checks "
        f"in rounds {cpu_rounds[0].index}-{cpu_rounds[-1].index})"
    )
    print(
        f"peak rss: {results.peak_rss:.1f} MB (after imports, before the watcher started: "
        f"{results.baseline_rss:.1f} MB)"
    )
    for name, render in (("every job running", results.render_full), ("end of run", results.render_end)):
        assert render is not None
        print(
            f"metrics render ({name}): first {ms(render.first)} (snapshot rebuilt), then median "
            f"{ms(statistics.median(render.repeated))}; {render.size / 1e6:.2f} MB, {render.series} series"
        )
        print(
            f"metrics via http ({name}): median {ms(statistics.median(render.http))}, "
            f"max {ms(max(render.http))}"
        )
    if results.latencies:
        lat = results.latencies
        print(
            f"detection latency: median {statistics.median(lat):.1f} s, p95 {percentile(lat, 0.95):.1f} s, "
            f"max {max(lat):.1f} s over {len(lat)} jobs (scraped every {s.scrape_every:g} s: "
            f"{len(results.scrapes)} scrapes, median {ms(statistics.median(results.scrapes))}, "
            f"max {ms(max(results.scrapes))})"
        )
    else:
        print("detection latency: no job ended while /metrics was scraped; lengthen the run")
    print(
        f"finished counted: {results.finished_counted:.0f} on /metrics; {results.finished_ended} had ended "
        f"in the simulator by the last scrape"
    )
    throttled = results.codes.get("429", 0)
    print(f"watcher responses: {dict(sorted(results.codes.items()))} ({throttled} throttled)")
    ours, sdk = results.ours, results.sdk
    assert ours is not None and sdk is not None
    for name, figures in (("our client", ours), ("sdk", sdk)):
        print(
            f"cpu per 1000 GETs ({name}): {figures.cpu_per_1000 * 1000:.1f} ms ({figures.gets} GETs, "
            f"{figures.cpu:.2f} s CPU, {figures.seconds:.1f} s, {figures.failed} failed)"
        )
    ratio = ours_per_1000 / sdk.cpu_per_1000 if sdk.cpu_per_1000 else float("inf")
    print(
        f"cpu ratio ours/sdk: {ratio:.3f} per job check (watcher rounds vs SDK GETs); "
        f"our client alone per GET: {ours.cpu_per_1000 / sdk.cpu_per_1000:.3f}"
    )
    print(f"simulator answered: {results.answered}")
    print()
    steady_listings = max((r.lists for r in quiet), default=0)
    render_ms = max(
        statistics.median(r.http) for r in (results.render_full, results.render_end) if r is not None
    )
    print(f"target rss <= {TARGET_RSS_MB:g} MB: {verdict(results.peak_rss <= TARGET_RSS_MB)}")
    print(
        f"target round <= {TARGET_ROUND_REQUESTS} requests: "
        f"{verdict(first.requests <= TARGET_ROUND_REQUESTS and steady_listings <= TARGET_ROUND_REQUESTS)} "
        f"(first round {first.requests}; steady listings {steady_listings} plus one GET per job that ended)"
    )
    print(f"target cpu <= 1/3 of sdk: {verdict(ratio <= TARGET_CPU_RATIO)} ({ratio:.3f})")
    print(f"target metrics < {TARGET_METRICS_MS:g} ms: {verdict(render_ms * 1000 < TARGET_METRICS_MS)}")


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
        "latency_rounds": 3 if quick else 6,
        "scrape_every": 0.5 if quick else 1.0,
        "render_reps": 3 if quick else 5,
        "sample": 40 if quick else 2000,
        "refill_pause": 0.0 if quick else ARM_BURST / ARM_PER_SECOND,
    }
    return Settings(**{k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny estate and short phases (smoke test)")
    parser.add_argument("--vaults", type=int)
    parser.add_argument("--jobs", type=int, help="jobs per vault")
    parser.add_argument("--spread", type=float, help="jobs end within this many seconds of the start")
    parser.add_argument("--interval", type=float, help="poll interval, seconds")
    parser.add_argument("--discovery-interval", type=float, help="seconds between listings for new jobs")
    parser.add_argument("--cpu-rounds", type=int, help="quiet rounds measured for CPU")
    parser.add_argument("--latency-rounds", type=int, help="rounds while /metrics is scraped")
    parser.add_argument("--scrape-every", type=float, help="seconds between /metrics scrapes")
    parser.add_argument("--render-reps", type=int, help="repetitions of each /metrics measurement")
    parser.add_argument("--sample", type=int, help="single-job GETs per client in the baseline")
    parser.add_argument("--refill-pause", type=float, help="seconds to let ARM's budget refill before a sample")
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
    args = parse_args(argv)
    settings = settings_from(args)
    command = " ".join(["python -m bench.bench", *(sys.argv[1:] if argv is None else argv)])
    os.environ[TOKEN_ENV] = SIM_TOKEN
    with tempfile.TemporaryDirectory(prefix="backup-watcher-bench-") as tmp, _sigterm_as_interrupt():
        workdir = Path(tmp)
        with (workdir / "watcher.log").open("w") as log, SimProcess(
            settings.vaults, settings.jobs, settings.spread, workdir
        ) as sim:
            configure_logging("json", "info", stream=log)
            print(f"# simulator pid {sim.proc.pid if sim.proc else '?'} at {sim.url}", flush=True)
            manifest = sim.manifest()
            results = asyncio.run(run_watcher(settings, sim.url, manifest, workdir))
            asyncio.run(run_baselines(settings, sim.url, manifest, workdir, results))
        results.answered = sim.answered
        report(results, command)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
