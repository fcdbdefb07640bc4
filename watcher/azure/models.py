"""Parsed Azure Backup jobs and operations, read leniently from what the service really sends.

Real bodies differ from the swagger (see the corpus' QUIRKS.md): durations as .NET TimeSpan text or
ISO 8601, `endTime` missing or a year-0001/2001 sentinel, numeric `errorCode`, free-text `operation`,
`null` where newer versions omit a key. Nothing here raises on an odd field; only a body that is not a
job at all is refused, and a list page sets such items aside instead of failing (`parse_job_page`).

Whatever a body holds, what is kept of it is bounded, so one hostile body cannot make a tracked job, a
log line or a metric series huge:

* label values (a job's id, `entity`, `job_type`, `operation`, `operation_detail` and an unknown
  `status`; an operation's id, job ids and unknown status) are at most MAX_LABEL_CHARS = 256 characters;
  a longer text keeps its first 240 and a digest of the whole (`bounded_label`), so it stays one
  distinct, stable series;
* free texts (error codes, titles, messages and recommendations, task ids and statuses, propertyBag
  keys and values, management and workload types, an operation's object type and error) are cut to
  MAX_TEXT_CHARS = 4096 characters, ending in "…";
* at most MAX_ITEMS = 100 tasks, errors, propertyBag entries and operation job ids are kept, and
  MAX_RECOMMENDATIONS = 10 recommendations per error, the first ones sent;
* a JSON object or array where a text belongs counts as no text, and a lone surrogate (JSON may escape
  one, UTF-8 cannot hold one) becomes U+FFFD;
* durations outside 0 s to 100 years, progress outside 0-100 %, NaN, infinities and timestamps beyond
  the calendar after conversion to UTC are read as absent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import unquote

from watcher.errors import BadResponseError

FINAL_STATUSES = frozenset({"Completed", "CompletedWithWarnings", "Failed", "Cancelled"})
SUCCESS_STATUSES = frozenset({"Completed", "CompletedWithWarnings"})
ACTIVE_STATUSES = frozenset({"InProgress", "Cancelling"})
KNOWN_STATUSES = FINAL_STATUSES | ACTIVE_STATUSES
_STATUS_BY_LOWER = {s.lower(): s for s in KNOWN_STATUSES} | {"canceled": "Cancelled"}

OPERATION_FINAL = frozenset({"Succeeded", "Failed", "Canceled"})
_OPERATION_STATUS_BY_LOWER = {
    s.lower(): s for s in ("InProgress", "Succeeded", "Failed", "Canceled", "Invalid")
} | {"cancelled": "Canceled"}

MAX_LABEL_CHARS = 256
_LABEL_KEEP = 240  # a longer label keeps this much, then "…" and _LABEL_DIGEST hex digits
_LABEL_DIGEST = 12
MAX_TEXT_CHARS = 4096
MAX_ITEMS = 100
MAX_RECOMMENDATIONS = 10

_NO_TIME_BEFORE_YEAR = 2002  # 0001-01-01 and 2001-01-01 mean "not ended yet"
_MAX_FIELD = 64  # longer durations or sizes are garbage; refuse them before parsing
_MAX_DURATION = 100 * 365 * 86400.0
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


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
class RejectedItem:
    """A list item that is not a job: its position, its name (or id's last segment) if any, and why."""

    index: int
    ident: str
    reason: str


@dataclass(frozen=True, slots=True)
class JobPage:
    """A list page: the items that are jobs, the ones set aside, and the nextLink if any."""

    jobs: list[Job]
    rejected: list[RejectedItem]
    next_link: str | None


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


def bounded_label(text: str) -> str:
    """`text` if it fits a label (MAX_LABEL_CHARS), else its start, "…" and the SHA-256 of all of it."""
    if len(text) <= MAX_LABEL_CHARS:
        return text
    # surrogatepass: hashing must not fail on a lone surrogate, whoever calls this
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:_LABEL_KEEP]}…{digest[:_LABEL_DIGEST]}"


