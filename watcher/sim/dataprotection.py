"""Backup vault (Microsoft.DataProtection) bodies: jobs, operations, backup instances and their
recovery points, shaped like the live service's.

Recorded traffic (Azure CLI at 2024-04-01, Az PowerShell at 2026-03-01, Microsoft Docs at 2021-01-01)
wins over the spec examples where the two differ:

- A job GET writes `duration` as ISO 8601 (`PT3M34.6372013S`; `PT0S` while running) whatever the
  api-version, and carries `extendedInfo`; the listing writes TimeSpan text (`00:03:39.7214322`,
  `00:00:00` while running, as the spec's examples and Resource Graph rows do too) and
  `"extendedInfo": null`. The spec examples' TimeSpan in a GET was never recorded.
- A running job has `"endTime": null`; `errorDetails` is null unless the job failed, then a list of
  {message, recommendedAction, details, code, target, innerError, isRetryable, isUserError,
  properties}, `details` nesting further errors.
- Statuses are InProgress / Completed / Failed (Cancelled, CompletedWithWarnings as the schema
  names them); a vault declared with `status_spelling="spec"` answers the spec's Started /
  Succeeded instead, in jobs and their subtasks alike.
- A finished backup's `targetRecoverPoint.recoveryPointTime` is `0001-01-01T00:00:00Z` (none);
  scheduled jobs have `supportedActions: []`, ad-hoc ones `[""]`.
- An operation's `endTime` is whole seconds; its `properties.jobId` is the job's full ARM id.
- Recovery point times keep all seven fraction digits.

The wording of the error texts other than InternalServerError is illustrative.
"""

from __future__ import annotations

import uuid
from typing import Any

from watcher.sim.estate import (
    DATASOURCE_TYPES,
    SIM_NAMESPACE,
    SimItem,
    SimJob,
    SimOperation,
    SimVault,
    friendly_name,
    instance_name,
)
from watcher.sim.formats import format_duration, format_time, format_time_fixed, ticks

JOBS_TYPE = "Microsoft.DataProtection/backupVaults/backupJobs"
INSTANCES_TYPE = "Microsoft.DataProtection/backupVaults/backupInstances"
POINTS_TYPE = "Microsoft.DataProtection/backupVaults/backupInstances/recoveryPoints"
OPERATION_OBJECT_TYPE = "OperationJobExtendedInfo"
# .NET DateTime ticks at the Unix epoch (retentionTagVersion is a DateTime's ticks).
_EPOCH_TICKS = 621_355_968_000_000_000
_DAY = 86400.0
_NO_RECOVERY_POINT = "0001-01-01T00:00:00Z"
_SPEC_SPELLING = {"InProgress": "Started", "Completed": "Succeeded"}
# Where a finished backup lands, by dataSourceType.
_DESTINATION = {
    "Microsoft.Compute/disks": "OperationalTierStore",
    "Microsoft.ContainerService/managedClusters": "OperationalTierStore",
}
_TROUBLESHOOT = "Refer https://aka.ms/AzureBackupTroubleshootFailures for more details."
# code: (message, recommendedAction, isRetryable, isUserError). InternalServerError is as recorded.
_KNOWN_ERRORS: dict[str, tuple[str, tuple[str, ...], bool, bool]] = {
    "InternalServerError": ("Internal Server Error", (_TROUBLESHOOT,), True, False),
    "UserErrorDiskBackupDiskOrMSIPermissionsNotPresent": (
        "Invalid disk or the Backup vault's managed identity is missing the required permissions "
        "on the disk.",
        (
            "Make sure the disk exists and grant the Backup vault's managed identity the Disk Backup "
            "Reader role on it. " + _TROUBLESHOOT,
        ),
        False,
        True,
    ),
}


def vault_path(vault: SimVault) -> str:
    """The Backup vault's ARM id."""
    return (
        f"/subscriptions/{vault.subscription_id}/resourceGroups/{vault.resource_group}"
        f"/providers/Microsoft.DataProtection/backupVaults/{vault.name}"
    )


