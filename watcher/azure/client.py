"""The Azure Resource Manager client: one session, one retry loop, typed errors, paged listings.

It knows ARM, not Azure Backup: what to ask of which vault kind is the providers' (`recoveryservices`,
`dataprotection`), which send their requests through `request()` and `pages()`.

Every request takes a token from its subscription's bucket and a slot of the process-wide concurrency
bound, carries a cached bearer token, and is retried on 408, 429, 5xx, timeouts and dropped connections
with backoff that never undercuts Azure's Retry-After. A Retry-After longer than `backoff_max` is capped
there (and logged); a wait longer than `max_retry_wait` is not spent inside the request: the error goes
to the caller, whose schedule honours it. A 401 forces one token refresh and one retry. Shutdown and
`retire()` end every wait for a retry at once: the request raises its last error and sends nothing more.
Every path segment we build is quoted; URLs Azure hands back (nextLink, Azure-AsyncOperation) are
sent verbatim (no re-quoting: 2024-era operation URLs carry signed query parameters), but only to the
configured management host, and never over plain http to anything but loopback. Operation URLs are
never logged or put in error messages whole.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qs, urlsplit

import aiohttp
import yarl

from watcher.azure.auth import TokenProvider
from watcher.azure.models import OperationStatus, parse_operation
from watcher.azure.ratelimit import (
    Backoff,
    SubscriptionLimiter,
    remaining_budget,
    retry_after_seconds,
)
from watcher.config import is_loopback_host
from watcher.errors import (
    ApiVersionError,
    AuthError,
    AzureError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    ConnectionFailed,
    EndlessListingError,
    ForbiddenError,
    ForeignHostError,
    NotFoundError,
    RequestTimeout,
    RetryableError,
    ServerError,
    ThrottledError,
    TlsVerificationError,
)
from watcher.logs import get_logger, redact

log = get_logger("backup_watcher.client")

MAX_BODY_BYTES = 16 * 1024 * 1024  # a list page of 200 jobs is well under 1 MB
MAX_PAGES = 100  # pages of one listing: 20,000 jobs of 200 a page, far beyond a day of one vault
_SUPPORTED_VERSIONS = re.compile(r"supported (?:api-)?versions are '([^']*)'", re.IGNORECASE)
_SUBSCRIPTION_IN_PATH = re.compile(r"/subscriptions/([^/?#]+)", re.IGNORECASE)


class RequestObserver(Protocol):
    """What the client tells the metrics about each request."""

    def request_done(self, subscription_id: str, endpoint: str, code: str, seconds: float) -> None: ...

    def throttled(self, subscription_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    body: Any


def _code_of(body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return (str(err.get("code")) if err.get("code") else None, str(err.get("message") or ""))
    return None, ""


def subscription_of(url: str) -> str:
    """The subscription an ARM URL belongs to, for its rate-limit bucket."""
    m = _SUBSCRIPTION_IN_PATH.search(_path(url))
    return m.group(1).lower() if m else "-"


def _path(url: str) -> str:
    """The path of an absolute URL, as `urlsplit(url).path` gives it, without splitting the rest."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return urlsplit(url).path
    start = url.find("/", scheme_end + 3)
    if start < 0:
        return ""
    end = len(url)
    for mark in ("?", "#"):
        at = url.find(mark, start)
        if 0 <= at < end:
            end = at
    return url[start:end]


