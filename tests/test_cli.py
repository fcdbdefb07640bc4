"""The `backup-watcher` command as a user runs it: real subprocesses, exit statuses, what they print."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SUB, TOKEN_ENV, FakeClock, cli
from watcher import __version__
from watcher.config import effective_config, load_config
from watcher.errors import ConfigError
from watcher.sim import Estate, SimJob, Simulator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
CASES = ROOT / "tests" / "configs"
RG = "rg-cli"
VAULT = "vault-cli"
JOB_ID = "5a1c3e7f-2b4d-4f60-8a9c-0e1d2f3a4b5c"
FINAL = r"(Completed|CompletedWithWarnings|Failed|Cancelled)"


def run_cli(*args: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion, capturing its output."""
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False)


async def arun_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`run_cli` without blocking the event loop the in-process simulator answers on."""
    proc = await asyncio.create_subprocess_exec(
        *cli(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of stderr, after checking there is no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def finished_total(metrics: str) -> float:
    """The sum of every azure_backup_jobs_finished_total sample."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "azure_backup_jobs_finished_total"
    )


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def _item_values(text: str, metric: str, **match: str) -> dict[str, float]:
    """`item` label -> value of one family's samples (those whose labels include `match`)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in match.items()):
                out[sample.labels["item"]] = sample.value
    return out


async def poll_until(
    check: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.1
) -> None:
    """Await `check()` until it is true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(interval)


class Daemon:
    """A CLI subprocess (`run` or `demo`) whose stdout and stderr go to files."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events written so far."""
        text = self.stderr()
        complete = text[: text.rfind("\n") + 1]  # a line still being written is read next time
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def alive(self) -> bool:
        """True while running; fails the test, showing the output, once the process has ended."""
        if self.proc.returncode is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()}")
        return True

    async def started_port(self) -> int:
        """The port the daemon serves on, from its `watcher_started` log event."""
        port: list[int] = []

        async def check() -> bool:
            started = [e for e in self.events() if e.get("event") == "watcher_started"]
            if started:
                port.append(int(str(started[0]["listen"]).rpartition(":")[2]))
            return self.alive() and bool(started)

        await poll_until(check, 20, "watcher_started logged", interval=0.05)
        return port[0]

    async def stop(self, sig: signal.Signals) -> tuple[int, float]:
        """Send `sig`; the exit status and how long the daemon took to end."""
        began = time.monotonic()
        self.proc.send_signal(sig)
        status = await asyncio.wait_for(self.proc.wait(), 15)
        return status, time.monotonic() - began


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    """Start CLI daemons; any still running at the end of the test is killed."""
    daemons: list[Daemon] = []

    async def start(*args: str, env: dict[str, str], name: str = "daemon") -> Daemon:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            proc = await asyncio.create_subprocess_exec(
                *cli(*args), env=env, stdout=out_file, stderr=err_file
            )
        daemons.append(Daemon(proc, out, err))
        return daemons[-1]

    yield start
    for daemon in daemons:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.proc.wait()


@pytest.fixture
def job(estate: Estate, clock: FakeClock) -> SimJob:
    """One VM backup, running for another nine minutes of the simulator's clock."""
    return estate.add(
        SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=VAULT,
            job_id=JOB_ID,
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity="vm-cli-01",
            backup_management_type="AzureIaasVM",
            start=clock.now - 60,
            duration=600,
        )
    )


def write_config(
    tmp_path: Path, endpoint: str, *, store: Path | None = None, name: str = "config.yml"
) -> Path:
    """A run config for the simulator at `endpoint`: fast polling, JSON logs, any free port."""
    data = {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": "200ms",
            "discovery_interval": "500ms",
            "request_timeout": "5s",
            "backoff_initial": "50ms",
            "backoff_max": "500ms",
        },
        "store": {"path": str(store or tmp_path / "state.sqlite3")},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "json", "level": "info"},
        "vaults": [{"subscription_id": SUB, "resource_group": RG, "name": VAULT, "jobs": [JOB_ID]}],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- version and check-config ---------------------------------------------------------------------


