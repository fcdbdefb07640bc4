"""`backup-watcher track` run as a user runs it: a subprocess against a simulator on 127.0.0.1.

The simulator's estate runs on the test's hand-moved clock: a job stays InProgress until the test has
seen `track` look at it and then moves the clock past its end, so no case waits for a job to finish
and none depends on how fast a subprocess starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml

from tests.conftest import SUB, TOKEN_ENV, FakeClock, cli, wait_for
from watcher.cli import main
from watcher.sim import SIM_TOKEN, Estate, SimJob, Simulator
from watcher.sim.scenarios import DEMO_SUBSCRIPTION

pytestmark = pytest.mark.timeout(30)

RG = "rg-backup"
VAULT = "vault-a"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.RecoveryServices/vaults/{VAULT}"
AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}


@dataclass
class Run:
    """A finished `backup-watcher` subprocess."""

    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


async def run(*args: str, env: dict[str, str], limit: float = 20.0) -> Run:
    """Run the CLI with `args`; its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *cli(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def when_seen(sim: Simulator, fragment: str, then: Callable[[], None]) -> None:
    """Once the simulator has answered a request whose path contains `fragment`, call `then`."""
    await wait_for(lambda: any(fragment in r.path and r.status == 200 for r in sim.requests), limit=15)
    then()


@pytest.fixture
def config_file(sim: Simulator, tmp_path: Path) -> str:
    """A track config for the simulator: static token from the test env var, fast retries, no vaults."""
    path = tmp_path / "track.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "azure": {
                    "management_endpoint": sim.url,
                    "credential": "static_token",
                    "static_token_env": TOKEN_ENV,
                },
                "poll": {"request_timeout": "5s", "backoff_initial": "0.05s", "backoff_max": "0.5s"},
                "store": {"path": str(tmp_path / "unused.db")},
            }
        )
    )
    return str(path)


def add_job(estate: Estate, job_id: str, outcome: str = "Completed", duration: float = 1.0) -> SimJob:
    """A job in the test vault that started just now (estate time) and ends `duration` later with `outcome`."""
    return estate.add(
        SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=VAULT,
            job_id=job_id,
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity="vm-web-01",
            backup_management_type="AzureIaasVM",
            start=estate.clock() - 0.1,
            duration=duration,
            outcome=outcome,
        )
    )


async def trigger_backup(sim: Simulator, vm: str) -> str:
    """POST .../protectedItems/{item}/backup; the Azure-AsyncOperation URL of its 202."""
    sim.estate.add_vault(SUB, RG, VAULT)
    item = f"vm;iaasvmcontainerv2;rg-app;{vm}"
    url = (
        f"{sim.url}{VAULT_ID}/backupFabrics/Azure/protectionContainers/iaasvmcontainer;iaasvmcontainerv2;"
        f"rg-app;{vm}/protectedItems/{item}/backup?api-version=2025-02-01"
    )
    async with aiohttp.ClientSession(headers=AUTH) as http, http.post(url) as resp:
        assert resp.status == 202
        return resp.headers["Azure-AsyncOperation"]


def track_args(config: str, job_id: str, *extra: str) -> list[str]:
    return [
        "track",
        "--config",
        config,
        "--vault-id",
        VAULT_ID,
        "--job-id",
        job_id,
        "--interval",
        "0.2s",
        *extra,
    ]


async def test_exit_status_follows_the_job_outcome(
    sim: Simulator, estate: Estate, clock: FakeClock, config_file: str, cli_env: dict[str, str]
) -> None:
    """Completed 0, CompletedWithWarnings 3, Failed 4, Cancelled 5; plain lines show the way there."""
    outcomes = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
    ids = {outcome: f"00000000-0000-4000-8000-00000000000{i}" for i, outcome in enumerate(outcomes)}
    for outcome, job_id in ids.items():
        add_job(estate, job_id, outcome)
    runs = asyncio.gather(*(run(*track_args(config_file, ids[o]), env=cli_env) for o in outcomes))
    for job_id in ids.values():
        await when_seen(sim, job_id, lambda: None)
    clock.advance(2)
    for (outcome, code), result in zip(outcomes.items(), await runs, strict=True):
        assert result.code == code, (outcome, result)
        lines = result.out.splitlines()
        assert "\r" not in result.out
        assert re.fullmatch(r"vault-a  vm-web-01  Backup  (InProgress|Cancelling)  00:00:00.*", lines[0])
        assert f"vault-a  vm-web-01  Backup  {outcome}  00:00:01" in lines
    assert (await runs)[2].out.splitlines()[-1].startswith("  error ")  # a failed job says why