def job_path(vault: SimVault, job_id: str) -> str:
    """A Backup vault job's ARM id."""
    return f"{vault_path(vault)}/backupJobs/{job_id}"


def datasource_id(
    subscription_id: str, resource_group: str, datasource_type: str, datasource_set: str, name: str
) -> str:
    """The ARM id of a data source: a database under its server, a storage account for its blobs."""
    namespace, *types = datasource_type.split("/")
    if types[-1:] == ["blobServices"]:
        types = types[:-1]
    names = [datasource_set, name] if len(types) == 2 and datasource_set else [name]
    tail = "/".join(f"{t}/{n}" for t, n in zip(types[-len(names) :], names, strict=True))
    head = "/".join(types[: len(types) - len(names)])
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/{namespace}/"
        + (f"{head}/" if head else "")
        + tail
    )


def spell(status: str, spelling: str) -> str:
    """A job status as the vault spells it (`spec`: Started, Succeeded)."""
    return _SPEC_SPELLING.get(status, status) if spelling == "spec" else status


def job_body(job: SimJob, status: str, vault: SimVault, *, listed: bool) -> dict[str, Any]:
    """A Backup vault backupJobs resource as a GET (`listed=False`) or a listing shows it."""
    finished = status == job.outcome
    source_group = job.source_resource_group or job.resource_group
    name = job.datasource_name or job.entity
    instance = job.backup_instance or instance_name(job.subscription_id, job.vault, job.datasource_set, name)
    policy = job.policy_name or "DefaultPolicy"
    backup = job.operation == "Backup"
    activity = _activity_id(job.job_id)
    props: dict[str, Any] = {
        "activityID": activity,
        "subscriptionId": job.subscription_id,
        "backupInstanceId": f"{vault_path(vault)}/backupInstances/{instance}",
        "policyId": f"{vault_path(vault)}/backupPolicies/{policy}",
        "dataSourceId": datasource_id(
            job.subscription_id, source_group, job.job_type, job.datasource_set, name
        ),
        "vaultName": vault.name,
        "backupInstanceFriendlyName": job.entity,
        "policyName": policy,
        "sourceResourceGroup": source_group,
        "dataSourceSetName": job.datasource_set or None,
        "dataSourceName": name,
        "sourceDataStoreName": None,
        "sourceDataStoreType": None,
        "destinationDataStoreName": (
            _DESTINATION.get(job.job_type, "VaultStore")
            if backup and job.outcome == "Completed" and finished
            else None
        ),
        "progressEnabled": False,
        "etag": _etag(job.end if finished else job.start),
        "sourceSubscriptionID": job.subscription_id,
        "dataSourceLocation": vault.location,
        "startTime": format_time(job.start),
        "endTime": format_time(job.end) if finished else None,
        "dataSourceType": job.job_type,
        "operationCategory": job.operation,
        "operation": job.operation,
        "status": spell(status, vault.status_spelling),
        "restoreType": None,
        "isUserTriggered": job.user_triggered,
        "rehydrationPriority": None,
        "supportedActions": [""] if job.user_triggered else [],
        # A running job reports no duration at all, not the time so far.
        "duration": format_duration(job.duration if finished else 0.0, timespan=listed),
        "progressUrl": None,
        "isCrossRegionRestore": None,
        "errorDetails": [_error(job)] if finished and job.outcome == "Failed" else None,
        "extendedInfo": None if listed else _extended_info(job, status, vault, finished, activity),
    }
    return {"properties": props, "id": job_path(vault, job.job_id), "name": job.job_id, "type": JOBS_TYPE}


