"""An HTTP(S) server that answers like Azure Resource Manager in front of Azure Backup.

Routes (ARM paths are case-insensitive; `{vault}` is
`/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{v}`, `{bv}`
`/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.DataProtection/backupVaults/{v}`, `{loc}`
`/subscriptions/{s}/providers/Microsoft.DataProtection/locations/{region}`):

    GET  /subscriptions/{s}[/resourceGroups/{rg}]/providers/Microsoft.RecoveryServices/vaults
    GET  /subscriptions/{s}[/resourceGroups/{rg}]/providers/Microsoft.DataProtection/backupVaults
                                                               vault listings, paged
    GET  {vault}, {bv}                                         the vault
    GET  {vault}/backupJobs[?$filter=...&$skiptoken=...]       paged list, newest first
    GET  {vault}/backupJobs/{job}                              one job with extendedInfo
    POST {vault}/backupJobs/{job}/cancel                       202, the job goes Cancelling
    POST {vault}/backupFabrics/{f}/protectionContainers/{c}/protectedItems/{i}/backup   202
    GET  .../operationsStatus/{op}, {vault}/backupOperations/{op}                      status
    GET  .../operationResults/{op}, {vault}/backupOperationResults/{op}                202 / 204
    GET  {vault}/backupProtectedItems[?$filter=backupManagementType eq '..' and itemType eq '..']
    GET  {bv}/backupJobs                                       paged, oldest first, 14 days back
    GET  {bv}/backupJobs/{job}                                 one job with extendedInfo
    GET  {bv}/backupInstances, {bv}/backupInstances/{bi}       backup instances
    GET  {bv}/backupInstances/{bi}/recoveryPoints[?$filter=startDate eq '..' and endDate eq '..']
    POST {bv}/backupInstances/{bi}/backup                      202
    GET  {bv}/operationStatus/{op}, {loc}/operationStatus/{op} status
    GET  {loc}/operationResults/{op}                           202, then 200 with the job's id

Checks run in ARM's order: a missing api-version (400), the bearer token (401), an api-version the
resource type does not take (400), the subscription's throttling budget (429), then the
subscription, resource group and resource (404). Every answer carries `x-ms-request-id` and
`x-ms-ratelimit-remaining-subscription-resource-requests`.

A Backup vault's job listing takes no `$filter`; one sent is refused with a 400 (what the service
does with it was never recorded), so a client is proven not to rely on it.

Scripted trouble: `inject()` replaces the next matching answers (any status, body and headers;
status 0 drops the connection; `delay` holds the answer back), `set_rate_limit()` turns on a per-
subscription token bucket, and changing `token` makes the old one invalid. Failing operations and
job outcomes are scripted on the estate (`Estate.script_item`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import math
import re
import ssl
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote_plus, urlencode

from aiohttp import web

from watcher.sim import dataprotection as dpp
from watcher.sim.arm import (
    JSON_CONTENT_TYPE,
    ArmError,
    Target,
    arm_error,
    json_response,
    make_token,
    page,
    read_token,
)
from watcher.sim.bodies import job_body, operation_body
from watcher.sim.estate import (
    BACKUP_VAULT,
    BACKUP_VAULT_LIST_DAYS,
    RECOVERY_SERVICES,
    Estate,
    SimItem,
    SimJob,
    SimOperation,
    SimVault,
    sort_key,
)
from watcher.sim.filters import FilterError, parse_filter, parse_item_filter, parse_point_window
from watcher.sim.formats import ticks
from watcher.sim.inventory import item_type, management_type, protected_item_body, vault_body

SIM_TOKEN = "sim-token"  # noqa: S105 - the simulator's fixed bearer token, not a secret

# Older api-versions that real follow-up URLs name, unlike the request that led to them.
_TRIGGER_STATUS_API_VERSION = "2019-05-13"
_CANCEL_STATUS_API_VERSION = "2019-05-13-preview"
_NEXT_LINK_API_VERSION = "2017-07-01"

_REMAINING = "x-ms-ratelimit-remaining-subscription-resource-requests"
_ACTOR = "5a0b3c9e-7d41-4f2a-8e6b-1c9d2f4a7b30"
# .NET DateTime.MaxValue.Ticks: continuation row keys count down from it, as the service's do.
_MAX_TICKS = 3_155_378_975_999_999_999
_ROW_KEY = re.compile(r"<NextRowKey>1!\d+!([^<]+)</NextRowKey>")
_ROW_TEXT = re.compile(r"^jobsstarttimeindex_0_(\d+)_0_(.+)$")
# Without a limit the remaining-requests header still falls by one a call and resets, as ARM's does.
_DISPLAY_TOP, _DISPLAY_SPAN = 299, 150


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the simulator answered (header names lower-case), its status and arrival time."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    # Wall-clock epoch seconds when the request arrived (real time, not the estate's clock).
    time: float = 0.0


@dataclass(slots=True)
class _Fault:
    status: int
    method: str
    path_contains: str
    body: Any
    headers: dict[str, str]
    times: int
    delay: float


@dataclass(slots=True)
class _TokenBucket:
    capacity: int
    refill: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)

    def _top_up(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.capacity), self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now

    def take(self) -> bool:
        self._top_up()
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def remaining(self) -> int:
        self._top_up()
        return int(self.tokens)

    def wait_seconds(self) -> int:
        """Whole seconds until a token is back (ARM's Retry-After is an integer, rounded up)."""
        if self.refill <= 0:
            return 60
        return max(1, math.ceil((1.0 - self.tokens) / self.refill))


class Simulator:
    """A running simulator: where it listens, the estate it serves and every request it answered.

    `requests` holds every answered request in order; set `max_recorded` to keep only about that
    many of the newest (for a simulator left running for days).
    """

    def __init__(
        self,
        estate: Estate,
        *,
        token: str = SIM_TOKEN,
        page_size: int = 200,
        operation_seconds: float = 2.0,
        retry_after: int = 1,
    ) -> None:
        self.estate = estate
        self.token = token
        self.page_size = page_size
        self.operation_seconds = operation_seconds
        self.retry_after = retry_after
        self.url = ""
        self.ca_file: str | None = None
        self.requests: list[RecordedRequest] = []
        # None keeps every request (tests count them); long-running callers may bound the history.
        self.max_recorded: int | None = None
        self._faults: list[_Fault] = []
        self._limit: tuple[int, float] | None = None
        self._buckets: dict[str, _TokenBucket] = {}
        self._calls: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._closing = asyncio.Event()

    # -- scripting --------------------------------------------------------------------------

    def inject(
        self,
        status: int,
        *,
        method: str = "GET",
        path_contains: str = "",
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Answer the next `times` matching requests with `status` instead of serving them.

        A request matches when its method is `method` and its path contains `path_contains` (any
        case). `body` may be JSON-able data, or text/bytes sent as they are (to script malformed
        JSON); for a status of 400 or more it defaults to ARM's error for that status. A 429 gets a
        `Retry-After` of `retry_after` unless `headers` says otherwise, a 401 a `WWW-Authenticate`.
        Status 0 closes the connection without an answer. `delay` seconds pass before answering.
        """
        self._faults.append(
            _Fault(
                status,
                method.upper(),
                path_contains.lower(),
                body,
                dict(headers or {}),
                times,
                delay,
            )
        )

    def clear_faults(self) -> None:
        """Forget every injected answer not yet given: requests are served normally again."""
        self._faults.clear()

    def set_rate_limit(self, capacity: int, refill_per_second: float) -> None:
        """Throttle each subscription with a token bucket like ARM's; capacity 0 turns it off."""
        self._limit = (capacity, refill_per_second) if capacity > 0 else None
        self._buckets.clear()

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop serving (answers held back by `delay` are let go first) and remove the TLS files."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self, host: str, port: int, tls: bool) -> None:
        ssl_context = self._tls_context(host) if tls else None
        self._runner = web.AppRunner(create_app(self), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{bound}"

    def _tls_context(self, host: str) -> ssl.SSLContext:
        import trustme  # the optional `sim` extra; only TLS needs it

        ca = trustme.CA()
        names = ["127.0.0.1", "localhost", "::1"]
        cert = ca.issue_cert(*names, *([host] if host not in names else []))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="backup-watcher-sim-")
        path = Path(self._tmpdir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(path))
        self.ca_file = str(path)
        return context

    # -- serving ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request and record it."""
        arrived = time.time()
        status = 500
        try:
            response = await self._answer(request)
            transport = request.transport
            # A dropped connection (an injected status 0) is recorded as 0.
            status = 0 if transport is None or transport.is_closing() else response.status
            return response
        finally:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    {k.lower(): v for k, v in request.headers.items()},
                    status,
                    arrived,
                )
            )
            keep = self.max_recorded
            if keep is not None and len(self.requests) > 2 * keep:
                del self.requests[:-keep]  # trimmed in batches so recording stays O(1) on average

    async def _answer(self, request: web.Request) -> web.Response:
        segments = _segments(request.path)
        subscription = segments[2] if len(segments) > 2 and segments[1].lower() == "subscriptions" else ""
        headers = _base_headers()
        fault = self._take_fault(request)
        if fault is not None:
            if fault.delay > 0:
                # Held until the delay passes or the simulator closes, so no answer outlives it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), fault.delay)
            headers[_REMAINING] = str(self._remaining(subscription))
            return self._fault_response(fault, request, headers)
        query = {k.lower(): v for k, v in request.query.items()}
        target = Target.parse(segments)
        try:
            try:
                api_version = self._check_request(request, query, target.api_versions)
                self._throttle(request, subscription, headers)
            finally:
                headers.setdefault(_REMAINING, str(self._remaining(subscription)))
            return self._route(request, target, segments, query, api_version, headers)
        except ArmError as e:
            headers.update(e.headers)
            return json_response(e.status, arm_error(e.code, e.message), headers)

    def _check_request(self, request: web.Request, query: dict[str, str], supported: tuple[str, ...]) -> str:
        api_version = query.get("api-version")
        if not api_version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        self._check_token(request)
        if api_version not in supported:
            raise ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{api_version}' is invalid. The supported versions are "
                f"'{','.join(supported)}'. Please see https://aka.ms/api-version for "
                "more information.",
            )
        return api_version

    def _check_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            raise _unauthorized(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                "The authentication failed because of missing 'Authorization' header.",
            )
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise _unauthorized(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                "The authentication failed because of invalid 'Authorization' header format.",
            )
        if credential.strip() != self.token:
            raise _unauthorized(
                "InvalidAuthenticationToken",
                "The access token is invalid.",
                "The access token is invalid.",
            )

    def _throttle(self, request: web.Request, subscription: str, headers: dict[str, str]) -> None:
        if self._limit is None:
            self._calls[subscription] = self._calls.get(subscription, 0) + 1
            return
        bucket = self._buckets.get(subscription)
        if bucket is None:
            bucket = self._buckets[subscription] = _TokenBucket(*self._limit)
        if not bucket.take():
            wait = bucket.wait_seconds()
            kind = "read" if request.method in ("GET", "HEAD") else "write"
            raise ArmError(
                429,
                "SubscriptionRequestsThrottled",
                f"Number of '{kind}' requests for subscription '{subscription}' actor '{_ACTOR}' "
                f"exceeded. Please try again after '{wait}' seconds after additional tokens are "
                "available. Refer to https://aka.ms/arm-throttling for additional information.",
                {"Retry-After": str(wait), _REMAINING: "0"},
            )

    def _remaining(self, subscription: str) -> int:
        if self._limit is None:
            calls = self._calls.get(subscription, 0)
            return _DISPLAY_TOP - max(calls - 1, 0) % _DISPLAY_SPAN
        bucket = self._buckets.get(subscription)
        return bucket.remaining() if bucket is not None else self._limit[0]

    def _take_fault(self, request: web.Request) -> _Fault | None:
        path = request.path.lower()
        for fault in self._faults:
            if fault.method == request.method.upper() and fault.path_contains in path:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault, request: web.Request, headers: dict[str, str]) -> web.Response:
        if fault.status == 0:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        body = fault.body
        if fault.status >= 400:
            code, message = _default_error(fault.status, request.path)
            if body is None:
                body = arm_error(code, message)
            if fault.status == 429:
                headers["Retry-After"] = str(self.retry_after)
            if fault.status == 401:
                headers["WWW-Authenticate"] = _challenge(message)
        headers.update(fault.headers)
        if body is None:
            return web.Response(status=fault.status, headers=headers)
        if isinstance(body, str | bytes):
            raw = body.encode() if isinstance(body, str) else body
            return web.Response(
                status=fault.status, body=raw, headers={**headers, "Content-Type": JSON_CONTENT_TYPE}
            )
        return json_response(fault.status, body, headers)

    # -- resources --------------------------------------------------------------------------

    def _route(
        self,
        request: web.Request,
        target: Target,
        segments: list[str],
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        if not target.route:
            raise ArmError(404, "NotFound", f"The requested path '{request.path}' was not found.")
        sub, group = target.subscription_id, target.resource_group
        if not self.estate.has_subscription(sub):
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        if group and not self.estate.has_resource_group(sub, group):
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        if target.route == "vaults":
            return self._list_vaults(request, target, query, api_version, headers)
        if target.route == "location":
            return self._location_operation(request, target, api_version, headers)
        vault = _VaultRef.from_request(request, segments, target.kind)
        info = self.estate.vault(sub, group, target.name, kind=target.kind)
        if info is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{_RESOURCE_TYPES[target.kind]}/{vault.name}' under resource "
                f"group '{vault.resource_group}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        rest = list(target.rest)
        if target.kind == BACKUP_VAULT:
            return self._backup_vault(request, vault, info, rest, query, api_version, headers)
        words = [s.lower() for s in rest]
        match _route_name(request.method, words, _RS_ROUTES):
            case "vault":
                return json_response(200, vault_body(info), headers)
            case "items":
                return self._list_items(request, vault, info, query, api_version, headers)
            case "list":
                return self._list_jobs(vault, query, headers)
            case "job":
                return self._get_job(vault, rest[1], headers)
            case "cancel":
                return self._cancel_job(vault, rest[1], api_version, headers)
            case "backup":
                return self._trigger_backup(vault, rest[1], rest[3], rest[5], api_version, headers)
            case "status":
                return self._operation_status(vault, rest[-1], headers)
            case "result":
                return self._operation_result(request, vault, rest[-1], headers)
        raise _invalid_type(RECOVERY_SERVICES, words, api_version)

    def _backup_vault(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        rest: list[str],
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        words = [s.lower() for s in rest]
        now = self.estate.clock()
        match _route_name(request.method, words, _BV_ROUTES):
            case "vault":
                return json_response(200, vault_body(info, listed=False), headers)
            case "list":
                return self._list_backup_vault_jobs(request, vault, info, query, api_version, headers)
            case "job":
                job = self._find_job(vault, rest[1])
                status = self.estate.status_of(job, now)
                return json_response(200, dpp.job_body(job, status, info, listed=False), headers)
            case "instances":
                return self._list_instances(request, vault, info, query, api_version, headers)
            case "instance":
                return json_response(200, dpp.instance_body(self._find_item(vault, rest[1]), info), headers)
            case "points":
                return self._list_points(request, vault, info, rest[1], query, api_version, headers)
            case "backup":
                return self._trigger_instance_backup(request, vault, info, rest[1], api_version, headers)
            case "status":
                op = self.estate.operation(
                    vault.subscription_id, vault.resource_group, vault.name, rest[1], kind=BACKUP_VAULT
                )
                if op is None:
                    raise _operation_not_found(rest[1])
                op_path = f"{dpp.vault_path(info)}/operationStatus/{op.operation_id}"
                body = dpp.operation_body(op, now, op_path, _job_path(info, op))
                return json_response(200, body, headers)
        raise _invalid_type(BACKUP_VAULT, words, api_version)

    # -- listings of the estate ---------------------------------------------------------------

    def _list_vaults(
        self,
        request: web.Request,
        target: Target,
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        vaults = self.estate.all_vaults(
            target.subscription_id, resource_group=target.resource_group or None, kind=target.kind
        )
        rows, token = page(
            sorted(vaults, key=_vault_position), _vault_position, query.get("$skiptoken"), self.page_size
        )
        body: dict[str, Any] = {"value": [vault_body(v) for v in rows]}
        if token is not None:
            body["nextLink"] = _next_link(request, api_version, token)
        return json_response(200, body, headers)

    def _list_items(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        filter_text = query.get("$filter")
        try:
            wanted = parse_item_filter(filter_text)
        except FilterError as e:
            raise ArmError(400, "BMSUserErrorInvalidFilter", f"The $filter is invalid: {e}.") from e
        now = self.estate.clock()
        items = [
            item
            for item in self.estate.items_in(vault.subscription_id, vault.resource_group, vault.name, now=now)
            if wanted.backup_management_type in (None, management_type(item).lower())
            and wanted.item_type in (None, item_type(item).lower())
        ]
        rows, token = page(
            sorted(items, key=_item_position), _item_position, query.get("$skiptoken"), self.page_size
        )
        body: dict[str, Any] = {"value": [protected_item_body(item, info, now) for item in rows]}
        if token is not None:
            extra = [("$filter", filter_text)] if filter_text else []
            body["nextLink"] = _next_link(request, api_version, token, extra)
        return json_response(200, body, headers)

    # -- Backup vaults ------------------------------------------------------------------------

    def _list_backup_vault_jobs(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        if "$filter" in query:
            raise ArmError(
                400,
                "BadRequest",
                "The query parameter '$filter' is not supported when listing the backupJobs of a "
                "Backup vault.",
            )
        token = query.get("$skiptoken")
        now = self.estate.clock()
        jobs, more = self.estate.oldest_first(
            vault.subscription_id,
            vault.resource_group,
            vault.name,
            since=now - BACKUP_VAULT_LIST_DAYS * 86400.0,
            after=_read_job_token(token) if token else None,
            limit=self.page_size,
            now=now,
        )
        value = [dpp.job_body(job, self.estate.status_of(job, now), info, listed=True) for job in jobs]
        # The service writes `"nextLink": null` on the last page.
        next_link = _next_link(request, api_version, _job_token(jobs[-1])) if more else None
        return json_response(200, {"value": value, "nextLink": next_link}, headers)

    def _list_instances(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        items = self.estate.items_in(
            vault.subscription_id, vault.resource_group, vault.name, kind=BACKUP_VAULT
        )
        rows, token = page(
            sorted(items, key=_item_position), _item_position, query.get("$skiptoken"), self.page_size
        )
        body: dict[str, Any] = {"value": [dpp.instance_body(item, info) for item in rows]}
        if token is not None:
            body["nextLink"] = _next_link(request, api_version, token)
        return json_response(200, body, headers)

    def _list_points(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        instance: str,
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        item = self._find_item(vault, instance)
        filter_text = query.get("$filter")
        try:
            start, end = parse_point_window(filter_text)
        except FilterError as e:
            raise ArmError(400, "BadRequest", f"The $filter is invalid: {e}.") from e
        points = item.points(self.estate.clock(), start, end)
        rows, token = page(points, _point_position, query.get("$skiptoken"), self.page_size)
        body: dict[str, Any] = {"value": [dpp.recovery_point_body(item, info, t) for t in rows]}
        if token is not None:
            extra = [("$filter", filter_text)] if filter_text else []
            body["nextLink"] = _next_link(request, api_version, token, extra)
        return json_response(200, body, headers)

    def _trigger_instance_backup(
        self,
        request: web.Request,
        vault: _VaultRef,
        info: SimVault,
        instance: str,
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        self._find_item(vault, instance)
        op = self.estate.trigger_instance_backup(
            vault.subscription_id,
            vault.resource_group,
            vault.name,
            instance,
            operation_seconds=self.operation_seconds,
        )
        region = (
            f"{_origin(request)}/subscriptions/{vault.subscription_id}"
            f"/providers/Microsoft.DataProtection/locations/{info.location}"
        )
        headers["Location"] = f"{region}/operationResults/{op.operation_id}?api-version={api_version}"
        headers["Retry-After"] = str(self.retry_after)
        headers["Azure-AsyncOperation"] = (
            f"{vault.url}/operationStatus/{op.operation_id}?api-version={api_version}"
        )
        headers["x-ms-ratelimit-remaining-subscription-writes"] = "799"
        return web.Response(status=202, headers=headers)

    def _location_operation(
        self, request: web.Request, target: Target, api_version: str, headers: dict[str, str]
    ) -> web.Response:
        location, word, operation_id = target.rest
        op = self.estate.find_operation(target.subscription_id, operation_id)
        info = (
            self.estate.vault(op.subscription_id, op.resource_group, op.vault, kind=BACKUP_VAULT)
            if op is not None and op.vault_kind == BACKUP_VAULT
            else None
        )
        if op is None or info is None or _region(info.location) != _region(location):
            raise _operation_not_found(operation_id)
        now = self.estate.clock()
        region = (
            f"/subscriptions/{target.subscription_id}/providers/Microsoft.DataProtection/locations/{location}"
        )
        if word == "operationstatus":
            op_path = f"{region}/operationStatus/{op.operation_id}"
            return json_response(200, dpp.operation_body(op, now, op_path, _job_path(info, op)), headers)
        headers["Retry-After"] = str(self.retry_after)
        headers["Azure-AsyncOperation"] = (
            f"{_origin(request)}{region}/operationStatus/{op.operation_id}?api-version={api_version}"
        )
        status = op.status(now)
        if status == "Failed":
            raise ArmError(400, op.error_code, op.error_message)
        job = _job_path(info, op)
        if status == "InProgress" or job is None:
            headers["Location"] = f"{_origin(request)}{request.rel_url.raw_path_qs}"
            return web.Response(status=202, headers=headers)
        return json_response(200, dpp.operation_result_body(job), headers)

    def _find_item(self, vault: _VaultRef, name: str) -> SimItem:
        item = self.estate.item(
            vault.subscription_id, vault.resource_group, vault.name, name, kind=vault.kind
        )
        if item is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{_RESOURCE_TYPES[vault.kind]}/{vault.name}/backupInstances/{name}' "
                f"under resource group '{vault.resource_group}' was not found.",
            )
        return item

    # -- Recovery Services vaults -------------------------------------------------------------

    def _list_jobs(self, vault: _VaultRef, query: dict[str, str], headers: dict[str, str]) -> web.Response:
        filter_text = query.get("$filter")
        try:
            job_query = parse_filter(filter_text)
        except FilterError as e:
            raise ArmError(400, "BMSUserErrorInvalidFilter", f"The $filter is invalid: {e}.") from e
        token = query.get("$skiptoken")
        before = _read_skiptoken(token) if token else None
        now = self.estate.clock()
        jobs, more = self.estate.query(
            vault.subscription_id,
            vault.resource_group,
            vault.name,
            job_query,
            before=before,
            limit=self.page_size,
            now=now,
        )
        body: dict[str, Any] = {"value": [self._job(job, now, vault, extended=False) for job in jobs]}
        if more:
            params = [("api-version", _NEXT_LINK_API_VERSION)]
            if filter_text:
                params.append(("$filter", filter_text))
            params.append(("$skiptoken", _skiptoken(vault, jobs[-1])))
            body["nextLink"] = f"{vault.url}/backupJobs?{urlencode(params, quote_via=quote_plus)}"
        return json_response(200, body, headers)

    def _get_job(self, vault: _VaultRef, job_id: str, headers: dict[str, str]) -> web.Response:
        job = self._find_job(vault, job_id)
        return json_response(200, self._job(job, self.estate.clock(), vault, extended=True), headers)

    def _cancel_job(
        self, vault: _VaultRef, job_id: str, api_version: str, headers: dict[str, str]
    ) -> web.Response:
        job = self._find_job(vault, job_id)
        try:
            op = self.estate.cancel(job)
        except ValueError as e:
            raise ArmError(
                400,
                "BMSUserErrorJobNotCancellable",
                f"Job '{job.job_id}' cannot be cancelled because it is not in progress.",
            ) from e
        base = f"{vault.url}/backupJobs/{job.job_id}"
        headers["Azure-AsyncOperation"] = (
            f"{base}/operationsStatus/{op.operation_id}?api-version={_CANCEL_STATUS_API_VERSION}"
        )
        headers["Location"] = f"{base}/operationResults/{op.operation_id}?api-version={api_version}"
        headers["Retry-After"] = str(self.retry_after)
        headers["x-ms-ratelimit-remaining-subscription-writes"] = "1199"
        return web.Response(status=202, headers=headers)

    def _trigger_backup(
        self,
        vault: _VaultRef,
        fabric: str,
        container: str,
        item: str,
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        op = self.estate.trigger_backup(
            vault.subscription_id,
            vault.resource_group,
            vault.name,
            container,
            item,
            operation_seconds=self.operation_seconds,
        )
        base = f"{vault.url}/backupFabrics/{fabric}/protectionContainers/{container}/protectedItems/{item}"
        headers["Azure-AsyncOperation"] = (
            f"{base}/operationsStatus/{op.operation_id}?api-version={_TRIGGER_STATUS_API_VERSION}"
        )
        headers["Location"] = f"{base}/operationResults/{op.operation_id}?api-version={api_version}"
        headers["Retry-After"] = str(self.retry_after)
        headers["x-ms-ratelimit-remaining-subscription-writes"] = "1199"
        return web.Response(status=202, headers=headers)

    def _operation_status(self, vault: _VaultRef, operation_id: str, headers: dict[str, str]) -> web.Response:
        op = self.estate.operation(vault.subscription_id, vault.resource_group, vault.name, operation_id)
        if op is None:
            raise ArmError(
                404,
                "BMSUserErrorOperationNotFound",
                f"Operation '{operation_id}' was not found in the vault.",
            )
        return json_response(200, operation_body(op, self.estate.clock()), headers)

    def _operation_result(
        self, request: web.Request, vault: _VaultRef, operation_id: str, headers: dict[str, str]
    ) -> web.Response:
        op = self.estate.operation(vault.subscription_id, vault.resource_group, vault.name, operation_id)
        if op is None:
            raise ArmError(
                404,
                "BMSUserErrorOperationNotFound",
                f"Operation '{operation_id}' was not found in the vault.",
            )
        status = op.status(self.estate.clock())
        if status == "Failed":
            raise ArmError(400, op.error_code, op.error_message)
        if status == "Succeeded":
            return web.Response(status=204, headers=headers)
        raw = request.rel_url.raw_path.rstrip("/").split("/")
        status_word = (
            "backupOperations" if raw[-2].lower() == "backupoperationresults" else "operationsStatus"
        )
        status_path = "/".join([*raw[:-2], status_word, raw[-1]])
        origin = f"{request.scheme}://{request.host}"
        headers["Location"] = f"{origin}{request.rel_url.raw_path_qs}"
        headers["Azure-AsyncOperation"] = f"{origin}{status_path}?api-version={_TRIGGER_STATUS_API_VERSION}"
        headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=202, headers=headers)

    def _find_job(self, vault: _VaultRef, job_id: str) -> SimJob:
        job = self.estate.get(
            vault.subscription_id, vault.resource_group, vault.name, job_id, kind=vault.kind
        )
        if job is None:
            raise ArmError(
                404,
                "BMSUserErrorJobNotFound" if vault.kind == RECOVERY_SERVICES else "ResourceNotFound",
                f"Job '{job_id}' was not found in vault '{vault.name}'.",
            )
        return job

    def _job(self, job: SimJob, now: float, vault: _VaultRef, *, extended: bool) -> dict[str, Any]:
        status = self.estate.status_of(job, now)
        return job_body(job, status, now, extended=extended, subscriptions=vault.subscriptions_word)


@dataclass(frozen=True, slots=True)
class _VaultRef:
    """The vault a request names, and its URL spelled as the request spelled it."""

    subscription_id: str
    resource_group: str
    name: str
    subscriptions_word: str
    url: str
    kind: str

    @classmethod
    def from_request(cls, request: web.Request, segments: list[str], kind: str) -> _VaultRef:
        raw = request.rel_url.raw_path.split("/")
        prefix = "/".join(raw[:9]) if len(raw) == len(request.path.split("/")) else "/".join(segments[:9])
        word = "Subscriptions" if segments[1] == "Subscriptions" else "subscriptions"
        return cls(segments[2], segments[4], segments[8], word, f"{_origin(request)}{prefix}", kind)


def create_app(sim: Simulator) -> web.Application:
    """The aiohttp application serving `sim` (every path goes through `Simulator.handle`)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sim.handle)
    return app


async def start_simulator(
    estate: Estate,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = False,
    token: str = SIM_TOKEN,
    page_size: int = 200,
    operation_seconds: float = 2.0,
    retry_after: int = 1,
) -> Simulator:
    """Serve `estate` on host:port (0: any free port, see `url`); `tls` serves HTTPS (`ca_file`)."""
    sim = Simulator(
        estate,
        token=token,
        page_size=page_size,
        operation_seconds=operation_seconds,
        retry_after=retry_after,
    )
    try:
        await sim._start(host, port, tls)
    except BaseException:
        await sim.close()
        raise
    return sim


# Routes below a vault: (method, lower-case path segments with None for a name, route).
_Routes = tuple[tuple[str, tuple[str | None, ...], str], ...]
_ITEM = ("backupfabrics", None, "protectioncontainers", None, "protecteditems", None)
_RS_ROUTES: _Routes = (
    ("GET", (), "vault"),
    ("GET", ("backupprotecteditems",), "items"),
    ("GET", ("backupjobs",), "list"),
    ("GET", ("backupjobs", None), "job"),
    ("POST", ("backupjobs", None, "cancel"), "cancel"),
    ("POST", (*_ITEM, "backup"), "backup"),
    ("GET", ("backupoperations", None), "status"),
    ("GET", ("backupjobs", None, "operationsstatus", None), "status"),
    ("GET", (*_ITEM, "operationsstatus", None), "status"),
    ("GET", ("backupoperationresults", None), "result"),
    ("GET", ("backupjobs", None, "operationresults", None), "result"),
    ("GET", (*_ITEM, "operationresults", None), "result"),
)
_BV_ROUTES: _Routes = (
    ("GET", (), "vault"),
    ("GET", ("backupjobs",), "list"),
    ("GET", ("backupjobs", None), "job"),
    ("GET", ("backupinstances",), "instances"),
    ("GET", ("backupinstances", None), "instance"),
    ("GET", ("backupinstances", None, "recoverypoints"), "points"),
    ("POST", ("backupinstances", None, "backup"), "backup"),
    ("GET", ("operationstatus", None), "status"),
)
_RESOURCE_TYPES = {
    RECOVERY_SERVICES: "Microsoft.RecoveryServices/vaults",
    BACKUP_VAULT: "Microsoft.DataProtection/backupVaults",
}


def _route_name(method: str, words: list[str], routes: _Routes) -> str | None:
    for route_method, pattern, name in routes:
        if (
            route_method == method
            and len(pattern) == len(words)
            and all(p is None or p == w for p, w in zip(pattern, words, strict=True))
        ):
            return name
    return None


_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is invalid."),
    401: ("InvalidAuthenticationToken", "The access token is invalid."),
    404: ("ResourceNotFound", "The requested resource was not found."),
    408: ("RequestTimeout", "The request timed out."),
    409: ("Conflict", "The request conflicts with the current state of the resource."),
    429: (
        "SubscriptionRequestsThrottled",
        "Number of requests for the subscription exceeded the limit. Refer to "
        "https://aka.ms/arm-throttling for additional information.",
    ),
    500: (
        "RestApiInternalError",
        "The REST API call encountered an internal error.\r\nWait for a few minutes and then "
        "try the operation again. If the issue persists, please contact Microsoft support.",
    ),
    502: (
        "BadGateway",
        "The gateway received an invalid response from 'Microsoft.RecoveryServices'.",
    ),
    503: (
        "ServiceUnavailable",
        "The resource provider 'Microsoft.RecoveryServices' is temporarily unavailable. "
        "Please try again later.",
    ),
    504: (
        "GatewayTimeout",
        "The gateway did not receive a response from 'Microsoft.RecoveryServices' within the "
        "specified time period.",
    ),
}


def _default_error(status: int, path: str) -> tuple[str, str]:
    if status == 403:
        return (
            "AuthorizationFailed",
            f"The client '{_ACTOR}' with object id '{_ACTOR}' does not have authorization to "
            "perform action 'Microsoft.RecoveryServices/vaults/backupJobs/read' over scope "
            f"'{path}' or the scope is invalid. If access was recently granted, please refresh "
            "your credentials.",
        )
    fallback = (
        ("InternalServerError", "An internal error occurred.")
        if status >= 500
        else (
            "BadRequest",
            "The request is invalid.",
        )
    )
    return _DEFAULT_ERRORS.get(status, fallback)


def _invalid_type(kind: str, words: list[str], api_version: str) -> ArmError:
    namespace, vault_type = _RESOURCE_TYPES[kind].split("/")
    resource_type = "/".join([vault_type, *words[:1]])
    return ArmError(
        404,
        "InvalidResourceType",
        f"The resource type '{resource_type}' could not be found in the namespace '{namespace}' for api "
        f"version '{api_version}'.",
    )


def _operation_not_found(operation_id: str) -> ArmError:
    return ArmError(404, "ResourceNotFound", f"Operation '{operation_id}' was not found.")


def _job_path(vault: SimVault, op: SimOperation) -> str | None:
    return dpp.job_path(vault, op.job_id) if op.job_id is not None else None


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _region(location: str) -> str:
    """A location's canonical form: `West Europe` and `westeurope` are one region."""
    return location.replace(" ", "").lower()


def _next_link(
    request: web.Request, api_version: str, token: str, extra: list[tuple[str, str]] | None = None
) -> str:
    """The URL of the next page of the listing `request` asked for."""
    params = [("api-version", api_version), *(extra or []), ("$skipToken", token)]
    return f"{_origin(request)}{request.rel_url.raw_path}?{urlencode(params, quote_via=quote_plus)}"


def _vault_position(vault: SimVault) -> str:
    return f"{vault.resource_group}/{vault.name}".lower()


def _item_position(item: SimItem) -> str:
    return item.arm_name.lower()


def _point_position(moment: float) -> str:
    # Newest first: positions count down from .NET's largest time.
    return f"{_MAX_TICKS - ticks(moment):020d}"


def _job_token(job: SimJob) -> str:
    """The `$skipToken` of the Backup vault job listing's position after `job`."""
    start_ticks, job_key = sort_key(job)
    return make_token(f"{start_ticks:020d}|{job_key}")


def _read_job_token(token: str) -> tuple[int, str]:
    start_ticks, _, job_key = read_token(token).partition("|")
    if not start_ticks.isdigit() or not job_key:
        raise ArmError(400, "InvalidSkipToken", "The $skipToken is invalid.")
    return (int(start_ticks), job_key)


def _segments(path: str) -> list[str]:
    parts = path.split("/")
    return parts[:-1] if len(parts) > 1 and parts[-1] == "" else parts


def _base_headers() -> dict[str, str]:
    request_id = str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return {
        "Cache-Control": "no-cache",
        "Pragma": "no-cache",
        "x-ms-request-id": request_id,
        "x-ms-correlation-request-id": request_id,
        "x-ms-routing-request-id": f"WESTEUROPE:{stamp}:{request_id}",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
    }


def _challenge(description: str) -> str:
    return (
        'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
        f'error_description="{description}"'
    )


def _unauthorized(code: str, message: str, description: str) -> ArmError:
    return ArmError(401, code, message, {"WWW-Authenticate": _challenge(description)})


def _skiptoken(vault: _VaultRef, last: SimJob) -> str:
    """An opaque continuation token after `last`, in the XML form the service's tokens take."""
    vault_number = str(zlib.crc32(vault.url.lower().encode()))
    partition = base64.b64encode(vault_number.encode()).decode().replace("=", "-")
    start_ticks, job_key = sort_key(last)
    row_text = f"jobsstarttimeindex_0_{_MAX_TICKS - start_ticks}_0_{job_key}"
    row = base64.b64encode(row_text.encode()).decode().replace("=", "-")
    lines = [
        '<?xml version="1.0" encoding="utf-16"?>',
        "<ContinuationToken>",
        "  <ContinuationToken>",
        "    <Version>2.0</Version>",
        "    <Type>Table</Type>",
        f"    <NextPartitionKey>1!{len(partition)}!{partition}</NextPartitionKey>",
        f"    <NextRowKey>1!{len(row)}!{row}</NextRowKey>",
        "    <TargetLocation>Primary</TargetLocation>",
        "  </ContinuationToken>",
        "</ContinuationToken>",
    ]
    return "\r\n".join(lines)


def _read_skiptoken(token: str) -> tuple[int, str]:
    """The (start ticks, job id) key a `_skiptoken` continues after."""
    match = _ROW_KEY.search(token)
    try:
        if match is None:
            raise ValueError("no row key")
        text = base64.b64decode(match.group(1).replace("-", "="), validate=True).decode()
        row = _ROW_TEXT.match(text)
        if row is None:
            raise ValueError("unexpected row key")
    except ValueError as e:
        raise ArmError(400, "BMSUserErrorInvalidSkipToken", "The $skiptoken is invalid.") from e
    return (_MAX_TICKS - int(row.group(1)), row.group(2))