def _number(value: Any) -> float | None:
    """A JSON number as a float (NaN and infinities included), None for anything else or too big."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None


def _duration_text(text: str) -> float | None:
    if len(text) > _MAX_FIELD:
        return None
    if (m := _TIMESPAN.match(text)) is not None:
        return int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
    if (m := _ISO_DURATION.match(text)) is not None and text.upper() not in ("P", "PT"):
        weeks, days, hours, minutes, secs = (float(m[k] or 0) for k in ("w", "d", "h", "m", "s"))
        return ((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60 + secs
    return None


def parse_duration(value: Any) -> float | None:
    """ISO 8601 (`PT30M46.18S`) or .NET TimeSpan (`00:20:23.0896697`, `1.02:00:00`) as seconds."""
    seconds = _duration_text(value.strip()) if isinstance(value, str) else _number(value)
    # Nothing runs backwards or for a century; anything else (NaN too) is garbage, not a duration.
    return seconds if seconds is not None and 0 <= seconds <= _MAX_DURATION else None


def parse_time(value: Any) -> datetime | None:
    """An ARM timestamp as an aware UTC datetime; sentinels of "not yet" (year < 2002) as None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        return None
    return None if utc.year < _NO_TIME_BEFORE_YEAR else utc


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
    return int(size) if size < 2**63 else None


def normalise_operation(raw: Any) -> tuple[str, str]:
    """`Backup (Full)` -> (`Backup`, `Full`); any other text unchanged with no detail; none -> `Unknown`."""
    text = _text(raw).strip()
    if not text:
        return "Unknown", ""
    if not text.endswith(")") or text.count("(") != 1 or text.count(")") != 1:
        return _label(text), ""
    base, _, detail = text[:-1].partition("(")
    base = base.strip()
    if not base:
        return _label(text), ""
    return _label(base), _label(detail.strip())


def normalise_status(raw: Any) -> str:
    """A job status in its canonical spelling; an unknown one is kept as sent, bounded like a label."""
    if not isinstance(raw, str) or not raw.strip():
        return "Unknown"
    text = raw.strip()
    return _STATUS_BY_LOWER.get(text.lower()) or _label(text)


def _list(value: Any) -> list[Any]:
    """A JSON array, or nothing when the field is missing, null or not an array."""
    return value if isinstance(value, list) else []


def _objects(value: Any) -> list[dict[str, Any]]:
    """The first MAX_ITEMS objects of a JSON array; other items are skipped."""
    return list(islice((item for item in _list(value) if isinstance(item, dict)), MAX_ITEMS))


def _text(value: Any) -> str:
    """A JSON string or number as text, as sent; null, an object or an array is no text."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) else ""


def _utf8(text: str) -> str:
    """`text` with lone surrogates (JSON may escape one) as U+FFFD: the store and /metrics write UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _label(value: Any) -> str:
    """A label value: bounded first, so a huge text is hashed once and only its kept start is scanned."""
    return _utf8(bounded_label(_text(value)))


