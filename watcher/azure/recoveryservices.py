"""Recovery Services vaults (`Microsoft.RecoveryServices/vaults`): URLs, job bodies, listings.

Everything the watcher knows of this provider's wire format is here. Jobs are `backupJobs` resources
whose listing takes the documented `$filter` (`field eq 'value'` joined by ` and `), so discovery asks
for the jobs started in a time window, and the unfinished jobs of a vault are refreshed by one listing
filtered to `status eq 'InProgress'`. A list item carries no `extendedInfo`: an ended job is read with
a GET. `job_type` is the API's `jobType`; `operation` the free-text operation normalised
(`Backup (Full)` is `Backup`, detail `Full`); `entity` the `entityFriendlyName`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import quote, urlencode

from watcher.azure.client import ArmClient
from watcher.azure.models import (
    MAX_ITEMS,
    MAX_RECOMMENDATIONS,
    ItemHealth,
    Job,
    JobError,
    JobPage,
    JobTask,
    ProtectedItem,
    ProtectionState,
    RejectedItem,
    RunningJob,
    VaultInfo,
    VaultKind,
    VaultRef,
    as_text,
    bag_lookup,
    first,
    free_text,
    job_ident,
    json_list,
    label,
    next_link,
    normalise_operation,
    normalise_status,
    number,
    objects,
    parse_duration,
    parse_page,
    parse_size,
    parse_time,
    parse_vault,
    utf8,
)
from watcher.errors import BadResponseError

KIND = VaultKind.RECOVERY_SERVICES
# Listing a subscription's vaults is the vault resource provider's API, versioned apart from Backup's.
VAULTS_API_VERSION = "2025-08-01"
# The service writes Cancelled; older operation bodies and some clients write Canceled.
_SPELLINGS = {"canceled": "Cancelled"}


def segment(value: str) -> str:
    """One URL path segment, every reserved character quoted."""
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class JobFilter:
    """The documented `$filter` of a job listing: `field eq 'value'` clauses joined by ` and `."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    status: str | None = None
    operation: str | None = None
    backup_management_type: str | None = None

    def render(self) -> str | None:
        clauses = []
        if self.start_time is not None or self.end_time is not None:
            # The service takes both times together, written as in its own examples.
            start = self.start_time or datetime(2000, 1, 1, tzinfo=UTC)
            end = self.end_time or datetime.now(UTC)
            clauses.append(f"startTime eq '{_filter_time(start)}'")
            clauses.append(f"endTime eq '{_filter_time(end)}'")
        for name, value in (
            ("status", self.status),
            ("operation", self.operation),
            ("backupManagementType", self.backup_management_type),
        ):
            if value is not None:
                if "'" in value:
                    raise ValueError(f"a $filter value cannot contain a quote: {value!r}")
                clauses.append(f"{name} eq '{value}'")
        return " and ".join(clauses) or None


def _filter_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %I:%M:%S %p")


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def parse_job(body: Any) -> Job:
    """A `backupJobs` GET body or list item as a Job; BadResponseError if it is not a job at all."""
    if not isinstance(body, dict):
        raise BadResponseError(f"job body is not an object but {type(body).__name__}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadResponseError("job body has no 'properties' object")
    job_id = job_ident(body)
    if not job_id:
        raise BadResponseError("job body has neither 'name' nor 'id'")
    arm_id = utf8(as_text(body.get("id")))
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
                task_id=free_text(task.get("taskId")),
                status=free_text(task.get("status")),
                duration_seconds=parse_duration(task.get("duration")),
            )
            for task in objects(extended.get("tasksList"))
        )
        raw_bag = extended.get("propertyBag")
        if isinstance(raw_bag, dict):
            bag = {free_text(k): free_text(v) for k, v in islice(raw_bag.items(), MAX_ITEMS)}
        pct = number(extended.get("progressPercentage"))
        progress = pct if pct is not None and 0 <= pct <= 100 else None

    errors = tuple(
        JobError(
            code=free_text(err.get("errorCode")),
            title=free_text(err.get("errorTitle")),
            message=free_text(err.get("errorString")),
            recommendations=first(
                (free_text(r) for r in json_list(err.get("recommendations")) if r is not None),
                MAX_RECOMMENDATIONS,
            ),
        )
        for err in objects(props.get("errorDetails"))
    )

    size_text = bag_lookup(bag, "Backup Size")
    return Job(
        job_id=label(job_id),
        vault=vault,
        job_type=label(props.get("jobType")) or "Unknown",
        operation=operation,
        operation_detail=detail,
        status=normalise_status(props.get("status"), _SPELLINGS, provider=KIND.value),
        entity=label(props.get("entityFriendlyName")),
        backup_management_type=free_text(props.get("backupManagementType")),
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration_seconds=parse_duration(props.get("duration")),
        workload_type=free_text(props.get("workloadType")) or None,
        progress_percent=progress,
        tasks=tasks,
        errors=errors,
        property_bag=bag,
        backup_size_bytes=parse_size(size_text) if size_text is not None else None,
        has_extended_info=isinstance(extended, dict),
        container=label(props.get("containerName")),
    )


