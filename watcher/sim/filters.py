"""The `$filter` texts the simulator understands, in the forms the service documents.

A backupJobs listing takes clauses `field eq 'value'` joined by ` and `; the fields are status,
backupManagementType, operation, jobId, startTime and endTime. Dates are written `'2016-03-21 06:30:00
AM'` (the service's own examples even say `'2016-01-01 00:00:00 AM'`); ISO 8601 is accepted too.
startTime/endTime select the jobs whose start lies in that window. An empty value (`operation eq ''`,
as PowerShell sends) constrains nothing.

A backupProtectedItems listing takes `backupManagementType eq '...' and itemType eq '...'`, and a
Backup vault's recoveryPoints listing `startDate eq '...' and endDate eq '...'`, in the same grammar.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# The JobStatus enum of the swagger: the values a status filter may name.
JOB_STATUSES = (
    "Invalid",
    "InProgress",
    "Completed",
    "Failed",
    "CompletedWithWarnings",
    "Cancelled",
    "Cancelling",
)
_STATUS_BY_LOWER = {s.lower(): s for s in JOB_STATUSES}
_FIELDS = ("status", "backupmanagementtype", "operation", "jobid", "starttime", "endtime")

_CLAUSE = re.compile(r"^\s*([A-Za-z]+)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_DOTNET_TIME = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?\s*([AaPp][Mm])?$"
)


class FilterError(ValueError):
    """The `$filter` text is not of the documented form."""


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A parsed `$filter`; None leaves a field free. Status is canonical, other text lower-case."""

    status: str | None = None
    backup_management_type: str | None = None
    operation: str | None = None
    job_id: str | None = None
    start_from: float | None = None
    start_to: float | None = None


def normalise_operation(operation: str) -> str:
    """The operation without its qualifier, as filters see it: `Backup (Log)` is `Backup`."""
    return operation.split("(", 1)[0].strip()


def parse_time(text: str) -> float:
    """A filter date (`2016-03-21 06:30:00 PM` or ISO 8601) as epoch seconds; naive means UTC."""
    match = _DOTNET_TIME.match(text.strip())
    if match:
        year, month, day, hour, minute = (int(g) for g in match.groups()[:5])
        second = int(match.group(6) or 0)
        micros = round(float(match.group(7) or 0) * 1_000_000)
        meridiem = (match.group(8) or "").upper()
        if meridiem == "PM" and hour < 12:
            hour += 12
        elif meridiem == "AM" and hour == 12:
            hour = 0
        try:
            moment = dt.datetime(year, month, day, hour, minute, second, micros, tzinfo=dt.UTC)
        except ValueError as e:
            raise FilterError(f"'{text}' is not a valid date") from e
        return moment.timestamp()
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise FilterError(f"'{text}' is not a valid date") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """A parsed protected-item `$filter`, lower-case; None leaves a field free."""

    backup_management_type: str | None = None
    item_type: str | None = None


def parse_filter(text: str | None) -> JobQuery:
    """Parse a backupJobs `$filter`; raise FilterError for anything outside the documented form."""
    if text is None or not text.strip():
        return JobQuery()
    set_values = {k: v for k, v in _clauses(text, _FIELDS).items() if v.strip()}
    status = set_values.get("status")
    if status is not None and status.lower() not in _STATUS_BY_LOWER:
        raise FilterError(f"'{status}' is not a job status")
    start = set_values.get("starttime")
    end = set_values.get("endtime")
    return JobQuery(
        status=_STATUS_BY_LOWER[status.lower()] if status is not None else None,
        backup_management_type=_lower(set_values.get("backupmanagementtype")),
        operation=_lower(set_values.get("operation")),
        job_id=_lower(set_values.get("jobid")),
        start_from=parse_time(start) if start is not None else None,
        start_to=parse_time(end) if end is not None else None,
    )


def parse_item_filter(text: str | None) -> ItemQuery:
    """Parse a backupProtectedItems `$filter` (backupManagementType, itemType)."""
    if text is None or not text.strip():
        return ItemQuery()
    values = _clauses(text, ("backupmanagementtype", "itemtype"))
    return ItemQuery(_lower(values.get("backupmanagementtype")), _lower(values.get("itemtype")))


def parse_point_window(text: str | None) -> tuple[float | None, float | None]:
    """Parse a recoveryPoints `$filter` (startDate, endDate) into an epoch window."""
    if text is None or not text.strip():
        return None, None
    values = _clauses(text, ("startdate", "enddate"))
    start, end = values.get("startdate"), values.get("enddate")
    return (parse_time(start) if start else None, parse_time(end) if end else None)


def _clauses(text: str, fields: tuple[str, ...]) -> dict[str, str]:
    """The `field eq 'value'` clauses of `text` by lower-case field, each of `fields` at most once."""
    values: dict[str, str] = {}
    for clause in _AND.split(text.strip()):
        match = _CLAUSE.match(clause)
        if not match:
            raise FilterError(f"'{clause}' is not of the form field eq 'value'")
        field, value = match.group(1).lower(), match.group(2)
        if field not in fields:
            raise FilterError(f"'{match.group(1)}' cannot be filtered on")
        if field in values:
            raise FilterError(f"'{match.group(1)}' is named twice")
        values[field] = value
    return values


def _lower(value: str | None) -> str | None:
    return value.strip().lower() if value is not None else None