async def test_timeout_exits_6(
    config_file: str, sim: Simulator, estate: Estate, cli_env: dict[str, str]
) -> None:
    """A job still running when --timeout passes: exit 6 and a note on stderr, after a last look at the deadline, not a whole interval later."""
    job_id = "00000000-0000-4000-8000-000000000060"
    add_job(estate, job_id, duration=60)
    # A 30s interval: the 0.6s timeout cuts the wait short (the run's own limit is 20s).
    result = await run(
        *track_args(config_file, job_id, "--interval", "30s", "--timeout", "0.6s"), env=cli_env
    )
    assert result.code == 6
    assert f"gave up after 0.6s: job {job_id} is still running" in result.err
    assert "InProgress" in result.out
    looks = [r for r in sim.requests if r.path.lower().endswith(job_id)]
    assert len(looks) == 2  # one at the start, one at the deadline


async def test_json_lines_parse_and_end_with_the_outcome(
    sim: Simulator, estate: Estate, clock: FakeClock, config_file: str, cli_env: dict[str, str]
) -> None:
    """--json writes one JSON object a line: job records while it runs, then `done` with the exit code."""
    job_id = "00000000-0000-4000-8000-0000000000a3"
    add_job(estate, job_id, "CompletedWithWarnings")
    result = asyncio.ensure_future(run(*track_args(config_file, job_id, "--json"), env=cli_env))
    await when_seen(sim, job_id, lambda: clock.advance(2))
    done = await result
    assert done.code == 3
    records = done.json_lines()
    jobs = [r for r in records if r["event"] == "job"]
    assert [r["status"] for r in jobs] == ["InProgress", "CompletedWithWarnings"]
    assert jobs[0]["current_task"]
    assert jobs[-1]["errors"]
    assert {r["job_id"] for r in jobs} == {job_id}
    assert records[-1] == {
        "event": "done",
        "job_id": job_id,
        "status": "CompletedWithWarnings",
        "exit_code": 3,
    }


async def test_operation_url_of_a_real_202_is_followed_to_its_job(
    sim: Simulator, estate: Estate, clock: FakeClock, config_file: str, cli_env: dict[str, str]
) -> None:
    """--operation-url from POST .../backup: the operation is polled to Succeeded, then its job to Completed."""
    estate.script_item("vm-web-07", duration=30)
    url = await trigger_backup(sim, "vm-web-07")
    args = ["track", "--config", config_file, "--operation-url", url, "--interval", "0.2s", "--json"]
    result = asyncio.ensure_future(run(*args, env=cli_env))
    await when_seen(sim, "/operationsStatus/", lambda: clock.advance(1))
    await when_seen(sim, "/backupJobs/", lambda: clock.advance(60))
    done = await result
    assert done.code == 0, done
    records = done.json_lines()
    operations = [r for r in records if r["event"] == "operation"]
    assert [r["status"] for r in operations] == ["InProgress", "Succeeded"]
    (job_id,) = operations[-1]["job_ids"]
    assert [r["status"] for r in records if r["event"] == "job"] == ["InProgress", "Completed"]
    assert records[-1] == {"event": "done", "job_id": job_id, "status": "Completed", "exit_code": 0}
    assert "operationsStatus" not in done.out + done.err


async def test_failed_operation_exits_4_with_its_error(
    sim: Simulator, clock: FakeClock, config_file: str, cli_env: dict[str, str]
) -> None:
    """An operation that fails (item locked) exits 4 and says ARM's error code; no job is looked for."""
    url = await trigger_backup(sim, "vm-fail-01")
    clock.advance(1)
    result = await run(
        "track", "--config", config_file, "--operation-url", url, "--interval", "0.2s", env=cli_env
    )
    assert result.code == 4
    assert "operation failed: BMSUserErrorObjectLocked" in result.out
    assert not any("/backupJobs/" in r.path for r in sim.requests)


