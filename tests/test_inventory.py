"""The protected-item inventory: every real item body parses, never-backed-up items have no recovery point,
and the watcher keeps Azure's inventory of each vault on /metrics, first-seen times across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import estate_corpus
from tests.conftest import SUB, FakeClock, make_config, running_watcher, wait_for
from watcher.azure import dataprotection, recoveryservices
from watcher.azure.models import ItemHealth, ProtectionState, VaultKind, VaultRef, parse_page, parse_time
from watcher.sim import BACKUP_VAULT, Estate, SimItem, SimJob, Simulator
from watcher.state import TrackedJob

RG = "rg-inv"
RS_VAULT = VaultRef(SUB, RG, "vault-a")
BV = VaultRef(SUB, RG, "bvault-a", VaultKind.BACKUP_VAULT)
DAY = 86400.0


def _is_rs_item(body: dict[str, Any]) -> bool:
    props = body.get("properties")
    return (
        isinstance(props, dict)
        and "protectionState" in props
        and "dataSourceInfo" not in props
        and "name" in body
    )


def _is_instance(body: dict[str, Any]) -> bool:
    props = body.get("properties")
    return isinstance(props, dict) and "dataSourceInfo" in props


RS_ITEMS = estate_corpus.bodies(_is_rs_item)
INSTANCES = estate_corpus.bodies(_is_instance)


def test_every_item_and_instance_of_the_corpus_is_found() -> None:
    """Each `"dataSourceInfo":` is a backup instance the loader finds; the named protected items are all there."""
    assert len(INSTANCES) == estate_corpus.key_occurrences("dataSourceInfo") >= 3
    # One `protectionState` is a request's parameters (no name), one an ARG row beside its instance.
    assert len(RS_ITEMS) == estate_corpus.key_occurrences("protectionState") - 2 >= 7


@pytest.mark.parametrize(("ident", "body"), estate_corpus.params(RS_ITEMS))
def test_every_protected_item_body_parses(ident: str, body: dict[str, Any]) -> None:
    """Each protected item reads to a name, an entity, a known state; never backed up means no recovery point."""
    item = recoveryservices.parse_item(body, RS_VAULT)
    props = body["properties"]
    assert item.name == body["name"]
    assert item.entity == props["friendlyName"]
    assert item.protection_state is not ProtectionState.UNKNOWN
    never = props.get("lastBackupTime", "2001").startswith("2001") and not props.get("lastRecoveryPoint")
    if props["protectionState"] == "IRPending" or never:
        assert item.last_recovery_point is None
    if props.get("lastRecoveryPoint"):
        assert item.last_recovery_point is not None


@pytest.mark.parametrize(("ident", "body"), estate_corpus.params(INSTANCES))
def test_every_backup_instance_body_parses(ident: str, body: dict[str, Any]) -> None:
    """Each backup instance reads to its name, friendly name, data source and protection."""
    item = dataprotection.parse_instance(body, BV)
    props = body["properties"]
    assert item.name == body["name"]
    assert item.entity == props["friendlyName"]
    assert item.item_type == props["dataSourceInfo"]["datasourceType"]
    assert item.source_resource_id == props["dataSourceInfo"]["resourceID"]
    assert item.last_recovery_point is None  # an instance carries none: its recoveryPoints listing does


def test_recovery_point_pages_give_their_newest_point() -> None:
    """The newest recoveryPointTime of each corpus page; the 0001-01-01 sentinel is no point."""
    pages = estate_corpus.bodies(
        lambda b: (
            isinstance(b.get("value"), list)
            and all(
                isinstance(v, dict) and "recoveryPointTime" in v.get("properties", {}) for v in b["value"]
            )
            and bool(b["value"])
        )
    )
    assert len(pages) >= 2
    for _ident, body in pages:
        times = [v["properties"]["recoveryPointTime"] for v in body["value"]]
        newest = dataprotection.newest_point(body)
        parsed = [parse_time(t) for t in times]
        assert newest == max(t.timestamp() for t in parsed if t is not None)
    assert (
        dataprotection.newest_point(
            {"value": [{"properties": {"recoveryPointTime": "0001-01-01T00:00:00Z"}}]}
        )
        is None
    )


@pytest.mark.parametrize(
    ("props", "state", "health"),
    [
        (
            {"protectionState": "Protected", "healthStatus": "Passed"},
            ProtectionState.PROTECTED,
            ItemHealth.HEALTHY,
        ),
        (
            {"protectionState": "IRPending", "healthStatus": "ActionRequired"},
            ProtectionState.PENDING,
            ItemHealth.ACTION_REQUIRED,
        ),
        ({"protectionState": "ProtectionStopped", "policyId": ""}, ProtectionState.STOPPED, None),
        ({"protectionState": "BackupsSuspended"}, ProtectionState.SUSPENDED, None),
        ({"protectionState": "ProtectionPaused"}, ProtectionState.SUSPENDED, None),
        (
            {"protectionState": "ProtectionError", "protectedItemHealthStatus": "Unhealthy"},
            ProtectionState.ERROR,
            ItemHealth.ACTION_REQUIRED,
        ),
        (
            {"protectionState": "Protected", "protectedItemHealthStatus": "NotReachable"},
            ProtectionState.PROTECTED,
            ItemHealth.ACTION_REQUIRED,
        ),
        (
            {"protectionState": "Protected", "healthStatus": "ActionSuggested"},
            ProtectionState.PROTECTED,
            ItemHealth.ACTION_SUGGESTED,
        ),
        (
            {"protectionState": "Protected", "isScheduledForDeferredDelete": True},
            ProtectionState.STOPPED,
            None,
        ),
        ({"protectionState": "SomethingNew"}, ProtectionState.UNKNOWN, None),
        ({}, ProtectionState.UNKNOWN, None),
    ],
)
def test_recovery_services_states_and_health_map(
    props: dict[str, Any], state: ProtectionState, health: ItemHealth | None
) -> None:
    """protectionState, healthStatus and protectedItemHealthStatus (and soft delete) map onto the product's sets."""
    item = recoveryservices.parse_item({"name": "VM;x", "properties": props}, RS_VAULT)
    assert (item.protection_state, item.health) == (state, health)