def _free_text(value: Any) -> str:
    """Text cut to MAX_TEXT_CHARS, ending in "…" when it was longer."""
    text = _text(value)
    return _utf8(text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…")


def _first(items: Iterable[str], limit: int = MAX_ITEMS) -> tuple[str, ...]:
    return tuple(islice(items, limit))


def _unique(items: Iterable[str]) -> Iterator[str]:
    """Items in first-seen order without repeats, lazily: reading stops once enough are found."""
    seen: set[str] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def _bag_lookup(bag: Mapping[str, str], wanted: str) -> str | None:
    """Find a propertyBag key ignoring case, spaces and trailing blanks (the keys drift)."""
    norm = wanted.replace(" ", "").lower()
    for key, value in bag.items():
        if key.replace(" ", "").lower() == norm:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# body parsers


def _job_ident(body: dict[str, Any]) -> str:
    """The job's `name`, else the last segment of its `id`."""
    return _text(body.get("name")) or _text(body.get("id")).rsplit("/", 1)[-1]


def parse_job(body: Any) -> Job:
    """A `backupJobs` GET body or list item as a Job; BadResponseError if it is not a job at all."""
    if not isinstance(body, dict):
        raise BadResponseError(f"job body is not an object but {type(body).__name__}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadResponseError("job body has no 'properties' object")
    job_id = _job_ident(body)
    if not job_id:
        raise BadResponseError("job body has neither 'name' nor 'id'")
    arm_id = _utf8(_text(body.get("id")))
    try:
        vault: VaultRef | None = VaultRef.from_arm_id(arm_id) if arm_id else None
    except ValueError:
        vault = None

    operation, detail = normalise_operation(props.get("operation"))

    extended = props.get("extendedInfo")
    tasks: tuple[JobTask, ...] = ()
    bag: dict[str, str] = {}
    progress: float | None = None
    if isinstance(extended, dict):
        tasks = tuple(
            JobTask(
                task_id=_free_text(task.get("taskId")),
                status=_free_text(task.get("status")),
                duration_seconds=parse_duration(task.get("duration")),
            )
            for task in _objects(extended.get("tasksList"))
        )
        raw_bag = extended.get("propertyBag")
        if isinstance(raw_bag, dict):
            bag = {_free_text(k): _free_text(v) for k, v in islice(raw_bag.items(), MAX_ITEMS)}
        pct = _number(extended.get("progressPercentage"))
        progress = pct if pct is not None and 0 <= pct <= 100 else None

    errors = tuple(
        JobError(
            code=_free_text(err.get("errorCode")),
            title=_free_text(err.get("errorTitle")),
            message=_free_text(err.get("errorString")),
            recommendations=_first(
                (_free_text(r) for r in _list(err.get("recommendations")) if r is not None),
                MAX_RECOMMENDATIONS,
            ),
        )
        for err in _objects(props.get("errorDetails"))
    )

    size_text = _bag_lookup(bag, "Backup Size")
    return Job(
        job_id=_label(job_id),
        vault=vault,
        job_type=_label(props.get("jobType")) or "Unknown",
        operation=operation,
        operation_detail=detail,
        status=normalise_status(props.get("status")),
        entity=_label(props.get("entityFriendlyName")),
        backup_management_type=_free_text(props.get("backupManagementType")),
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration_seconds=parse_duration(props.get("duration")),
        workload_type=_free_text(props.get("workloadType")) or None,
        progress_percent=progress,
        tasks=tasks,
        errors=errors,
        property_bag=bag,
        backup_size_bytes=parse_size(size_text) if size_text is not None else None,
        has_extended_info=isinstance(extended, dict),
    )


def parse_job_page(body: Any) -> JobPage:
    """A list page: its jobs, the items that are not jobs set aside, and the nextLink if any.

    BadResponseError only when the page itself is not an object with a `value` array.
    """
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise BadResponseError("job list body has no 'value' array")
    jobs: list[Job] = []
    rejected: list[RejectedItem] = []
    for index, item in enumerate(items):
        try:
            jobs.append(parse_job(item))
        except BadResponseError as exc:
            rejected.append(RejectedItem(index=index, ident=_rejected_ident(item), reason=str(exc)))
    next_link = body.get("nextLink")
    return JobPage(
        jobs=jobs,
        rejected=rejected,
        next_link=next_link if isinstance(next_link, str) and next_link else None,
    )


def _rejected_ident(item: Any) -> str:
    """A refused item's `name`, else the last segment of its `id`, when they are strings."""
    if not isinstance(item, dict):
        return ""
    name, arm_id = item.get("name"), item.get("id")
    if isinstance(name, str) and name:
        return _label(name)
    return _label(arm_id.rsplit("/", 1)[-1]) if isinstance(arm_id, str) else ""


def parse_operation(body: Any) -> OperationStatus:
    """An operation status body; the job id(s) it names once it succeeded, or its error."""
    if not isinstance(body, dict):
        raise BadResponseError(f"operation body is not an object but {type(body).__name__}")
    status = _text(body.get("status"))
    if not status:
        raise BadResponseError("operation body has no 'status'")
    props = body.get("properties")
    job_ids: tuple[str, ...] = ()
    object_type: str | None = None
    if isinstance(props, dict):
        object_type = _free_text(props.get("objectType")) or None
        named = [props.get("jobId"), *_list(props.get("jobIds"))]
        job_ids = _first(_unique(_label(j) for j in named if isinstance(j, str) and j))
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code = _free_text(error.get("code")) or None
        message = _free_text(error.get("message")) or None
    return OperationStatus(
        operation_id=_label(_job_ident(body)),
        status=_OPERATION_STATUS_BY_LOWER.get(status.lower()) or _label(status),
        job_ids=job_ids,
        object_type=object_type,
        error_code=code,
        error_message=message,
        start_time=parse_time(body.get("startTime")),
        end_time=parse_time(body.get("endTime")),
    )
