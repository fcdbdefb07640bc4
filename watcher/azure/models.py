"""Parsed Azure Backup jobs and operations, read leniently from what the service really sends.

Real bodies differ from the swagger (see the corpus' QUIRKS.md): durations as .NET TimeSpan text or
ISO 8601, `endTime` missing or a year-0001/2001 sentinel, numeric `errorCode`, free-text `operation`,
`null` where newer versions omit a key. Nothing here raises on an odd field; only a body that is not a
job at all is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from watcher.errors import BadResponseError

FINAL_STATUSES = frozenset({"Completed", "CompletedWithWarnings", "Failed", "Cancelled"})
SUCCESS_STATUSES = frozenset({"Completed", "CompletedWithWarnings"})
ACTIVE_STATUSES = frozenset({"InProgress", "Cancelling"})
KNOWN_STATUSES = FINAL_STATUSES | ACTIVE_STATUSES
_STATUS_BY_LOWER = {s.lower(): s for s in KNOWN_STATUSES} | {"canceled": "Cancelled"}

OPERATION_FINAL = frozenset({"Succeeded", "Failed", "Canceled"})

_NO_TIME_BEFORE_YEAR = 2002  # 0001-01-01 and 2001-01-01 mean "not ended yet"
_MAX_FIELD = 64  # longer durations or sizes are garbage; refuse them before parsing
_MAX_DURATION = 100 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class VaultRef:
    """A Recovery Services vault: ARM names compare case-insensitively."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def key(self) -> str:
        """A case-insensitive identity, used in the store and maps."""
        return f"{self.subscription_id}/{self.resource_group}/{self.name}".lower()

    @classmethod
    def from_arm_id(cls, arm_id: str) -> VaultRef:
        """Parse `/subscriptions/S/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/V[/...]`."""
        parts = [unquote(p) for p in arm_id.strip("/").split("/")]
        lower = [p.lower() for p in parts]
        # /subscriptions/S/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/V: read by
        # position, so a resource group or vault that happens to be called "vaults" still parses.
        if (
            len(parts) < 8
            or lower[0] != "subscriptions"
            or lower[2] != "resourcegroups"
            or lower[4] != "providers"
            or lower[5] != "microsoft.recoveryservices"
            or lower[6] != "vaults"
            or not all(parts[i] for i in (1, 3, 7))
        ):
            raise ValueError(f"not a Recovery Services vault id: {arm_id!r}")
        sub, rg, vault = parts[1], parts[3], parts[7]
        return cls(sub.lower(), rg, vault)


@dataclass(frozen=True, slots=True)
class JobError:
    """One entry of a job's `errorDetails`."""

    code: str
    title: str
    message: str
    recommendations: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "title": self.title,
            "message": self.message,
            "recommendations": list(self.recommendations),
        }


@dataclass(frozen=True, slots=True)
class JobTask:
    """One entry of `extendedInfo.tasksList`."""

    task_id: str
    status: str
    duration_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "duration_seconds": self.duration_seconds}


@dataclass(frozen=True, slots=True)
class Job:
    """A backup job as the watcher understands it, whatever its `jobType`."""

    job_id: str
    vault: VaultRef | None
    job_type: str
    operation: str
    operation_detail: str
    status: str
    entity: str
    backup_management_type: str
    start_time: datetime | None
    end_time: datetime | None
    duration_seconds: float | None
    workload_type: str | None = None
    progress_percent: float | None = None
    tasks: tuple[JobTask, ...] = ()
    errors: tuple[JobError, ...] = ()
    property_bag: Mapping[str, str] = field(default_factory=dict)
    backup_size_bytes: int | None = None
    has_extended_info: bool = False

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def current_task(self) -> JobTask | None:
        """The task in progress, else the last one that ran."""
        for task in self.tasks:
            if task.status.lower() == "inprogress":
                return task
        done = [t for t in self.tasks if t.status.lower() not in ("notstarted", "")]
        return done[-1] if done else None

    def final_duration(self) -> float | None:
        """Seconds from start to end, from the times where both exist, else the reported duration."""
        if self.start_time and self.end_time:
            return max(0.0, (self.end_time - self.start_time).total_seconds())
        return self.duration_seconds


