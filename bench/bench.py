"""Benchmark: one watcher over an enterprise estate, against the simulator, each in its own process.

    python -m bench.bench              # 1,000 vaults, 20,000 items, 100,000 jobs a day; about 13 minutes
    python -m bench.bench --quick      # 20 vaults at short intervals; a smoke run of about 25 seconds

The estate (`watcher.sim.scenarios.scale_estate`): vaults of both kinds (every fifth a Backup vault) in
several subscriptions, protected items that keep backing up, and jobs that start all day long, each a
backup of one of its vault's items, lasting 29 minutes on average (so about 2,000 run at any moment at
100,000 a day). The simulator (`bench.simserver`) serves it on the wall clock with ARM's read budget per
subscription (a bucket of 250 refilled at 25 a second; overspending gets 429s). Before the watcher
starts, the benchmark records the estate's history (every job that ended in the last `--history-days`)
in a new state store as the watcher would have (`bench.seed`). Then:

1. the main run: the watcher (`bench.watcherproc`, which runs `backup-watcher run`'s daemon with
   probes that change nothing) starts on that store and watches every vault found in the
   subscriptions at the config's intervals (the defaults unless `--quick`). Its first round lasts until
   every vault has had a pass; `--rounds` rounds of one poll interval follow. From the first round on,
   /metrics is scraped over HTTP every `--scrape-every` seconds, with `Accept-Encoding: gzip` and
   without in turn (and the status page, where the watcher serves one);
2. the restart: a fresh watcher process on the same store; the time from its start to the first
   /metrics that has every vault's `azure_backup_jobs_watched` and every item's `azure_backup_item_info`;
3. the shards (`--shards 2`): two watchers, each polling its half of the vaults from its own store
   (seeded with its half's history), for `--shard-rounds` rounds;
4. one GET of one job, side by side against the same simulator: bare aiohttp + `json.loads`, the
   official async SDK (`azure-mgmt-recoveryservicesbackup`), and ours (`BackupApi.get_job`: request
   and parse), `--get-reps` times each in turn, `--sample` GETs a time, CPU per GET.

Every figure is printed as one `name: value` line with its target and whether it was met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import multiprocessing
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import aiohttp
import yaml

from bench.seed import Seeded, seed_store
from bench.simserver import ARM_BURST, ARM_PER_SECOND
from watcher.app import build_azure
from watcher.azure.models import VaultKind, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.config import Config, PollConfig, format_duration, validate_config
from watcher.sim import SIM_TOKEN
from watcher.sim.estate import BACKUP_VAULT, RECOVERY_SERVICES
from watcher.sim.scenarios import ScaleSpec, scale_jobs

TOKEN_ENV = "BACKUP_WATCHER_BENCH_TOKEN"  # noqa: S105 - the name of an env var, not a secret
PAGE = 200  # jobs on one page of the simulator's listings
BACKUP_VAULT_LIST_DAYS = 14

# What the project promises at this scale (docs/performance.md).
TARGET_RSS_MB = 200.0
TARGET_METRICS_P50_MS = 100.0
TARGET_METRICS_P99_MS = 250.0
TARGET_LAG_P99_MS = 50.0
TARGET_RESTART_S = 10.0
TARGET_GET_RATIO = 1.5
TARGET_PAGE_MS = 100.0

_WATCHED = re.compile(rb"^azure_backup_jobs_watched\{[^\n]*status=\"Completed\"", re.MULTILINE)
_ITEM_INFO = re.compile(rb"^azure_backup_item_info\{", re.MULTILINE)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def cpu_seconds() -> float:
    """User plus system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- settings -------------------------------------------------------------------------------------


