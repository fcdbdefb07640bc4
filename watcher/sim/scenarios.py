"""Ready-made estates: the demo's small, lively one and the benchmark's enterprise-sized one.

The demo (`demo_estate`) has four Recovery Services vaults in two subscriptions: IaaS VM backups
(one completes, one with warnings, one fails, one is cancelled, a restore runs), a SQL workload
(`Backup (Full)` and a `Backup (Log)` every minute, TimeSpan durations, one log backup in five
failing with 510008), Azure Files shares, and MAB/DPM history; and a Backup vault with disk and
PostgreSQL backups (one fails with an errorDetails entry, a disk backup recurs). Yesterday's jobs
are history; the first running ones end 10 to 40 seconds after `now`, and recurring jobs start new
instances every one to five minutes for as long as it runs. Every vault has protected items: most
back up on schedule, and among them are items whose last recovery point is three days old, items
never backed up and items whose protection was stopped.

The scale benchmark (`scale_estate`, described by a `ScaleSpec`) is an enterprise estate in steady
state: vaults of both kinds over several subscriptions, protected items that keep backing up, and jobs
that start all day long (each a backup of one of its vault's items), from `history` seconds before
`now` until `horizon` seconds after it; at any moment about `jobs_per_day * job_seconds / 86400` run.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from watcher.sim.estate import (
    BACKUP_VAULT,
    DATASOURCE_TYPES,
    RECOVERY_SERVICES,
    SIM_NAMESPACE,
    Estate,
    RecurringJob,
    SimItem,
    SimJob,
)

DEMO_SUBSCRIPTION = "8c2f4a1e-3b7d-4e9a-9f62-1d5c7b3e0a14"
DEMO_DR_SUBSCRIPTION = "b71e9d04-6a2c-4f38-8e15-93c0d7a2f5b6"
_DAY = 86400.0

_VM = ("AzureIaaSVMJob", "AzureIaasVM")
_SQL = ("AzureWorkloadJob", "AzureWorkload")
_FILES = ("AzureStorageJob", "AzureStorage")
_MAB = ("MabJob", "MAB")
# Backup vault jobs: (dataSourceType, no backupManagementType).
_DISK = (DATASOURCE_TYPES["disk"], "")
_PG = (DATASOURCE_TYPES["postgresql"], "")


class _DemoBuilder:
    """Adds demo jobs whose times are offsets from `now` and whose ids depend only on `now`."""

    def __init__(self, estate: Estate, now: float) -> None:
        self.estate = estate
        self.now = now

    def job(
        self,
        vault: tuple[str, str, str],
        kind: tuple[str, str],
        operation: str,
        entity: str,
        offset: float,
        duration: float,
        outcome: str = "Completed",
        **extra: Any,
    ) -> SimJob:
        name = f"demo/{int(self.now)}/{vault[2]}/{operation}/{entity}/{offset}"
        return SimJob(
            subscription_id=vault[0],
            resource_group=vault[1],
            vault=vault[2],
            job_id=str(uuid.uuid5(SIM_NAMESPACE, name)),
            job_type=kind[0],
            operation=operation,
            entity=entity,
            backup_management_type=kind[1],
            start=self.now + offset,
            duration=duration,
            outcome=outcome,
            **extra,
        )

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.estate.add(self.job(*args, **kwargs))

    def every(self, seconds: float, outcomes: tuple[str, ...], *args: Any, **kwargs: Any) -> None:
        self.estate.add_recurring(RecurringJob(self.job(*args, **kwargs), seconds, outcomes))


def demo_estate(now: float | None = None) -> Estate:
    """The demo's estate on wall-clock time, laid out around `now` (default: the present)."""
    estate = Estate()
    d = _DemoBuilder(estate, time.time() if now is None else now)
    prod = (DEMO_SUBSCRIPTION, "rg-backup-prod", "vault-prod-weu")
    sql = (DEMO_SUBSCRIPTION, "rg-backup-prod", "vault-sql")
    files = (DEMO_SUBSCRIPTION, "rg-backup-files", "vault-files")
    dr = (DEMO_DR_SUBSCRIPTION, "rg-dr", "vault-dr")

    def vm(name: str) -> dict[str, Any]:
        return {"container_name": f"iaasvmcontainerv2;rg-app-prod;{name}"}

    d.add(prod, _VM, "ConfigureBackup", "vm-web-01", -3 * _DAY, 91.7816139, **vm("vm-web-01"))
    d.add(prod, _VM, "Backup", "vm-web-01", -_DAY - 1800, 1223.0896697, size_mb=2332, **vm("vm-web-01"))
    d.add(prod, _VM, "Backup", "vm-web-02", -_DAY - 1500, 1845.3147, size_mb=11370, **vm("vm-web-02"))
    d.add(prod, _VM, "Backup", "vm-app-01", -_DAY - 1200, 2475.1043325, "Failed", **vm("vm-app-01"))
    d.add(prod, _VM, "Backup", "vm-web-01", -600, 620.4172, size_mb=2410, **vm("vm-web-01"))
    warned = "CompletedWithWarnings"
    d.add(prod, _VM, "Backup", "vm-web-02", -300, 330.9, warned, size_mb=11402, **vm("vm-web-02"))
    provisioning = {"error_code": 400160, "error_title": "UserErrorVmProvisioningStateFailed"}
    d.add(prod, _VM, "Backup", "vm-app-01", -200, 236.2, "Failed", **provisioning, **vm("vm-app-01"))
    # Ended before the demo starts, within its lookback: the status page has failures from the first look.
    d.add(prod, _VM, "Backup", "vm-batch-01", -2 * 3600 - 1500, 1312.4, "Failed", **vm("vm-batch-01"))
    d.add(prod, _VM, "Backup", "vm-batch-01", -60, 73.5, "Cancelled", **vm("vm-batch-01"))
    d.add(prod, _VM, "Restore", "vm-app-01", -120, 420.0, **vm("vm-app-01"))
    vm_outcomes = ("Completed", "Completed", warned, "Completed", "Failed")
    d.every(120, vm_outcomes, prod, _VM, "Backup", "vm-web-03", -100, 75.25, size_mb=1650, **vm("vm-web-03"))

    sales = "SalesDb [sql-vm-01]"
    timespan = {"timespan_duration": True}
    d.add(sql, _SQL, "ConfigureBackup", "SalesDb", -5 * _DAY, 31.98, **timespan)
    d.add(sql, _SQL, "Backup (Full)", sales, -_DAY, 193.6439467, "Failed", **timespan)
    d.add(sql, _SQL, "Backup (Full)", sales, -_DAY + 3600, 412.77, size_mb=20, **timespan)
    d.add(sql, _SQL, "Backup (Full)", sales, -380, 405.25, size_mb=1847, **timespan)
    d.add(sql, _SQL, "Backup (Full)", "HRDb [sql-vm-01]", -3 * 3600, 244.0, "Failed", **timespan)
    d.add(sql, _SQL, "Backup (Full)", "HRDb [sql-vm-01]", -50, 500.0, size_mb=912, **timespan)
    log_outcomes = ("Completed", "Completed", "Completed", "Completed", "Failed")
    d.every(60, log_outcomes, sql, _SQL, "Backup (Log)", sales, -170, 22.5, size_mb=3, **timespan)

    share = {"container_name": "StorageContainer;Storage;rg-files;stfinance01"}
    d.add(files, _FILES, "Register", "stfinance01", -7 * _DAY, 10.1508246, **share)
    d.add(files, _FILES, "ConfigureBackup", "finance", -7 * _DAY + 60, 41.8150821, **share)
    d.add(files, _FILES, "Backup", "finance", -_DAY, 95.3, size_mb=512, **share)
    d.add(files, _FILES, "Backup", "finance", -100, 138.6, size_mb=530, **share)
    d.add(files, _FILES, "Backup", "hr-share", -20, 180.0, "Failed", **share)
    d.every(180, ("Completed",), files, _FILES, "Backup", "projects", -170, 45.0, size_mb=240, **share)

    vm_v2 = ("AzureIaaSVMJobV2", "AzureIaasVM")
    dr_vm = {"container_name": "iaasvmcontainerv2;rg-dr;vm-dr-01"}
    d.add(dr, vm_v2, "Backup", "vm-dr-01", -1000, 1600.0, size_mb=6140, **dr_vm)
    d.add(dr, _MAB, "Backup", "fileserver01", -_DAY / 2, 1834.0, warned, size_mb=7800)
    d.add(dr, ("DpmJob", "DPM"), "Backup", "dpm-sql-02", -_DAY / 2 - 600, 300.0, "Failed")
    # MABS agents report their jobs late: this one is listed a minute after it started.
    d.every(
        240,
        ("Completed", warned),
        dr,
        _MAB,
        "Backup",
        "fileserver02",
        -200,
        95.0,
        size_mb=420,
        appears_after=60,
    )

    bv = (DEMO_SUBSCRIPTION, "rg-backup-prod", "bvault-prod-weu")
    estate.add_vault(*bv, kind=BACKUP_VAULT, tags={"env": "prod"})

    def disk(name: str) -> dict[str, Any]:
        return {
            "vault_kind": BACKUP_VAULT,
            "policy_name": "disk-daily",
            "datasource_name": name,
            "source_resource_group": "rg-app-prod",
        }

    def pg(database: str) -> dict[str, Any]:
        return {
            "vault_kind": BACKUP_VAULT,
            "policy_name": "pg-weekly",
            "datasource_name": database,
            "datasource_set": "pg-orders-weu",
        }

    orders, stock = "pg-orders-weu\\orders", "pg-orders-weu\\stock"
    gib64 = 65536
    d.add(
        bv,
        _DISK,
        "Backup",
        "disk-web-01-os",
        -_DAY - 600,
        214.6372013,
        size_mb=gib64,
        **disk("disk-web-01-os"),
    )
    d.add(bv, _DISK, "Backup", "disk-app-01-data", -_DAY - 300, 48.2, "Failed", **disk("disk-app-01-data"))
    d.add(bv, _PG, "Backup", orders, -_DAY, 131.9724387, size_mb=2048, **pg("orders"))
    d.add(bv, _PG, "Restore", orders, -2 * _DAY, 365.7409896, user_triggered=True, **pg("orders"))
    d.add(bv, _DISK, "Backup", "disk-web-01-os", -200, 230.0, size_mb=gib64, **disk("disk-web-01-os"))
    d.add(bv, _DISK, "Backup", "disk-app-01-data", -100, 140.0, "Failed", **disk("disk-app-01-data"))
    d.add(bv, _PG, "Backup", stock, -45, 60.0, size_mb=512, **pg("stock"))
    disk_outcomes = ("Completed", "Completed", "Failed")
    d.every(150, disk_outcomes, bv, _DISK, "Backup", "disk-web-02-os", -140, 95.0, **disk("disk-web-02-os"))
    d.every(300, ("Completed",), bv, _PG, "Backup", orders, -280, 131.9724387, **pg("orders"))

    _demo_items(estate, d.now, prod, sql, files, dr, bv)
    return estate


