"""Every corpus job body, read by our parser and by Microsoft's SDK, gives the same facts.

SDK: `azure-mgmt-recoveryservicesbackup` (a test extra). Since 11.x it is TypeSpec-generated: one
`azure.mgmt.recoveryservicesbackup.models` package (no `activestamp`/`passivestamp`), models are
mappings over the raw JSON, and there is no msrest `JobResource.deserialize`. `JobResource(body)` is
what the SDK's own `JobDetailsOperations.get`/`BackupJobsOperations.list` do with an answer
(`_deserialize(JobResource, response.json())` calls `JobResource(data)`); the `properties` object
becomes the `Job` subclass its `jobType` names (`AzureIaaSVMJob`, `AzureWorkloadJob`, ...).

Adjustments to real bodies before handing them to the SDK: none. Fields deserialise lazily, only when
read, and we read only the compared ones; `actionsInfo: [1]`, `errorDetails[].errorCode` numbers and
the like are never touched. Two SDK leniencies matter for the comparison, so they are checked:
a value it cannot parse comes back as the raw string instead of raising (so we insist its times are
`datetime`s), and .NET TimeSpan durations (`00:20:23.0896697`) come back as text (so durations are
compared only where the SDK parsed an ISO 8601 one). The SDK emits no warnings on import or use, so
no local warning filter is needed under the project's `filterwarnings = error`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests import corpus
from watcher.azure.recoveryservices import parse_job

# msrest-era SDKs (< 11) have no `models` package at the top (only activestamp/passivestamp).
sdk_models = pytest.importorskip(
    "azure.mgmt.recoveryservicesbackup.models",
    reason="the official SDK azure-mgmt-recoveryservicesbackup >= 11 (TypeSpec models; a test extra) "
    "is not installed",
)
JobResource = sdk_models.JobResource
SdkJob = sdk_models.Job

NO_TIME_BEFORE_YEAR = 2002  # QUIRKS.md: 0001-01-01 / 2001-01-01 mean "no end time"


def sdk_time(value: Any) -> datetime | None:
    """The SDK's datetime, with its pre-2002 sentinels as None; a non-datetime fails the test."""
    if value is None:
        return None
    assert isinstance(value, datetime), f"the SDK left the time unparsed: {value!r}"
    return None if value.year < NO_TIME_BEFORE_YEAR else value


def our_operation_text(operation: str, detail: str) -> str:
    """Our (operation, detail) written back as the API's free text, e.g. `Backup (Full)`."""
    return f"{operation} ({detail})" if detail else operation


@pytest.mark.parametrize(("ident", "body"), corpus.params(corpus.iter_job_bodies))
def test_job_body_agrees_with_official_sdk(ident: str, body: dict[str, Any]) -> None:
    """Status, operation, job type, entity, start and end (and ISO durations) match the SDK's reading."""
    ours = parse_job(body)
    theirs = JobResource(body).properties

    # jobType polymorphism: the SDK picked the subclass named by the discriminator
    assert isinstance(theirs, SdkJob)
    assert theirs.job_type == ours.job_type
    assert type(theirs).__name__ == theirs.job_type
    assert theirs.status == ours.status
    # We keep the operation split (`Backup` + `Full`, the metric label and its detail); the SDK keeps
    # the raw text. Writing ours back must give exactly the text the SDK saw: nothing was lost.
    assert theirs.operation == our_operation_text(ours.operation, ours.operation_detail)
    assert theirs.entity_friendly_name == ours.entity
    assert sdk_time(theirs.start_time) == ours.start_time
    assert sdk_time(theirs.end_time) == ours.end_time
    if isinstance(theirs.duration, timedelta):
        assert ours.duration_seconds == pytest.approx(theirs.duration.total_seconds(), abs=1e-6)
    else:  # .NET TimeSpan text, which the SDK does not parse
        assert isinstance(theirs.duration, str)
        assert ":" in theirs.duration