@dataclass
class Settings:
    """The size and pace of a run."""

    quick: bool
    vaults: int
    subscriptions: int
    backup_vault_every: int
    items: int
    jobs_per_day: float
    job_seconds: float
    history_days: float
    rounds: int
    interval: float | None
    discovery_interval: float | None
    vault_discovery_interval: float | None
    inventory_interval: float | None
    scrape_every: float
    restart: bool
    shards: int
    shard_rounds: int
    sample: int
    get_reps: int
    profile: Path | None

    def poll(self) -> PollConfig:
        """The poll section: the defaults, except what the flags set."""
        given = {
            "interval": self.interval,
            "discovery_interval": self.discovery_interval,
            "vault_discovery_interval": self.vault_discovery_interval,
            "inventory_interval": self.inventory_interval,
        }
        return PollConfig(
            concurrency=16,
            ratelimit_burst=ARM_BURST,
            ratelimit_per_second=ARM_PER_SECOND,
            **{k: v for k, v in given.items() if v is not None},
        )

    def spec(self, now: float) -> ScaleSpec:
        """The estate, with jobs starting until well after the run is over."""
        poll = self.poll()
        run = (self.rounds + self.shard_rounds + 4) * poll.interval + 600.0
        return ScaleSpec(
            now=now,
            vaults=self.vaults,
            subscriptions=self.subscriptions,
            backup_vault_every=self.backup_vault_every,
            items_per_vault=self.items,
            jobs_per_day=self.jobs_per_day,
            job_seconds=self.job_seconds,
            history=self.history_days * 86400.0,
            horizon=run,
        )


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags over the defaults of a full run or of `--quick`."""
    quick = args.quick
    defaults: dict[str, Any] = {
        "vaults": 20 if quick else 1000,
        "subscriptions": 2 if quick else 10,
        "backup_vault_every": 5,
        "items": 4 if quick else 20,
        "jobs_per_day": 30_000.0 if quick else 100_000.0,
        "job_seconds": 30.0 if quick else 1728.0,
        "history_days": 0.05 if quick else 2.0,
        "rounds": 3 if quick else 7,
        "interval": 2.0 if quick else None,
        "discovery_interval": 4.0 if quick else None,
        "vault_discovery_interval": 10.0 if quick else None,
        "inventory_interval": 6.0 if quick else None,
        "scrape_every": 0.5 if quick else 2.0,
        "shards": 2,
        "shard_rounds": 2,
        "sample": 60 if quick else 500,
        "get_reps": 2 if quick else 3,
    }
    values = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in defaults.items()}
    return Settings(quick=quick, restart=not args.no_restart, profile=args.profile, **values)


# -- child processes ------------------------------------------------------------------------------


class SimProcess:
    """`python -m bench.simserver` as a child: started on enter, stopped (however we leave) on exit."""

    def __init__(self, spec: ScaleSpec) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "bench.simserver",
            f"--now={spec.now!r}",
            f"--vaults={spec.vaults}",
            f"--subscriptions={spec.subscriptions}",
            f"--backup-vault-every={spec.backup_vault_every}",
            f"--items={spec.items_per_vault}",
            f"--jobs-per-day={spec.jobs_per_day!r}",
            f"--job-seconds={spec.job_seconds!r}",
            f"--history={spec.history!r}",
            f"--horizon={spec.horizon!r}",
            "--stop-on-eof",
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.final: dict[str, Any] = {}

    def start(self) -> None:
        # stdin stays an open pipe: if this process dies, the child reads end of file and stops.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        line = self._read_line(timeout=300.0)
        if not line.startswith("ready "):
            raise RuntimeError(f"the simulator did not start (it said {line!r})")
        self.url = line.split()[1]

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else ""

    def stats(self) -> dict[str, Any]:
        """What the simulator has answered so far."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self._read_line(timeout=30.0)
        if not line.startswith("stats "):
            raise RuntimeError(f"the simulator did not report (it said {line!r})")
        data: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        return data

    def __enter__(self) -> SimProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("stats "):
                self.final = json.loads(line.split(" ", 1)[1])


class WatcherProcess:
    """`python -m bench.watcherproc` as a child, and the lines it writes to its stats file."""

    def __init__(
        self,
        name: str,
        config: Path,
        workdir: Path,
        *,
        shard: tuple[int, int] | None = None,
        profile: Path | None = None,
        sample_every: float = 5.0,
    ) -> None:
        self.name = name
        self.stats_path = workdir / f"{name}.stats.jsonl"
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "bench.watcherproc",
            f"--config={config}",
            f"--stats={self.stats_path}",
            f"--log={workdir / f'{name}.log'}",
            f"--listen=127.0.0.1:{self.port}",
            f"--sample-every={sample_every}",
        ]
        if shard is not None:
            self.argv += [f"--shard-index={shard[0]}", f"--shard-count={shard[1]}"]
        if profile is not None:
            self.argv.append(f"--profile={profile}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0
        self.lines: list[dict[str, Any]] = []
        self._offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.stats_path.touch()
        self.spawned = time.time()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def poll_lines(self) -> list[dict[str, Any]]:
        """Lines written since the last look."""
        with self.stats_path.open() as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode())
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.lines.extend(new)
        return new

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"watcher {self.name} exited with {self.proc.returncode}:\n{err[-3000:]}")

    async def wait_for(self, kind: str, count: int = 1, within: float = 600.0) -> dict[str, Any]:
        """Until the child has written `count` lines of `kind`; the last of them."""
        deadline = time.monotonic() + within
        while True:
            self.poll_lines()
            found = self.of(kind)
            if len(found) >= count:
                return found[count - 1]
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"watcher {self.name} wrote {len(found)} of {count} {kind} lines in time")
            await asyncio.sleep(0.1)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, wait for it to end; its final line."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for _ in range(600):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.poll_lines()
        final = self.of("final")
        if not final:
            raise RuntimeError(f"watcher {self.name} ended ({self.proc.returncode}) without its final line")
        return final[-1]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_config(
    path: Path, settings: Settings, url: str, spec: ScaleSpec, store: Path, *, share: int = 1
) -> Config:
    """The watcher's config: every subscription of the estate, the poll intervals, and ARM's read budget
    (a `share`-th of it: shards that use one identity share its budget)."""
    poll = settings.poll()
    data = {
        "azure": {"management_endpoint": url, "credential": "static_token", "static_token_env": TOKEN_ENV},
        "poll": {
            "interval": format_duration(poll.interval),
            "discovery_interval": format_duration(poll.discovery_interval),
            "vault_discovery_interval": format_duration(poll.vault_discovery_interval),
            "inventory_interval": format_duration(poll.inventory_interval),
            "concurrency": poll.concurrency,
            "ratelimit_burst": poll.ratelimit_burst // share,
            "ratelimit_per_second": poll.ratelimit_per_second / share,
        },
        "store": {"path": str(store)},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "json", "level": "info"},
        "subscriptions": [{"id": sub} for sub in spec.subscription_ids],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return validate_config(data, str(path))


# -- the estate's truth ---------------------------------------------------------------------------


