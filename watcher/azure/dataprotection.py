"""Backup vaults (`Microsoft.DataProtection/backupVaults`): URLs, job bodies, listings.

Everything the watcher knows of this provider's wire format is here. A Backup vault's `backupJobs`
listing takes no `$filter`; recorded live traffic shows it oldest first, covering the jobs started in
the last 14 days, with `nextLink: null` on the last page, and its items have `extendedInfo: null` and
TimeSpan durations while a GET of the same job has ISO 8601 ones. So discovery reads the whole listing
and keeps the jobs started in its window; the unfinished jobs of a vault are refreshed by one listing
only where that costs fewer requests than a GET each (the vault's last listing says how many pages it
takes). Statuses come spelt the live way (`InProgress`, `Completed`, `Failed`) or the specs' way
(`Started`, `Succeeded`; `Success`, `SuccessWithWarning` in older text). `job_type` is the job's
`dataSourceType` (`Microsoft.Compute/disks`); `operation` its `operationCategory` (`Backup`, `Restore`);
`entity` the backup instance's friendly name; `item` the backup instance's name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from watcher.azure.client import ArmClient
from watcher.azure.models import (
    ACTIVE_STATUSES,
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
    first,
    free_text,
    job_ident,
    json_list,
    label,
    next_link,
    normalise_status,
    number,
    objects,
    parse_duration,
    parse_page,
    parse_time,
    parse_vault,
    utf8,
)
from watcher.errors import BadResponseError

KIND = VaultKind.BACKUP_VAULT
_SPELLINGS = {
    "started": "InProgress",
    "succeeded": "Completed",
    "success": "Completed",
    "successwithwarning": "CompletedWithWarnings",
    "canceled": "Cancelled",
}


def segment(value: str) -> str:
    """One URL path segment, every reserved character quoted."""
    return quote(value, safe="")


def parse_job(body: Any) -> Job:
    """A Backup vault `backupJobs` GET body or list item as a Job; BadResponseError if it is no job."""
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

    category = as_text(props.get("operationCategory")).strip()
    raw_operation = as_text(props.get("operation")).strip()
    operation = category or raw_operation or "Unknown"
    detail = raw_operation if raw_operation and raw_operation.lower() != operation.lower() else ""

    extended = props.get("extendedInfo")
    tasks: tuple[JobTask, ...] = ()
    size: int | None = None
    if isinstance(extended, dict):
        tasks = tuple(
            JobTask(
                task_id=free_text(task.get("taskName")) or free_text(task.get("taskId")),
                status=free_text(task.get("taskStatus")),
            )
            for task in objects(extended.get("subTasks"))
        )
        transferred = number(extended.get("dataTransferredInBytes"))
        size = int(transferred) if transferred is not None and 0 <= transferred < 2**63 else None

    errors = tuple(
        JobError(
            code=free_text(err.get("code")),
            title="",
            message=free_text(err.get("message")),
            recommendations=first(
                (free_text(r) for r in _texts(err.get("recommendedAction")) if r),
                MAX_RECOMMENDATIONS,
            ),
        )
        for err in objects(props.get("errorDetails"))
    )
    instance = as_text(props.get("backupInstanceId")).rstrip("/").rsplit("/", 1)[-1]
    return Job(
        job_id=label(job_id),
        vault=vault,
        job_type=label(props.get("dataSourceType")) or "Unknown",
        operation=label(operation),
        operation_detail=label(detail),
        status=_status(props.get("status")),
        entity=label(props.get("backupInstanceFriendlyName")) or label(props.get("dataSourceName")),
        backup_management_type="",
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration_seconds=parse_duration(props.get("duration")),
        tasks=tasks,
        errors=errors,
        backup_size_bytes=size,
        has_extended_info=isinstance(extended, dict),
        item=label(instance),
    )


def _status(raw: Any) -> str:
    return normalise_status(raw, _SPELLINGS, provider=KIND.value)


def _texts(value: Any) -> list[str]:
    """`recommendedAction` is a list of texts in the specs and a plain text in some bodies."""
    if isinstance(value, str):
        return [value]
    return [as_text(v) for v in json_list(value)]


# currentProtectionState (or, where it is missing, protectionStatus.status), compared in lower case.
_PROTECTION = {
    "protectionconfigured": ProtectionState.PROTECTED,
    "configuringprotection": ProtectionState.PENDING,
    "updatingprotection": ProtectionState.PENDING,
    "protectionstopped": ProtectionState.STOPPED,
    "notprotected": ProtectionState.STOPPED,
    "softdeleted": ProtectionState.STOPPED,
    "softdeleting": ProtectionState.STOPPED,
    "backupschedulessuspended": ProtectionState.SUSPENDED,
    "retentionschedulessuspended": ProtectionState.SUSPENDED,
    "protectionerror": ProtectionState.ERROR,
    "configuringprotectionfailed": ProtectionState.ERROR,
    "invalid": ProtectionState.ERROR,
}
_HEALTH = {
    "protectionconfigured": ItemHealth.HEALTHY,
    "protectionerror": ItemHealth.ACTION_REQUIRED,
    "configuringprotectionfailed": ItemHealth.ACTION_REQUIRED,
}
# A never-seen instance's newest recovery point is looked for in widening windows (days back; None: all).
_POINT_WINDOWS = (2.0, 35.0, None)
_DAY = 86400.0


def parse_instance(body: Any, vault: VaultRef) -> ProtectedItem:
    """A `backupInstances` item (its newest recovery point comes from another listing); BadResponseError
    if it is no instance at all."""
    if not isinstance(body, dict):
        raise BadResponseError(f"backup instance is not an object but {type(body).__name__}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadResponseError("backup instance has no 'properties' object")
    name = job_ident(body)
    if not name:
        raise BadResponseError("backup instance has neither 'name' nor 'id'")
    source = props.get("dataSourceInfo")
    source = source if isinstance(source, dict) else {}
    policy = props.get("policyInfo")
    policy_id = as_text(policy.get("policyId")) if isinstance(policy, dict) else ""
    status = props.get("protectionStatus")
    status = status if isinstance(status, dict) else {}
    raw_status = as_text(status.get("status")).strip()
    raw_state = as_text(props.get("currentProtectionState")).strip() or raw_status
    details = status.get("errorDetails")
    return ProtectedItem(
        vault=vault,
        name=label(name),
        entity=label(props.get("friendlyName")) or label(source.get("resourceName")) or label(name),
        item_type=label(source.get("datasourceType")) or label(source.get("resourceType")),
        policy=label(policy_id.rstrip("/").rsplit("/", 1)[-1]),
        source_resource_id=label(source.get("resourceID")),
        protection_state=_PROTECTION.get(raw_state.lower(), ProtectionState.UNKNOWN),
        azure_state=label(raw_state),
        health=_HEALTH.get(raw_status.lower()),
        azure_health=label(raw_status),
        last_recovery_point=None,
        error=free_text(details.get("message")) if isinstance(details, dict) else "",
    )


def newest_point(body: Any) -> float | None:
    """The newest `recoveryPointTime` of a recoveryPoints page (`0001-01-01...` is none)."""
    points, _rejected = parse_page(body, _point_time, "recovery point")
    found = [p for p in points if p is not None]
    return max(found) if found else None


def _point_time(body: Any) -> float | None:
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise BadResponseError("recovery point has no 'properties' object")
    moment = parse_time(body["properties"].get("recoveryPointTime"))
    return moment.timestamp() if moment is not None else None


def _point_filter(start: float, end: float) -> str:
    """The window of a recoveryPoints `$filter`, written as Microsoft's own clients write it."""

    def text(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")

    return f"startDate eq '{text(start)}' and endDate eq '{text(end)}'"


def parse_job_page(body: Any) -> JobPage:
    """A list page: its jobs, the items that are not jobs set aside, and the nextLink if any."""
    jobs, rejected = parse_page(body, parse_job)
    return JobPage(jobs=jobs, rejected=rejected, next_link=next_link(body))


class DataProtection:
    """The provider of Backup vaults, for one api-version."""

    kind = KIND

    def __init__(self, api_version: str) -> None:
        self.api_version = api_version
        # Pages the vault's last whole listing took: what refreshing its running jobs by listing costs.
        self._pages: dict[str, int] = {}

    # -- URLs -------------------------------------------------------------------------------

    def vault_url(self, client: ArmClient, vault: VaultRef) -> str:
        return (
            f"{client.endpoint}/subscriptions/{segment(vault.subscription_id)}"
            f"/resourceGroups/{segment(vault.resource_group)}"
            f"/providers/Microsoft.DataProtection/backupVaults/{segment(vault.name)}"
        )

    def job_url(self, client: ArmClient, vault: VaultRef, job_id: str) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupJobs/{segment(job_id)}?{query}"

    def list_url(self, client: ArmClient, vault: VaultRef) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupJobs?{query}"

    def instances_url(self, client: ArmClient, vault: VaultRef) -> str:
        query = urlencode({"api-version": self.api_version})
        return f"{self.vault_url(client, vault)}/backupInstances?{query}"

    def points_url(
        self, client: ArmClient, vault: VaultRef, instance: str, window: tuple[float, float] | None
    ) -> str:
        params = {"api-version": self.api_version}
        if window is not None:
            params["$filter"] = _point_filter(*window)
        base = f"{self.vault_url(client, vault)}/backupInstances/{segment(instance)}/recoveryPoints"
        return f"{base}?{urlencode(params, quote_via=quote)}"

    def vaults_url(self, client: ArmClient, subscription_id: str) -> str:
        query = urlencode({"api-version": self.api_version})
        return (
            f"{client.endpoint}/subscriptions/{segment(subscription_id)}"
            f"/providers/Microsoft.DataProtection/backupVaults?{query}"
        )

    # -- jobs -------------------------------------------------------------------------------

    async def get_job(self, client: ArmClient, vault: VaultRef, job_id: str) -> Job:
        """GET one job (with its extendedInfo)."""
        response = await client.request("get_job", self.job_url(client, vault, job_id))
        return _in_vault(parse_job(response.body), vault)

    async def list_jobs(self, client: ArmClient, vault: VaultRef) -> AsyncIterator[JobPage]:
        """Every page of the vault's job listing (the service's last 14 days), counting them."""
        pages = 0
        async for body in client.pages("list_jobs", self.list_url(client, vault)):
            pages += 1
            page = parse_job_page(body)
            yield replace(page, jobs=[_in_vault(job, vault) for job in page.jobs])
        self._pages[vault.key] = pages

    async def jobs_since(
        self, client: ArmClient, vault: VaultRef, since: float, until: float
    ) -> AsyncIterator[JobPage]:
        """The jobs that started between `since` and `until`: the whole listing, filtered here."""
        async for page in self.list_jobs(client, vault):
            kept = [
                job
                for job in page.jobs
                if job.start_time is not None and since <= job.start_time.timestamp() <= until
            ]
            yield replace(page, jobs=kept)

    async def still_running(
        self, client: ArmClient, vault: VaultRef, jobs: Sequence[RunningJob], margin: float, now: float
    ) -> tuple[dict[str, Job], list[RejectedItem]] | None:
        """The vault's listing, where it takes fewer pages than the jobs would take GETs, else None.

        Returns the listed jobs that are still unfinished (an ended one is read by a GET, which has its
        extendedInfo) and the items set aside.
        """
        pages = self._pages.get(vault.key)
        if pages is None or len(jobs) <= pages:
            return None
        wanted = {j.job_id.lower() for j in jobs}
        listed: dict[str, Job] = {}
        rejected: list[RejectedItem] = []
        async for page in self.list_jobs(client, vault):
            rejected.extend(page.rejected)
            for job in page.jobs:
                key = job.job_id.lower()
                if key in wanted and job.status in ACTIVE_STATUSES:
                    listed[key] = job
        return listed, rejected

    # -- inventory --------------------------------------------------------------------------

    async def items(
        self, client: ArmClient, vault: VaultRef, known: Mapping[str, float | None]
    ) -> AsyncIterator[tuple[list[ProtectedItem], list[RejectedItem]]]:
        """Pages of the vault's backup instances, each with its newest recovery point.

        An instance carries no backup time, so each costs one recoveryPoints listing more, over a window
        from the newest point already `known` (by lower-case instance name); for one never seen, over
        widening windows (2 days, 35 days, all) until one holds a point. At most a quarter of the
        concurrency of requests run at once for one vault.
        """
        slots = asyncio.Semaphore(max(2, client.concurrency // 4))

        async def with_point(item: ProtectedItem) -> ProtectedItem:
            async with slots:
                point = await self._newest_point(client, vault, item.name, known.get(item.key))
            return replace(item, last_recovery_point=point)

        async for body in client.pages("list_items", self.instances_url(client, vault)):
            instances, rejected = parse_page(
                body, lambda item: parse_instance(item, vault), "backup instance"
            )
            yield list(await asyncio.gather(*(with_point(i) for i in instances))), rejected

    async def _newest_point(
        self, client: ArmClient, vault: VaultRef, instance: str, known: float | None
    ) -> float | None:
        now = time.time()
        windows: list[tuple[float, float] | None]
        if known is not None:
            windows = [(known - 3600.0, now + 3600.0)]
        else:
            windows = [
                (now - days * _DAY, now + 3600.0) if days is not None else None for days in _POINT_WINDOWS
            ]
        for window in windows:
            newest: float | None = None
            async for body in client.pages("list_points", self.points_url(client, vault, instance, window)):
                point = newest_point(body)
                if point is not None and (newest is None or point > newest):
                    newest = point
            if newest is not None:
                return newest
        return known

    # -- vaults -----------------------------------------------------------------------------

    async def vaults(
        self, client: ArmClient, subscription_id: str
    ) -> AsyncIterator[tuple[list[VaultInfo], list[RejectedItem]]]:
        """Pages of the subscription's Backup vaults, and the items each set aside."""
        async for body in client.pages("list_vaults", self.vaults_url(client, subscription_id)):
            yield parse_page(body, lambda item: parse_vault(item, KIND), "vault")


def _in_vault(job: Job, vault: VaultRef) -> Job:
    """The job with the vault it was asked of, where its body named none we could read."""
    return job if job.vault is not None else replace(job, vault=vault)
