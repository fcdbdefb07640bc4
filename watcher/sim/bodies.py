"""Recovery Services job and operation-status bodies, shaped like the live service's.

The shapes follow recorded traffic rather than the swagger where the two differ: `actionsInfo` is
`[1]` (absent on configuration jobs), `errorDetails[].errorCode` is a number and `errorTitle` may be
empty, list items carry no `extendedInfo`, a running job has no `endTime` while a running operation
says `0001-01-01T00:00:00`, and a Succeeded operation's `endTime` repeats its `startTime`. Job types
with no recorded body (AzureIaaSVMJobV2, DpmJob, MabJob, VaultJob) use the swagger's string
`actionsInfo`, so clients meet both forms. No CompletedWithWarnings body has ever been recorded; its
default error details are illustrative.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from watcher.sim.estate import SIM_NAMESPACE, SimJob, SimOperation
from watcher.sim.filters import normalise_operation
from watcher.sim.formats import UNSET_OPERATION_END, format_bag_time, format_duration, format_time

JOBS_TYPE = "Microsoft.RecoveryServices/vaults/backupJobs"

_VM_TYPES = ("AzureIaaSVMJob", "AzureIaaSVMJobV2")
_UNRECORDED_TYPES = ("AzureIaaSVMJobV2", "DpmJob", "MabJob", "VaultJob")
# Operations whose jobs carry no actionsInfo in recorded traffic.
_NO_ACTIONS = ("ConfigureBackup", "DeleteBackupData", "DisableBackup", "Register", "UnRegister")
# The share of a VM backup spent taking the snapshot before data moves to the vault.
_SNAPSHOT_SHARE = 0.25
# A VM recovery point is kept this many days after the day of its backup (midnight UTC).
_RETENTION_DAYS = 30
_DAY = 86400.0

_RETRY_LATER = (
    "Please retry the operation in a few minutes. If the problem persists, please contact Microsoft Support.",
)
# Error details by errorCode: (errorTitle, errorString, recommendations). The first five are as the
# service recorded them (titles empty where it sent them empty); the warning codes are illustrative.
_KNOWN_ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400001: (
        "",
        "Command execution failed.",
        (
            "Another operation is currently in progress on this item. Please wait until the "
            "previous operation is completed, and then retry.",
        ),
    ),
    400002: ("", "Backup failed with an internal error.", _RETRY_LATER),
    400136: (
        "",
        "Virtual machine doesn't exist.",
        ("Please make sure that virtual machine exists or select a different virtual machine.",),
    ),
    400160: (
        "",
        "VM is in Failed Provisioning State.",
        ("Please make sure that the VM is in Running or Shut-down state.",),
    ),
    510008: (
        "OperationCancelledBecauseConflictingOperationRunningUserError",
        "Operation cancelled as a conflicting operation was already running on the same database.",
        ("Please try again after sometime.",),
    ),
    400275: (
        "ExtensionFailedVssWriterInBadState",
        "Application consistent snapshot failed because VSS writers were in a bad state; a "
        "file-system consistent recovery point was created.",
        ("Restart the VSS writers that are in a bad state and retry the backup.",),
    ),
    580100: (
        "UserErrorSQLLogBackupSkipped",
        "Some log backups were skipped because a full backup was running on the same database.",
        ("No action is needed; the next log backup covers the skipped period.",),
    ),
    410001: (
        "",
        "Backup completed with warnings. Some items were skipped.",
        ("Review the skipped items and retry the backup if they are needed.",),
    ),
}
# The errorCode a job gets when it names none, by (job family, outcome).
_DEFAULT_CODES: dict[tuple[str, str], int] = {
    ("vm", "Failed"): 400136,
    ("workload", "Failed"): 510008,
    ("other", "Failed"): 400002,
    ("vm", "CompletedWithWarnings"): 400275,
    ("workload", "CompletedWithWarnings"): 580100,
    ("other", "CompletedWithWarnings"): 410001,
}


def job_id_path(job: SimJob, subscriptions: str = "subscriptions") -> str:
    """The job's ARM id; `subscriptions` spells the first segment (ARM echoes the request's)."""
    return (
        f"/{subscriptions}/{job.subscription_id}/resourceGroups/{job.resource_group}"
        f"/providers/Microsoft.RecoveryServices/vaults/{job.vault}/backupJobs/{job.job_id}"
    )


def job_body(
    job: SimJob, status: str, now: float, *, extended: bool, subscriptions: str = "subscriptions"
) -> dict[str, Any]:
    """A backupJobs resource; `extended` adds `extendedInfo` (a GET has it, a listing not)."""
    finished = status == job.outcome
    family = _family(job)
    props: dict[str, Any] = {"jobType": job.job_type}
    actions = _actions(job, status, finished)
    if actions is not None:
        props["actionsInfo"] = actions
    if job.job_type in _VM_TYPES and job.container_name:
        props["containerName"] = job.container_name
    if family == "workload":
        props["workloadType"] = "SQLDataBase"
    props["duration"] = format_duration(
        job.duration if finished else now - job.start, timespan=job.timespan_duration
    )
    if finished and job.outcome in ("Failed", "CompletedWithWarnings"):
        props["errorDetails"] = [_error_detail(job, family)]
    props.update(_type_fields(job))
    if extended:
        props["extendedInfo"] = _extended_info(job, status, now, finished)
    if job.job_type in ("AzureWorkloadJob", "AzureStorageJob"):
        props["isUserTriggered"] = job.user_triggered
    props["entityFriendlyName"] = job.entity
    props["backupManagementType"] = job.backup_management_type
    props["operation"] = job.operation
    props["status"] = status
    props["startTime"] = format_time(job.start)
    if finished:
        props["endTime"] = format_time(job.end)
    props["activityId"] = _activity_id(job.job_id)
    return {
        "id": job_id_path(job, subscriptions),
        "name": job.job_id,
        "type": JOBS_TYPE,
        "properties": props,
    }


def operation_body(op: SimOperation, now: float) -> dict[str, Any]:
    """An operation status (`operationsStatus` / `backupOperations`) as the service reports it."""
    status = op.status(now)
    body: dict[str, Any] = {
        "id": op.operation_id,
        "name": op.operation_id,
        "status": status,
        "startTime": format_time(op.start),
        "endTime": UNSET_OPERATION_END if status == "InProgress" else format_time(op.start),
    }
    if status == "Succeeded" and op.job_id is not None:
        body["properties"] = {"objectType": "OperationStatusJobExtendedInfo", "jobId": op.job_id}
    if status == "Failed":
        body["error"] = {"code": op.error_code, "message": op.error_message}
    return body


@functools.lru_cache(maxsize=1 << 16)
def _activity_id(job_id: str) -> str:
    return str(uuid.uuid5(SIM_NAMESPACE, f"activity/{job_id}"))


def _family(job: SimJob) -> str:
    if job.job_type in _VM_TYPES:
        return "vm"
    return "workload" if job.job_type == "AzureWorkloadJob" else "other"


def _actions(job: SimJob, status: str, finished: bool) -> list[Any] | None:
    if normalise_operation(job.operation) in _NO_ACTIONS:
        return None
    if job.job_type not in _UNRECORDED_TYPES:
        return [1]
    if not finished:
        return ["Cancellable"] if status == "InProgress" else None
    return ["Retriable"] if job.outcome == "Failed" else None


def _error_detail(job: SimJob, family: str) -> dict[str, Any]:
    code = job.error_code if job.error_code is not None else _DEFAULT_CODES[(family, job.outcome)]
    known = _KNOWN_ERRORS.get(code) if isinstance(code, int) else None
    title, text, recommendations = known or ("", "", _RETRY_LATER)
    detail: dict[str, Any] = {}
    if job.job_type not in ("DpmJob", "MabJob"):  # their error info has no code or title
        detail["errorCode"] = code
    detail["errorString"] = job.error_message or text or "The job failed."
    if job.job_type in (*_VM_TYPES, "AzureWorkloadJob"):
        detail["errorTitle"] = job.error_title or title
    detail["recommendations"] = list(recommendations)
    return detail


def _type_fields(job: SimJob) -> dict[str, Any]:
    if job.job_type in _VM_TYPES:
        return {"virtualMachineVersion": "Compute"}
    if job.job_type == "AzureStorageJob":
        return {"storageAccountName": _storage_account(job), "storageAccountVersion": "Storage"}
    if job.job_type == "MabJob":
        return {
            "mabServerName": job.entity,
            "mabServerType": "Windows",
            "workloadType": "FileFolder",
        }
    if job.job_type == "DpmJob":
        container = {"containerName": job.container_name} if job.container_name else {}
        return {"dpmServerName": "dpm01", **container, "workloadType": "VM"}
    return {}


def _storage_account(job: SimJob) -> str:
    return job.container_name.rsplit(";", 1)[-1] if job.container_name else "storageaccount"


def _extended_info(job: SimJob, status: str, now: float, finished: bool) -> dict[str, Any]:
    operation = normalise_operation(job.operation)
    succeeded = finished and job.outcome in ("Completed", "CompletedWithWarnings")
    bag: dict[str, str] = {}
    tasks: list[dict[str, Any]] = []
    info: dict[str, Any] = {"tasksList": tasks, "propertyBag": bag}
    task_duration = format_duration(0, timespan=job.timespan_duration)
    if job.job_type in _VM_TYPES:
        bag["VM Name"] = job.entity
        if operation == "Backup":
            expiry = (job.start // _DAY + 1 + _RETENTION_DAYS) * _DAY
            bag["Recovery Point Expiry Time in UTC"] = format_bag_time(expiry)
            snapshot, transfer = _vm_task_statuses(job, status, now, finished)
            tasks.append({"taskId": "Take Snapshot", "duration": task_duration, "status": snapshot})
            tasks.append({"taskId": "Transfer data to vault", "duration": task_duration, "status": transfer})
            if not finished:
                elapsed = max(now - job.start, 0.0)
                info["progressPercentage"] = float(min(99, int(100 * elapsed / max(job.duration, 1e-9))))
        elif operation == "Restore":
            del bag["VM Name"]
            # The trailing space in "Recovery point time " is the service's own.
            bag["Job Type"] = "Recover disks"
            bag["Target Storage Account Name"] = f"{job.entity.replace('-', '')}restore"
            bag["Recovery point time "] = format_bag_time(job.start - _DAY)
    elif job.job_type == "AzureWorkloadJob":
        if operation == "Backup":
            tasks.append({"taskId": "Transfer data to vault", "status": _single_task_status(job, status)})
            if succeeded and job.size_mb is not None:
                bag["Data Transferred (in MB)"] = str(job.size_mb)
            elif finished and job.outcome == "Failed":
                bag["Data Transferred (in MB)"] = "0"
    elif job.job_type == "AzureStorageJob":
        if operation != "Register":
            bag["File Share Name"] = job.entity
        bag["Storage Account Name"] = _storage_account(job)
    if succeeded and job.size_mb is not None and operation == "Backup" and job.job_type != "AzureWorkloadJob":
        bag["Backup Size"] = f"{job.size_mb} MB"
    return info


def _vm_task_statuses(job: SimJob, status: str, now: float, finished: bool) -> tuple[str, str]:
    if status == "Cancelling":
        return "Cancelling", "Cancelling"
    if not finished:
        if now - job.start < _SNAPSHOT_SHARE * job.duration:
            return "InProgress", "NotStarted"
        return "Completed", "InProgress"
    if job.outcome == "Failed":
        return "Completed", "Failed"
    if job.outcome == "Cancelled":
        return "Completed", "Cancelled"
    return "Completed", "Completed"


def _single_task_status(job: SimJob, status: str) -> str:
    if status in ("InProgress", "Cancelling"):
        return status
    return "Completed" if job.outcome == "CompletedWithWarnings" else job.outcome