@dataclass
class Truth:
    """The estate's jobs as (start, end) per vault: who ran and ended when."""

    spec: ScaleSpec
    jobs: dict[int, list[tuple[float, float]]]

    @classmethod
    def of(cls, spec: ScaleSpec, seeded: Seeded) -> Truth:
        jobs: dict[int, list[tuple[float, float]]] = {}
        for v, start, end in seeded.timeline:
            jobs.setdefault(v, []).append((start, end))
        return cls(spec, jobs)

    def kind(self, v: int) -> str:
        return self.spec.vault(v)[0]

    def listing_pages(self, v: int, at: float) -> int:
        """Pages of one listing of the vault's running jobs (a Backup vault lists 14 days whole)."""
        if self.kind(v) == RECOVERY_SERVICES:
            return 1
        since = at - BACKUP_VAULT_LIST_DAYS * 86400.0
        listed = sum(1 for start, _end in self.jobs.get(v, []) if since <= start <= at)
        return max(1, math.ceil(listed / PAGE))

    def running_vaults(self, start: float, end: float, vaults: list[int]) -> tuple[int, int]:
        """Vaults with a job running at some moment of [start, end], and the pages listing them costs."""
        count = pages = 0
        for v in vaults:
            if any(s < end and e > start for s, e in self.jobs.get(v, [])):
                count += 1
                pages += self.listing_pages(v, end)
        return count, pages

    def started_and_ended(self, start: float, end: float, vaults: list[int]) -> tuple[int, int]:
        started = ended = 0
        for v in vaults:
            for s, e in self.jobs.get(v, []):
                started += start <= s < end
                ended += start <= e < end
        return started, ended

    def running_at(self, at: float) -> int:
        return sum(1 for jobs in self.jobs.values() for s, e in jobs if s <= at < e)

    def backup_vault_pages(self, vaults: list[int], at: float) -> float:
        bv = [self.listing_pages(v, at) for v in vaults if self.kind(v) == BACKUP_VAULT]
        return statistics.mean(bv) if bv else 1.0


# -- scraping while rounds poll -------------------------------------------------------------------


@dataclass
class Scrapes:
    """/metrics (and the status page) fetched over HTTP on a period while the watcher polls."""

    gzip: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    page: list[float] = field(default_factory=list)
    job_page: list[float] = field(default_factory=list)
    has_page: bool | None = None
    gzip_bytes: int = 0
    plain_bytes: int = 0
    failures: int = 0


async def timed_get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, int]:
    """Seconds from sending the request to the last byte of the answer, and the bytes read."""
    started = time.perf_counter()
    size = 0
    async with session.get(url, headers=headers) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


async def scrape(base: str, every: float, job_id: str, stop: asyncio.Event, out: Scrapes) -> None:
    """Every `every` seconds one GET: /metrics gzip, /metrics plain (and, if served, / and a job's page)."""
    # auto_decompress off: the time is the watcher's (and the wire's), not this client's inflating.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(f"{base}/") as resp:
            await resp.read()
            out.has_page = resp.content_type == "text/html"
        turn = 0
        while not stop.is_set():
            started = time.monotonic()
            kinds = ("gzip", "plain", "page", "job") if out.has_page else ("gzip", "plain")
            kind = kinds[turn % len(kinds)]
            turn += 1
            try:
                if kind == "gzip":
                    seconds, out.gzip_bytes = await timed_get(
                        session, f"{base}/metrics", {"Accept-Encoding": "gzip"}
                    )
                    out.gzip.append(seconds)
                elif kind == "plain":
                    seconds, out.plain_bytes = await timed_get(
                        session, f"{base}/metrics", {"Accept-Encoding": "identity"}
                    )
                    out.plain.append(seconds)
                elif kind == "page":
                    out.page.append((await timed_get(session, f"{base}/", {}))[0])
                else:
                    out.job_page.append((await timed_get(session, f"{base}/jobs/{job_id}", {}))[0])
            except aiohttp.ClientError:
                out.failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - started)))


async def fetch_metrics(base: str) -> bytes:
    """One /metrics body, gzip on the wire, inflated here."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        resp.raise_for_status()
        raw = await resp.read()
    return gzip.decompress(raw) if resp.headers.get("Content-Encoding") == "gzip" else raw


def completeness(body: bytes) -> tuple[int, int]:
    """Vaults with a jobs_watched series, and items with an item_info series, in a /metrics body."""
    return len(_WATCHED.findall(body)), len(_ITEM_INFO.findall(body))


def series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


# -- the runs -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One watcher process's lines, and what the simulator answered while it ran."""

    name: str
    started: dict[str, Any]
    rounds: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    final: dict[str, Any]
    answered: int
    throttled: int
    vaults: list[int]
    spawned: float


def throttled(stats: dict[str, Any]) -> int:
    """429s among what the simulator answered."""
    return sum(n for kind, n in stats["kinds"].items() if kind.endswith(" 429"))


async def main_run(
    settings: Settings, config: Path, workdir: Path, sim: SimProcess, vaults: list[int], job_id: str
) -> tuple[Run, Scrapes, bytes]:
    """Phase 1: the watcher on the seeded store, its rounds, and /metrics scraped while it polls."""
    stats = sim.stats()
    before, throttled_before = stats["total"], throttled(stats)
    every = min(10.0, settings.poll().interval / 2)
    proc = WatcherProcess("main", config, workdir, profile=settings.profile, sample_every=every)
    scrapes = Scrapes()
    body = b""
    proc.start()
    try:
        started = await proc.wait_for("started", within=300)
        first = await proc.wait_for("round", 1, within=900)
        print(f"# main run: round 1 done in {first['seconds']:.1f} s", flush=True)
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape(proc.url, settings.scrape_every, job_id, stop, scrapes))
        try:
            interval = settings.poll().interval
            for k in range(2, settings.rounds + 2):
                line = await proc.wait_for("round", k, within=interval * 3 + 120)
                print(
                    f"# main run: round {k} ({line['rss']:.0f} MB, {len(scrapes.gzip)} gzip scrapes)",
                    flush=True,
                )
        finally:
            stop.set()
            await scraper
        body = await fetch_metrics(proc.url)
        final = await proc.stop()
    except BaseException:
        proc.kill()
        raise
    stats = sim.stats()
    return (
        Run(
            "main",
            started,
            proc.of("round"),
            proc.of("sample"),
            final,
            stats["total"] - before,
            throttled(stats) - throttled_before,
            vaults,
            proc.spawned,
        ),
        scrapes,
        body,
    )


