"""Shared fixtures: the simulator on loopback, a watcher wired to it, and a guard against leaked tasks."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from watcher.app import Watcher
from watcher.azure.models import Job, VaultRef
from watcher.config import Config, validate_config
from watcher.sim import SIM_TOKEN, Estate, Simulator, start_simulator
from watcher.state import TrackedJob, Tracker, job_from_row

TOKEN_ENV = "BACKUP_WATCHER_TEST_TOKEN"
SUB = "11111111-1111-1111-1111-111111111111"
SUB2 = "22222222-2222-2222-2222-222222222222"
ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """Wall time the tests move by hand: the simulator's estate reads it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def estate(clock: FakeClock) -> Estate:
    """An empty estate on the test's clock; tests add vaults and jobs."""
    return Estate(clock=clock)


@pytest.fixture
async def sim(estate: Estate) -> AsyncIterator[Simulator]:
    """The simulator serving `estate` over plain http on 127.0.0.1, any free port."""
    server = await start_simulator(estate, operation_seconds=0.2, retry_after=0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(autouse=True)
def sim_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The bearer token the simulator accepts, in the env var our test configs name."""
    monkeypatch.setenv(TOKEN_ENV, SIM_TOKEN)
    return SIM_TOKEN


def make_config(
    endpoint: str,
    vaults: list[dict[str, Any]],
    store: Path,
    **sections: Any,
) -> Config:
    """A validated config pointing at the simulator, with fast test-friendly intervals."""
    data: dict[str, Any] = {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": 0.2,
            "discovery_interval": 0.5,
            "concurrency": 8,
            "request_timeout": 5,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
        },
        "store": {"path": str(store)},
        "http": {"listen": "127.0.0.1:0"},
        "vaults": vaults,
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(data, "test")


@asynccontextmanager
async def running_watcher(config: Config, **kwargs: Any) -> AsyncIterator[Watcher]:
    """A started Watcher (HTTP on a free loopback port); stopped cleanly afterwards."""
    watcher = Watcher(config, registry=CollectorRegistry(), grace=1.0, **kwargs)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


async def wait_for(predicate: Callable[[], bool], limit: float = 10.0, interval: float = 0.02) -> None:
    """Poll `predicate` until true; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(interval)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail any test that leaves asyncio tasks running behind it."""
    yield
    current = asyncio.current_task()
    for _ in range(3):
        await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leftovers, f"test left tasks running: {leftovers}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for servers that must be told their port up front."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> list[str]:
    """argv for running our CLI as a user would, in a subprocess of this interpreter."""
    return [sys.executable, "-m", "watcher", *args]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: the test token, a private store dir, no inherited config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env[TOKEN_ENV] = SIM_TOKEN
    env["PYTHONUNBUFFERED"] = "1"
    return env


def every_job(tracker: Tracker) -> dict[tuple[str, str], TrackedJob]:
    """Every job on record, by (vault key, lower-case id): the store's rows, and the live state of the
    jobs followed now (finished jobs live in the store only)."""
    out = {(row.vault_key, row.job_id.lower()): job_from_row(row) for row in tracker.store.jobs()}
    out.update(tracker.jobs)
    return out


def vm_job(vault: VaultRef, job_id: str, status: str, start: float | None, end: float | None) -> Job:
    """A VM backup job of `vault` as a GET reads it, started and ended at these times (None: not yet)."""
    return Job(
        job_id=job_id,
        vault=vault,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        operation_detail="",
        status=status,
        entity=f"vm-{job_id}",
        backup_management_type="AzureIaasVM",
        start_time=datetime.fromtimestamp(start, UTC) if start is not None else None,
        end_time=datetime.fromtimestamp(end, UTC) if end is not None else None,
        duration_seconds=None,
    )