@dataclass(frozen=True, slots=True)
class OperationStatus:
    """An `operationsStatus` / `backupOperations` body."""

    operation_id: str
    status: str
    job_ids: tuple[str, ...] = ()
    object_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status in OPERATION_FINAL


# ---------------------------------------------------------------------------------------------
# scalar parsers

_ISO_DURATION = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def parse_duration(value: Any) -> float | None:
    """ISO 8601 (`PT30M46.18S`) or .NET TimeSpan (`00:20:23.0896697`, `1.02:00:00`) as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) > _MAX_FIELD:
        return None
    try:
        if (m := _TIMESPAN.match(text)) is not None:
            seconds = int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
        elif (m := _ISO_DURATION.match(text)) is not None and text.upper() not in ("P", "PT"):
            weeks, days, hours, minutes, secs = (float(m[k] or 0) for k in ("w", "d", "h", "m", "s"))
            seconds = ((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60 + secs
        else:
            return None
    except (OverflowError, ValueError):
        return None
    # Nothing runs for a century; anything longer is garbage, not a duration.
    return seconds if math.isfinite(seconds) and seconds <= _MAX_DURATION else None


def parse_time(value: Any) -> datetime | None:
    """An ARM timestamp as an aware UTC datetime; sentinels of "not yet" (year < 2002) as None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.year < _NO_TIME_BEFORE_YEAR:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|PB)?\s*$", re.IGNORECASE)
_SIZE_FACTOR = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def parse_size(value: Any) -> int | None:
    """`2332 MB` as bytes (Azure Backup's MB are 2^20 bytes)."""
    if not isinstance(value, str):
        return None
    if len(value) > _MAX_FIELD:
        return None
    m = _SIZE.match(value)
    if m is None:
        return None
    size = float(m.group(1)) * _SIZE_FACTOR[(m.group(2) or "B").upper()]
    return int(size) if math.isfinite(size) and size < 2**63 else None


def normalise_operation(raw: str) -> tuple[str, str]:
    """`Backup (Full)` -> (`Backup`, `Full`); anything else unchanged with no detail."""
    text = raw.strip()
    if not text.endswith(")") or text.count("(") != 1 or text.count(")") != 1:
        return text, ""
    base, _, detail = text[:-1].partition("(")
    base = base.strip()
    if not base:
        return text, ""
    return base, detail.strip()


def normalise_status(raw: Any) -> str:
    """A job status in its canonical spelling; an unknown one is kept as sent."""
    if not isinstance(raw, str) or not raw.strip():
        return "Unknown"
    return _STATUS_BY_LOWER.get(raw.strip().lower(), raw.strip())