@dataclass
class Restart:
    seconds: float
    started_after: float
    vaults_seen: int
    items_seen: int
    answered: int
    throttled: int
    counted: int


async def restart_run(
    config: Path, workdir: Path, sim: SimProcess, vaults: int, items: int, within: float = 120.0
) -> Restart:
    """Phase 2: a fresh process on the same store; from its start to a complete /metrics."""
    stats = sim.stats()
    before, throttled_before = stats["total"], throttled(stats)
    proc = WatcherProcess("restart", config, workdir)
    proc.start()
    seen = (0, 0)
    done = 0.0
    try:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            while time.monotonic() < deadline:
                proc.check_alive()
                try:
                    async with session.get(
                        f"{proc.url}/metrics", headers={"Accept-Encoding": "gzip"}
                    ) as resp:
                        raw = await resp.read()
                        end = time.time()
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
                    continue
                seen = completeness(gzip.decompress(raw))
                if seen[0] >= vaults and seen[1] >= items:
                    done = end
                    break
                await asyncio.sleep(0.05)
        started = await proc.wait_for("started", within=60)
        final = await proc.stop()
    except BaseException:
        proc.kill()
        raise
    stats = sim.stats()
    return Restart(
        seconds=(done - proc.spawned) if done else math.inf,
        started_after=started["t"] - proc.spawned,
        vaults_seen=seen[0],
        items_seen=seen[1],
        answered=stats["total"] - before,
        throttled=throttled(stats) - throttled_before,
        counted=requests_total(final),
    )


async def shard_runs(
    settings: Settings, configs: list[Path], workdir: Path, sim: SimProcess, vaults: list[list[int]]
) -> list[Run]:
    """Phase 3: the shards side by side, each from its own store, for `shard_rounds` rounds."""
    stats = sim.stats()
    before, throttled_before = stats["total"], throttled(stats)
    count = len(configs)
    procs = [
        WatcherProcess(f"shard-{i}", config, workdir, shard=(i, count), sample_every=10.0)
        for i, config in enumerate(configs)
    ]
    for proc in procs:
        proc.start()
    try:
        interval = settings.poll().interval
        for proc in procs:
            await proc.wait_for(
                "round", settings.shard_rounds + 1, within=900 + interval * 3 * settings.shard_rounds
            )
        finals = [await proc.stop() for proc in procs]
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    stats = sim.stats()
    return [
        Run(
            proc.name,
            proc.of("started")[0],
            proc.of("round"),
            proc.of("sample"),
            final,
            stats["total"] - before,
            throttled(stats) - throttled_before,
            vaults[i],
            proc.spawned,
        )
        for i, (proc, final) in enumerate(zip(procs, finals, strict=True))
    ]


def requests_total(line: dict[str, Any]) -> int:
    return sum(n for codes in line["requests"].values() for n in codes.values())


# -- one GET, three ways --------------------------------------------------------------------------


SampleJob = tuple[str, str, str, str]  # subscription_id, resource_group, vault, job_id


def sample_jobs(spec: ScaleSpec, count: int) -> list[SampleJob]:
    """`count` ended jobs of Recovery Services vaults, taken round-robin over the vaults (and so over
    every subscription)."""
    per_vault: list[list[SampleJob]] = []
    vaults = [v for v in range(spec.vaults) if spec.vault(v)[0] == RECOVERY_SERVICES]
    depth = math.ceil(count / max(len(vaults), 1))
    for v in vaults:
        _kind, subscription, group, name = spec.vault(v)
        ended = (j for j in scale_jobs(spec, v) if j.end <= spec.now)
        per_vault.append(
            [(subscription, group, name, j.job_id) for _, j in zip(range(depth), ended, strict=False)]
        )
    out: list[SampleJob] = []
    for level in range(depth):
        out.extend(jobs[level] for jobs in per_vault if level < len(jobs))
    return out[:count]


@dataclass
class GetFigures:
    """CPU per GET of each try."""

    cpu_ms: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.cpu_ms)


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


GetOne = Callable[[SampleJob], Awaitable[None]]


async def timed_gets(
    jobs: list[SampleJob], concurrency: int, get: GetOne, limiter: SubscriptionLimiter
) -> tuple[float, int]:
    """CPU ms per GET of `jobs` (after `concurrency` warm-up GETs), `concurrency` at once, within
    ARM's budget (`limiter`); and how many failed."""
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
    cpu = cpu_seconds()
    await asyncio.gather(*(one(job) for job in measured))
    return 1000 * (cpu_seconds() - cpu) / max(len(measured), 1), failed