def _demo_items(
    estate: Estate,
    now: float,
    prod: tuple[str, str, str],
    sql: tuple[str, str, str],
    files: tuple[str, str, str],
    dr: tuple[str, str, str],
    bv: tuple[str, str, str],
) -> None:
    """The demo vaults' protected items; scheduled ones keep backing up while the demo runs."""

    def daily(last: float, days: int = 7) -> dict[str, Any]:
        # Seven-digit fractions, as the service's times have.
        points = tuple(now + last + 0.5725468 - k * _DAY for k in range(days))
        return {"recovery_points": points, "every": _DAY, "first_protected": now - 30 * _DAY}

    def stale(days_ago: float) -> dict[str, Any]:
        points = tuple(now - days_ago * _DAY + 0.6678121 - k * _DAY for k in range(5))
        return {"recovery_points": points, "first_protected": now - 30 * _DAY}

    def item(vault: tuple[str, str, str], kind: str, name: str, **extra: Any) -> None:
        estate.add_item(SimItem(*vault, kind=kind, name=name, **extra))

    vm_rg = {"source_resource_group": "rg-app-prod"}
    item(prod, "vm", "vm-web-01", **daily(-3 * 3600), **vm_rg)
    item(prod, "vm", "vm-web-02", **daily(-2 * 3600), **vm_rg)
    item(prod, "vm", "vm-web-03", **daily(-3600), **vm_rg)
    failing = {"health": "ActionRequired", "last_backup_status": "Failed", "last_backup": now - 200}
    item(prod, "vm", "vm-app-01", **stale(3), **failing, **vm_rg)
    item(prod, "vm", "vm-batch-01", first_protected=now - 2 * 3600, **vm_rg)
    stopped = {"protection_state": "ProtectionStopped", "policy": "DefaultPolicy"}
    item(prod, "vm", "vm-legacy-01", **stale(20), **stopped, **vm_rg)

    hourly = {"every": 3600.0, "first_protected": now - 10 * _DAY + 0.3124471}
    item(sql, "sql", "SalesDb", parent="sql-vm-01", policy="HourlyLogBackup", **hourly)
    item(sql, "sql", "HRDb", parent="sql-vm-01", policy="HourlyLogBackup", **hourly)
    # Its first backup failed: it stays IRPending, with a lastBackupTime and no policyName.
    item(sql, "sql", "ArchiveDb", parent="sql-vm-01", last_backup=now - 6 * 3600, last_backup_status="Failed")

    share = {"parent": "stfinance01", "source_resource_group": "rg-files", "policy": "FilesDaily"}
    item(files, "fileshare", "finance", **daily(-5 * 3600), **share)
    item(files, "fileshare", "projects", **daily(-4 * 3600), **share)
    item(files, "fileshare", "hr-share", **stale(3), health="ActionRequired", **share)
    item(files, "fileshare", "archive", first_protected=now - _DAY, **share)

    item(dr, "vm", "vm-dr-01", **daily(-6 * 3600), source_resource_group="rg-dr")

    item(bv, "disk", "disk-web-01-os", policy="disk-daily", **daily(-4 * 3600), **vm_rg)
    item(bv, "disk", "disk-web-02-os", policy="disk-daily", **daily(-2 * 3600), **vm_rg)
    item(bv, "disk", "disk-app-01-data", policy="disk-daily", health="ActionRequired", **stale(3), **vm_rg)
    item(
        bv,
        "disk",
        "disk-legacy-01-os",
        policy="disk-daily",
        protection_state="ProtectionStopped",
        **stale(12),
    )
    item(bv, "postgresql", "orders", parent="pg-orders-weu", policy="pg-weekly", **daily(-_DAY / 2))
    item(bv, "postgresql", "stock", parent="pg-orders-weu", policy="pg-weekly", **daily(-_DAY / 3))
    item(bv, "aks", "aks-prod-weu", policy="aks-hourly", first_protected=now - 3600)


