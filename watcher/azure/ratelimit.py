"""Staying inside ARM's read budget: a token bucket per subscription, and backoff delays.

ARM throttles reads per subscription and principal with a bucket of 250 refilled at 25 a second,
answering 429 with `Retry-After` once it is empty. Every request to a subscription first takes a token
here. The bucket slows when Azure's own remaining-budget header runs low, and a 429 empties it and
halves its refill rate, which then recovers over `RECOVERY_SECONDS`: every vault of the subscription
slows down at once, but none stops. The request that got the 429 waits out its `Retry-After` (capped at
`poll.backoff_max`) on its own: one vault answered by a misbehaving front end cannot stall the others.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol


class Clock(Protocol):
    """Time as the limiter sees it: injectable so tests need no real sleeps."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    remaining: int | None = None
    # The refill rate's share after the last 429, and when it came.
    throttled_factor: float = 1.0
    throttled_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SubscriptionLimiter:
    """One token bucket per subscription; `acquire()` waits for a token."""

    # Below this remaining budget (Azure's header) the refill rate is scaled down proportionally.
    LOW_WATER = 0.2
    # A 429 halves the refill rate, never below this share; it grows back linearly over RECOVERY_SECONDS.
    MIN_FACTOR = 1 / 64
    RECOVERY_SECONDS = 60.0

    def __init__(
        self,
        burst: int = 250,
        per_second: float = 25.0,
        *,
        clock: Clock | None = None,
        on_remaining: Callable[[str, int], None] | None = None,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.clock = clock or MonotonicClock()
        self.on_remaining = on_remaining
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, subscription_id: str) -> _Bucket:
        key = subscription_id.lower()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=self.clock.now())
        return bucket

    def reconfigure(self, burst: int, per_second: float) -> None:
        """New budget figures (a reload); what each subscription has learnt about throttling is kept."""
        self.burst = burst
        self.per_second = per_second
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, float(burst))

    def rate(self, subscription_id: str) -> float:
        """Tokens a second for this subscription: slowed after a 429 and when Azure reports a low budget."""
        bucket = self._bucket(subscription_id)
        rate = self.per_second * self._throttled_factor(bucket)
        if bucket.remaining is None:
            return rate
        low = self.burst * self.LOW_WATER
        if bucket.remaining >= low:
            return rate
        return max(rate * max(bucket.remaining, 1) / low, self.per_second / 50)

    def _throttled_factor(self, bucket: _Bucket) -> float:
        if bucket.throttled_factor >= 1.0:
            return 1.0
        recovered = (self.clock.now() - bucket.throttled_at) / self.RECOVERY_SECONDS
        return min(1.0, bucket.throttled_factor + recovered)

    def _refill(self, subscription_id: str, bucket: _Bucket) -> float:
        """Top the bucket up for the time since it was last looked at; its refill rate."""
        now = self.clock.now()
        rate = self.rate(subscription_id)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return rate

    async def acquire(self, subscription_id: str) -> None:
        """Wait until this subscription may send one more request, and take its token."""
        await self.wait_ready(subscription_id)
        self.try_take(subscription_id)

    async def wait_ready(self, subscription_id: str) -> None:
        """Wait until this subscription has a token to spend (without taking it); waiters go in turn."""
        bucket = self._bucket(subscription_id)
        async with bucket.lock:
            while True:
                rate = self._refill(subscription_id, bucket)
                # The epsilon keeps float rounding from turning the last sliver into an endless wait.
                if bucket.tokens >= 1.0 - 1e-9:
                    return
                await self.clock.sleep(max((1.0 - bucket.tokens) / rate, 1e-3))

    def try_take(self, subscription_id: str) -> bool:
        """Take one of this subscription's tokens if it has one now; whether it did."""
        bucket = self._bucket(subscription_id)
        self._refill(subscription_id, bucket)
        if bucket.tokens >= 1.0 - 1e-9:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return True
        return False

    def throttled(self, subscription_id: str) -> None:
        """A 429: empty this subscription's bucket and halve its refill rate (it recovers over a minute)."""
        bucket = self._bucket(subscription_id)
        bucket.throttled_factor = max(self.MIN_FACTOR, self._throttled_factor(bucket) / 2)
        bucket.throttled_at = self.clock.now()
        bucket.tokens = 0.0

    def throttled_factor(self, subscription_id: str) -> float:
        """The share of the configured rate this subscription gets after its 429s (1.0: none recently)."""
        return self._throttled_factor(self._bucket(subscription_id))

    def observe_remaining(self, subscription_id: str, remaining: int) -> None:
        """Record Azure's remaining-budget header; a falling budget slows the refill."""
        bucket = self._bucket(subscription_id)
        bucket.remaining = remaining
        # Never hold more tokens than Azure says we have left.
        bucket.tokens = min(bucket.tokens, float(max(remaining, 0)))
        if self.on_remaining is not None:
            self.on_remaining(subscription_id, remaining)


REMAINING_HEADERS = (
    "x-ms-ratelimit-remaining-subscription-reads",
    "x-ms-ratelimit-remaining-subscription-resource-requests",
)


def remaining_budget(headers: object) -> int | None:
    """The lowest remaining-read figure among the headers Azure sends (either name, or both)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    values = []
    for name in REMAINING_HEADERS:
        raw = get(name)
        if raw is None:
            continue
        # Multi-valued headers are joined with ", ".
        for part in str(raw).split(","):
            try:
                values.append(int(part.strip()))
            except ValueError:
                continue
    return min(values) if values else None


def retry_after_seconds(headers: object, *, now: float | None = None) -> float | None:
    """Azure's wish for a delay, in seconds, as sent (callers cap it).

    From `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After` (seconds or an HTTP date). A value
    that is negative, not a number or not finite is no wish at all.
    """
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = get(name)
        if raw is not None:
            value = _seconds(str(raw), 1000.0)
            if value is not None:
                return value
    raw = get("retry-after")
    if raw is None:
        return None
    text = str(raw).strip()
    value = _seconds(text, 1.0)
    if value is not None or _NUMBER.fullmatch(text):
        return value
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    try:
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (OverflowError, ValueError):
        return None


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _seconds(text: str, per_second: float) -> float | None:
    """A non-negative finite number of seconds from `text` in units of 1/per_second, else None."""
    text = text.strip()
    if len(text) > 32 or not _NUMBER.fullmatch(text):
        return None
    value = float(text) / per_second
    if not math.isfinite(value) or value < 0:
        return None
    return value


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, floored at `initial`, capped at `maximum`.

    A delay Azure asked for (Retry-After) is never undercut; callers cap what they pass in at `maximum`.
    """

    initial: float = 2.0
    maximum: float = 300.0
    rng: Callable[[float, float], float] = random.uniform

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry number `attempt` (0 for the first retry)."""
        ceiling = min(self.maximum, self.initial * (2 ** min(attempt, 32)))
        jittered = self.rng(self.initial, max(self.initial, ceiling))
        if retry_after is not None:
            return max(jittered, retry_after)
        return jittered


SleepFn = Callable[[float], Awaitable[None]]