@pytest.mark.parametrize(
    ("current", "status", "state", "health"),
    [
        ("ProtectionConfigured", "ProtectionConfigured", ProtectionState.PROTECTED, ItemHealth.HEALTHY),
        ("ConfiguringProtection", "ConfiguringProtection", ProtectionState.PENDING, None),
        ("ProtectionStopped", "ProtectionStopped", ProtectionState.STOPPED, None),
        ("SoftDeleted", "SoftDeleted", ProtectionState.STOPPED, None),
        ("BackupSchedulesSuspended", "ProtectionConfigured", ProtectionState.SUSPENDED, ItemHealth.HEALTHY),
        ("ProtectionError", "ProtectionError", ProtectionState.ERROR, ItemHealth.ACTION_REQUIRED),
        (None, "NotProtected", ProtectionState.STOPPED, None),
    ],
)
def test_backup_vault_states_and_health_map(
    current: str | None, status: str, state: ProtectionState, health: ItemHealth | None
) -> None:
    """currentProtectionState (else protectionStatus.status) and protectionStatus map onto the product's sets."""
    props: dict[str, Any] = {"dataSourceInfo": {}, "protectionStatus": {"status": status}}
    if current is not None:
        props["currentProtectionState"] = current
    item = dataprotection.parse_instance({"name": "bi", "properties": props}, BV)
    assert (item.protection_state, item.health) == (state, health)


def test_a_malformed_item_is_refused_alone() -> None:
    """An item that is not an object, or has no properties, is set aside; the rest of its page is kept."""
    good = {"name": "VM;a", "properties": {"protectionState": "Protected"}}
    items, rejected = parse_page(
        {"value": [good, 7, {"name": "x"}]}, lambda b: recoveryservices.parse_item(b, RS_VAULT)
    )
    assert [i.name for i in items] == ["VM;a"]
    assert [r.index for r in rejected] == [1, 2]


# -- the watcher ---------------------------------------------------------------------------------


def _estate(estate: Estate, clock: FakeClock) -> SimItem:
    """Eight items of both kinds: fresh, stale, never backed up, stopped, twins; returns the stale VM."""
    now = clock.now
    stale = SimItem(
        SUB,
        RG,
        RS_VAULT.name,
        "vm",
        "vm-stale",
        recovery_points=(now - 3 * DAY,),
        first_protected=now - 30 * DAY,
    )
    estate.add_vault(SUB, RG, RS_VAULT.name)
    estate.add_vault(SUB, RG, BV.name, kind=BACKUP_VAULT)
    estate.add_item(
        SimItem(
            SUB,
            RG,
            RS_VAULT.name,
            "vm",
            "vm-fresh",
            recovery_points=(now - 3600,),
            first_protected=now - 30 * DAY,
        )
    )
    estate.add_item(stale)
    estate.add_item(SimItem(SUB, RG, RS_VAULT.name, "vm", "vm-never", first_protected=now - 2 * DAY))
    estate.add_item(
        SimItem(
            SUB,
            RG,
            RS_VAULT.name,
            "vm",
            "vm-stopped",
            protection_state="ProtectionStopped",
            recovery_points=(now - 9 * DAY,),
            first_protected=now - 30 * DAY,
        )
    )
    # Two VMs of one name in one vault, from two resource groups: two items.
    estate.add_item(
        SimItem(
            SUB,
            RG,
            RS_VAULT.name,
            "vm",
            "vm-twin",
            recovery_points=(now - 600,),
            source_resource_group="rg-one",
        )
    )
    estate.add_item(
        SimItem(
            SUB,
            RG,
            RS_VAULT.name,
            "vm",
            "vm-twin",
            recovery_points=(now - 700,),
            source_resource_group="rg-two",
        )
    )
    estate.add_item(
        SimItem(
            SUB,
            RG,
            BV.name,
            "disk",
            "disk-old",
            recovery_points=(now - 20 * DAY,),
            first_protected=now - 60 * DAY,
        )
    )
    estate.add_item(SimItem(SUB, RG, BV.name, "disk", "disk-new", first_protected=now - DAY))
    return stale


