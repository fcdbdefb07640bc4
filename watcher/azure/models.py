"""The provider-neutral model: vaults of both kinds, jobs, operations, and how bodies are read.

A provider module (`recoveryservices`, `dataprotection`) turns its own bodies into these types; nothing
else knows a provider's field names. Real bodies differ from the specs (see tests/data/*/QUIRKS.md):
durations as .NET TimeSpan text or ISO 8601, `endTime` missing or a year-0001/2001 sentinel, statuses
spelt differently by each source, numbers where text belongs. The readers here never raise on an odd
field; only a body that is not a job at all is refused, and a list page sets such items aside instead
of failing (`parse_page`).

Whatever a body holds, what is kept of it is bounded, so one hostile body cannot make a tracked job, a
log line or a metric series huge:

* label values (a job's id, `entity`, `job_type`, `operation`, `operation_detail` and an unknown
  `status`; an operation's id and unknown status) are at most MAX_LABEL_CHARS = 256 characters;
  a longer text keeps its first 240 and a digest of the whole (`bounded_label`), so it stays one
  distinct, stable series;
* free texts (error codes, titles, messages and recommendations, task ids and statuses, propertyBag
  keys and values, management and workload types, an operation's object type, error and job ids, which
  a Backup vault gives as full ARM ids) are cut to MAX_TEXT_CHARS = 4096 characters, ending in "…";
* at most MAX_ITEMS = 100 tasks, errors, propertyBag entries and operation job ids are kept, and
  MAX_RECOMMENDATIONS = 10 recommendations per error, the first ones sent;
* a JSON object or array where a text belongs counts as no text, and a lone surrogate (JSON may escape
  one, UTF-8 cannot hold one) becomes U+FFFD;
* durations outside 0 s to 100 years, progress outside 0-100 %, NaN, infinities and timestamps beyond
  the calendar after conversion to UTC are read as absent.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import unquote

from watcher.errors import BadResponseError
from watcher.logs import get_logger

log = get_logger("backup_watcher.models")

# The product's status set, whatever the provider spells: what metrics, rules and the store see.
FINAL_STATUSES = frozenset({"Completed", "CompletedWithWarnings", "Failed", "Cancelled"})
SUCCESS_STATUSES = frozenset({"Completed", "CompletedWithWarnings"})
ACTIVE_STATUSES = frozenset({"InProgress", "Cancelling", "Paused"})
KNOWN_STATUSES = FINAL_STATUSES | ACTIVE_STATUSES
_STATUS_BY_LOWER = {s.lower(): s for s in KNOWN_STATUSES}
_UNKNOWN_LOGGED: set[tuple[str, str]] = set()  # (provider, spelling): each unknown spelling logged once

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


class VaultKind(enum.StrEnum):
    """The two kinds of vault Azure Backup has; the value is the `vault_type` label."""

    RECOVERY_SERVICES = "recovery_services"  # Microsoft.RecoveryServices/vaults
    BACKUP_VAULT = "backup_vault"  # Microsoft.DataProtection/backupVaults

    @property
    def namespace(self) -> tuple[str, str]:
        """The ARM resource provider and resource type of the vault."""
        return _NAMESPACES[self]


_NAMESPACES = {
    VaultKind.RECOVERY_SERVICES: ("Microsoft.RecoveryServices", "vaults"),
    VaultKind.BACKUP_VAULT: ("Microsoft.DataProtection", "backupVaults"),
}
_KIND_BY_NAMESPACE = {(ns.lower(), rt.lower()): kind for kind, (ns, rt) in _NAMESPACES.items()}


@dataclass(frozen=True, slots=True)
class VaultRef:
    """A vault of either kind: ARM names compare case-insensitively, and its kind is part of who it is."""

    subscription_id: str
    resource_group: str
    name: str
    kind: VaultKind = VaultKind.RECOVERY_SERVICES
    # Worked out once: the scheduler, tracker and /metrics look vaults up by it all the time.
    _key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = f"{self.kind.value}:{self.subscription_id}/{self.resource_group}/{self.name}".lower()
        object.__setattr__(self, "_key", key)

    @property
    def key(self) -> str:
        """A case-insensitive identity, used in the store and maps: `kind:subscription/group/name`."""
        return self._key

    @property
    def arm_id(self) -> str:
        """The vault's ARM id (unquoted)."""
        namespace, resource_type = self.kind.namespace
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{namespace}/{resource_type}/{self.name}"
        )

    @classmethod
    def from_arm_id(cls, arm_id: str) -> VaultRef:
        """Parse `/subscriptions/S/resourceGroups/RG/providers/NS/TYPE/V[/...]` of either vault kind."""
        parts = [unquote(p) for p in arm_id.strip("/").split("/")]
        lower = [p.lower() for p in parts]
        # Read by position, so a resource group or vault that happens to be called "vaults" still parses.
        kind = _KIND_BY_NAMESPACE.get((lower[5], lower[6])) if len(parts) >= 8 else None
        if (
            kind is None
            or lower[0] != "subscriptions"
            or lower[2] != "resourcegroups"
            or lower[4] != "providers"
            or not all(parts[i] for i in (1, 3, 7))
        ):
            raise ValueError(f"not the id of a Recovery Services vault or a Backup vault: {arm_id!r}")
        return cls(parts[1].lower(), parts[3], parts[7], kind)


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
    # What links the job to its protected item: the protection container (`iaasvmcontainerv2;rg;vm`) of
    # a Recovery Services VM job, or the backup instance's name of a Backup vault job.
    container: str = ""
    item: str = ""

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
class RunningJob:
    """An unfinished job a vault's pass refreshes: what a batched listing needs to know of it."""

    job_id: str
    start_time: float