def operation_body(op: SimOperation, now: float, op_id_path: str, job_id_path: str | None) -> dict[str, Any]:
    """An operationStatus body; `op_id_path` is the status resource's id, `job_id_path` the job's."""
    status = op.status(now)
    body: dict[str, Any] = {
        "id": op_id_path,
        "name": op.operation_id,
        "status": status,
        "startTime": format_time(op.start),
    }
    if status != "InProgress":
        body["endTime"] = format_time(float(int(op.start + op.seconds)))
    if status == "Succeeded" and job_id_path is not None:
        body["properties"] = {"jobId": job_id_path, "objectType": OPERATION_OBJECT_TYPE}
    if status == "Failed":
        body["error"] = {"code": op.error_code, "message": op.error_message}
    return body


def operation_result_body(job_id_path: str) -> dict[str, Any]:
    """What an operationResults URL answers once the operation succeeded."""
    return {"jobId": job_id_path, "objectType": OPERATION_OBJECT_TYPE}


def instance_body(item: SimItem, vault: SimVault) -> dict[str, Any]:
    """A backupInstances resource."""
    datasource_type = DATASOURCE_TYPES[item.kind]
    resource_id = datasource_id(
        item.subscription_id, item.source_group, datasource_type, item.parent, item.name
    )
    policy: dict[str, Any] = {"policyId": f"{vault_path(vault)}/backupPolicies/{item.policy}"}
    group_id = f"/subscriptions/{item.subscription_id}/resourceGroups/{item.source_group}"
    if item.kind in ("disk", "aks"):
        policy["policyParameters"] = {
            "dataStoreParametersList": [
                {
                    "objectType": "AzureOperationalStoreParameters",
                    "dataStoreType": "OperationalStore",
                    "resourceGroupId": group_id,
                }
            ]
        }
    state = item.protection_state or "ProtectionConfigured"
    if state == "ProtectionStopped":
        protection: dict[str, Any] = {"status": "ProtectionStopped"}
    elif item.health == "Passed":
        protection = {"status": "ProtectionConfigured"}
    else:
        code = (
            "UserErrorDiskBackupDiskOrMSIPermissionsNotPresent"
            if item.kind == "disk"
            else "InternalServerError"
        )
        protection = {"status": "ProtectionError", "errorDetails": _error_entry(code, "")}
    props: dict[str, Any] = {
        "friendlyName": friendly_name(item),
        "dataSourceInfo": _datasource(
            resource_id, datasource_type, item.name, datasource_type, vault, "Datasource"
        ),
    }
    if item.parent and item.kind in ("postgresql", "blob"):
        set_type = datasource_type.rsplit("/", 1)[0]
        set_id = resource_id if item.kind == "blob" else resource_id.rsplit("/databases/", 1)[0]
        props["dataSourceSetInfo"] = _datasource(
            set_id, datasource_type, item.parent, set_type, vault, "DatasourceSet"
        )
    props["policyInfo"] = policy
    props["protectionStatus"] = protection
    props["currentProtectionState"] = state
    props["provisioningState"] = "Succeeded"
    props["objectType"] = "BackupInstance"
    return {
        "properties": props,
        "id": f"{vault_path(vault)}/backupInstances/{item.arm_name}",
        "name": item.arm_name,
        "type": INSTANCES_TYPE,
    }


def recovery_point_body(item: SimItem, vault: SimVault, when: float) -> dict[str, Any]:
    """A discrete recovery point of a backup instance, taken at `when`."""
    point = uuid.uuid5(SIM_NAMESPACE, f"rp/{item.arm_name}/{ticks(when)}".lower()).hex
    created = when - 78.4727  # the snapshot is stored a little before the point is committed
    expiry = format_time_fixed(created + (7 if item.kind == "disk" else 30) * _DAY)
    store = "OperationalStore" if item.kind in ("disk", "aks") else "VaultStore"
    props = {
        "objectType": "AzureBackupDiscreteRecoveryPoint",
        "recoveryPointId": point,
        "recoveryPointTime": format_time_fixed(when),
        "recoveryPointType": "Incremental" if item.kind == "disk" else "Full",
        "friendlyName": point,
        "recoveryPointDataStoresDetails": [
            {
                "id": str(uuid.uuid5(SIM_NAMESPACE, f"store/{point}")),
                "type": store,
                "creationTime": format_time_fixed(created),
                "expiryTime": expiry,
                "metaData": None,
                "visible": True,
                "state": "COMMITTED",
                "rehydrationExpiryTime": None,
                "rehydrationStatus": None,
            }
        ],
        "retentionTagName": "Default",
        "retentionTagVersion": str(_EPOCH_TICKS + ticks(created)),
        "policyName": item.policy,
        "policyVersion": None,
        "expiryTime": expiry,
    }
    return {
        "properties": props,
        "id": f"{vault_path(vault)}/backupInstances/{item.arm_name}/recoveryPoints/{point}",
        "name": point,
        "type": POINTS_TYPE,
    }


