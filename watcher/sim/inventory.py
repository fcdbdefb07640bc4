"""Inventory bodies: vaults of both kinds as their listings show them, and Recovery Services
protected items.

Vaults follow the REST spec examples and recorded vault GETs: a Recovery Services vault has a `sku`;
a Backup vault's `type` and id say `Microsoft.DataProtection/BackupVaults` in listings (ids compare
case-insensitively); both carry `monitoringSettings.azureMonitorAlertSettings.alertsForAllJobFailures`.

Protected items follow recorded CLI traffic and Microsoft Docs captures:

- Names: `VM;iaasvmcontainerv2;{rg};{vm}` in container `IaasVMContainer;iaasvmcontainerv2;{rg};{vm}`
  (properties.containerName without the `IaasVMContainer;` prefix), `SQLDataBase;mssqlserver;{db}` in
  `VMAppContainer;Compute;{rg};{vm}`, `AzureFileShare;{hash}` in `StorageContainer;Storage;{rg};
  {account}` (only friendlyName names the share).
- Never backed up: a VM says protectionState IRPending, lastBackupStatus "" and lastBackupTime
  `2001-01-01T00:00:00Z`; SQL and Azure Files items have no lastBackupTime key at all. A SQL item
  whose first backup failed stays IRPending, with a lastBackupTime, lastBackupErrorDetail
  CloudInternalError and no policyName.
- lastBackupTime is the start of the last backup, lastRecoveryPoint the snapshot, later (about 20
  minutes for a VM). "Stop protection, keep data" leaves policyId "" and lastRecoveryPoint may be null.
- `vaultId` is a full `https://management.azure.com/...` URL whatever endpoint was asked.

Health details other than the green VM default are illustrative.
"""

from __future__ import annotations

import uuid
from typing import Any

from watcher.sim.estate import RECOVERY_SERVICES, SIM_NAMESPACE, SimItem, SimVault
from watcher.sim.formats import format_time

RS_VAULT_TYPE = "Microsoft.RecoveryServices/vaults"
# As listings spell it, in the type and the id (a GET says backupVaults).
BACKUP_VAULT_TYPE = "Microsoft.DataProtection/BackupVaults"
ITEM_TYPE = "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems"
# What a VM item that never had a backup reports as its lastBackupTime.
NEVER_BACKED_UP = "2001-01-01T00:00:00Z"
_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
# (backupManagementType, itemType / workloadType, protectedItemType) by item kind.
_ITEM_TYPES = {
    "vm": ("AzureIaasVM", "VM", "Microsoft.Compute/virtualMachines"),
    "sql": ("AzureWorkload", "SQLDataBase", "AzureVmWorkloadSQLDatabase"),
    "fileshare": ("AzureStorage", "AzureFileShare", "AzureFileShareProtectedItem"),
}
# Seconds from the start of a backup (lastBackupTime) to its recovery point, by item kind.
_SNAPSHOT_LAG = {"vm": 1207.0952653, "sql": 35.8127, "fileshare": 12.6031}
_VM_HEALTH = {
    "Passed": (
        400239,
        "IaasVmHealthGreenDefault",
        "Backup pre-check status of this virtual machine is OK.",
        (),
    ),
    "ActionSuggested": (
        400240,
        "IaasVmHealthYellowDefault",
        "Backup pre-check status of this virtual machine is Warning.",
        ("Install the latest VM agent and make sure the VM can reach Azure Backup.",),
    ),
    "ActionRequired": (
        400241,
        "IaasVmHealthRedDefault",
        "Backup pre-check status of this virtual machine is Critical.",
        ("Make sure the VM agent is running and the VM is in a running or stopped state.",),
    ),
}


