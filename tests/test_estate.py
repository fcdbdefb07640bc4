"""The whole estate: vaults found by listing subscriptions, of both kinds, as they come and go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import SUB, SUB2, TOKEN_ENV, FakeClock, running_watcher, wait_for
from watcher.app import Watcher
from watcher.azure.models import VaultKind, VaultRef
from watcher.config import validate_config
from watcher.sharding import shard_of
from watcher.sim import BACKUP_VAULT, RECOVERY_SERVICES, Estate, SimJob, Simulator
from watcher.vaults import watched_vaults

RS, BV = VaultKind.RECOVERY_SERVICES, VaultKind.BACKUP_VAULT


def _config(sim: Simulator, tmp_path: Path, subscriptions: list[dict[str, Any]], **extra: Any) -> Any:
    data: dict[str, Any] = {
        "azure": {
            "management_endpoint": sim.url,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": 0.2,
            "discovery_interval": 0.5,
            "vault_discovery_interval": 0.5,
            "request_timeout": 5,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
        },
        "store": {"path": str(tmp_path / "state.sqlite3")},
        "http": {"listen": "127.0.0.1:0"},
        "subscriptions": subscriptions,
        **extra,
    }
    return validate_config(data, "test")


def _job(n: int, sub: str, rg: str, vault: str, kind: str, clock: FakeClock, **extra: Any) -> SimJob:
    backup_vault = kind == BACKUP_VAULT
    values: dict[str, Any] = {
        "subscription_id": sub,
        "resource_group": rg,
        "vault": vault,
        "job_id": f"00000000-0000-4000-c000-{n:012d}",
        "job_type": "Microsoft.Compute/disks" if backup_vault else "AzureIaaSVMJob",
        "operation": "Backup",
        "entity": f"item-{n}",
        "backup_management_type": "" if backup_vault else "AzureIaasVM",
        "start": clock.now - 60,
        "duration": 30,
        "vault_kind": kind,
    }
    return SimJob(**(values | extra))


def _finished(watcher: Watcher) -> dict[tuple[str, str], float]:
    """jobs_finished_total summed by (vault, vault_type), where not zero."""
    out: dict[tuple[str, str], float] = {}
    for metric in watcher.registry.collect():
        if metric.name != "azure_backup_jobs_finished":
            continue
        for sample in metric.samples:
            key = (sample.labels["vault"], sample.labels["vault_type"])
            out[key] = out.get(key, 0.0) + sample.value
    return {key: value for key, value in out.items() if value}


async def test_a_subscription_alone_finds_every_vault_of_both_kinds_and_follows_them(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """`subscriptions: [{id}]` watches both kinds (two vaults of one name in one group are two), counts each job once, and follows a vault added and one deleted."""
    estate.add(_job(1, SUB, "rg-a", "vault-same", RECOVERY_SERVICES, clock))
    estate.add(_job(2, SUB, "rg-a", "vault-same", BACKUP_VAULT, clock))
    estate.add(_job(3, SUB, "rg-b", "vault-rs", RECOVERY_SERVICES, clock, outcome="Failed"))
    estate.add(_job(4, SUB, "rg-b", "bvault", BACKUP_VAULT, clock, start=clock.now - 10, duration=3600))
    config = _config(sim, tmp_path, [{"id": SUB}])
    with capture_logs() as logs:
        async with running_watcher(config) as watcher:
            assert watcher.tracker is not None
            tracker = watcher.tracker
            await wait_for(lambda: len(tracker.vaults) == 4)
            kinds = {(v.ref.name, v.ref.kind) for v in tracker.vaults.values()}
            assert kinds == {("vault-same", RS), ("vault-same", BV), ("vault-rs", RS), ("bvault", BV)}
            await wait_for(lambda: len(_finished(watcher)) == 3 and sum(_finished(watcher).values()) == 3)
            assert _finished(watcher) == {
                ("vault-same", "recovery_services"): 1.0,
                ("vault-same", "backup_vault"): 1.0,
                ("vault-rs", "recovery_services"): 1.0,
            }

            # A vault created while it runs is watched from its next listing; a deleted one is dropped.
            estate.add(_job(5, SUB, "rg-c", "vault-new", RECOVERY_SERVICES, clock))
            estate.remove_vault(SUB, "rg-b", "bvault", kind=BACKUP_VAULT)
            new = VaultRef(SUB, "rg-c", "vault-new", RS)
            gone = VaultRef(SUB, "rg-b", "bvault", BV)
            await wait_for(lambda: new.key in tracker.vaults and gone.key not in tracker.vaults)
            await wait_for(lambda: _finished(watcher).get(("vault-new", "recovery_services")) == 1.0)
            scrape = watcher.metrics.render(False).decode()
            assert 'vault="bvault"' not in scrape
            assert 'vault="vault-new"' in scrape
            # Counted once each, after all those listings.
            assert sum(_finished(watcher).values()) == 4
    events = [
        (e["event"], e.get("vault"), e.get("vault_type")) for e in logs if e["event"].startswith("vault_")
    ]
    assert ("vault_watched", "vault-new", "recovery_services") in events
    assert ("vault_dropped", "bvault", "backup_vault") in events
    # The dropped vault's history stays in the store.
    from watcher.store import Store

    store = Store.open(config.store.path, read_only=True)
    try:
        assert "00000000-0000-4000-c000-000000000004" in {t["job_id"] for t in store.transitions()}
    finally:
        store.close()


async def test_filters_pick_the_vaults_of_a_subscription(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """vault_types, resource_groups (any case), tags and exclude_vaults each narrow what a listing watches."""
    estate.add_vault(SUB, "rg-prod", "vault-tagged", tags={"Env": "prod"})
    estate.add_vault(SUB, "rg-prod", "vault-other", tags={"Env": "dev"})
    estate.add_vault(SUB, "rg-prod", "vault-skip", tags={"Env": "prod"})
    estate.add_vault(SUB, "rg-prod", "bvault-tagged", kind=BACKUP_VAULT, tags={"env": "prod"})
    estate.add_vault(SUB, "rg-test", "vault-elsewhere", tags={"Env": "prod"})
    estate.add_vault(SUB2, "rg-x", "vault-sub2")
    config = _config(
        sim,
        tmp_path,
        [
            {
                "id": SUB,
                "vault_types": ["recovery_services"],
                "resource_groups": ["RG-PROD"],
                "tags": {"env": "prod"},
                "exclude_vaults": ["VAULT-SKIP"],
            },
            {"id": SUB2, "vault_types": ["backup_vault"]},
        ],
    )
    async with running_watcher(config) as watcher:
        assert watcher.scheduler is not None
        scheduler = watcher.scheduler
        await wait_for(lambda: scheduler.ready)
        assert watcher.tracker is not None
        assert [v.ref.name for v in watcher.tracker.vaults.values()] == ["vault-tagged"]


async def test_a_failing_listing_keeps_the_vaults_it_found_and_a_restart_watches_them_at_once(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """After a 500 the last set stays watched; the next process, with listings failing, watches the stored set from the start."""
    estate.add_vault(SUB, "rg-a", "vault-1")
    estate.add_vault(SUB, "rg-a", "bvault-1", kind=BACKUP_VAULT)
    config = _config(sim, tmp_path, [{"id": SUB}])
    async with running_watcher(config) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        await wait_for(lambda: len(tracker.vaults) == 2)
        sim.inject(500, path_contains="/providers/microsoft.recoveryservices/vaults?", times=10_000)
        sim.inject(
            500,
            path_contains=f"/subscriptions/{SUB}/providers/microsoft.dataprotection/backupvaults",
            times=10_000,
        )
        listings = len(sim.requests)
        await wait_for(lambda: len([r for r in sim.requests[listings:] if r.status == 500]) >= 4)
        assert len(tracker.vaults) == 2
    async with running_watcher(config) as again:
        assert again.tracker is not None
        assert {v.ref.name for v in again.tracker.vaults.values()} == {"vault-1", "bvault-1"}


def test_shards_split_found_vaults_stably_as_others_come_and_go() -> None:
    """Two shards own disjoint halves of 40 found vaults; adding 10 more moves none of the first 40."""
    config = validate_config({"subscriptions": [{"id": SUB}]}, "x")

    def found(names: list[str]) -> list[Any]:
        from watcher.azure.models import VaultInfo

        return [VaultInfo(VaultRef(SUB, "rg", n, BV if i % 2 else RS)) for i, n in enumerate(names)]

    first = [f"vault-{i:02d}" for i in range(40)]
    owners = {s.ref.key: index for index in (0, 1) for s in watched_vaults(config, found(first), (index, 2))}
    assert len(owners) == 40
    assert set(owners.values()) == {0, 1}
    more = first + [f"vault-{i:02d}" for i in range(40, 50)]
    after = {s.ref.key: index for index in (0, 1) for s in watched_vaults(config, found(more), (index, 2))}
    assert {k: after[k] for k in owners} == owners
    for key, index in owners.items():
        ref = next(v.ref for v in found(more) if v.ref.key == key)
        assert shard_of(ref.subscription_id, ref.resource_group, ref.name, 2, ref.kind.value) == index


def test_a_vault_named_and_found_is_watched_once_as_named() -> None:
    """A vault under `vaults:` that a listing also returns keeps its named jobs and discover setting."""
    from watcher.azure.models import VaultInfo

    config = validate_config(
        {
            "subscriptions": [{"id": SUB}],
            "vaults": [
                {
                    "subscription_id": SUB,
                    "resource_group": "rg",
                    "name": "vault-a",
                    "jobs": [SUB],
                    "discover": False,
                }
            ],
        },
        "x",
    )
    states = watched_vaults(config, [VaultInfo(VaultRef(SUB, "RG", "Vault-A"))], None)
    assert len(states) == 1
    assert (states[0].discover, states[0].configured_jobs) == (False, (SUB,))


@pytest.mark.parametrize(
    ("subscription", "message"),
    [
        ({"id": "nope"}, "subscriptions[0].id: not a GUID"),
        (
            {"id": SUB, "vault_types": ["recovery_services", "recovery_services"]},
            "subscriptions[0].vault_types[1]",
        ),
        ({"id": SUB, "vault_types": ["tape"]}, "subscriptions[0].vault_types[0]: expected one of"),
        ({"id": SUB, "vault_types": []}, "subscriptions[0].vault_types"),
        ({"id": SUB, "tags": ["env"]}, "subscriptions[0].tags"),
        (
            {"id": SUB, "exclude_vaults": ["no spaces"]},
            "subscriptions[0].exclude_vaults[0]: not a valid vault name",
        ),
        (
            {"id": SUB, "resourcegroups": []},
            "subscriptions[0].resourcegroups: unknown key (did you mean resource_groups?)",
        ),
    ],
)
def test_bad_subscription_entries_are_named_with_their_location(
    subscription: dict[str, Any], message: str
) -> None:
    """Every problem of a subscriptions entry names where it is."""
    from watcher.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_config({"subscriptions": [subscription]}, "x")
    assert any(message in line for line in info.value.lines()), info.value.lines()


def test_check_config_shows_the_effective_subscription_settings() -> None:
    """Defaults of a subscription entry are printed in full: both vault kinds, no filters."""
    from watcher.config import effective_config

    data = effective_config(validate_config({"subscriptions": [{"id": SUB.upper()}]}, "x"))
    assert data["subscriptions"] == [
        {
            "id": SUB,
            "vault_types": ["recovery_services", "backup_vault"],
            "resource_groups": [],
            "tags": {},
            "exclude_vaults": [],
        }
    ]
    assert json.dumps(data)