def test_version(cli_env: dict[str, str]) -> None:
    """`--version` prints the installed version and exits 0."""
    result = run_cli("--version", env=cli_env)
    assert (result.returncode, result.stdout) == (0, f"backup-watcher {__version__}\n")


def test_check_config_prints_the_effective_config(cli_env: dict[str, str]) -> None:
    """A valid file: exit 0, stdout is the effective config as YAML, stderr says it is valid."""
    result = run_cli("check-config", "--config", str(EXAMPLE), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"# {EXAMPLE}: valid\n"
    assert yaml.safe_load(result.stdout) == effective_config(load_config(EXAMPLE))


def test_check_config_prints_every_problem_with_its_location(cli_env: dict[str, str]) -> None:
    """An invalid file: exit 2, one `error: FILE: LOCATION: message` line per problem, no traceback."""
    path = CASES / "invalid-many-problems.yml"
    result = run_cli("check-config", "--config", str(path), env=cli_env)
    assert result.returncode == 2
    assert result.stdout == ""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert error_lines(result.stderr) == [f"error: {line}" for line in info.value.lines()]
    assert result.stderr.splitlines() == error_lines(result.stderr)
    for location in ("azure.management_endpoint", "poll.concurrency", "vaults[0].jobs[0]", "vaults[3]"):
        assert f"error: {path}: {location}: " in result.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("invalid-yaml-syntax.yml", "line 8, column 5: invalid YAML: "),
        ("invalid-top-level-list.yml", "line 2: expected a mapping of keys at the top, got a list"),
        ("invalid-not-utf8.yml", "line 1: not utf-8 text"),
    ],
)
def test_check_config_unusable_file_is_one_line(cli_env: dict[str, str], case: str, message: str) -> None:
    """A missing file, bad YAML, a list at the top, bytes that are not UTF-8: exit 2 and one line each."""
    path = CASES / case
    result = run_cli("check-config", "--config", str(path), env=cli_env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == error_lines(result.stderr)
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: {path}: {message}")


def test_config_comes_from_watcher_config_env(cli_env: dict[str, str]) -> None:
    """WATCHER_CONFIG names the file when --config is absent; --config wins when both are given."""
    bad = str(CASES / "invalid-durations.yml")
    from_env = run_cli("check-config", env={**cli_env, "WATCHER_CONFIG": str(EXAMPLE)})
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stderr == f"# {EXAMPLE}: valid\n"
    bad_env = run_cli("check-config", env={**cli_env, "WATCHER_CONFIG": bad})
    assert bad_env.returncode == 2
    assert f"error: {bad}: poll.interval: " in bad_env.stderr
    overridden = run_cli("check-config", "--config", str(EXAMPLE), env={**cli_env, "WATCHER_CONFIG": bad})
    assert overridden.returncode == 0, overridden.stderr


def test_no_config_at_all_says_how_to_give_one(cli_env: dict[str, str]) -> None:
    """Neither --config nor WATCHER_CONFIG: exit 2 with one line naming both."""
    result = run_cli("check-config", env=cli_env)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert "--config FILE or WATCHER_CONFIG" in line


# -- run ------------------------------------------------------------------------------------------


def test_run_with_a_bad_config_exits_2(cli_env: dict[str, str]) -> None:
    """`run` refuses an invalid config before starting: exit 2, problems with locations, no traceback."""
    path = CASES / "invalid-durations.yml"
    result = run_cli("run", "--config", str(path), env=cli_env)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert result.stderr.splitlines() == lines
    assert f"error: {path}: poll.interval: a duration must be positive, got '0s' (line 9)" in lines
    assert len(lines) == 6


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_run_stops_cleanly_on_signal(
    sig: signal.Signals,
    sim: Simulator,
    job: SimJob,
    tmp_path: Path,
    cli_env: dict[str, str],
    spawn: Callable[..., Awaitable[Daemon]],
) -> None:
    """`run` against the simulator serves /healthz, and SIGTERM or SIGINT ends it with 0 within 5 s."""
    daemon = await spawn("run", "--config", str(write_config(tmp_path, sim.url)), env=cli_env)
    port = await daemon.started_port()
    await poll_until(lambda: _status_is(f"http://127.0.0.1:{port}/readyz", 200), 10, "/readyz answering 200")
    assert (await http_get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    status, took = await daemon.stop(sig)
    assert status == 0, daemon.stderr()
    assert took < 5
    events = [e["event"] for e in daemon.events()]
    assert "shutdown_requested" in events
    assert events[-1] == "watcher_stopped"
    assert "Traceback" not in daemon.stderr()


async def _status_is(url: str, status: int) -> bool:
    try:
        return (await http_get(url))[0] == status
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize("kind", ["directory", "not-sqlite"])
def test_run_with_an_unusable_store_exits_1(kind: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A directory or a non-SQLite file where the store should be: exit 1, one error line naming it."""
    store = tmp_path / "state.sqlite3"
    if kind == "directory":
        store.mkdir()
    else:
        store.write_text("these are my notes, not a database\n")
    config = write_config(tmp_path, "http://127.0.0.1:9", store=store)
    result = run_cli("run", "--config", str(config), env=cli_env)
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: cannot use state store {store}: ")
    if kind == "not-sqlite":
        assert line.endswith("file is not a database")


async def test_run_refuses_a_store_locked_by_a_running_watcher(
    sim: Simulator,
    job: SimJob,
    tmp_path: Path,
    cli_env: dict[str, str],
    spawn: Callable[..., Awaitable[Daemon]],
) -> None:
    """A second watcher on the same store exits 1 naming the lock; the first keeps running."""
    config = write_config(tmp_path, sim.url)
    first = await spawn("run", "--config", str(config), env=cli_env, name="first")
    await first.started_port()
    status, _, stderr = await arun_cli("run", "--config", str(config), env=cli_env)
    assert status == 1
    [line] = error_lines(stderr)
    store = tmp_path / "state.sqlite3"
    assert line == (
        f"error: state store {store} is locked by another running backup-watcher "
        f"(lock file {store}.lock); give each watcher its own store.path"
    )
    assert first.alive()
    assert (await first.stop(signal.SIGTERM))[0] == 0


async def test_history_shows_what_a_run_recorded(
    sim: Simulator,
    job: SimJob,
    clock: FakeClock,
    tmp_path: Path,
    cli_env: dict[str, str],
    spawn: Callable[..., Awaitable[Daemon]],
) -> None:
    """After a run sees a job start and finish, `history` prints both transitions as a table and as JSON."""
    config = write_config(tmp_path, sim.url)
    daemon = await spawn("run", "--config", str(config), env=cli_env)
    metrics = f"http://127.0.0.1:{await daemon.started_port()}/metrics"

    async def seen_running() -> bool:
        return any(e.get("event") == "job_watched" for e in daemon.events()) and daemon.alive()

    await poll_until(seen_running, 10, "the running job watched")
    clock.advance(600)

    async def finished() -> bool:
        return finished_total((await http_get(metrics))[1]) == 1

    await poll_until(finished, 10, "the job counted as finished")
    assert (await daemon.stop(signal.SIGTERM))[0] == 0

    status, table, _ = await arun_cli("history", "--config", str(config), env=cli_env)
    assert status == 0
    header, *rows = table.splitlines()
    assert header.split() == ["OBSERVED", "(UTC)", "VAULT", "JOB", "ID", "OPERATION", "ENTITY", "FROM", "TO"]
    assert [row.split()[2:] for row in rows] == [
        [VAULT, JOB_ID, "Backup", "vm-cli-01", "(first", "seen)", "InProgress"],
        [VAULT, JOB_ID, "Backup", "vm-cli-01", "InProgress", "Completed"],
    ]

    status, text, _ = await arun_cli("history", "--config", str(config), "--json", env=cli_env)
    assert status == 0
    records = json.loads(text)
    assert [(r["job_id"], r["from_status"], r["to_status"]) for r in records] == [
        (JOB_ID, None, "InProgress"),
        (JOB_ID, "InProgress", "Completed"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", r["observed_at"]) for r in records)

    other = "00000000-0000-4000-8000-000000000000"
    status, text, _ = await arun_cli("history", "--config", str(config), other, env=cli_env)
    assert (status, text) == (0, f"no transitions recorded for job {other}\n")


# -- demo (the one slow test) ---------------------------------------------------------------------


async def test_demo_serves_metrics_and_jobs_finish_within_a_minute(
    tmp_path: Path,
    cli_env: dict[str, str],
    spawn: Callable[..., Awaitable[Daemon]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`demo` prints its metrics URL, serves /metrics and /healthz, a job ends within 60s, SIGTERM exits 0."""
    env = {**cli_env, "WATCHER_STORE_PATH": str(tmp_path / "demo.sqlite3")}
    began = time.monotonic()
    daemon = await spawn("demo", "--listen", "127.0.0.1:0", env=env, name="demo")
    url: list[str] = []

    async def banner() -> bool:
        found = re.search(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)", daemon.stdout())
        if found:
            url.append(found.group(1))
        return daemon.alive() and bool(found)

    await poll_until(banner, 20, "the banner with the metrics URL")
    status, text = await http_get(url[0])
    assert status == 200
    assert f'azure_backup_watcher_build_info{{version="{__version__}"}} 1.0' in text

    async def counted() -> bool:
        return daemon.alive() and finished_total((await http_get(url[0]))[1]) > 0

    await poll_until(counted, 60, "a finished job on /metrics", interval=0.25)
    first_counted = time.monotonic() - began

    async def inventory() -> bool:
        text = (await http_get(url[0]))[1]
        points = _item_values(text, "azure_backup_item_last_recovery_point_timestamp_seconds")
        pending = {
            item
            for item, value in _item_values(
                text, "azure_backup_item_protection_state", state="pending"
            ).items()
            if value == 1.0
        }
        stale = any(at < time.time() - 2 * 86400 for at in points.values())
        never = bool(pending - set(points))
        return daemon.alive() and stale and never

    await poll_until(
        inventory, 60 - (time.monotonic() - began), "a stale and a never-backed-up item on /metrics"
    )
    first_inventory = time.monotonic() - began

    async def printed() -> bool:
        return daemon.alive() and re.search(rf"\bInProgress -> {FINAL}\b", daemon.stdout()) is not None

    await poll_until(printed, 60, "a status change to a final status printed", interval=0.25)
    first_change = time.monotonic() - began
    assert (await http_get(url[0].replace("/metrics", "/healthz")))[0] == 200
    page_status, page_text = await http_get(url[0].removesuffix("metrics"))
    assert page_status == 200
    assert "<title>backup-watcher" in page_text

    status, took = await daemon.stop(signal.SIGTERM)
    with capsys.disabled():
        print(
            f"\n[demo] first azure_backup_jobs_finished_total > 0 after {first_counted:.1f} s; "
            f"a stale and a never-backed-up item on /metrics after {first_inventory:.1f} s; "
            f"first job seen finishing (printed 'InProgress -> ...') after {first_change:.1f} s; "
            f"SIGTERM took {took:.2f} s"
        )
    (tmp_path / "time-to-first-finished-job.txt").write_text(f"{first_counted:.2f} {first_change:.2f}\n")
    assert first_change < 60
    assert (status, daemon.stderr()) == (0, "")
    assert took < 5
    lines = daemon.stdout().splitlines()
    # The status page's address comes first.
    page = re.fullmatch(r"backup-watcher demo: the status page is at (http://127\.0\.0\.1:\d+/)", lines[0])
    assert page is not None, lines[0]
    assert page.group(1) == url[0].removesuffix("metrics")
    assert any(re.search(rf"\bInProgress -> {FINAL}\b", line) for line in lines)