async def get_baselines(
    settings: Settings, url: str, config: Config, spec: ScaleSpec
) -> dict[str, GetFigures]:
    """Phase 4: the same GETs through bare aiohttp, the official SDK and our client, in turns."""
    from azure.mgmt.recoveryservicesbackup.aio import RecoveryServicesBackupClient

    jobs = sample_jobs(spec, settings.sample + 16)
    api_version = config.azure.api_version
    figures = {name: GetFigures() for name in ("bare", "sdk", "ours")}

    bare_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    headers = {"Authorization": f"Bearer {SIM_TOKEN}", "Accept": "application/json"}

    async def bare(job: SampleJob) -> None:
        sub, group, vault, job_id = job
        job_url = (
            f"{url}/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.RecoveryServices"
            f"/vaults/{vault}/backupJobs/{job_id}?api-version={api_version}"
        )
        async with bare_session.get(job_url, headers=headers) as resp:
            body = json.loads(await resp.read())
        if resp.status != 200 or "properties" not in body:
            raise ValueError(f"bare GET of {job_id}: {resp.status}")

    credential = SimCredential()
    clients = {
        sub: RecoveryServicesBackupClient(credential, sub, base_url=url, api_version=api_version)
        for sub in sorted({job[0] for job in jobs})
    }

    async def sdk(job: SampleJob) -> None:
        sub, group, vault, job_id = job
        resource = await clients[sub].job_details.get(vault, group, job_id, enforce_https=False)
        if resource.properties is None or resource.properties.status is None:
            raise ValueError(f"the SDK read no status for job {job_id}")

    azure = build_azure(config, None, SubscriptionLimiter(ARM_BURST, ARM_PER_SECOND))

    async def ours(job: SampleJob) -> None:
        sub, group, vault, job_id = job
        await azure.api.get_job(VaultRef(sub, group, vault, VaultKind.RECOVERY_SERVICES), job_id)

    ways: dict[str, GetOne] = {"bare": bare, "sdk": sdk, "ours": ours}
    # One budget for every try, a little under ARM's refill rate, so that no try meets a 429; and before
    # a try, a pause until the budget holds the whole try, so that no try waits on it (idle waiting has a
    # CPU cost of its own, which is not what is compared here).
    rate = 0.9 * ARM_PER_SECOND
    limiter = SubscriptionLimiter(ARM_BURST, rate)
    per_try = max(Counter(job[0] for job in jobs).values())
    spent, since = 0.0, time.monotonic()
    try:
        for _rep in range(settings.get_reps):
            for name, get in ways.items():
                available = ARM_BURST + rate * (time.monotonic() - since) - spent
                if available < per_try:
                    await asyncio.sleep((per_try - available) / rate)
                spent += per_try
                cpu_ms, failed = await timed_gets(jobs, 16, get, limiter)
                figures[name].cpu_ms.append(cpu_ms)
                figures[name].failed += failed
    finally:
        await bare_session.close()
        for client in clients.values():
            await client.close()
        await azure.close()
    return figures


# -- the report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class RoundView:
    """One round of a run, as deltas from the round before, beside what the estate did meanwhile."""

    index: int
    seconds: float
    cpu: float
    rss: float
    requests: dict[str, int]
    throttled: int
    rows: dict[str, int]
    listings: dict[str, int]
    ended: int
    lag_p99: float
    running_vaults: int
    budget: int
    started_jobs: int
    ended_jobs: int

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def round_views(run: Run, truth: Truth) -> list[RoundView]:
    """Each round of `run` with its budget: a listing (its pages) per vault with a job running in the
    round, a GET per job that ended, a listing (its pages) per vault that discovered, and the inventory
    and vault listings the round made (whether those are spread over the rounds is reported apart)."""
    views: list[RoundView] = []
    previous: dict[str, Any] = {
        "cpu": run.started["cpu"],
        "requests": {},
        "rows": {},
        "listings": {},
        "ended": 0,
        "t": run.started["t"],
    }
    for line in run.rounds:
        end, start = line["t"], line["t"] - line["seconds"]
        requests = {
            endpoint: sum(codes.values()) - sum(previous["requests"].get(endpoint, {}).values())
            for endpoint, codes in line["requests"].items()
        }
        refused = sum(codes.get("429", 0) for codes in line["requests"].values()) - sum(
            codes.get("429", 0) for codes in previous["requests"].values()
        )
        rows = {k: v - previous["rows"].get(k, 0) for k, v in line["rows"].items()}
        listings = {k: v - previous["listings"].get(k, 0) for k, v in line["listings"].items()}
        ended = line["ended"] - previous["ended"]
        running, running_pages = truth.running_vaults(start, end, run.vaults)
        bv_pages = truth.backup_vault_pages(run.vaults, end)
        budget = (
            running_pages
            + ended
            + listings.get("discover recovery_services", 0)
            + math.ceil(listings.get("discover backup_vault", 0) * bv_pages)
            + requests.get("list_items", 0)
            + requests.get("list_points", 0)
            + requests.get("list_vaults", 0)
        )
        started_jobs, ended_jobs = truth.started_and_ended(start, end, run.vaults)
        views.append(
            RoundView(
                index=line["index"],
                seconds=line["seconds"],
                cpu=line["cpu"] - previous["cpu"],
                rss=line["rss"],
                requests=requests,
                throttled=refused,
                rows=rows,
                listings=listings,
                ended=ended,
                lag_p99=line["lag"]["p99"],
                running_vaults=running,
                budget=budget,
                started_jobs=started_jobs,
                ended_jobs=ended_jobs,
            )
        )
        previous = line
    return views


