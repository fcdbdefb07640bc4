"""Config reload (SIGHUP): all-or-nothing, with the environment's overrides, without breaking requests under way."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from tests.conftest import SUB, TOKEN_ENV, FakeClock, running_watcher, wait_for
from watcher.azure.models import VaultRef
from watcher.config import apply_env_overrides, load_config
from watcher.sim import Estate, SimJob, Simulator

RG = "rg-reload"


def _job(n: int, vault: str, clock: FakeClock) -> SimJob:
    return SimJob(
        subscription_id=SUB,
        resource_group=RG,
        vault=vault,
        job_id=f"00000000-0000-4000-8000-{n:012d}",
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity=f"vm-{n}",
        backup_management_type="AzureIaasVM",
        start=clock.now - 60,
        duration=36000,
    )


def _write(path: Path, endpoint: str, store: Path, vaults: list[str], **overrides: dict[str, Any]) -> str:
    data: dict[str, Any] = {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {"interval": 0.2, "request_timeout": 5, "backoff_initial": 0.05, "backoff_max": 0.5},
        "discovery": {"enabled": True},
        "store": {"path": str(store)},
        "http": {"listen": "127.0.0.1:0"},
        "vaults": [{"subscription_id": SUB, "resource_group": RG, "name": v} for v in vaults],
    }
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_reload_keeps_the_store_path_the_environment_set(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With WATCHER_STORE_PATH set (as the container does), reloading the unchanged file succeeds."""
    estate.add(_job(1, "vault-a", clock))
    monkeypatch.setenv("WATCHER_STORE_PATH", str(tmp_path / "volume" / "state.sqlite3"))
    path = _write(tmp_path / "config.yaml", sim.url, tmp_path / "elsewhere.sqlite3", ["vault-a"])
    config = apply_env_overrides(load_config(path))
    async with running_watcher(config, config_path=path) as watcher:
        assert await watcher.reload()
        assert watcher.registry.get_sample_value("azure_backup_watcher_config_last_reload_successful") == 1.0
    assert (tmp_path / "volume" / "state.sqlite3").is_file()
    assert not (tmp_path / "elsewhere.sqlite3").exists()


async def test_a_reload_that_rebuilds_the_azure_side_ends_old_retries_cleanly(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request waiting out a Retry-After on the old client ends with its own error (counted, no crash), and nothing more is sent on the old session."""
    job = estate.add(_job(1, "vault-a", clock))
    monkeypatch.setenv("OTHER_TOKEN_ENV", "sim-token")
    store = tmp_path / "state.sqlite3"
    poll = {"interval": 5, "backoff_max": 60}
    path = _write(tmp_path / "config.yaml", sim.url, store, ["vault-a"], poll=poll)
    vault = VaultRef(SUB, RG, "vault-a")
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        assert watcher.azure is not None
        tracker, old = watcher.tracker, watcher.azure
        await wait_for(lambda: tracker.known(vault, job.job_id) is not None)
        sim.inject(503, path_contains=job.job_id, headers={"Retry-After": "4"}, times=1)
        clock.advance(1)
        with capture_logs() as logs:
            # The next pass GETs the job (one running job: no listing), meets the 503 and waits 4 s.
            await wait_for(lambda: any(r.status == 503 for r in sim.requests))
            await wait_for(lambda: old.client.busy > 0)
            sent = old.client.requests_sent
            new = _write(
                tmp_path / "new.yaml",
                sim.url,
                store,
                ["vault-a"],
                poll=poll,
                azure={"static_token_env": "OTHER_TOKEN_ENV"},
            )
            assert await watcher.reload(new)
            await wait_for(lambda: old.client.busy == 0, limit=3)
            await wait_for(lambda: old.session.closed, limit=10)
        assert old.client.requests_sent == sent  # no retry on the old session
        assert watcher.azure is not old
        assert tracker.poll_errors[(vault.key, "server_error")] == 1
        events = [e["event"] for e in logs]
        assert "poll_pass_crashed" not in events
        assert not [e for e in logs if e.get("log_level") in ("error", "critical")]
        # The new client polls the vault again.
        polled = len(sim.requests)
        await wait_for(lambda: len(sim.requests) > polled, limit=15)


async def test_a_reload_keeps_what_the_limiter_learnt_of_throttling(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A 429 slows the subscription; a reload that changes the budget and the Azure side does not forget it."""
    estate.add(_job(1, "vault-a", clock))
    store = tmp_path / "state.sqlite3"
    path = _write(tmp_path / "config.yaml", sim.url, store, ["vault-a"])
    async with running_watcher(load_config(path), config_path=path) as watcher:
        watcher.limiter.throttled(SUB)
        factor = watcher.limiter.throttled_factor(SUB)
        assert factor < 1.0
        new = _write(
            tmp_path / "new.yaml",
            sim.url,
            store,
            ["vault-a"],
            poll={"ratelimit_burst": 100},
            azure={"api_version": "2025-08-01"},
        )
        assert await watcher.reload(new)
        assert watcher.limiter.burst == 100
        assert 0 < watcher.limiter.throttled_factor(SUB) < 1.0
        assert watcher.azure is not None
        assert watcher.azure.client.limiter is watcher.limiter


async def test_reload_moves_the_listener_and_applies_the_log_level(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A reload with a new http.listen serves on the new port and frees the old; a new logging.level takes effect."""
    estate.add(_job(1, "vault-a", clock))
    store = tmp_path / "state.sqlite3"
    path = _write(tmp_path / "config.yaml", sim.url, store, ["vault-a"], logging={"level": "info"})
    saved = structlog.get_config()
    try:
        async with running_watcher(load_config(path), config_path=path) as watcher:
            old_port = watcher.port
            assert old_port is not None
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            new = _write(
                tmp_path / "new.yaml",
                sim.url,
                store,
                ["vault-a"],
                http={"listen": f"127.0.0.1:{port}"},
                logging={"level": "error"},
            )
            assert await watcher.reload(new)
            assert watcher.port == port
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            assert _refuses(old_port)
            assert structlog.get_config()["wrapper_class"] is structlog.make_filtering_bound_logger(40)
    finally:
        structlog.configure(**saved)


async def test_a_listen_address_in_use_refuses_the_whole_reload(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A reload whose http.listen cannot be bound changes nothing and reports the failure."""
    estate.add(_job(1, "vault-a", clock))
    store = tmp_path / "state.sqlite3"
    path = _write(tmp_path / "config.yaml", sim.url, store, ["vault-a"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        async with running_watcher(load_config(path), config_path=path) as watcher:
            port = watcher.port
            bad = _write(
                tmp_path / "bad.yaml",
                sim.url,
                store,
                ["vault-a", "vault-b"],
                http={"listen": f"127.0.0.1:{busy}"},
            )
            assert not await watcher.reload(bad)
            assert watcher.port == port
            assert watcher.tracker is not None
            assert len(watcher.tracker.vaults) == 1
            assert (
                watcher.registry.get_sample_value("azure_backup_watcher_config_last_reload_successful") == 0.0
            )