def vault_body(vault: SimVault, *, listed: bool = True) -> dict[str, Any]:
    """A vault of either kind as a listing (or, `listed=False`, its own GET) shows it."""
    if vault.kind == RECOVERY_SERVICES:
        path = f"providers/Microsoft.RecoveryServices/vaults/{vault.name}"
        kind_type = RS_VAULT_TYPE
    else:
        kind_type = BACKUP_VAULT_TYPE if listed else "Microsoft.DataProtection/backupVaults"
        path = f"providers/{kind_type}/{vault.name}"
    body: dict[str, Any] = {
        "name": vault.name,
        "type": kind_type,
        "id": f"/subscriptions/{vault.subscription_id}/resourceGroups/{vault.resource_group}/{path}",
        "location": vault.location,
    }
    if vault.kind == RECOVERY_SERVICES:
        body["properties"] = _rs_vault_properties()
        body["sku"] = {"name": "Standard"}
    else:
        body["identity"] = {
            "type": "SystemAssigned",
            "principalId": str(uuid.uuid5(SIM_NAMESPACE, f"identity{body['id']}".lower())),
            "tenantId": _TENANT,
        }
        body["properties"] = _backup_vault_properties()
    if vault.tags:
        body["tags"] = dict(vault.tags)
    return body


def management_type(item: SimItem) -> str:
    """The item's backupManagementType (AzureIaasVM, AzureWorkload, AzureStorage)."""
    return _ITEM_TYPES[item.kind][0]


def item_type(item: SimItem) -> str:
    """The item's itemType / workloadType (VM, SQLDataBase, AzureFileShare)."""
    return _ITEM_TYPES[item.kind][1]


def container_name(item: SimItem) -> str:
    """The protection container the item's URL names."""
    if item.kind == "vm":
        return f"IaasVMContainer;iaasvmcontainerv2;{item.source_group};{item.name}"
    if item.kind == "sql":
        return f"VMAppContainer;Compute;{item.source_group};{item.parent}"
    return f"StorageContainer;Storage;{item.source_group};{item.parent}"


def protected_item_body(item: SimItem, vault: SimVault, now: float) -> dict[str, Any]:
    """A Recovery Services protected item (VM, SQL database or Azure Files share) at `now`."""
    management, workload, protected_type = _ITEM_TYPES[item.kind]
    last = item.last_point(now)
    state = item.protection_state or ("Protected" if last is not None else "IRPending")
    stopped = state == "ProtectionStopped"
    started = item.last_backup
    if started is None and last is not None:
        started = last - _SNAPSHOT_LAG[item.kind]
    vault_path = (
        f"/subscriptions/{vault.subscription_id}/resourceGroups/{vault.resource_group}"
        f"/providers/Microsoft.RecoveryServices/vaults/{vault.name}"
    )
    sources = f"/subscriptions/{item.subscription_id}/resourceGroups/{item.source_group}/providers"
    data_id = str(uuid.uuid5(SIM_NAMESPACE, f"item/{vault_path}/{item.arm_name}".lower()).int % 10**15)
    props: dict[str, Any] = {"friendlyName": item.name}
    if item.kind == "vm":
        vm_id = f"{sources}/Microsoft.Compute/virtualMachines/{item.name}"
        props["virtualMachineId"] = vm_id
        props.update(_protection(item, state))
        props["healthStatus"] = item.health
        if last is not None or item.health != "Passed":
            code, title, message, advice = _VM_HEALTH.get(item.health, _VM_HEALTH["ActionRequired"])
            props["healthDetails"] = [
                {"code": code, "title": title, "message": message, "recommendations": list(advice)}
            ]
        props["lastBackupStatus"] = item.last_backup_status or ("Completed" if last is not None else "")
        props["lastBackupTime"] = format_time(started) if started is not None else NEVER_BACKED_UP
        props["protectedItemDataId"] = data_id
        props["policyType"] = "V1"
        source = vm_id
    elif item.kind == "sql":
        props["serverName"] = item.parent
        props["parentName"] = "MSSQLSERVER"
        props["parentType"] = "AzureVmWorkloadSQLInstance"
        props.update(_protection(item, state))
        failed = item.last_backup_status in ("Failed", "Unhealthy") or (last is None and started is not None)
        props["lastBackupStatus"] = "IRPending" if last is None else ("Unhealthy" if failed else "Healthy")
        if started is not None:
            props["lastBackupTime"] = format_time(started)
        props["lastBackupErrorDetail"] = (
            {"code": "CloudInternalError", "message": "Microsoft Azure Backup encountered an internal error."}
            if failed or item.health != "Passed"
            else {"code": "Success", "message": ""}
        )
        props["protectedItemDataSourceId"] = data_id
        props["protectedItemHealthStatus"] = _sql_health(item, last)
        source = f"{sources}/VMAppContainer/{item.parent}"
    else:
        props.update(_protection(item, state))
        props["lastBackupStatus"] = item.last_backup_status or ("Completed" if last is not None else "")
        if started is not None:
            props["lastBackupTime"] = format_time(started)
        props["kpisHealths"] = {}
        source = f"{sources}/Microsoft.Storage/storageAccounts/{item.parent}"
    props["protectedItemType"] = protected_type
    props["backupManagementType"] = management
    props["workloadType"] = workload
    # A VM's containerName drops the `IaasVMContainer;` its URL has: it equals its jobs' containerName.
    container = container_name(item)
    props["containerName"] = container.split(";", 1)[1] if item.kind == "vm" else container
    props["sourceResourceId"] = source
    props["policyId"] = "" if stopped else f"{vault_path}/backupPolicies/{item.policy}"
    # A SQL item whose first backup failed has no policyName yet; a stopped item none any more.
    if not stopped and not (item.kind == "sql" and last is None and started is not None):
        props["policyName"] = item.policy
    if last is not None:
        props["lastRecoveryPoint"] = format_time(last)
    elif stopped:
        props["lastRecoveryPoint"] = None
    props["vaultId"] = f"https://management.azure.com{vault_path}"
    props["isArchiveEnabled"] = False
    return {
        "id": f"{vault_path}/backupFabrics/Azure/protectionContainers/{container}"
        f"/protectedItems/{item.arm_name}",
        "name": item.arm_name,
        "type": ITEM_TYPE,
        "properties": props,
    }