def _vaults() -> list[dict[str, Any]]:
    return [
        {"subscription_id": SUB, "resource_group": RG, "name": RS_VAULT.name, "discover": True},
        {
            "subscription_id": SUB,
            "resource_group": RG,
            "name": BV.name,
            "type": "backup_vault",
            "discover": True,
        },
    ]


def _series(text: str, name: str) -> dict[str, float]:
    """`item` -> value of one family in an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = line[line.index("{") + 1 : line.rindex("}")]
            item = next(p.split("=", 1)[1].strip('"') for p in labels.split('",') if p.startswith("item="))
            out[item] = float(line.rsplit(" ", 1)[1])
    return out


async def test_the_inventory_reaches_metrics_first_seen_survives_a_restart_and_a_removed_item_goes(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """Every item of both vault kinds has its series; never-backed-up ones no recovery point; first seen survives a restart; an item deleted in Azure drops its series in one round."""
    stale_item = _estate(estate, clock)
    config = make_config(sim.url, _vaults(), tmp_path / "s.sqlite3", poll={"inventory_interval": 1})
    async with running_watcher(config, clock=clock) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        await wait_for(lambda: sum(len(v) for v in tracker.inventory.values()) == 8)
        text = watcher.metrics.render(False).decode()
        info = _series(text, "azure_backup_item_info")
        points = _series(text, "azure_backup_item_last_recovery_point_timestamp_seconds")
        first_seen = _series(text, "azure_backup_item_first_seen_timestamp_seconds")
        assert len(info) == 8
        twins = [name for name in info if name.endswith(";vm-twin")]
        assert len(twins) == 2
        never = {name for name in info if "vm-never" in name or "disk-new" in name}
        assert len(never) == 2
        assert set(info) - set(points) == never
        stale = next(name for name in points if "vm-stale" in name)
        assert points[stale] == pytest.approx(clock.now - 3 * DAY, abs=1)
        old_disk = next(name for name in points if "disk-old" in name)
        assert points[old_disk] == pytest.approx(clock.now - 20 * DAY, abs=1)
        stopped = next(name for name in info if "vm-stopped" in name)
        states = [
            line
            for line in text.splitlines()
            if line.startswith("azure_backup_item_protection_state{") and stopped in line
        ]
        assert len(states) == 6
        assert [line for line in states if line.endswith(" 1.0")] == [
            next(line for line in states if 'state="stopped"' in line)
        ]
    clock.advance(60)
    estate.remove_item(stale_item)
    async with running_watcher(config, clock=clock) as again:
        assert again.tracker is not None
        tracker = again.tracker
        restored = _series(
            again.metrics.render(False).decode(), "azure_backup_item_first_seen_timestamp_seconds"
        )
        assert restored == first_seen  # from the store, before any inventory round
        await wait_for(lambda: sum(len(v) for v in tracker.inventory.values()) == 7)
        text = again.metrics.render(False).decode()
        assert "vm-stale" not in text
        assert _series(text, "azure_backup_item_first_seen_timestamp_seconds") == {
            name: at for name, at in first_seen.items() if "vm-stale" not in name
        }


def test_a_job_is_linked_to_its_item_exactly_where_azure_allows_it(tmp_path: Path) -> None:
    """A VM job by its container, a Backup vault job by its instance, others by friendly name only when it is unique in the vault."""
    from watcher.azure.models import ProtectedItem
    from watcher.state import Tracker
    from watcher.store import Store

    store = Store.open(tmp_path / "s.sqlite3")
    try:
        tracker = Tracker(store)

        def item(name: str, entity: str, container: str = "") -> ProtectedItem:
            return ProtectedItem(
                vault=RS_VAULT,
                name=name,
                entity=entity,
                item_type="VM",
                policy="p",
                source_resource_id="",
                protection_state=ProtectionState.PROTECTED,
                azure_state="Protected",
                health=None,
                azure_health="",
                last_recovery_point=None,
                container=container,
            )

        tracker.record_inventory(
            RS_VAULT,
            [
                item("VM;iaasvmcontainerv2;rg-one;vm-twin", "vm-twin", "iaasvmcontainerv2;rg-one;vm-twin"),
                item("VM;iaasvmcontainerv2;rg-two;vm-twin", "vm-twin", "iaasvmcontainerv2;rg-two;vm-twin"),
                item("SQLDataBase;mssqlserver;msdb", "msdb"),
                item("SQLDataBase;other;msdb", "msdb"),
                item("SQLDataBase;mssqlserver;sales", "sales"),
            ],
        )

        def job(entity: str, **detail: str) -> TrackedJob:
            return TrackedJob(
                vault=RS_VAULT, job_id="j", status="Completed", entity=entity, detail=dict(detail)
            )

        linked = tracker.item_of_job(RS_VAULT, job("vm-twin", container="IaasVMContainerV2;RG-TWO;vm-twin"))
        assert linked is not None
        assert linked.name == "VM;iaasvmcontainerv2;rg-two;vm-twin"
        assert tracker.item_of_job(RS_VAULT, job("vm-twin")) is None  # two items have that name
        assert tracker.item_of_job(RS_VAULT, job("msdb")) is None
        sales = tracker.item_of_job(RS_VAULT, job("sales"))
        assert sales is not None
        assert sales.name == "SQLDataBase;mssqlserver;sales"
        assert tracker.item_of_job(RS_VAULT, job("x", item="sqldatabase;mssqlserver;sales")) == sales
    finally:
        store.close()


async def test_a_successful_backup_of_an_item_brings_its_inventory_round_forward(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """When an item's backup job succeeds, its vault's inventory is read again within a minute, not at the next 15m round."""
    from watcher.scheduler import INVENTORY_SOON

    _estate(estate, clock)
    backup = estate.add(
        SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=RS_VAULT.name,
            job_id="00000000-0000-4000-d000-000000000001",
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity="vm-stale",
            backup_management_type="AzureIaasVM",
            start=clock.now - 60,
            duration=30,
            container_name=f"iaasvmcontainerv2;{RG};vm-stale",
        )
    )
    config = make_config(sim.url, _vaults(), tmp_path / "s.sqlite3", poll={"inventory_interval": "15m"})
    async with running_watcher(config, clock=clock) as watcher:
        assert watcher.scheduler is not None
        scheduler = watcher.scheduler
        await wait_for(
            lambda: (
                (watcher.tracker.known(RS_VAULT, backup.job_id) or TrackedJob(RS_VAULT, "", "")).status
                == "Completed"
            )
        )  # type: ignore[union-attr]
        schedule = scheduler._schedules[RS_VAULT.key]
        assert schedule.next_inventory <= scheduler.monotonic() + INVENTORY_SOON


async def test_a_failing_inventory_is_logged_not_counted_and_its_items_leave_metrics_after_three_rounds(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """backupProtectedItems answers 500: no poll error for a vault whose jobs are fine; after three rounds its items leave /metrics and /healthz says why; a good round brings them back."""
    from structlog.testing import capture_logs

    _estate(estate, clock)
    config = make_config(sim.url, _vaults()[:1], tmp_path / "s.sqlite3", poll={"inventory_interval": 0.3})
    with capture_logs() as logs:
        async with running_watcher(config, clock=clock) as watcher:
            assert watcher.tracker is not None
            assert watcher.scheduler is not None
            tracker, scheduler = watcher.tracker, watcher.scheduler
            await wait_for(lambda: len(tracker.inventory.get(RS_VAULT.key, {})) == 6)
            assert "azure_backup_item_info{" in watcher.metrics.render(False).decode()
            sim.inject(500, path_contains="/backupprotecteditems", times=10_000)
            await wait_for(lambda: bool(scheduler.stale_inventories()), limit=15)
            await wait_for(lambda: "azure_backup_item_info{" not in watcher.metrics.render(False).decode())
            assert not [k for k, v in tracker.poll_errors.items() if v]
            assert any("inventory failing" in line for line in watcher.stale_vaults())
            sim.clear_faults()
            await wait_for(
                lambda: "azure_backup_item_info{" in watcher.metrics.render(False).decode(), limit=15
            )
    assert len([e for e in logs if e["event"] == "inventory_failed"]) == 1
