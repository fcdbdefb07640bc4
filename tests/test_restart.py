"""Restarts as they happen in production: SIGTERM, SIGKILL mid-round, SIGHUP; nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SUB, TOKEN_ENV, cli, free_port
from watcher.sim import Estate, SimJob, Simulator, start_simulator

RG = "rg-restart"


def _job(n: int, *, ends_in: float, outcome: str = "Completed", vault: str = "vault-r") -> SimJob:
    now = time.time()
    return SimJob(
        subscription_id=SUB,
        resource_group=RG,
        vault=vault,
        job_id=f"00000000-0000-4000-b000-{n:012d}",
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity=f"vm-{n:02d}",
        backup_management_type="AzureIaasVM",
        start=now - 30,
        duration=30 + ends_in,
        outcome=outcome,
    )


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Estate, Simulator]]:
    """A simulator on wall-clock time, for a watcher running in another process."""
    estate = Estate()
    server = await start_simulator(estate)
    try:
        yield estate, server
    finally:
        await server.close()


def _write_config(path: Path, endpoint: str, store: Path, port: int, vaults: list[dict[str, Any]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "azure": {
                    "management_endpoint": endpoint,
                    "credential": "static_token",
                    "static_token_env": TOKEN_ENV,
                },
                "poll": {
                    "interval": "0.3s",
                    "discovery_interval": "1s",
                    "backoff_initial": "0.1s",
                    "backoff_max": "1s",
                },
                "store": {"path": str(store)},
                "http": {"listen": f"127.0.0.1:{port}"},
                "logging": {"format": "json", "level": "info"},
                "vaults": vaults,
            }
        )
    )
    return path


@contextmanager
def watcher_process(config: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`backup-watcher run` as a user starts it; killed if the test did not end it."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(cli("run", "--config", str(config)), env=env, stdout=sink, stderr=sink)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def _wait_http(url: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            status, _ = await _get(url)
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {limit}s")


async def _wait_api(port: int, predicate: Any, limit: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            status, text = await _get(f"http://127.0.0.1:{port}/api/jobs")
            jobs = json.loads(text)["jobs"] if status == 200 else []
            if predicate(jobs):
                return list(jobs)
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"/api/jobs never satisfied the condition within {limit}s")


def _finished(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "azure_backup_jobs_finished":
            for sample in family.samples:
                if sample.value:
                    out[(sample.labels["vault"], sample.labels["status"])] = sample.value
    return out


def _gauge(text: str, name: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels["entity"]] = sample.value
    return out


def _transitions(store: Path) -> list[tuple[str, str | None, str]]:
    with sqlite3.connect(store) as conn:
        return [
            tuple(r)
            for r in conn.execute("SELECT job_id, from_status, to_status FROM transitions ORDER BY id")
        ]


async def _stop(proc: subprocess.Popen[bytes], sig: int, limit: float = 10.0) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(sig)
    while proc.poll() is None:
        if time.monotonic() - started > limit:
            raise AssertionError(f"watcher did not exit within {limit}s of signal {sig}")
        await asyncio.sleep(0.05)
    return proc.returncode, time.monotonic() - started


async def test_restart_after_sigterm_neither_loses_nor_double_counts(
    live_sim: tuple[Estate, Simulator], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """SIGTERM exits 0 quickly; after a restart finished jobs are not polled or counted again and gauges return at once."""
    estate, sim = live_sim
    first = estate.add(_job(1, ends_in=2.5))
    second = estate.add(_job(2, ends_in=6.0, outcome="Failed"))
    store = tmp_path / "state.sqlite3"
    port = free_port()
    config = _write_config(
        tmp_path / "c.yaml",
        sim.url,
        store,
        port,
        [
            {
                "subscription_id": SUB,
                "resource_group": RG,
                "name": "vault-r",
                "jobs": [first.job_id, second.job_id],
            }
        ],
    )
    log = tmp_path / "watcher.log"
    with watcher_process(config, cli_env, log) as proc:
        await _wait_api(port, lambda jobs: any(j["status"] == "Completed" for j in jobs))
        code, took = await _stop(proc, signal.SIGTERM)
    assert code == 0, log.read_text()
    assert took < 10
    requests_before = len(sim.requests)

    with watcher_process(config, cli_env, log) as proc:
        # Before any poll can have finished, the finished count and the item's last success are back.
        await _wait_http(f"http://127.0.0.1:{port}/metrics")
        _, text = await _get(f"http://127.0.0.1:{port}/metrics")
        assert _finished(text) == {("vault-r", "Completed"): 1}
        assert _gauge(text, "azure_backup_last_success_timestamp_seconds")["vm-01"] == pytest.approx(
            first.end, abs=1
        )
        await _wait_api(
            port, lambda jobs: all(j["status"] in ("Completed", "Failed") for j in jobs) and len(jobs) == 2
        )
        _, text = await _get(f"http://127.0.0.1:{port}/metrics")
        code, _ = await _stop(proc, signal.SIGINT)
    assert code == 0
    assert _finished(text) == {("vault-r", "Completed"): 1, ("vault-r", "Failed"): 1}
    # The finished job was never asked about again.
    assert not [r for r in sim.requests[requests_before:] if first.job_id in r.path]
    transitions = _transitions(store)
    assert transitions.count((first.job_id, "InProgress", "Completed")) == 1
    assert transitions.count((second.job_id, "InProgress", "Failed")) == 1


async def test_sigkill_mid_round_loses_no_logged_transition(
    live_sim: tuple[Estate, Simulator], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Every transition logged before a SIGKILL is in the store; after restart each job is counted exactly once."""
    estate, sim = live_sim
    # All still running when the watcher first looks (it starts within ~2 s), ending a bit apart.
    jobs = [
        estate.add(_job(n, ends_in=3 + 0.3 * n, outcome="Failed" if n % 4 == 0 else "Completed"))
        for n in range(1, 21)
    ]
    store = tmp_path / "state.sqlite3"
    port = free_port()
    config = _write_config(
        tmp_path / "c.yaml",
        sim.url,
        store,
        port,
        [{"subscription_id": SUB, "resource_group": RG, "name": "vault-r", "jobs": [j.job_id for j in jobs]}],
    )
    log = tmp_path / "watcher.log"
    with watcher_process(config, cli_env, log) as proc:
        await _wait_api(port, lambda js: sum(j["status"] in ("Completed", "Failed") for j in js) >= 6)
        proc.kill()
        proc.wait(timeout=10)
    logged = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "job_status_changed":
                logged.append((event["job_id"], event["from_status"], event["to_status"]))
    assert len(logged) >= 6
    stored = _transitions(store)
    for transition in logged:
        assert transition in stored, f"logged but lost: {transition}"

    with watcher_process(config, cli_env, log) as proc:
        await _wait_api(
            port,
            lambda js: len(js) == 20 and all(j["status"] in ("Completed", "Failed") for j in js),
            limit=40,
        )
        _, text = await _get(f"http://127.0.0.1:{port}/metrics")
        await _stop(proc, signal.SIGTERM)
    assert _finished(text) == {("vault-r", "Completed"): 15, ("vault-r", "Failed"): 5}
    final = [(job, to) for job, _from, to in _transitions(store) if to != "InProgress"]
    assert len(final) == len(set(final)) == 20