class ArmClient:
    """Talks to ARM for one cloud/endpoint with one credential."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        endpoint: str,
        limiter: SubscriptionLimiter,
        backoff: Backoff,
        concurrency: int = 16,
        attempts: int = 4,
        request_timeout: float = 30.0,
        max_retry_wait: float | None = None,
        observer: RequestObserver | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.session = session
        self.tokens = tokens
        self.endpoint = endpoint.rstrip("/")
        self.limiter = limiter
        self.attempts = attempts
        self.observer = observer
        self.sleep = sleep
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests_sent = 0
        self.busy = 0  # logical requests under way, waits for a retry included
        self.idle = asyncio.Event()  # set while `busy` is 0
        self.idle.set()
        self.stopping = asyncio.Event()  # set on shutdown or retirement: retries end instead of sleeping
        self.retired = False
        self.reconfigure(
            backoff=backoff,
            concurrency=concurrency,
            request_timeout=request_timeout,
            max_retry_wait=max_retry_wait,
        )
        parts = urlsplit(self.endpoint)
        self._origin = (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
        self._prefix = f"{parts.scheme}://{parts.netloc}/"
        if parts.scheme.lower() != "https" and not (parts.scheme.lower() == "http" and _loopback(parts)):
            raise ConfigError(
                "backup-watcher",
                [("azure.management_endpoint", "must be https; plain http only for loopback hosts")],
            )

    def reconfigure(
        self,
        *,
        backoff: Backoff,
        concurrency: int,
        request_timeout: float,
        max_retry_wait: float | None = None,
    ) -> None:
        """Take new poll settings in place (a reload): requests under way keep theirs."""
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=min(10.0, request_timeout), sock_read=request_timeout
        )
        self.max_retry_wait = backoff.maximum if max_retry_wait is None else max_retry_wait
        if getattr(self, "concurrency", None) != concurrency:
            self._slots = asyncio.Semaphore(concurrency)
            self.concurrency = concurrency

    def retire(self) -> None:
        """Replaced by a new client (a reload): end retries now; what is in flight finishes or times out."""
        self.retired = True
        self.stopping.set()

    # -- where requests may go ---------------------------------------------------------------

    def check_host(self, url: str) -> None:
        """Refuse to send our token anywhere but the configured management endpoint, over TLS or loopback."""
        if url.startswith(self._prefix):
            return  # the endpoint itself, which was checked when this client was made, then a path
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ForeignHostError("refusing to follow a URL with an invalid port") from None
        origin = (parts.scheme.lower(), (parts.hostname or "").lower(), port)
        shown = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
        if parts.scheme.lower() == "http" and not _loopback(parts):
            raise ForeignHostError(f"refusing to send a token over plain http to {shown}")
        if origin != self._origin:
            raise ForeignHostError(
                f"refusing to follow {shown}: not the configured management endpoint {self.endpoint}"
            )

    # -- API --------------------------------------------------------------------------------

    async def pages(self, endpoint: str, url: str) -> AsyncIterator[Any]:
        """The bodies of a paged listing, following `nextLink` verbatim until it is absent.

        A nextLink that repeats a page, or a listing that does not end within MAX_PAGES pages (a
        nextLink that never stops changing), is a BadResponseError: a listing cannot spend the budget.
        """
        next_url: str | None = url
        seen: set[str] = set()
        while next_url is not None:
            if next_url in seen:
                raise BadResponseError("the listing's nextLink repeats a page already read")
            if len(seen) >= MAX_PAGES:
                raise EndlessListingError(
                    f"the listing did not end within {MAX_PAGES} pages", retry_after=self.backoff.maximum
                )
            seen.add(next_url)
            self.check_host(next_url)
            response = await self.request(endpoint, next_url)
            yield response.body
            link = response.body.get("nextLink") if isinstance(response.body, dict) else None
            next_url = link if isinstance(link, str) and link else None

    async def get_operation(self, url: str) -> tuple[OperationStatus, float | None]:
        """One look at an operation: its status and Azure's Retry-After, if any."""
        status, retry_after, _ = await self._look(url)
        return status, retry_after

    async def _look(self, url: str) -> tuple[OperationStatus, float | None, str | None]:
        self.check_host(url)
        response = await self.request("operation_status", url)
        retry_after = retry_after_seconds(response.headers)
        if response.status in (202, 204) and not response.body:
            # operationResults (a Location URL) answers 202/204 without a body; its 202 names the
            # Azure-AsyncOperation URL whose body carries the status and the job id.
            follow = response.headers.get("Azure-AsyncOperation") if response.status == 202 else None
            status = "InProgress" if response.status == 202 else "Succeeded"
            return OperationStatus(operation_id="", status=status), retry_after, follow
        return parse_operation(response.body), retry_after, None

    async def wait_operation(
        self,
        url: str,
        *,
        give_up_after: float | None = None,
        interval: float | None = None,
        on_poll: Callable[[OperationStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> OperationStatus:
        """Poll an `Azure-AsyncOperation` (`.../operationsStatus/{id}`) or `backupOperations/{id}` URL.

        Returns the final status (Succeeded, Failed or Canceled): `job_ids` holds the `jobId` or
        `jobIds` it names, `error_code`/`error_message` why it failed. Waits `interval` (default: the
        backoff) between looks, never less than Azure's Retry-After. Raises TimeoutError once
        `give_up_after` seconds have passed, ForeignHostError for a URL off the management host.
        """
        self.check_host(url)
        deadline = None if give_up_after is None else clock() + give_up_after
        attempt = 0
        while True:
            status, retry_after, follow = await self._look(url)
            if follow:
                self.check_host(follow)
                url = follow
            if on_poll is not None:
                on_poll(status)
            if status.is_final:
                return status
            base = interval if interval is not None else self.backoff.delay(min(attempt, 3))
            delay = max(base, self._capped("operation_status", retry_after) or 0.0)
            attempt += 1
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    raise TimeoutError("the operation did not finish in time")
                delay = min(delay, left)
            await self.sleep(delay)

    # -- the one retry loop -----------------------------------------------------------------

    async def _pause(self, delay: float) -> None:
        """Sleep before a retry, cut short on shutdown or retirement (the caller then gives up)."""
        if self.stopping.is_set():
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)

    def _capped(self, endpoint: str, retry_after: float | None) -> float | None:
        """Azure's Retry-After, never above backoff_max: one answer cannot park a vault for hours."""
        if retry_after is None or retry_after <= self.backoff.maximum:
            return retry_after
        log.warning(
            "retry_after_capped",
            endpoint=endpoint,
            retry_after=retry_after if retry_after < 1e12 else "huge",
            capped_to=self.backoff.maximum,
        )
        return self.backoff.maximum

    async def request(self, endpoint: str, url: str, *, method: str = "GET") -> ApiResponse:
        """Send one logical request, retrying what is worth retrying; raise a typed AzureError."""
        subscription = subscription_of(url)
        attempt = 0
        refreshed = False
        self.busy += 1
        self.idle.clear()
        try:
            while True:
                try:
                    return await self._attempt(endpoint, url, method, subscription)
                except _Unauthorized as exc:
                    if refreshed:
                        raise AuthError(
                            f"ARM refused the token after a refresh (401 {exc.code or ''})".strip(),
                            status=401,
                            code=exc.code,
                        ) from None
                    refreshed = True
                    await self.tokens.token(force_refresh=True, stale=exc.token)
                except RetryableError as exc:
                    exc.retry_after = self._capped(endpoint, exc.retry_after)
                    if isinstance(exc, ThrottledError):
                        self.limiter.throttled(subscription)
                    if attempt + 1 >= self.attempts or self.stopping.is_set():
                        raise
                    delay = self.backoff.delay(attempt, exc.retry_after)
                    if delay > self.max_retry_wait:
                        raise  # the caller's schedule waits, not this request
                    log.debug(
                        "request_retry",
                        endpoint=endpoint,
                        reason=exc.reason,
                        status=exc.status,
                        attempt=attempt + 1,
                        delay=round(delay, 3),
                    )
                    attempt += 1
                    await self._pause(delay)
                    if self.stopping.is_set():
                        raise  # shut down or replaced while waiting: no more requests
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()

    async def _turn(self, subscription: str) -> asyncio.Semaphore:
        """A concurrency slot and a token of the subscription's read budget, taken together just before
        the request goes out; the semaphore whose slot it holds. ARM counts a request when it arrives: a
        budget token taken long before, by a request that then waited for a slot, would let such
        requests arrive in a burst that ARM's bucket does not allow. No slot is held while waiting for
        the budget."""
        while True:
            await self.limiter.wait_ready(subscription)
            slots = self._slots
            await slots.acquire()
            if self.limiter.try_take(subscription):
                return slots
            slots.release()  # another request of the subscription took the token meanwhile

    async def _attempt(self, endpoint: str, url: str, method: str, subscription: str) -> ApiResponse:
        # Checked on every attempt, before a token is fetched: no path leads a token elsewhere.
        self.check_host(url)
        token = await self.tokens.token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "x-ms-client-request-id": str(uuid.uuid4()),
        }
        code = "error"
        slots = await self._turn(subscription)
        started = time.perf_counter()
        try:
            if self.session.closed:
                # A reload closed this client's session while the request waited: not Azure's fault.
                raise ConnectionFailed("the request's HTTP session was closed (config reload or shutdown)")
            self.requests_sent += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                # encoded=True: sent as built or as Azure handed it back, not re-quoted.
                async with self.session.request(
                    method,
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                ) as resp:
                    code = str(resp.status)
                    raw = await _read_limited(resp)
                    response_headers = resp.headers
                    status = resp.status
            except TimeoutError as exc:
                raise RequestTimeout(f"no answer from ARM within {self.timeout.total:g}s") from exc
            except aiohttp.ClientConnectorCertificateError as exc:
                raise TlsVerificationError(
                    f"TLS certificate of {self.endpoint} does not verify ({exc.certificate_error}); "
                    "if it is signed by a private CA, set azure.ca_bundle to that CA's PEM file"
                ) from exc
            except aiohttp.InvalidURL as exc:
                # Its text is the whole URL, which may carry signed query parameters.
                raise BadResponseError("ARM handed back a URL that cannot be requested") from exc
            except aiohttp.ClientConnectionError as exc:
                raise ConnectionFailed(
                    f"connection to ARM failed: {type(exc).__name__}: {redact(str(exc))}"
                ) from exc
            except aiohttp.ClientError as exc:
                raise ConnectionFailed(
                    f"HTTP error talking to ARM: {type(exc).__name__}: {redact(str(exc))}"
                ) from exc
            finally:
                self.in_flight -= 1
                if self.observer is not None:
                    self.observer.request_done(subscription, endpoint, code, time.perf_counter() - started)
        finally:
            slots.release()

        remaining = remaining_budget(response_headers)
        if remaining is not None:
            self.limiter.observe_remaining(subscription, remaining)
        body = _decode(raw)
        if 200 <= status < 300:
            if status == 200 and body is None:
                raise BadResponseError(f"ARM answered {status} with a body that is not JSON")
            return ApiResponse(status, response_headers, body)
        err_code, message = _code_of(body)
        detail = f"{status} {err_code or ''}: {redact(message)[:500]}".strip()
        retry_after = retry_after_seconds(response_headers)
        if status == 401:
            raise _Unauthorized(err_code, token)
        if status == 429:
            if self.observer is not None:
                self.observer.throttled(subscription)
            raise ThrottledError(detail, status=status, code=err_code, retry_after=retry_after)
        if status == 408 or status >= 500:
            raise ServerError(detail, status=status, code=err_code, retry_after=retry_after)
        if status == 403:
            raise ForbiddenError(detail, status=status, code=err_code)
        if status == 404:
            if err_code == "NoRegisteredProviderFound":
                raise _api_version_error(detail, status, err_code, message, _api_version_of(url))
            raise NotFoundError(detail, status=status, code=err_code)
        if err_code in ("InvalidApiVersionParameter", "NoRegisteredProviderFound"):
            raise _api_version_error(detail, status, err_code, message, _api_version_of(url))
        raise BadRequestError(detail, status=status, code=err_code)


def _loopback(parts: SplitResult) -> bool:
    return is_loopback_host(parts.hostname)


class _Unauthorized(Exception):
    def __init__(self, code: str | None, token: str) -> None:
        super().__init__(code)
        self.code = code
        self.token = token


def _api_version_of(url: str) -> str:
    """The api-version a request named (for saying which one ARM refused)."""
    values = parse_qs(urlsplit(url).query).get("api-version")
    return values[0] if values else "(none)"


def _api_version_error(detail: str, status: int, code: str, message: str, used: str) -> ApiVersionError:
    m = _SUPPORTED_VERSIONS.search(message)
    supported = [v.strip() for v in m.group(1).split(",") if v.strip()] if m else []
    text = f"ARM does not accept api-version {used} ({code})"
    if supported:
        text += f"; it supports: {', '.join(supported)}"
    else:
        text += f": {detail}"
    return ApiVersionError(text, status=status, code=code, supported=supported)


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    length = resp.content_length
    if length is not None and length <= MAX_BODY_BYTES and "Content-Encoding" not in resp.headers:
        return await resp.read()  # as long as announced (the reader holds it to that), not compressed
    chunks = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadResponseError(f"ARM response larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> Any:
    """JSON, or None for the empty bodies ARM sends with 202/204 (nothing, `""` or `{}`)."""
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if not text:
        return None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the decoder's stack (hostile or broken upstream).
        return None
    return None if body in ("", {}) else body


__all__ = ["ApiResponse", "ArmClient", "AzureError", "TlsVerificationError", "subscription_of"]