def _datasource(
    resource_id: str, datasource_type: str, name: str, resource_type: str, vault: SimVault, object_type: str
) -> dict[str, Any]:
    return {
        "resourceID": resource_id,
        "resourceUri": resource_id,
        "datasourceType": datasource_type,
        "resourceName": name,
        "resourceType": resource_type,
        "resourceLocation": vault.location,
        "objectType": object_type,
    }


def _activity_id(job_id: str) -> str:
    return str(uuid.uuid5(SIM_NAMESPACE, f"activity/{job_id}"))


def _etag(moment: float) -> str:
    return f"W/\"datetime'{format_time(moment).replace(':', '%3A')}'\""


def _error(job: SimJob) -> dict[str, Any]:
    if isinstance(job.error_code, str) and job.error_code:
        code = job.error_code
    elif job.job_type == DATASOURCE_TYPES["disk"]:
        code = "UserErrorDiskBackupDiskOrMSIPermissionsNotPresent"
    else:
        code = "InternalServerError"
    return _error_entry(code, job.error_message)


def _error_entry(code: str, message: str) -> dict[str, Any]:
    text, actions, retryable, user_error = _KNOWN_ERRORS.get(
        code, ("The operation failed.", (_TROUBLESHOOT,), False, True)
    )
    entry: dict[str, Any] = {
        "message": message or text,
        "recommendedAction": list(actions),
        "details": None,
        "code": code,
        "target": "",
        "innerError": None,
        "isRetryable": retryable,
        "isUserError": user_error,
        "properties": None,
    }
    if code == "InternalServerError":
        # As recorded: the same error nested once more, that one not retryable.
        entry["details"] = [{**entry, "isRetryable": False}]
    return entry


def _extended_info(
    job: SimJob, status: str, vault: SimVault, finished: bool, activity: str
) -> dict[str, Any]:
    backup = job.operation == "Backup"
    done = finished and job.outcome == "Completed"
    details: dict[str, str] | None = None
    if done and backup:
        size = (job.size_mb if job.size_mb is not None else 4096) * 1024 * 1024
        details = {
            "OriginalDatasourceSizeInBytes": str(size),
            "TaskId": activity,
            "DatasourceType": job.job_type,
        }
    target = None
    if done and backup:
        target = {
            "recoveryPointID": uuid.uuid5(SIM_NAMESPACE, f"rp/{job.job_id}").hex,
            "recoveryPointTime": _NO_RECOVERY_POINT,
        }
    source = None
    if not backup:
        source = {
            "recoveryPointID": uuid.uuid5(SIM_NAMESPACE, f"source/{job.job_id}").hex,
            "recoveryPointTime": format_time(job.start - _DAY),
        }
    return {
        "backupInstanceState": None,
        "dataTransferredInBytes": None,
        "targetRecoverPoint": target,
        "sourceRecoverPoint": source,
        "recoveryDestination": None,
        "subTasks": [
            {
                "taskId": 1,
                "taskName": "Trigger Backup" if backup else f"Trigger {job.operation}",
                "taskStatus": spell(status, vault.status_spelling),
                "taskProgress": None,
                "additionalDetails": details,
            }
        ],
        "additionalDetails": {"RetentionTag": "Default"} if backup else None,
        "warningDetails": None,
    }