async def test_usage_error_exits_2_as_a_process(config_file: str, cli_env: dict[str, str]) -> None:
    """The real command exits 2 for a usage mistake and says what is wrong on stderr."""
    result = await run("track", "--config", config_file, "--vault-id", VAULT_ID, env=cli_env)
    assert (result.code, result.out) == (2, "")
    assert "error: --vault-id needs --job-id" in result.err


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI run in-process configures structlog and the root logger; put both back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_usage_and_config_errors_exit_2(
    restore_logging: None,
    config_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each usage or config mistake exits 2 with a message on stderr, before anything is sent."""
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "WATCHER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    secret_config = tmp_path / "sp.yaml"
    secret_config.write_text(yaml.safe_dump({"azure": {"credential": "client_secret"}}))
    op = f"http://127.0.0.1:9{VAULT_ID}/backupOperations/7e6b89db-1dfe-44da-b7fa-9678fd4260d6?api-version=2024-04-01"
    job = "00000000-0000-4000-8000-000000000001"
    cases: dict[str, tuple[list[str], str]] = {
        "job with operation": (
            ["--config", config_file, "--operation-url", op, "--job-id", job],
            "--job-id goes with --vault-id",
        ),
        "no target": (
            ["--config", config_file],
            "one of the arguments --vault-id --operation-url is required",
        ),
        "both targets": (
            ["--config", config_file, "--vault-id", VAULT_ID, "--operation-url", op],
            "not allowed",
        ),
        "bad timeout": (
            ["--config", config_file, "--vault-id", VAULT_ID, "--job-id", job, "--timeout", "soon"],
            "soon",
        ),
        "no config": (["--vault-id", VAULT_ID, "--job-id", job], "no config file given"),
        "missing config": (
            ["--config", str(tmp_path / "nope.yaml"), "--vault-id", VAULT_ID, "--job-id", job],
            "no such file",
        ),
        "not a vault id": (
            ["--config", config_file, "--vault-id", "/subscriptions/x/resourceGroups/rg", "--job-id", job],
            "error: --vault-id: not the id of a Recovery Services vault or a Backup vault",
        ),
        "foreign operation": (
            ["--config", config_file, "--operation-url", op],
            "not the configured management endpoint",
        ),
        "not an operation url": (
            ["--config", config_file, "--operation-url", "http://127.0.0.1:9/foo"],
            "not an operation URL",
        ),
        "secret not in env": (
            ["--config", str(secret_config), "--vault-id", VAULT_ID, "--job-id", job],
            "credential client_secret needs the environment variable(s) AZURE_TENANT_ID, AZURE_CLIENT_SECRET",
        ),
    }
    for name, (args, message) in cases.items():
        try:
            code = await asyncio.to_thread(main, ["track", *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, (name, out, err)
        assert message in err, (name, err)
        assert out == "", name


async def test_live_line_on_a_terminal(
    sim: Simulator, estate: Estate, clock: FakeClock, config_file: str, cli_env: dict[str, str]
) -> None:
    """On a terminal one line is redrawn in place: status, elapsed, current task, progress; then the outcome."""
    job_id = "00000000-0000-4000-8000-0000000000f1"
    add_job(estate, job_id, duration=100)
    primary, secondary = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *cli(*track_args(config_file, job_id)),
            env=cli_env,
            stdout=secondary,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(secondary)
        secondary = -1
        await when_seen(sim, job_id, lambda: clock.advance(50))
        await wait_for(lambda: sum(job_id in r.path for r in sim.requests) >= 2, limit=15)
        clock.advance(60)
        await asyncio.wait_for(proc.wait(), 20)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0
    redraws = screen.split("\r")
    assert re.match(r"vault-a  vm-web-01  Backup  InProgress  00:00:00  \S.* \d+%", redraws[1])
    assert any(re.match(r"vault-a  vm-web-01  Backup  InProgress  00:00:50  \S.* \d+%", r) for r in redraws)
    assert re.search(r"\rvault-a  vm-web-01  Backup  Completed  00:01:40 *\r\n$", screen)


async def test_walkthrough_from_the_docs_against_the_demo_simulator(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """docs/azure.md: `simulate`, a static_token config, a job listed with curl, then `track` shows it running."""
    env = {**cli_env, "BACKUP_WATCHER_SIM_TOKEN": "sim-token"}
    sim = await asyncio.create_subprocess_exec(
        *cli("simulate", "--port", "0"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert sim.stdout is not None
        first = (await asyncio.wait_for(sim.stdout.readline(), 15)).decode()
        url = first.rsplit(" ", 1)[1].strip()
        config = tmp_path / "watcher.yaml"
        config.write_text(
            f"azure:\n  management_endpoint: {url}\n  credential: static_token\n"
            "  static_token_env: BACKUP_WATCHER_SIM_TOKEN\n"
        )
        vault_id = (
            f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rg-backup-prod"
            "/providers/Microsoft.RecoveryServices/vaults/vault-prod-weu"
        )
        listing = f"{url}{vault_id}/backupJobs?api-version=2025-02-01&$filter=status eq 'InProgress'"
        async with aiohttp.ClientSession(headers=AUTH) as http, http.get(listing) as resp:
            running = (await resp.json())["value"]
        job_id = running[0]["name"]
        result = await run(
            "track",
            "--config",
            str(config),
            "--vault-id",
            vault_id,
            "--job-id",
            job_id,
            "--timeout",
            "1s",
            env=env,
        )
        assert result.code == 6, result
        assert "vault-prod-weu" in result.out
        assert "InProgress" in result.out
    finally:
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), 10) == 0