@dataclass(frozen=True, slots=True)
class VaultInfo:
    """A vault as a subscription's listing describes it."""

    ref: VaultRef
    location: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


class ProtectionState(enum.StrEnum):
    """An item's protection whatever the provider calls it: azure_backup_item_protection_state's `state`."""

    PROTECTED = "protected"  # Protected, ProtectionConfigured
    PENDING = "pending"  # IRPending, ConfiguringProtection, UpdatingProtection: the first backup is to come
    STOPPED = "stopped"  # ProtectionStopped, NotProtected, SoftDeleted, SoftDeleting: no backups expected
    SUSPENDED = "suspended"  # BackupsSuspended, ProtectionPaused, ...SchedulesSuspended: none for now
    ERROR = "error"  # ProtectionError, ConfiguringProtectionFailed, Invalid
    UNKNOWN = "unknown"  # anything else


class ItemHealth(enum.StrEnum):
    """An item's health as Azure reports it: the `health` of azure_backup_item_health."""

    HEALTHY = "healthy"
    ACTION_REQUIRED = "action_required"
    ACTION_SUGGESTED = "action_suggested"


@dataclass(frozen=True, slots=True)
class ProtectedItem:
    """A protected item (Recovery Services) or backup instance (Backup vault) in a vault's inventory.

    `name` is the item's own name within its vault (stable: `VM;iaasvmcontainerv2;rg;vm`, an instance
    name); `entity` its friendly name for people (what its jobs call it). `last_recovery_point` is the
    newest recovery point Azure reports, None for an item never backed up. `container` is what links a
    Recovery Services VM job to its item (its protection container).
    """

    vault: VaultRef
    name: str
    entity: str
    item_type: str
    policy: str
    source_resource_id: str
    protection_state: ProtectionState
    azure_state: str
    health: ItemHealth | None
    azure_health: str
    last_recovery_point: float | None
    last_backup_status: str = ""
    container: str = ""
    error: str = ""

    @property
    def key(self) -> str:
        """The item's case-insensitive name within its vault."""
        return self.name.lower()


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


def number(value: Any) -> float | None:
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
    seconds = _duration_text(value.strip()) if isinstance(value, str) else number(value)
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
    text = as_text(raw).strip()
    if not text:
        return "Unknown", ""
    if not text.endswith(")") or text.count("(") != 1 or text.count(")") != 1:
        return label(text), ""
    base, _, detail = text[:-1].partition("(")
    base = base.strip()
    if not base:
        return label(text), ""
    return label(base), label(detail.strip())


def normalise_status(raw: Any, spellings: Mapping[str, str] | None = None, *, provider: str = "") -> str:
    """A job status in the product's spelling; `spellings` (lower case) adds a provider's own words.

    An unknown spelling is kept as sent, bounded like a label: its own state, never a success, never
    final; it is logged once per provider and spelling.
    """
    if not isinstance(raw, str) or not raw.strip():
        return "Unknown"
    text = raw.strip()
    lowered = text.lower()
    known = _STATUS_BY_LOWER.get(lowered) or (spellings or {}).get(lowered)
    if known is not None:
        return known
    status = label(text)
    if (provider, status) not in _UNKNOWN_LOGGED and len(_UNKNOWN_LOGGED) < 1000:
        _UNKNOWN_LOGGED.add((provider, status))
        log.warning("unknown_job_status", provider=provider, status=status)
    return status


def json_list(value: Any) -> list[Any]:
    """A JSON array, or nothing when the field is missing, null or not an array."""
    return value if isinstance(value, list) else []


def objects(value: Any) -> list[dict[str, Any]]:
    """The first MAX_ITEMS objects of a JSON array; other items are skipped."""
    return list(islice((item for item in json_list(value) if isinstance(item, dict)), MAX_ITEMS))


def as_text(value: Any) -> str:
    """A JSON string or number as text, as sent; null, an object or an array is no text."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) else ""


def utf8(text: str) -> str:
    """`text` with lone surrogates (JSON may escape one) as U+FFFD: the store and /metrics write UTF-8."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def label(value: Any) -> str:
    """A label value: bounded first, so a huge text is hashed once and only its kept start is scanned."""
    return utf8(bounded_label(as_text(value)))


