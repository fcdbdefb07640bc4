"""An HTTP(S) server that answers like Azure Resource Manager in front of Azure Backup.

Routes (ARM paths are case-insensitive; `{vault}` is
`/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{v}`):

    GET  {vault}/backupJobs[?$filter=...&$skiptoken=...]       paged list, newest first
    GET  {vault}/backupJobs/{job}                              one job with extendedInfo
    POST {vault}/backupJobs/{job}/cancel                       202, the job goes Cancelling
    POST {vault}/backupFabrics/{f}/protectionContainers/{c}/protectedItems/{i}/backup   202
    GET  .../operationsStatus/{op}, {vault}/backupOperations/{op}                      status
    GET  .../operationResults/{op}, {vault}/backupOperationResults/{op}                202 / 204

Checks run in ARM's order: a missing api-version (400), the bearer token (401), an unsupported api-
version (400), the subscription's throttling budget (429), then the resource (404). Every answer
carries `x-ms-request-id` and `x-ms-ratelimit-remaining-subscription-resource-requests`.

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
import json
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

from watcher.sim.bodies import arm_error, job_body, operation_body
from watcher.sim.estate import Estate, SimJob, sort_key
from watcher.sim.filters import FilterError, parse_filter

SIM_TOKEN = "sim-token"  # noqa: S105 - the simulator's fixed bearer token, not a secret

# Stable api-versions of the Backup resource provider, newest first, plus the preview its
# Azure-AsyncOperation URLs name.
SUPPORTED_API_VERSIONS = (
    "2026-10-01",
    "2026-02-01",
    "2026-01-01",
    "2025-08-01",
    "2025-02-01",
    "2025-01-01",
    "2024-10-01",
    "2024-04-01",
    "2024-02-01",
    "2024-01-01",
    "2023-08-01",
    "2023-06-01",
    "2023-04-01",
    "2023-02-01",
    "2023-01-01",
    "2022-10-01",
    "2022-04-01",
    "2022-03-01",
    "2022-02-01",
    "2022-01-01",
    "2021-12-01",
    "2021-10-01",
    "2021-08-01",
    "2021-07-01",
    "2021-06-01",
    "2021-04-01",
    "2021-03-01",
    "2021-02-01",
    "2021-01-01",
    "2020-12-01",
    "2020-10-01",
    "2020-02-02",
    "2019-06-15",
    "2019-05-13-preview",
    "2019-05-13",
    "2017-07-01",
    "2016-12-01",
    "2016-08-10",
    "2016-06-01",
)
_SUPPORTED = frozenset(SUPPORTED_API_VERSIONS)
# Older api-versions that real follow-up URLs name, unlike the request that led to them.
_TRIGGER_STATUS_API_VERSION = "2019-05-13"
_CANCEL_STATUS_API_VERSION = "2019-05-13-preview"
_NEXT_LINK_API_VERSION = "2017-07-01"

_JSON = "application/json; charset=utf-8"
_REMAINING = "x-ms-ratelimit-remaining-subscription-resource-requests"
_VAULT_WORDS = [
    "subscriptions",
    "resourcegroups",
    "providers",
    "microsoft.recoveryservices",
    "vaults",
]
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


class _ArmError(Exception):
    """An answer in ARM's error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


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
        try:
            try:
                api_version = self._check_request(request, query)
                self._throttle(request, subscription, headers)
            finally:
                headers.setdefault(_REMAINING, str(self._remaining(subscription)))
            return self._route(request, segments, query, api_version, headers)
        except _ArmError as e:
            headers.update(e.headers)
            return _json(e.status, arm_error(e.code, e.message), headers)

    def _check_request(self, request: web.Request, query: dict[str, str]) -> str:
        api_version = query.get("api-version")
        if not api_version:
            raise _ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        self._check_token(request)
        if api_version not in _SUPPORTED:
            raise _ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{api_version}' is invalid. The supported versions are "
                f"'{','.join(SUPPORTED_API_VERSIONS)}'. Please see https://aka.ms/api-version for "
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
            raise _ArmError(
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
            return web.Response(status=fault.status, body=raw, headers={**headers, "Content-Type": _JSON})
        return _json(fault.status, body, headers)

    # -- resources --------------------------------------------------------------------------

    def _route(
        self,
        request: web.Request,
        segments: list[str],
        query: dict[str, str],
        api_version: str,
        headers: dict[str, str],
    ) -> web.Response:
        if len(segments) < 9 or [segments[i].lower() for i in (1, 3, 5, 6, 7)] != _VAULT_WORDS:
            raise _ArmError(404, "NotFound", f"The requested path '{request.path}' was not found.")
        vault = _VaultRef.from_request(request, segments)
        if not self.estate.has_vault(vault.subscription_id, vault.resource_group, vault.name):
            raise _ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.RecoveryServices/vaults/{vault.name}' under resource "
                f"group '{vault.resource_group}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        rest = segments[9:]
        words = [s.lower() for s in rest]
        match _route_name(request.method, words):
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
        kind = "/".join(["vaults", *words[:1]])
        raise _ArmError(
            404,
            "InvalidResourceType",
            f"The resource type '{kind}' could not be found in the namespace "
            f"'Microsoft.RecoveryServices' for api version '{api_version}'.",
        )

    def _list_jobs(self, vault: _VaultRef, query: dict[str, str], headers: dict[str, str]) -> web.Response:
        filter_text = query.get("$filter")
        try:
            job_query = parse_filter(filter_text)
        except FilterError as e:
            raise _ArmError(400, "BMSUserErrorInvalidFilter", f"The $filter is invalid: {e}.") from e
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
        return _json(200, body, headers)

    def _get_job(self, vault: _VaultRef, job_id: str, headers: dict[str, str]) -> web.Response:
        job = self._find_job(vault, job_id)
        return _json(200, self._job(job, self.estate.clock(), vault, extended=True), headers)

    def _cancel_job(
        self, vault: _VaultRef, job_id: str, api_version: str, headers: dict[str, str]
    ) -> web.Response:
        job = self._find_job(vault, job_id)
        try:
            op = self.estate.cancel(job)
        except ValueError as e:
            raise _ArmError(
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
            raise _ArmError(
                404,
                "BMSUserErrorOperationNotFound",
                f"Operation '{operation_id}' was not found in the vault.",
            )
        return _json(200, operation_body(op, self.estate.clock()), headers)

    def _operation_result(
        self, request: web.Request, vault: _VaultRef, operation_id: str, headers: dict[str, str]
    ) -> web.Response:
        op = self.estate.operation(vault.subscription_id, vault.resource_group, vault.name, operation_id)
        if op is None:
            raise _ArmError(
                404,
                "BMSUserErrorOperationNotFound",
                f"Operation '{operation_id}' was not found in the vault.",
            )
        status = op.status(self.estate.clock())
        if status == "Failed":
            raise _ArmError(400, op.error_code, op.error_message)
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
        job = self.estate.get(vault.subscription_id, vault.resource_group, vault.name, job_id)
        if job is None:
            raise _ArmError(
                404,
                "BMSUserErrorJobNotFound",
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

    @classmethod
    def from_request(cls, request: web.Request, segments: list[str]) -> _VaultRef:
        raw = request.rel_url.raw_path.split("/")
        prefix = "/".join(raw[:9]) if len(raw) == len(request.path.split("/")) else "/".join(segments[:9])
        word = "Subscriptions" if segments[1] == "Subscriptions" else "subscriptions"
        return cls(
            segments[2],
            segments[4],
            segments[8],
            word,
            f"{request.scheme}://{request.host}{prefix}",
        )


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
_ITEM = ("backupfabrics", None, "protectioncontainers", None, "protecteditems", None)
_ROUTES: tuple[tuple[str, tuple[str | None, ...], str], ...] = (
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


def _route_name(method: str, words: list[str]) -> str | None:
    for route_method, pattern, name in _ROUTES:
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


def _json(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={**headers, "Content-Type": _JSON}
    )


def _challenge(description: str) -> str:
    return (
        'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
        f'error_description="{description}"'
    )


def _unauthorized(code: str, message: str, description: str) -> _ArmError:
    return _ArmError(401, code, message, {"WWW-Authenticate": _challenge(description)})


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
        raise _ArmError(400, "BMSUserErrorInvalidSkipToken", "The $skiptoken is invalid.") from e
    return (_MAX_TICKS - int(row.group(1)), row.group(2))