def _protection(item: SimItem, state: str) -> dict[str, str]:
    return {
        "protectionStatus": "Healthy" if item.health == "Passed" else "Unhealthy",
        "protectionState": state,
    }


def _sql_health(item: SimItem, last: float | None) -> str:
    if last is None:
        return "IRPending"
    if item.health == "Passed":
        return "Healthy"
    return "Invalid" if item.health == "Invalid" else "Unhealthy"


def _rs_vault_properties() -> dict[str, Any]:
    return {
        "provisioningState": "Succeeded",
        "privateEndpointStateForBackup": "None",
        "privateEndpointStateForSiteRecovery": "None",
        "publicNetworkAccess": "Enabled",
        "monitoringSettings": {
            "azureMonitorAlertSettings": {
                "alertsForAllFailoverIssues": "Disabled",
                "alertsForAllJobFailures": "Enabled",
                "alertsForAllReplicationIssues": "Enabled",
            },
            "classicAlertSettings": {
                "alertsForCriticalOperations": "Disabled",
                "emailNotificationsForSiteRecovery": "Enabled",
            },
        },
        "redundancySettings": {
            "crossRegionRestore": "Disabled",
            "standardTierStorageRedundancy": "GeoRedundant",
        },
        "secureScore": "None",
        "bcdrSecurityLevel": "Poor",
        "securitySettings": {
            "immutabilitySettings": {"state": "Disabled"},
            "multiUserAuthorization": "Disabled",
            "softDeleteSettings": {
                "enhancedSecurityState": "Enabled",
                "softDeleteRetentionPeriodInDays": 14,
                "softDeleteState": "Enabled",
            },
        },
    }


def _backup_vault_properties() -> dict[str, Any]:
    return {
        "provisioningState": "Succeeded",
        "storageSettings": [{"datastoreType": "VaultStore", "type": "LocallyRedundant"}],
        "isVaultProtectedByResourceGuard": False,
        "monitoringSettings": {"azureMonitorAlertSettings": {"alertsForAllJobFailures": "Enabled"}},
        "securitySettings": {"softDeleteSettings": {"state": "On", "retentionDurationInDays": 14.0}},
        "secureScore": "None",
        "bcdrSecurityLevel": "Poor",
        "replicatedRegions": [],
    }
