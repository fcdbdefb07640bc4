"""Scale-out by sharding: replicas own disjoint vaults whose union is all of them, and their metrics add up."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SUB, every_job, make_config, running_watcher, wait_for
from watcher.sharding import index_from_pod_name, resolve_shard, shard_of
from watcher.sim import Estate, SimJob, start_simulator

RG = "rg-shard"
VAULTS = [f"vault-{n:02d}" for n in range(10)]


def test_shard_of_is_stable_and_case_insensitive() -> None:
    """The owner of a vault depends only on its ARM identity (any case), never on the host or the run."""
    assert shard_of(SUB, "RG-Shard", "Vault-01", 3) == shard_of(SUB, "rg-shard", "vault-01", 3)
    owners = Counter(shard_of(SUB, RG, f"vault-{n}", 4) for n in range(400))
    assert set(owners) == {0, 1, 2, 3}
    assert min(owners.values()) > 60  # roughly even


@pytest.mark.parametrize(
    ("flags", "env", "want"),
    [
        ((None, None), {}, None),
        ((1, 3), {}, (1, 3)),
        ((None, 3), {"POD_NAME": "backup-watcher-2"}, (2, 3)),
        ((None, None), {"WATCHER_SHARD_COUNT": "2", "HOSTNAME": "backup-watcher-1"}, (1, 2)),
        ((None, None), {"WATCHER_SHARD_COUNT": "2", "WATCHER_SHARD_INDEX": "0"}, (0, 2)),
    ],
)
def test_shard_comes_from_flags_env_or_pod_name(
    flags: tuple[int | None, int | None],
    env: dict[str, str],
    want: tuple[int, int] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flags win; then WATCHER_SHARD_*; a StatefulSet pod's ordinal gives the index."""
    for name in ("POD_NAME", "HOSTNAME", "WATCHER_SHARD_COUNT", "WATCHER_SHARD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_shard(*flags) == want


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ((0, None), {}, "needs --shard-count"),
        ((3, 3), {}, "outside 0..2"),
        ((None, 2), {"HOSTNAME": "watcher"}, "no ordinal"),
        ((None, 0), {}, "at least 1"),
    ],
)
def test_inconsistent_shard_settings_are_refused(
    flags: tuple[int | None, int | None], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard setting that cannot be right is an error naming the problem, not a silent default."""
    for name in ("POD_NAME", "HOSTNAME", "WATCHER_SHARD_COUNT", "WATCHER_SHARD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        resolve_shard(*flags)


def test_pod_name_ordinal() -> None:
    """StatefulSet names end in -N; anything else has no ordinal."""
    assert index_from_pod_name("backup-watcher-12") == 12
    assert index_from_pod_name("backup-watcher-7f9c-abcde") is None
    assert index_from_pod_name(None) is None


def _finished(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "azure_backup_jobs_finished":
            for s in family.samples:
                if s.value:
                    out[(s.labels["vault"], s.labels["status"])] = s.value
    return out


async def test_two_shards_split_the_vaults_and_sum_to_one_watcher(tmp_path: Path) -> None:
    """Shards 0/2 and 1/2 poll disjoint vault sets covering all vaults; their finished counts sum to one watcher's."""
    estate = Estate()
    now = time.time()
    for i, vault in enumerate(VAULTS):
        for k in range(2):
            estate.add(
                SimJob(
                    subscription_id=SUB,
                    resource_group=RG,
                    vault=vault,
                    job_id=f"00000000-0000-4000-c000-{i:06d}{k:06d}",
                    job_type="AzureIaaSVMJob",
                    operation="Backup",
                    entity=f"vm-{i}-{k}",
                    backup_management_type="AzureIaasVM",
                    start=now - 60,
                    duration=61 + k,
                    outcome="Failed" if k else "Completed",
                )
            )
    sim = await start_simulator(estate)
    vaults = [{"subscription_id": SUB, "resource_group": RG, "name": v, "discover": True} for v in VAULTS]
    results: dict[str, dict[tuple[str, str], float]] = {}
    polled: dict[str, set[str]] = {}
    try:
        for name, shard in (("shard0", (0, 2)), ("shard1", (1, 2)), ("single", None)):
            before = len(sim.requests)
            config = make_config(sim.url, vaults, tmp_path / f"{name}.sqlite3")
            async with running_watcher(config, shard=shard) as watcher:
                assert watcher.tracker is not None
                tracker = watcher.tracker
                owned = len(tracker.vaults)
                await wait_for(
                    lambda t=tracker, n=owned: (
                        len(every_job(t)) == 2 * n  # type: ignore[misc]
                        and all(j.state == "final" for j in every_job(t).values())
                    ),
                    limit=20,
                )
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{watcher.port}/metrics") as resp,
                ):
                    results[name] = _finished(await resp.text())
            polled[name] = {
                v for r in sim.requests[before:] for v in VAULTS if f"/vaults/{v}/" in r.path.lower() + "/"
            }
    finally:
        await sim.close()

    assert polled["shard0"].isdisjoint(polled["shard1"])
    assert polled["shard0"] | polled["shard1"] == set(VAULTS)
    assert polled["shard0"]
    assert polled["shard1"]
    assert polled["single"] == set(VAULTS)
    combined = Counter(results["shard0"]) + Counter(results["shard1"])
    assert dict(combined) == results["single"]
    assert sum(results["single"].values()) == 20
