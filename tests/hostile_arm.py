"""A hostile fake of Azure Resource Manager's Backup jobs API, on 127.0.0.1 only.

One subscription, resource group `rg-hostile`, two Recovery Services vaults. `vault-ok` answers as ARM
does (bodies shaped like tests/data/azure/2025-08-01/Common/GetJobDetails.json and the ListJobs
examples); `vault-bad` answers every request with the fault under test. A second server stands for
another host: whatever reaches it is recorded, so a test can prove that no request (no token) left.

Independent of watcher.sim on purpose: a fault here must not share a bug with the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

SUB = "3f2b6c1e-8d4a-4b7e-9c10-5a6d7e8f9a0b"
RG = "rg-hostile"
VAULT_OK = "vault-ok"
VAULT_BAD = "vault-bad"
TOKEN = "hostile-arm-static-token"

OK_RUNNING = "7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e01"  # InProgress for as long as the fake runs
OK_FINISHING = "7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e02"  # ends FINISHING_AFTER seconds after start()
OK_DONE = "7c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e03"  # Completed half an hour ago
BAD_RUNNING = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c01"  # named in vault-bad's config, so GETs happen too
BAD_DONE = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c02"  # only a listing can reveal it
FINISHING_AFTER = 3.0

_VAULT_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.RecoveryServices/vaults/(?P<vault>[^/]+)/backupJobs(?:/(?P<job>[^/]+))?/?$",
    re.IGNORECASE,
)
_STATUS_FILTER = re.compile(r"status eq '([^']*)'", re.IGNORECASE)


def iso(ts: float) -> str:
    """A timestamp as ARM writes them: UTC with a `Z`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class FakeJob:
    """An Azure IaaS VM backup; `end` None runs on for ever."""

    vault: str
    job_id: str
    entity: str
    start: float
    end: float | None

    def status(self, now: float) -> str:
        return "InProgress" if self.end is None or now < self.end else "Completed"

    def body(self, now: float, *, detailed: bool) -> dict[str, Any]:
        status = self.status(now)
        finished = status != "InProgress"
        assert self.end is not None or not finished
        until = self.end if finished and self.end is not None else now
        props: dict[str, Any] = {
            "jobType": "AzureIaaSVMJob",
            "entityFriendlyName": self.entity,
            "backupManagementType": "AzureIaasVM",
            "operation": "Backup",
            "status": status,
            "startTime": iso(self.start),
            "duration": f"PT{until - self.start:.4f}S",
            "activityId": f"{self.job_id[:8]}-a1b2-4c3d-8e9f-000000000000",
        }
        if finished:
            props["endTime"] = iso(until)
        if detailed:
            # Only a GET carries extendedInfo, as in GetJobDetails.json.
            task = "Completed" if finished else "InProgress"
            props["extendedInfo"] = {
                "tasksList": [
                    {"taskId": "Take Snapshot", "status": "Completed", "duration": "PT1M2S"},
                    {"taskId": "Transfer data to vault", "status": task, "duration": "PT0S"},
                ],
                "propertyBag": {"Backup Size": "2332 MB"} if finished else {},
            }
            props["virtualMachineVersion"] = "Compute"
        return {
            "id": (
                f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.RecoveryServices"
                f"/vaults/{self.vault}/backupJobs/{self.job_id}"
            ),
            "name": self.job_id,
            "type": "Microsoft.RecoveryServices/vaults/backupJobs",
            "properties": props,
        }


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    at: float  # time.monotonic()
    vault: str | None  # lower-case vault name, None for a path that names none
    job_id: str | None  # None for a listing
    path_qs: str
    authorized: bool


