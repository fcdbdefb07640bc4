"""Staying inside ARM's read budget: a token bucket per subscription, and backoff delays.

ARM throttles reads per subscription and principal with a bucket of 250 refilled at 25 a second,
answering 429 with `Retry-After` once it is empty. Every request to a subscription first takes a token
here. The bucket slows further when Azure's own remaining-budget header runs low, and a 429 pauses the
whole subscription for its `Retry-After`, not only the request that got it.
"""

from __future__ import annotations

import asyncio
import random
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
    paused_until: float = 0.0
    remaining: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SubscriptionLimiter:
    """One token bucket per subscription; `acquire()` waits for a token and for any pause."""

    # Below this remaining budget (Azure's header) the refill rate is scaled down proportionally.
    LOW_WATER = 0.2

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

    def rate(self, subscription_id: str) -> float:
        """Tokens a second for this subscription now, slowed when Azure says the budget is low."""
        bucket = self._bucket(subscription_id)
        if bucket.remaining is None:
            return self.per_second
        low = self.burst * self.LOW_WATER
        if bucket.remaining >= low:
            return self.per_second
        return max(self.per_second * max(bucket.remaining, 1) / low, self.per_second / 50)

    async def acquire(self, subscription_id: str) -> None:
        """Wait until this subscription may send one more request."""
        bucket = self._bucket(subscription_id)
        async with bucket.lock:
            while True:
                now = self.clock.now()
                if now < bucket.paused_until:
                    await self.clock.sleep(bucket.paused_until - now)
                    continue
                rate = self.rate(subscription_id)
                bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
                bucket.updated = now
                # The epsilon keeps float rounding from turning the last sliver into an endless wait.
                if bucket.tokens >= 1.0 - 1e-9:
                    bucket.tokens = max(0.0, bucket.tokens - 1.0)
                    return
                await self.clock.sleep(max((1.0 - bucket.tokens) / rate, 1e-3))

    def pause(self, subscription_id: str, seconds: float) -> None:
        """Hold every request to this subscription for `seconds` (a 429's Retry-After)."""
        bucket = self._bucket(subscription_id)
        bucket.paused_until = max(bucket.paused_until, self.clock.now() + seconds)
        bucket.tokens = 0.0

    def paused_for(self, subscription_id: str) -> float:
        """Seconds this subscription is still paused."""
        return max(0.0, self._bucket(subscription_id).paused_until - self.clock.now())

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
    """Azure's wish for a delay, in seconds.

    From `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After` (seconds or an HTTP date).
    """
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = get(name)
        if raw is not None:
            try:
                return max(0.0, float(str(raw).strip()) / 1000.0)
            except ValueError:
                pass
    raw = get("retry-after")
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, floored at `initial`, capped at `maximum`.

    A delay Azure asked for (Retry-After) is never undercut.
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