def free_text(value: Any) -> str:
    """Text cut to MAX_TEXT_CHARS, ending in "…" when it was longer."""
    text = as_text(value)
    return utf8(text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…")


def first(items: Iterable[str], limit: int = MAX_ITEMS) -> tuple[str, ...]:
    return tuple(islice(items, limit))


def unique(items: Iterable[str]) -> Iterator[str]:
    """Items in first-seen order without repeats, lazily: reading stops once enough are found."""
    seen: set[str] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def bag_lookup(bag: Mapping[str, str], wanted: str) -> str | None:
    """Find a propertyBag key ignoring case, spaces and trailing blanks (the keys drift)."""
    norm = wanted.replace(" ", "").lower()
    for key, value in bag.items():
        if key.replace(" ", "").lower() == norm:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# body parsers


def job_ident(body: dict[str, Any]) -> str:
    """A resource's `name`, else the last segment of its `id`."""
    return as_text(body.get("name")) or as_text(body.get("id")).rsplit("/", 1)[-1]


T = TypeVar("T")


def parse_page(
    body: Any, parse_item: Callable[[Any], T], what: str = "job"
) -> tuple[list[T], list[RejectedItem]]:
    """A list page's items that parse, and the ones set aside; BadResponseError if it is no page at all.

    An item that `parse_item` refuses (BadResponseError) does not fail its page: it is set aside with its
    position, name and reason, for the caller to count.
    """
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise BadResponseError(f"{what} list body has no 'value' array")
    parsed: list[T] = []
    rejected: list[RejectedItem] = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse_item(item))
        except BadResponseError as exc:
            rejected.append(RejectedItem(index=index, ident=_rejected_ident(item), reason=str(exc)))
    return parsed, rejected


def next_link(body: Any) -> str | None:
    """A page's nextLink, when it names one (absent, null or empty: the last page)."""
    link = body.get("nextLink") if isinstance(body, dict) else None
    return link if isinstance(link, str) and link else None


def parse_vault(body: Any, kind: VaultKind) -> VaultInfo:
    """A vault listing's item: its id must name a vault of `kind`; tags whose value is no text are dropped."""
    if not isinstance(body, dict):
        raise BadResponseError(f"vault is not an object but {type(body).__name__}")
    arm_id = as_text(body.get("id"))
    try:
        ref = VaultRef.from_arm_id(arm_id)
    except ValueError:
        raise BadResponseError(f"vault id is not a vault's ARM id: {label(arm_id)!r}") from None
    if ref.kind is not kind or len(arm_id.strip("/").split("/")) != 8:
        raise BadResponseError(f"vault id is not a {kind.value} vault: {label(arm_id)!r}")
    raw_tags = body.get("tags")
    tags = (
        {label(k): label(v) for k, v in islice(raw_tags.items(), MAX_ITEMS) if isinstance(v, str)}
        if isinstance(raw_tags, dict)
        else {}
    )
    return VaultInfo(ref=ref, location=label(body.get("location")), tags=tags)


def _rejected_ident(item: Any) -> str:
    """A refused item's `name`, else the last segment of its `id`, when they are strings."""
    if not isinstance(item, dict):
        return ""
    name, arm_id = item.get("name"), item.get("id")
    if isinstance(name, str) and name:
        return label(name)
    return label(arm_id.rsplit("/", 1)[-1]) if isinstance(arm_id, str) else ""


def parse_operation(body: Any) -> OperationStatus:
    """An operation status body; the job id(s) it names once it succeeded, or its error."""
    if not isinstance(body, dict):
        raise BadResponseError(f"operation body is not an object but {type(body).__name__}")
    status = as_text(body.get("status"))
    if not status and isinstance(body.get("jobId"), str) and body["jobId"]:
        # A Backup vault's operationResults (its Location URL) answers the result alone, once it is done.
        return OperationStatus(operation_id="", status="Succeeded", job_ids=(free_text(body["jobId"]),))
    if not status:
        raise BadResponseError("operation body has no 'status'")
    props = body.get("properties")
    job_ids: tuple[str, ...] = ()
    object_type: str | None = None
    if isinstance(props, dict):
        object_type = free_text(props.get("objectType")) or None
        named = [props.get("jobId"), *json_list(props.get("jobIds"))]
        # A Backup vault names its job by full ARM id, which may be longer than a label.
        job_ids = first(unique(free_text(j) for j in named if isinstance(j, str) and j))
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code = free_text(error.get("code")) or None
        message = free_text(error.get("message")) or None
    return OperationStatus(
        operation_id=label(job_ident(body)),
        status=_OPERATION_STATUS_BY_LOWER.get(status.lower()) or label(status),
        job_ids=job_ids,
        object_type=object_type,
        error_code=code,
        error_message=message,
        start_time=parse_time(body.get("startTime")),
        end_time=parse_time(body.get("endTime")),
    )