Fault = Callable[["Call"], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """A request to vault-bad, handed to the fault."""

    request: web.Request
    arm: FakeArm
    job_id: str | None

    @property
    def listing(self) -> bool:
        return self.job_id is None

    def healthy(self) -> web.Response:
        return self.arm.answer(self.request, VAULT_BAD, self.job_id)

    def page(self) -> dict[str, Any]:
        """The healthy listing of vault-bad, as a body to spoil."""
        return self.arm.listing(self.request, VAULT_BAD)

    def page_url(self, **query: str) -> str:
        """This listing's URL on the fake, with `query` added (a nextLink)."""
        params = {"api-version": self.request.query.get("api-version", ""), **query}
        return f"{self.arm.url}{self.request.path}?{urlencode(params, quote_via=quote)}"


@dataclass
class FakeArm:
    """The fake ARM endpoint and the foreign host; start() binds both to 127.0.0.1, any free port."""

    fault: Fault
    requests: list[Seen] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    jobs: dict[str, list[FakeJob]] = field(default_factory=dict)
    started: float = 0.0
    port: int = 0
    foreign_port: int = 0
    _runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def foreign_url(self) -> str:
        return f"http://127.0.0.1:{self.foreign_port}"

    async def start(self) -> None:
        now = time.time()
        self.started = now
        self.jobs = {
            VAULT_OK: [
                FakeJob(VAULT_OK, OK_RUNNING, "vm-ok-01", now - 600, None),
                FakeJob(VAULT_OK, OK_FINISHING, "vm-ok-02", now - 1200, now + FINISHING_AFTER),
                FakeJob(VAULT_OK, OK_DONE, "vm-ok-03", now - 2400, now - 1800),
            ],
            VAULT_BAD: [
                FakeJob(VAULT_BAD, BAD_RUNNING, "vm-bad-01", now - 900, None),
                FakeJob(VAULT_BAD, BAD_DONE, "vm-bad-01", now - 3000, now - 2000),
            ],
        }
        arm = web.Application()
        arm.router.add_route("*", "/{tail:.*}", self._handle)
        foreign = web.Application()
        foreign.router.add_route("*", "/{tail:.*}", self._foreign)
        self.port = await self._serve(arm)
        self.foreign_port = await self._serve(foreign)

    async def _serve(self, app: web.Application) -> int:
        # A short shutdown: handlers that hang on purpose are released by `closing` first anyway.
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        self.closing.set()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def vault_requests(self, vault: str, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
        return [s for s in self.requests if s.vault == vault and since <= s.at <= until]

    def job(self, vault: str, job_id: str) -> FakeJob | None:
        return next((j for j in self.jobs[vault] if j.job_id.lower() == job_id.lower()), None)

    def statuses(self, vault: str) -> dict[str, str]:
        now = time.time()
        return {j.job_id: j.status(now) for j in self.jobs[vault]}

    async def _foreign(self, request: web.Request) -> web.StreamResponse:
        auth = "with Authorization" if "Authorization" in request.headers else "without Authorization"
        self.foreign_requests.append(f"{request.method} {request.path_qs} ({auth})")
        return web.json_response({"value": []})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        m = _VAULT_PATH.match(request.path)
        authorized = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        vault = m["vault"].lower() if m else None
        job_id = m["job"] if m else None
        self.requests.append(Seen(time.monotonic(), vault, job_id, request.path_qs, authorized))
        if not authorized:
            return arm_error(401, "AuthenticationFailed", "Authentication failed.")
        if m is None or request.method != "GET" or m["sub"].lower() != SUB or m["rg"].lower() != RG:
            return arm_error(404, "ResourceNotFound", "The resource was not found.")
        if vault == VAULT_BAD:
            return await self.fault(Call(request, self, job_id))
        if vault == VAULT_OK:
            return self.answer(request, VAULT_OK, job_id)
        return arm_error(404, "ResourceNotFound", f"The Resource vaults/{m['vault']} was not found.")

    def answer(self, request: web.Request, vault: str, job_id: str | None) -> web.Response:
        """What ARM documents: one job, or one page of the vault's jobs (the time filter is ignored)."""
        now = time.time()
        if job_id is not None:
            job = self.job(vault, job_id)
            if job is None:
                return arm_error(404, "JobNotFound", "The job was not found.")
            return web.json_response(job.body(now, detailed=True))
        return web.json_response(self.listing(request, vault))

    def listing(self, request: web.Request, vault: str) -> dict[str, Any]:
        """One page of the vault's jobs, honouring a status clause of `$filter` (not its times)."""
        now = time.time()
        wanted = _STATUS_FILTER.search(request.query.get("$filter", ""))
        jobs = [j for j in self.jobs[vault] if wanted is None or j.status(now) == wanted[1]]
        return {"value": [j.body(now, detailed=False) for j in jobs]}


# -- answers ----------------------------------------------------------------------------------------


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error as ARM shapes it: {"error": {"code", "message"}}."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


GARBAGE = b"\xff\xfe<html><body><h1>502 upstream\x00 went away</h1></body></html>\r\n\xc3("

ERROR_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "AuthorizationFailed",
    404: "ResourceNotFound",
    409: "Conflict",
    410: "Gone",
    418: "ImATeapot",
    429: "TooManyRequests",
    451: "UnavailableForLegalReasons",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
    599: "NetworkConnectTimeoutError",
}


def status_fault(status: int, retry_after: str | None = None) -> Fault:
    """`status` on every request, the body ARM-shaped and garbage in turn (so both are seen)."""
    turn = itertools.count()

    async def fault(call: Call) -> web.StreamResponse:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if status == 401:
            headers["WWW-Authenticate"] = (
                'Bearer authorization_uri="https://login.example", error="invalid_token"'
            )
        if next(turn) % 2 == 0:
            return arm_error(status, ERROR_CODES.get(status, "Unknown"), f"hostile {status}", headers)
        return web.Response(status=status, body=GARBAGE, content_type="text/html", headers=headers)

    return fault


def body_fault(body: bytes | Callable[[], bytes], *, headers: dict[str, str] | None = None) -> Fault:
    """A 200 with `body` (or what `body()` returns) on every request."""

    async def fault(call: Call) -> web.StreamResponse:
        raw = body() if callable(body) else body
        return web.Response(body=raw, content_type="application/json", headers=headers)

    return fault


def deep_nesting() -> Fault:
    return body_fault(b"[" * 100_000 + b"]" * 100_000)


def json_scalar(raw: bytes) -> Fault:
    """A JSON text that is not an object at all: a string, `null`, a number."""
    return body_fault(raw)


def json_list() -> Fault:
    """A JSON array of real-looking jobs where an object belongs."""

    async def fault(call: Call) -> web.StreamResponse:
        now = time.time()
        return web.json_response([j.body(now, detailed=False) for j in call.arm.jobs[VAULT_BAD]])

    return fault


def value_not_a_list() -> Fault:
    """`value` an object keyed by position; a GET gets the same page, which is no job either."""

    async def fault(call: Call) -> web.StreamResponse:
        now = time.time()
        jobs = call.arm.jobs[VAULT_BAD]
        return web.json_response({"value": {str(i): j.body(now, detailed=False) for i, j in enumerate(jobs)}})

    return fault


def malformed_items() -> Fault:
    """A page whose middle items are not jobs (a number, `properties` a string); GETs answer well."""

    async def fault(call: Call) -> web.StreamResponse:
        if not call.listing:
            return call.healthy()
        now = time.time()
        first, last = (j.body(now, detailed=False) for j in call.arm.jobs[VAULT_BAD])
        broken = {**first, "name": "not-a-job", "id": first["id"].rsplit("/", 1)[0] + "/not-a-job"}
        broken["properties"] = "InProgress"
        return web.json_response({"value": [first, 42, broken, last]})

    return fault


def next_link_to_itself() -> Fault:
    """Every page says the next one is the page at ?$skiptoken=loop, which names itself again."""

    async def fault(call: Call) -> web.StreamResponse:
        if not call.listing:
            return call.healthy()
        page = call.page()
        page["nextLink"] = call.page_url(**{"$skiptoken": "loop"})
        return web.json_response(page)

    return fault


def next_link_endless() -> Fault:
    """Every page names a next one never seen before: a listing that never ends."""

    async def fault(call: Call) -> web.StreamResponse:
        if not call.listing:
            return call.healthy()
        page = call.page()
        token = int(call.request.query.get("$skiptoken", "0"))
        page["nextLink"] = call.page_url(**{"$skiptoken": str(token + 1)})
        return web.json_response(page)

    return fault


def next_link_foreign() -> Fault:
    """The nextLink points at another host (the fake's foreign server), same path and query."""

    async def fault(call: Call) -> web.StreamResponse:
        if not call.listing:
            return call.healthy()
        page = call.page()
        page["nextLink"] = f"{call.arm.foreign_url}{call.request.path_qs}&$skiptoken=2"
        return web.json_response(page)

    return fault


def hang() -> Fault:
    """Accept the request and never answer."""

    async def fault(call: Call) -> web.StreamResponse:
        await call.arm.closing.wait()
        return web.Response(status=503)

    return fault


async def _stream(call: Call, first: bytes, more: Callable[[], bytes], pause: float) -> web.StreamResponse:
    """Headers, `first`, then `more()` every `pause` seconds until the client leaves or the fake closes."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(call.request)
    with contextlib.suppress(ConnectionError):
        await resp.write(first)
        while not call.arm.closing.is_set():
            await asyncio.sleep(pause)
            await resp.write(more())
    return resp


def trickle() -> Fault:
    """Headers, then one byte (JSON whitespace) every 0.5 s for ever."""

    async def fault(call: Call) -> web.StreamResponse:
        return await _stream(call, b"{", lambda: b" ", 0.5)

    return fault


def endless_body() -> Fault:
    """A chunked `{"value": [job, job, ...` that never ends, at a pace a real link could carry."""

    async def fault(call: Call) -> web.StreamResponse:
        item = json.dumps(call.arm.jobs[VAULT_BAD][0].body(time.time(), detailed=False)).encode() + b","
        chunk = item * (262_144 // len(item) + 1)
        return await _stream(call, b'{"value": [', lambda: chunk, 0.01)

    return fault


def dropped() -> Fault:
    """Headers promising 64 KiB, the first bytes of a page, then the connection closes."""

    async def fault(call: Call) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Content-Length": "65536"}
        )
        await resp.prepare(call.request)
        await resp.write(b'{"value": [{"id": "/subscriptions/')
        assert call.request.transport is not None
        call.request.transport.close()
        return resp

    return fault


@functools.cache
def oversized_body() -> bytes:
    """Valid JSON of 17 MiB: a page with nothing in it but padding."""
    return b'{"value": [], "padding": "' + b"x" * (17 * 1024 * 1024) + b'"}'


@functools.cache
def gzip_bomb() -> bytes:
    """About 2 MB of gzip that inflates to 2 GiB of a JSON page (spaces inside its array)."""
    # Full flushes make every 1 MiB block compress to the same bytes: build one, repeat it.
    blocks = 2048
    block = b" " * (1 << 20)
    head = b'{"value": ['
    tail = b"]}"
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH) == repeated
    last = deflate.compress(tail) + deflate.flush()
    crc = zlib.crc32(head)
    for _ in range(blocks + 1):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + (blocks + 1) * len(block) + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little")
    return header + first + repeated * (blocks + 1) + last + trailer


def check_gzip_bomb() -> int:
    """How far the bomb inflates in its first 32 MiB (a sanity check of the construction)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return len(inflater.decompress(gzip_bomb(), 32 * 1024 * 1024))


def oversized() -> Fault:
    return body_fault(oversized_body)


def gzip_bombed() -> Fault:
    return body_fault(gzip_bomb, headers={"Content-Encoding": "gzip"})


HUGE_ENTITY = "vm-" + "x" * (10 * 1024 * 1024)


def huge_entity() -> Fault:
    """vault-bad's jobs with a 10 MiB entityFriendlyName: one job a page (two would pass 16 MB)."""
    bodies: dict[tuple[str, bool], bytes] = {}

    def body(job: FakeJob, *, detailed: bool, page: bool) -> bytes:
        key = (job.job_id, page)
        if key not in bodies:
            data = replace(job, entity=HUGE_ENTITY).body(time.time(), detailed=detailed)
            # Keep the bag free of the name: the body must stay under the 16 MB limit.
            bodies[key] = json.dumps({"value": [data]} if page else data).encode()
        return bodies[key]

    async def fault(call: Call) -> web.StreamResponse:
        running, done = call.arm.jobs[VAULT_BAD]
        if call.job_id is not None:
            job = call.arm.job(VAULT_BAD, call.job_id)
            if job is None:
                return arm_error(404, "JobNotFound", "The job was not found.")
            return web.Response(body=body(job, detailed=True, page=False), content_type="application/json")
        if call.request.query.get("$skiptoken") == "2":
            return web.Response(body=body(done, detailed=False, page=True), content_type="application/json")
        raw = body(running, detailed=False, page=True)
        # The second page is reached through nextLink, spliced into the cached first page.
        link = json.dumps(call.page_url(**{"$skiptoken": "2"})).encode()
        return web.Response(body=raw[:-1] + b', "nextLink": ' + link + b"}", content_type="application/json")

    return fault