def demo_vaults(estate: Estate) -> list[dict[str, Any]]:
    """Each Recovery Services vault with the ids of its jobs that exist now (newest first), shaped
    like config `vaults:` entries."""
    return [
        {
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "name": name,
            "type": RECOVERY_SERVICES,
            "jobs": [job.job_id for job in estate.jobs_in(subscription_id, resource_group, name)],
        }
        for subscription_id, resource_group, name in estate.vaults()
    ]


def demo_subscriptions(estate: Estate) -> list[str]:
    """The demo's subscriptions, whose listings find every vault of both kinds."""
    return estate.subscriptions()


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    """The size and pace of `scale_estate`; the same spec and `now` always make the same estate.

    Vault `v` is a Backup vault when `v % backup_vault_every == backup_vault_every - 1` (0: none).
    Each vault's jobs start at random moments, `jobs_per_day / vaults` a day, over the window from
    `now - history` to `now + horizon`; a job lasts `job_seconds` on average (between a fifth of that
    and 1.8 times it) and is a backup of one of its vault's `items_per_vault` items, which gain a
    recovery point every `86400 * items_per_vault * vaults / jobs_per_day` seconds.
    """

    now: float
    vaults: int = 1000
    subscriptions: int = 10
    backup_vault_every: int = 5
    items_per_vault: int = 20
    jobs_per_day: float = 100_000.0
    job_seconds: float = 1728.0
    history: float = 2 * 86400.0
    horizon: float = 3600.0

    @property
    def subscription_ids(self) -> list[str]:
        """The estate's subscriptions, as GUIDs."""
        return _subscription_ids(self.subscriptions)

    def vault(self, v: int) -> tuple[str, str, str, str]:
        """Vault number `v` as (kind, subscription, resource group, name); every subscription gets
        vaults of both kinds in the same proportion."""
        every = self.backup_vault_every
        backup = every > 0 and v % every == every - 1
        subscription = self.subscription_ids[v // max(every, 1) % self.subscriptions]
        group = f"rg-backup-{v % 25:02d}"
        if backup:
            return BACKUP_VAULT, subscription, group, f"bvault-{v:04d}"
        return RECOVERY_SERVICES, subscription, group, f"vault-{v:04d}"

    @property
    def item_every(self) -> float:
        """Seconds between two backups (recovery points) of one item, on average."""
        return 86400.0 * self.items_per_vault * self.vaults / max(self.jobs_per_day, 1e-9)


@functools.lru_cache(maxsize=8)
def _subscription_ids(count: int) -> list[str]:
    rng = random.Random(20261301)  # noqa: S311 - reproducible scenario data, not a secret
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def scale_items(spec: ScaleSpec, v: int) -> list[SimItem]:
    """Vault `v`'s protected items: VMs, SQL databases and shares, or disks and PostgreSQL databases.

    Nearly all back up on schedule; one in twenty is three days stale, one in thirty never backed up,
    one in fifty stopped.
    """
    kind, subscription, group, name = spec.vault(v)
    rng = random.Random(f"items/{v}")  # noqa: S311 - reproducible scenario data, not a secret
    kinds = ("vm", "vm", "sql", "fileshare") if kind == RECOVERY_SERVICES else ("disk", "disk", "postgresql")
    items = []
    for i in range(spec.items_per_vault):
        item_kind = kinds[i % len(kinds)]
        roll = rng.random()
        every = spec.item_every
        last = spec.now - rng.uniform(0.0, every)
        stale = roll < 0.05
        never = 0.05 <= roll < 0.0833
        stopped = 0.0833 <= roll < 0.1033
        items.append(
            SimItem(
                subscription,
                group,
                name,
                kind=item_kind,
                name=f"{item_kind}-{v:04d}-{i:02d}",
                parent="" if item_kind in ("vm", "disk") else f"{item_kind}-host-{v:04d}-{i // 10}",
                recovery_points=() if never else ((last - 3 * _DAY,) if stale else (last - every, last)),
                every=0.0 if stale or never or stopped else every,
                protection_state="ProtectionStopped" if stopped else "",
                first_protected=spec.now - 30 * _DAY,
                source_resource_group=group,
            )
        )
    return items


def scale_jobs(spec: ScaleSpec, v: int, items: list[SimItem] | None = None) -> Iterator[SimJob]:
    """Vault `v`'s jobs in order of start, each a backup of one of its items (`scale_items`)."""
    kind, subscription, group, name = spec.vault(v)
    items = scale_items(spec, v) if items is None else items
    rng = random.Random(f"jobs/{v}")  # noqa: S311 - reproducible scenario data, not a secret
    start_of_window = spec.now - spec.history
    span = spec.history + spec.horizon
    count = round(spec.jobs_per_day / spec.vaults * span / 86400.0)
    starts = sorted(start_of_window + rng.random() * span for _ in range(count))
    for n, start in enumerate(starts):
        item = items[rng.randrange(len(items))] if items else None
        duration = spec.job_seconds * rng.uniform(0.2, 1.8)
        roll = rng.random()
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        size = rng.randint(100, 50_000)
        if kind == BACKUP_VAULT:
            outcome = "Completed" if roll < 0.9 else "Failed" if roll < 0.98 else "Cancelled"
            item_kind = item.kind if item is not None else "disk"
            item_name = item.name if item is not None else f"disk-{v:04d}-{n}"
            parent = item.parent if item is not None else ""
            yield SimJob(
                subscription,
                group,
                name,
                job_id=job_id,
                job_type=DATASOURCE_TYPES[item_kind],
                operation="Backup",
                entity=f"{parent}\\{item_name}" if item_kind == "postgresql" else item_name,
                backup_management_type="",
                start=start,
                duration=duration,
                outcome=outcome,
                size_mb=size,
                vault_kind=BACKUP_VAULT,
                backup_instance=item.arm_name if item is not None else "",
                policy_name="bench-daily",
                datasource_name=item_name,
                datasource_set=parent,
                source_resource_group=group,
            )
            continue
        outcome = (
            "Completed"
            if roll < 0.85
            else "CompletedWithWarnings"
            if roll < 0.92
            else "Failed"
            if roll < 0.98
            else "Cancelled"
        )
        item_kind = item.kind if item is not None else "vm"
        entity = item.name if item is not None else f"vm-{v:04d}-{n}"
        if item_kind == "vm":
            job_type, management, operation = "AzureIaaSVMJob", "AzureIaasVM", "Backup"
            container = f"iaasvmcontainerv2;{group};{entity}"
        elif item_kind == "sql":
            job_type, management = "AzureWorkloadJob", "AzureWorkload"
            operation = "Backup (Log)" if roll < 0.6 else "Backup (Full)"
            container = ""
        else:
            job_type, management, operation = "AzureStorageJob", "AzureStorage", "Backup"
            container = f"StorageContainer;Storage;{group};{item.parent if item is not None else ''}"
        yield SimJob(
            subscription,
            group,
            name,
            job_id=job_id,
            job_type=job_type,
            operation=operation,
            entity=entity,
            backup_management_type=management,
            start=start,
            duration=duration,
            outcome=outcome,
            size_mb=size,
            timespan_duration=job_type == "AzureWorkloadJob",
            container_name=container,
        )


def scale_estate(spec: ScaleSpec, *, clock: Callable[[], float] = time.time) -> Estate:
    """The estate `spec` describes, on `clock` (its jobs are laid out around `spec.now`)."""
    estate = Estate(clock)
    for subscription in spec.subscription_ids:
        estate.add_subscription(subscription)
    for v in range(spec.vaults):
        kind, subscription, group, name = spec.vault(v)
        estate.add_vault(subscription, group, name, kind=kind)
        items = scale_items(spec, v)
        for item in items:
            estate.add_item(item)
        for job in scale_jobs(spec, v, items):
            estate.add(job)
    return estate