def print_rounds(views: list[RoundView]) -> None:
    print(
        "round  seconds  cpu-s  rss-MB  requests  budget  list  get  items  points  vaults  429  "
        "discover  inventory  ended  run-vaults  job-rows  inv-rows  lag-p99"
    )
    for r in views:
        q = r.requests
        discover = sum(v for k, v in r.listings.items() if k.startswith("discover"))
        inventory = sum(v for k, v in r.listings.items() if k.startswith("inventory"))
        print(
            f"{r.index:5d}  {r.seconds:7.1f}  {r.cpu:5.1f}  {r.rss:6.0f}  {r.total:8d}  {r.budget:6d}  "
            f"{q.get('list_jobs', 0):4d}  {q.get('get_job', 0):3d}  {q.get('list_items', 0):5d}  "
            f"{q.get('list_points', 0):6d}  {q.get('list_vaults', 0):6d}  {r.throttled:3d}  {discover:8d}  "
            f"{inventory:9d}  {r.ended:5d}  {r.running_vaults:10d}  {r.rows.get('jobs', 0):8d}  "
            f"{r.rows.get('inventory', 0):8d}  {r.lag_p99 * 1000:5.1f}ms"
        )


def p(values: list[float], share: float) -> float:
    return percentile(values, share) if values else math.nan