def _list(value: Any) -> list[Any]:
    """A JSON array, or nothing when the field is missing, null or not an array."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _bag_lookup(bag: Mapping[str, str], wanted: str) -> str | None:
    """Find a propertyBag key ignoring case, spaces and trailing blanks (the keys drift)."""
    norm = wanted.replace(" ", "").lower()
    for key, value in bag.items():
        if key.replace(" ", "").lower() == norm:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# body parsers


def parse_job(body: Any) -> Job:
    """A `backupJobs` GET body or list item as a Job; BadResponseError if it is not a job at all."""
    if not isinstance(body, dict):
        raise BadResponseError(f"job body is not an object but {type(body).__name__}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadResponseError("job body has no 'properties' object")
    arm_id = _text(body.get("id"))
    job_id = _text(body.get("name")) or arm_id.rsplit("/", 1)[-1]
    if not job_id:
        raise BadResponseError("job body has neither 'name' nor 'id'")
    try:
        vault: VaultRef | None = VaultRef.from_arm_id(arm_id) if arm_id else None
    except ValueError:
        vault = None

    raw_operation = _text(props.get("operation"))
    operation, detail = normalise_operation(raw_operation) if raw_operation else ("Unknown", "")

    extended = props.get("extendedInfo")
    tasks: list[JobTask] = []
    bag: dict[str, str] = {}
    progress: float | None = None
    if isinstance(extended, dict):
        for task in _list(extended.get("tasksList")):
            if isinstance(task, dict):
                tasks.append(
                    JobTask(
                        task_id=_text(task.get("taskId")),
                        status=_text(task.get("status")),
                        duration_seconds=parse_duration(task.get("duration")),
                    )
                )
        raw_bag = extended.get("propertyBag")
        if isinstance(raw_bag, dict):
            bag = {str(k): _text(v) for k, v in raw_bag.items()}
        pct = extended.get("progressPercentage")
        if isinstance(pct, int | float) and not isinstance(pct, bool):
            progress = float(pct)

    errors: list[JobError] = []
    for err in _list(props.get("errorDetails")):
        if isinstance(err, dict):
            recs = _list(err.get("recommendations"))
            errors.append(
                JobError(
                    code=_text(err.get("errorCode")),
                    title=_text(err.get("errorTitle")),
                    message=_text(err.get("errorString")),
                    recommendations=tuple(_text(r) for r in recs if r is not None),
                )
            )

    size_text = _bag_lookup(bag, "Backup Size")
    return Job(
        job_id=job_id,
        vault=vault,
        job_type=_text(props.get("jobType")) or "Unknown",
        operation=operation or "Unknown",
        operation_detail=detail,
        status=normalise_status(props.get("status")),
        entity=_text(props.get("entityFriendlyName")),
        backup_management_type=_text(props.get("backupManagementType")),
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration_seconds=parse_duration(props.get("duration")),
        workload_type=_text(props.get("workloadType")) or None,
        progress_percent=progress,
        tasks=tuple(tasks),
        errors=tuple(errors),
        property_bag=bag,
        backup_size_bytes=parse_size(size_text) if size_text is not None else None,
        has_extended_info=isinstance(extended, dict),
    )


def parse_job_list(body: Any) -> tuple[list[Job], str | None]:
    """A list page: its jobs (bad items skipped by the caller's choice) and the nextLink if any."""
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        raise BadResponseError("job list body has no 'value' array")
    next_link = body.get("nextLink")
    jobs = [parse_job(item) for item in body["value"]]
    return jobs, next_link if isinstance(next_link, str) and next_link else None


def parse_operation(body: Any) -> OperationStatus:
    """An operation status body; the job id(s) it names once it succeeded, or its error."""
    if not isinstance(body, dict):
        raise BadResponseError(f"operation body is not an object but {type(body).__name__}")
    status = _text(body.get("status"))
    if not status:
        raise BadResponseError("operation body has no 'status'")
    props = body.get("properties")
    job_ids: list[str] = []
    object_type: str | None = None
    if isinstance(props, dict):
        object_type = _text(props.get("objectType")) or None
        if isinstance(props.get("jobId"), str) and props["jobId"]:
            job_ids.append(props["jobId"])
        for job in _list(props.get("jobIds")):
            if isinstance(job, str) and job and job not in job_ids:
                job_ids.append(job)
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code = _text(error.get("code")) or None
        message = _text(error.get("message")) or None
    canonical = {s.lower(): s for s in ("InProgress", "Succeeded", "Failed", "Canceled", "Invalid")}
    return OperationStatus(
        operation_id=_text(body.get("name")) or _text(body.get("id")).rsplit("/", 1)[-1],
        status=canonical.get(status.lower(), "Canceled" if status.lower() == "cancelled" else status),
        job_ids=tuple(job_ids),
        object_type=object_type,
        error_code=code,
        error_message=message,
        start_time=parse_time(body.get("startTime")),
        end_time=parse_time(body.get("endTime")),
    )