# protectionState as the service spells it (free text; compared in lower case).
_PROTECTION = {
    "protected": ProtectionState.PROTECTED,
    "irpending": ProtectionState.PENDING,
    "protectionstopped": ProtectionState.STOPPED,
    "backupssuspended": ProtectionState.SUSPENDED,
    "protectionpaused": ProtectionState.SUSPENDED,
    "protectionerror": ProtectionState.ERROR,
    "invalid": ProtectionState.ERROR,
}
# healthStatus (VMs) and protectedItemHealthStatus (SQL, SAP HANA); the others report none.
_HEALTH = {
    "passed": ItemHealth.HEALTHY,
    "healthy": ItemHealth.HEALTHY,
    "actionrequired": ItemHealth.ACTION_REQUIRED,
    "unhealthy": ItemHealth.ACTION_REQUIRED,
    "notreachable": ItemHealth.ACTION_REQUIRED,
    "actionsuggested": ItemHealth.ACTION_SUGGESTED,
}
_SUCCEEDED = frozenset({"completed", "completedwithwarnings"})


def parse_item(body: Any, vault: VaultRef) -> ProtectedItem:
    """A `backupProtectedItems` item; BadResponseError if it is no item at all.

    The newest recovery point is `lastRecoveryPoint`, else `lastBackupTime` when the last backup
    succeeded (that time is the job's start, a little before its snapshot); a never-backed-up item has
    neither (the 2001-01-01 sentinel, or no key at all) and so none. An item scheduled for deletion (soft
    delete) counts as stopped.
    """
    if not isinstance(body, dict):
        raise BadResponseError(f"protected item is not an object but {type(body).__name__}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadResponseError("protected item has no 'properties' object")
    name = job_ident(body)
    if not name:
        raise BadResponseError("protected item has neither 'name' nor 'id'")
    raw_state = as_text(props.get("protectionState")).strip()
    state = _PROTECTION.get(raw_state.lower(), ProtectionState.UNKNOWN)
    if props.get("isScheduledForDeferredDelete") is True:
        state = ProtectionState.STOPPED
    raw_health = as_text(props.get("healthStatus")) or as_text(props.get("protectedItemHealthStatus"))
    last_status = as_text(props.get("lastBackupStatus")).strip()
    point = parse_time(props.get("lastRecoveryPoint"))
    if point is None and last_status.lower() in _SUCCEEDED:
        point = parse_time(props.get("lastBackupTime"))
    error = props.get("lastBackupErrorDetail")
    policy = as_text(props.get("policyName")) or as_text(props.get("policyId")).rstrip("/").rsplit("/", 1)[-1]
    return ProtectedItem(
        vault=vault,
        name=label(name),
        entity=label(props.get("friendlyName")) or label(name),
        item_type=label(props.get("protectedItemType")) or label(props.get("workloadType")),
        policy=label(policy),
        source_resource_id=label(props.get("sourceResourceId")),
        protection_state=state,
        azure_state=label(raw_state),
        health=_HEALTH.get(raw_health.strip().lower()),
        azure_health=label(raw_health),
        last_recovery_point=point.timestamp() if point is not None else None,
        last_backup_status=label(last_status),
        container=label(props.get("containerName")),
        error=free_text(error.get("message"))
        if isinstance(error, dict) and error.get("code") != "Success"
        else "",
    )


def parse_job_page(body: Any) -> JobPage:
    """A list page: its jobs, the items that are not jobs set aside, and the nextLink if any.

    BadResponseError only when the page itself is not an object with a `value` array.
    """
    jobs, rejected = parse_page(body, parse_job)
    return JobPage(jobs=jobs, rejected=rejected, next_link=next_link(body))


class RecoveryServices:
    """The provider of Recovery Services vaults, for one api-version."""

    kind = KIND

    def __init__(self, api_version: str) -> None:
        self.api_version = api_version

    # -- URLs -------------------------------------------------------------------------------

    def vault_url(self, client: ArmClient, vault: VaultRef) -> str:
        return (
            f"{client.endpoint}/subscriptions/{segment(vault.subscription_id)}"
            f"/resourceGroups/{segment(vault.resource_group)}"
            f"/providers/Microsoft.RecoveryServices/vaults/{segment(vault.name)}"
        )

    def job_url(self, client: ArmClient, vault: VaultRef, job_id: str) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupJobs/{segment(job_id)}?{query}"

    def list_url(self, client: ArmClient, vault: VaultRef, flt: JobFilter | None) -> str:
        params = {"api-version": self.api_version}
        rendered = flt.render() if flt else None
        if rendered:
            params["$filter"] = rendered
        return f"{self.vault_url(client, vault)}/backupJobs?{urlencode(params, quote_via=quote)}"

    def backup_operation_url(self, client: ArmClient, vault: VaultRef, operation_id: str) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupOperations/{segment(operation_id)}?{query}"

    def items_url(self, client: ArmClient, vault: VaultRef) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupProtectedItems?{query}"

    def vaults_url(self, client: ArmClient, subscription_id: str) -> str:
        query = urlencode({"api-version": VAULTS_API_VERSION})
        return (
            f"{client.endpoint}/subscriptions/{segment(subscription_id)}"
            f"/providers/Microsoft.RecoveryServices/vaults?{query}"
        )

    # -- jobs -------------------------------------------------------------------------------

    async def get_job(self, client: ArmClient, vault: VaultRef, job_id: str) -> Job:
        """GET one job (with its extendedInfo)."""
        response = await client.request("get_job", self.job_url(client, vault, job_id))
        return _in_vault(parse_job(response.body), vault)

    async def list_jobs(
        self, client: ArmClient, vault: VaultRef, flt: JobFilter | None = None
    ) -> AsyncIterator[JobPage]:
        """Pages of a vault's job listing; an item that is not a job is set aside in its page."""
        async for body in client.pages("list_jobs", self.list_url(client, vault, flt)):
            page = parse_job_page(body)
            yield replace(page, jobs=[_in_vault(job, vault) for job in page.jobs])

    def jobs_since(
        self, client: ArmClient, vault: VaultRef, since: float, until: float
    ) -> AsyncIterator[JobPage]:
        """The jobs that started between `since` and `until`, by the listing's time filter."""
        return self.list_jobs(client, vault, JobFilter(start_time=_dt(since), end_time=_dt(until)))

    async def still_running(
        self, client: ArmClient, vault: VaultRef, jobs: Sequence[RunningJob], margin: float, now: float
    ) -> tuple[dict[str, Job], list[RejectedItem]] | None:
        """One listing filtered to InProgress over the jobs' start times (with `margin` either side).

        Returns the listed jobs by lower-case id and the items set aside, or None when a listing would
        not save requests (fewer than two jobs): then each job gets a GET.
        """
        if len(jobs) < 2:
            return None
        flt = JobFilter(
            start_time=_dt(min(j.start_time for j in jobs) - margin),
            end_time=_dt(now + margin),
            status="InProgress",
        )
        listed: dict[str, Job] = {}
        rejected: list[RejectedItem] = []
        async for page in self.list_jobs(client, vault, flt):
            rejected.extend(page.rejected)
            for job in page.jobs:
                listed[job.job_id.lower()] = job
        return listed, rejected

    # -- inventory --------------------------------------------------------------------------

    async def items(
        self, client: ArmClient, vault: VaultRef, known: Mapping[str, float | None]
    ) -> AsyncIterator[tuple[list[ProtectedItem], list[RejectedItem]]]:
        """Pages of the vault's protected items, every type (no `$filter`): the listing carries each one's
        newest recovery point, so `known` (what the watcher already knows) saves nothing here."""
        async for body in client.pages("list_items", self.items_url(client, vault)):
            yield parse_page(body, lambda item: parse_item(item, vault), "protected item")

    # -- vaults -----------------------------------------------------------------------------

    async def vaults(
        self, client: ArmClient, subscription_id: str
    ) -> AsyncIterator[tuple[list[VaultInfo], list[RejectedItem]]]:
        """Pages of the subscription's Recovery Services vaults, and the items each set aside."""
        async for body in client.pages("list_vaults", self.vaults_url(client, subscription_id)):
            yield parse_page(body, lambda item: parse_vault(item, KIND), "vault")


def _in_vault(job: Job, vault: VaultRef) -> Job:
    """The job with the vault it was asked of, where its body named none we could read."""
    return job if job.vault is not None else replace(job, vault=vault)