def report(
    settings: Settings,
    spec: ScaleSpec,
    command: str,
    seeded: Seeded,
    truth: Truth,
    main: Run,
    scrapes: Scrapes,
    body: bytes,
    restart: Restart | None,
    shards: list[Run],
    gets: dict[str, GetFigures],
    sim_stats: dict[str, Any],
    load: tuple[float, float],
    elapsed: float,
) -> None:
    """Print the rounds, then every figure as one `name: value` line with its target."""
    poll = settings.poll()
    bv = sum(1 for v in range(spec.vaults) if spec.vault(v)[0] == BACKUP_VAULT)
    print()
    print(f"command: {command}")
    print(
        f"estate: {spec.vaults} vaults ({spec.vaults - bv} Recovery Services, {bv} Backup vaults) in "
        f"{spec.subscriptions} subscriptions, {spec.items_per_vault} items each "
        f"({spec.vaults * spec.items_per_vault} items), {spec.jobs_per_day:.0f} jobs a day lasting "
        f"{format_duration(round(spec.job_seconds))} on average ({truth.running_at(spec.now)} running "
        "at the start); "
        f"{seeded.jobs} finished jobs ({settings.history_days:g} days) in the store before the watcher "
        f"started (seeded in {seeded.seconds:.0f} s)"
    )
    print(
        f"intervals: poll {format_duration(poll.interval)}, discovery "
        f"{format_duration(poll.discovery_interval)}, vault discovery "
        f"{format_duration(poll.vault_discovery_interval)}, inventory "
        f"{format_duration(poll.inventory_interval)}; concurrency {poll.concurrency}; ARM budget "
        f"{ARM_BURST} + {ARM_PER_SECOND:g}/s per subscription"
    )
    print(
        f"machine: {os.cpu_count()} cores; load average (1 min) {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end"
    )
    print()
    views = round_views(main, truth)
    print("main run (round 1: until every vault had a pass; then one poll interval each):")
    print_rounds(views)
    steady = views[1:]

    # memory
    rss_line = ", ".join(f"{s['rss']:.0f}" for s in main.samples)
    peak = main.final["hwm"]
    print()
    print(
        f"peak rss: {peak:.1f} MB (VmHWM of the watcher's process; target <= {TARGET_RSS_MB:g} MB: "
        f"{verdict(peak <= TARGET_RSS_MB)})"
    )
    half = steady[len(steady) // 2 :] or steady
    growth = half[-1].rss - half[0].rss if half else 0.0
    print(
        f"rss through the run: {rss_line} MB (every {main.samples[1]['t'] - main.samples[0]['t']:.0f} s "
        f"from start); at round ends {', '.join(f'{r.rss:.0f}' for r in views)}; "
        f"{growth:+.1f} MB over the last {len(half)} rounds"
        if len(main.samples) > 1
        else f"rss through the run: {rss_line} MB"
    )

    # /metrics
    for name, times in (("gzip", scrapes.gzip), ("plain", scrapes.plain)):
        p50, p99 = p(times, 0.5), p(times, 0.99)
        ok = p50 * 1000 <= TARGET_METRICS_P50_MS and p99 * 1000 <= TARGET_METRICS_P99_MS
        print(
            f"metrics {name} p50: {ms(p50)}; p99: {ms(p99)}; max {ms(max(times, default=math.nan))} over "
            f"{len(times)} scrapes while rounds poll (target p50 <= {TARGET_METRICS_P50_MS:g} ms, "
            f"p99 <= {TARGET_METRICS_P99_MS:g} ms: {verdict(ok)})"
        )
    print(
        f"metrics body: {scrapes.plain_bytes / 1e6:.2f} MB plain, {scrapes.gzip_bytes / 1e6:.2f} MB gzip; "
        f"{series(body)} series; {scrapes.failures} failed scrapes"
    )
    if scrapes.has_page:
        print(
            f"status page p50/p99: {ms(p(scrapes.page, 0.5))} / {ms(p(scrapes.page, 0.99))} (GET /, "
            f"{len(scrapes.page)} times); job page {ms(p(scrapes.job_page, 0.5))} / "
            f"{ms(p(scrapes.job_page, 0.99))} (GET /jobs/{{id}}, {len(scrapes.job_page)} times) (target < "
            f"{TARGET_PAGE_MS:g} ms: "
            f"{verdict(max(p(scrapes.page, 0.99), p(scrapes.job_page, 0.99)) * 1000 < TARGET_PAGE_MS)})"
        )
    else:
        print("status page p50/p99: n/a (no status page)")

    # the event loop
    lag = main.final["lag"]
    steady_lag = max((r.lag_p99 for r in steady), default=0.0)
    print(
        f"event-loop lag p99: {ms(lag['p99'])} (p50 {ms(lag['p50'])}, max {ms(lag['max'])} over "
        f"{lag['n']} sleeps of 10 ms, the whole run; worst round after the first: p99 {ms(steady_lag)}; "
        f"target <= {TARGET_LAG_P99_MS:g} ms: {verdict(lag['p99'] * 1000 <= TARGET_LAG_P99_MS)})"
    )

    full_gc = main.final.get("full_gc", {})
    print(
        f"full garbage collections: {full_gc.get('count', 0)} in the main run, longest pause "
        f"{ms(full_gc.get('max', 0.0))}, {ms(full_gc.get('total', 0.0))} in all"
    )

    # restart
    if restart is not None:
        print(
            f"restart to complete metrics: {restart.seconds:.2f} s (process start to a /metrics with "
            f"{restart.vaults_seen} vaults' jobs_watched and {restart.items_seen} items' item_info; the "
            f"daemon was serving {restart.started_after:.2f} s after start; target <= "
            f"{TARGET_RESTART_S:g} s: "
            f"{verdict(restart.seconds <= TARGET_RESTART_S)})"
        )
    else:
        print("restart to complete metrics: n/a (--no-restart)")

    # one GET
    bare, sdk, ours = gets["bare"].median, gets["sdk"].median, gets["ours"].median
    for name, label in (
        ("bare", "bare aiohttp + json.loads"),
        ("sdk", "official async sdk"),
        ("ours", "ours"),
    ):
        tries = ", ".join(f"{v:.3f}" for v in gets[name].cpu_ms)
        print(
            f"get cpu ({label}): {gets[name].median:.3f} ms per GET (tries {tries}; "
            f"{gets[name].failed} failed)"
        )
    print(
        f"get cpu ratio ours/bare: {ours / bare:.2f} (sdk/bare {sdk / bare:.2f}; {settings.sample} GETs "
        f"a try, 16 at a time; target <= {TARGET_GET_RATIO:g}: {verdict(ours / bare <= TARGET_GET_RATIO)})"
    )

    # requests
    totals = [r.total for r in steady]
    budgets = [r.budget for r in steady]
    over = max((r.total - r.budget for r in steady), default=0)
    discover = [sum(v for k, v in r.listings.items() if k.startswith("discover")) for r in steady]
    inventory = [sum(v for k, v in r.listings.items() if k.startswith("inventory")) for r in steady]
    print(
        f"requests per steady round: mean {statistics.mean(totals):.0f}, max {max(totals)}; budget mean "
        f"{statistics.mean(budgets):.0f}, max {max(budgets)}; most over budget {over} (target <= budget: "
        f"{verdict(over <= 0)})"
    )
    print(
        f"requests first round: {views[0].total} in {views[0].seconds:.1f} s (every vault discovers and "
        f"reads its inventory at once; budget {views[0].budget})"
    )
    print(
        f"spread: discovery passes per steady round mean {statistics.mean(discover):.0f} (vaults x interval"
        f" / discovery_interval = {spec.vaults * poll.interval / poll.discovery_interval:.0f}); inventory "
        f"rounds per steady round mean {statistics.mean(inventory):.0f} (scheduled every "
        f"{format_duration(poll.inventory_interval / 2)}-{format_duration(poll.inventory_interval)}, and "
        "within a minute of an item's successful backup)"
    )
    busiest = max(sim_stats["busiest_window"].values(), default=0)
    allowed = ARM_BURST + ARM_PER_SECOND * sim_stats["window"]
    refused = main.throttled + (restart.throttled if restart else 0) + (shards[0].throttled if shards else 0)
    print(
        f"throttled: {refused} 429s answered to the watchers (main run {main.throttled}, restart "
        f"{restart.throttled if restart else 'n/a'}, shards {shards[0].throttled if shards else 'n/a'}; "
        f"{throttled(sim_stats) - refused} to the single-GET clients); busiest subscription {busiest} "
        f"requests in {sim_stats['window']} s (ARM allows {allowed:g}) (target 0: {verdict(refused == 0)})"
    )
    runs = [main, *shards]
    counted = sum(requests_total(run.final) for run in runs) + (restart.counted if restart else 0)
    answered = main.answered + (shards[0].answered if shards else 0) + (restart.answered if restart else 0)
    print(
        f"requests counted: watcher {counted}, simulator {answered} "
        f"({'equal' if counted == answered else 'DIFFERENT'}; every watcher process of the run)"
    )

    # rows
    job_rows = [r.rows.get("jobs", 0) for r in steady]
    changes = [r.started_jobs + r.ended_jobs for r in steady]
    print(
        f"rows written per steady round: jobs mean {statistics.mean(job_rows):.0f}, max {max(job_rows)} "
        f"(jobs that started or ended in the round: mean {statistics.mean(changes):.0f}); transitions "
        f"{statistics.mean(r.rows.get('transitions', 0) for r in steady):.0f}; per-item "
        f"{statistics.mean(r.rows.get('items', 0) for r in steady):.0f}; inventory "
        f"{statistics.mean(r.rows.get('inventory', 0) for r in steady):.0f}; totals "
        f"{statistics.mean(r.rows.get('counters', 0) for r in steady):.0f}; watermarks "
        f"{statistics.mean(r.rows.get('watermarks', 0) for r in steady):.0f}"
    )
    cpu = [r.cpu for r in steady]
    print(f"cpu per steady round: mean {statistics.mean(cpu):.2f} s, max {max(cpu):.2f} s")

    # shards
    for run in shards:
        views = round_views(run, truth)
        steady = views[1:] or views
        print(
            f"{run.name} ({len(run.vaults)} vaults): peak rss {run.final['hwm']:.1f} MB; requests per steady "
            f"round mean {statistics.mean(r.total for r in steady):.0f}, max {max(r.total for r in steady)} "
            f"(first round {views[0].total}); lag p99 {ms(run.final['lag']['p99'])}"
        )
    if not shards:
        print("shards: n/a (--shards 0)")
    print(f"simulator answered: {sim_stats['kinds']}")
    print(f"benchmark took: {elapsed:.0f} s")


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small estate at short intervals (smoke test)")
    parser.add_argument("--vaults", type=int)
    parser.add_argument("--subscriptions", type=int)
    parser.add_argument("--backup-vault-every", type=int, help="every Nth vault is a Backup vault (0: none)")
    parser.add_argument("--items", type=int, help="protected items per vault")
    parser.add_argument("--jobs-per-day", type=float)
    parser.add_argument("--job-seconds", type=float, help="mean job duration")
    parser.add_argument("--history-days", type=float, help="finished jobs in the store before the start")
    parser.add_argument("--rounds", type=int, help="rounds after the first")
    parser.add_argument("--interval", type=float, help="poll.interval, seconds (default: the config's)")
    parser.add_argument("--discovery-interval", type=float)
    parser.add_argument("--vault-discovery-interval", type=float)
    parser.add_argument("--inventory-interval", type=float)
    parser.add_argument("--scrape-every", type=float, help="seconds between two GETs while rounds poll")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart")
    parser.add_argument("--shards", type=int, help="shards of the sharded run (0: none)")
    parser.add_argument("--shard-rounds", type=int)
    parser.add_argument("--sample", type=int, help="GETs per try of each client")
    parser.add_argument("--get-reps", type=int, help="tries of each client")
    parser.add_argument("--profile", type=Path, help="cProfile the main run's watcher into this file")
    return parser.parse_args(argv)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every child process is stopped; and SIGINT is Ctrl-C even when the
    benchmark was started in the background by a shell (which starts it with SIGINT ignored)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def refill(settings: Settings) -> None:
    """Wait until ARM's budget has refilled after the phase before. Each phase starts a new process, whose
    limiter starts full, as a watcher's does when it starts: a budget the last process left empty would
    answer its first burst with 429s. (A quick run spends too little of it to matter.)"""
    if not settings.quick:
        time.sleep(ARM_BURST / ARM_PER_SECOND)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; its child processes end with it, however it ends."""
    began = time.monotonic()
    args = parse_args(argv)
    settings = settings_from(args)
    command = " ".join(["python -m bench.bench", *(sys.argv[1:] if argv is None else argv)])
    os.environ[TOKEN_ENV] = SIM_TOKEN
    load_start = os.getloadavg()[0]
    spec = settings.spec(time.time())
    with tempfile.TemporaryDirectory(prefix="backup-watcher-bench-") as tmp, _sigterm_as_interrupt():
        workdir = Path(tmp)
        shard_count = settings.shards
        stores = [workdir / "main.sqlite3"] + [workdir / f"shard-{i}.sqlite3" for i in range(shard_count)]
        shard_of_store: list[tuple[int, int] | None] = [None] + [(i, shard_count) for i in range(shard_count)]
        with (
            ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool,
            SimProcess(spec) as sim,
        ):
            print(
                f"# seeding {len(stores)} store(s) with {settings.history_days:g} days of history", flush=True
            )
            seeds: list[Future[Seeded]] = [
                pool.submit(seed_store, path, spec, shard)
                for path, shard in zip(stores, shard_of_store, strict=True)
            ]
            sim.wait_ready()
            print(f"# simulator at {sim.url}; work in {workdir}", flush=True)
            seeded = [future.result(timeout=3600) for future in seeds]
            pool.shutdown()
            truth = Truth.of(spec, seeded[0])
            configs = [
                workdir / "main.yaml",
                *(workdir / f"shard-{i}.yaml" for i in range(shard_count)),
            ]
            config = write_config(configs[0], settings, sim.url, spec, stores[0])
            for path, store in zip(configs[1:], stores[1:], strict=True):
                write_config(path, settings, sim.url, spec, store, share=shard_count)
            running = next(
                (j for j in scale_jobs(spec, 0) if j.start <= time.time() < j.end),
                next(iter(scale_jobs(spec, 0))),
            )
            print(f"# seeded {seeded[0].jobs} jobs in {seeded[0].seconds:.0f} s; main run starts", flush=True)
            main_result, scrapes, body = asyncio.run(
                main_run(settings, configs[0], workdir, sim, seeded[0].vaults, running.job_id)
            )
            restart = None
            if settings.restart:
                print("# restart on the same store", flush=True)
                refill(settings)
                restart = asyncio.run(
                    restart_run(configs[0], workdir, sim, spec.vaults, spec.vaults * spec.items_per_vault)
                )
            shards: list[Run] = []
            if shard_count:
                print(f"# {shard_count} shards, each from its own store", flush=True)
                refill(settings)
                shards = asyncio.run(
                    shard_runs(settings, configs[1:], workdir, sim, [s.vaults for s in seeded[1:]])
                )
            print("# one GET, three ways", flush=True)
            refill(settings)
            gets = asyncio.run(get_baselines(settings, sim.url, config, spec))
            sim_stats = sim.stats()
        load = (load_start, os.getloadavg()[0])
        report(
            settings,
            spec,
            command,
            seeded[0],
            truth,
            main_result,
            scrapes,
            body,
            restart,
            shards,
            gets,
            sim_stats,
            load,
            time.monotonic() - began,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