async def test_sighup_reload_adds_and_removes_vaults(
    live_sim: tuple[Estate, Simulator], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """SIGHUP with a good config swaps vaults; with a bad one keeps the old and reports reload failure."""
    estate, sim = live_sim
    a = estate.add(_job(1, ends_in=3600))
    b = estate.add(_job(2, ends_in=3600, vault="vault-s"))
    store = tmp_path / "state.sqlite3"
    port = free_port()
    vault_a = {"subscription_id": SUB, "resource_group": RG, "name": "vault-r", "jobs": [a.job_id]}
    vault_b = {"subscription_id": SUB, "resource_group": RG, "name": "vault-s", "jobs": [b.job_id]}
    config = _write_config(tmp_path / "c.yaml", sim.url, store, port, [vault_a])
    metrics = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "watcher.log"
    with watcher_process(config, cli_env, log) as proc:
        await _wait_api(port, lambda js: len(js) == 1 and js[0]["status"] == "InProgress")
        _write_config(config, sim.url, store, port, [vault_b])
        proc.send_signal(signal.SIGHUP)
        await _wait_api(
            port, lambda js: [j["vault"] for j in js] == ["vault-s"] and js[0]["status"] == "InProgress"
        )
        _, text = await _get(metrics)
        assert 'vault="vault-r"' not in text
        assert 'vault="vault-s"' in text
        assert "azure_backup_watcher_config_last_reload_successful 1.0" in text
        config.write_text("vaults: [this is not a vault]\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "azure_backup_watcher_config_last_reload_successful 0.0" not in text:
            assert time.monotonic() < deadline, "bad reload was not reported"
            await asyncio.sleep(0.1)
            _, text = await _get(metrics)
        assert 'vault="vault-s"' in text
        code, _ = await _stop(proc, signal.SIGTERM)
    assert code == 0
    assert "config_reload_failed" in log.read_text()
