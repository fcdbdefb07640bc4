"""Every metric backup-watcher exports, in one place; the registry is injected.

What the daemon observes about its own requests to Azure uses ordinary prometheus_client counters and
histograms. Job, item and vault state lives in the tracker, vault by vault, and is exposed by
`TrackerExposition`: each family's samples for one vault are rendered once into a chunk and reused while
that vault's version of the facts behind it stays the same, so a scrape of a large estate joins cached
chunks instead of formatting hundreds of thousands of samples. A chunk is kept deflated only (at a
thousand vaults the text is some 90 MB, deflated a tenth of that): a gzip scrape (what Prometheus asks
for) is assembled from the deflated chunks as one gzip member, and a plain scrape inflates them as it
goes.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from watcher.azure.models import ACTIVE_STATUSES, FINAL_STATUSES, ItemHealth, ProtectionState, VaultRef
from watcher.state import DURATION_BUCKETS, INVENTORY, ITEMS, JOBS, POLLS, VaultData, VaultState

if TYPE_CHECKING:
    from watcher.state import Tracker

# `_created` series double the output and no rule of ours uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

VAULT_LABELS = ("subscription_id", "resource_group", "vault", "vault_type")
POLL_ERROR_REASONS = (
    "throttled",
    "server_error",
    "timeout",
    "connection",
    "auth",
    "forbidden",
    "not_found",
    "bad_response",
)
WATCHED_STATUSES = (
    "InProgress",
    "Cancelling",
    "Paused",
    "Completed",
    "CompletedWithWarnings",
    "Failed",
    "Cancelled",
)
FINAL_ORDER = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
PROTECTION_STATES = tuple(state.value for state in ProtectionState)
HEALTH_STATES = tuple(health.value for health in ItemHealth)
assert set(FINAL_ORDER) == FINAL_STATUSES
assert set(WATCHED_STATUSES) == FINAL_STATUSES | ACTIVE_STATUSES

# Sample values exactly as prometheus_client writes them (Go's float format); untyped upstream.
_number = cast(Callable[[float], str], floatToGoString)
generate_openmetrics = cast(Callable[[CollectorRegistry], bytes], openmetrics_latest)

API_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A scrape gives the event loop back after this much work, so polls and other requests go on. Each
# turn given back costs the scrape whatever else is ready to run: far below the loop's lag target, and
# few enough turns that a scrape is not spread thin over a busy loop.
SLICE_SECONDS = 0.02
# /metrics bodies are written in pieces of about this size (no copy of the whole body is made).
WRITE_BYTES = 1024 * 1024
# Cached chunks are deflated at this level once; a scrape only joins them.
DEFLATE_LEVEL = 6


@dataclass(frozen=True, slots=True)
class Body:
    """A /metrics response body as pieces to write in order (read once), and its length.

    A plain body inflates its cached chunks only as they are read, so the whole text (some 90 MB at a
    thousand vaults) never sits in memory at once.
    """

    parts: Iterable[bytes]
    length: int
    gzip: bool

    def join(self) -> bytes:
        return b"".join(self.parts)


class Metrics:
    """The daemon's own metrics, plus the exposition of the tracker's state once a tracker exists."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        # The daemon's own metrics live apart so /metrics can format them with prometheus_client and the
        # tracker's families from its cache; `registry` still collects both.
        self._own = CollectorRegistry()
        registry.register(self._own)
        self.build_info = Gauge(
            "azure_backup_watcher_build_info",
            "backup-watcher build information; always 1.",
            ["version"],
            registry=self._own,
        )
        self.build_info.labels(version=version).set(1)
        self.api_requests = Counter(
            "azure_backup_watcher_api_requests_total",
            "Requests sent to Azure Resource Manager, by kind and HTTP status (error: no response).",
            ["subscription_id", "endpoint", "code"],
            registry=self._own,
        )
        self.api_latency = Histogram(
            "azure_backup_watcher_api_request_duration_seconds",
            "Latency of requests to Azure Resource Manager.",
            ["endpoint"],
            buckets=API_LATENCY_BUCKETS,
            registry=self._own,
        )
        self.api_throttled = Counter(
            "azure_backup_watcher_api_throttled_total",
            "429 Too Many Requests answers from Azure Resource Manager.",
            ["subscription_id"],
            registry=self._own,
        )
        self.ratelimit_remaining = Gauge(
            "azure_backup_watcher_ratelimit_remaining_reads",
            "Remaining read budget Azure last reported for the subscription "
            "(x-ms-ratelimit-remaining-subscription-reads or -resource-requests).",
            ["subscription_id"],
            registry=self._own,
        )
        self.config_reload_ok = Gauge(
            "azure_backup_watcher_config_last_reload_successful",
            "1 if the last config (re)load succeeded, else 0.",
            registry=self._own,
        )
        self.config_reload_ok.set(1)
        self.exposition: TrackerExposition | None = None
        self._scrape = asyncio.Lock()
        # Subscriptions still watched once a reload has narrowed them (None: every one). Requests of
        # the old config still in flight must not bring back the series of one that was dropped.
        self._subscriptions: set[str] | None = None

    def _watched(self, subscription_id: str) -> bool:
        return self._subscriptions is None or subscription_id.lower() in self._subscriptions

    # RequestObserver
    def request_done(self, subscription_id: str, endpoint: str, code: str, seconds: float) -> None:
        if self._watched(subscription_id):
            self.api_requests.labels(subscription_id, endpoint, code).inc()
        self.api_latency.labels(endpoint).observe(seconds)

    def throttled(self, subscription_id: str) -> None:
        if self._watched(subscription_id):
            self.api_throttled.labels(subscription_id).inc()

    def remaining(self, subscription_id: str, value: int) -> None:
        if self._watched(subscription_id):
            self.ratelimit_remaining.labels(subscription_id).set(value)

    def forget_subscriptions(self, keep: Iterable[str]) -> None:
        """Drop per-subscription series of subscriptions no longer watched (after a reload)."""
        wanted = {s.lower() for s in keep}
        self._subscriptions = wanted
        for metric in (self.api_requests, self.api_throttled, self.ratelimit_remaining):
            for labels in list(_label_sets(metric)):
                if labels[0].lower() not in wanted:
                    metric.remove(*labels)

    def throttled_by_subscription(self) -> dict[str, float]:
        """429 answers so far, by subscription (those that had any)."""
        return {
            sample.labels["subscription_id"]: sample.value
            for family in self.api_throttled.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.value
        }

    def watch(self, tracker: Tracker) -> None:
        """Expose the tracker's jobs, items and vaults from now on."""
        if self.exposition is not None:
            self.registry.unregister(self.exposition)
        self.exposition = TrackerExposition(tracker)
        self.registry.register(self.exposition)

    def render(self, openmetrics: bool) -> bytes:
        """The whole /metrics body at once, uncompressed (for tests and one-off use)."""
        body = _Assembly(self._own_chunk(openmetrics), openmetrics, gzip=False)
        if self.exposition is not None:
            for _pause in self.exposition.build(body):
                pass
        return body.finish().join()

    async def body(self, openmetrics: bool, gzip: bool) -> Body:
        """The /metrics body, built a slice at a time so the event loop never waits on a scrape."""
        async with self._scrape:  # a second scrape at once finds the first one's chunks cached
            body = _Assembly(self._own_chunk(openmetrics), openmetrics, gzip=gzip)
            if self.exposition is not None:
                for _pause in self.exposition.build(body):
                    await asyncio.sleep(0)
            return body.finish()

    def _own_chunk(self, openmetrics: bool) -> _Chunk:
        if openmetrics:
            return _Chunk.of(generate_openmetrics(self._own).removesuffix(b"# EOF\n"))
        return _Chunk.of(generate_latest(self._own))


def _label_sets(metric: Any) -> Iterator[tuple[str, ...]]:
    # prometheus_client keeps children by label tuple; there is no public iterator for them.
    with metric._lock:
        yield from list(metric._metrics.keys())


# -- crc32 of a concatenation (zlib's crc32_combine, which Python's zlib does not expose) ------------

_ZEROS = memoryview(bytes(1 << 16))
_CRC_POLY = 0xEDB88320


def _crc_of_zeros(crc: int, count: int) -> int:
    """zlib.crc32 continued from `crc` over `count` zero bytes."""
    while count > 0:
        step = min(count, len(_ZEROS))
        crc = zlib.crc32(_ZEROS[:step], crc)
        count -= step
    return crc


@functools.lru_cache(maxsize=4096)
def _zeros_alone(count: int) -> int:
    return _crc_of_zeros(0, count)


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected); `a` is never 0 here."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    p = 1 << 30  # x^1
    table = [p]
    for _ in range(1, 32):
        p = _multmodp(p, p)
        table.append(p)
    return table


_X2N = _x2n_table()
# Up to this length, running zlib over zeros is quicker than the polynomial arithmetic in Python.
_ZEROS_UP_TO = 1 << 16


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B).

    A CRC is affine in what it continues from: crc32(B, c) = shift(c) ^ crc32(B, 0), where the shift
    depends on len(B) alone. For a short B (a vault's chunk), A's CRC continued over len(B) zero bytes,
    less what those zeros add on their own, is that shift at zlib's speed. For a long B (a whole family),
    the shift is x^(8 len(B)) modulo the polynomial, worked out in log(len(B)) steps as zlib's own
    crc32_combine does (Python's zlib does not expose it).
    """
    if len2 <= _ZEROS_UP_TO:
        return _crc_of_zeros(crc1, len2) ^ _zeros_alone(len2) ^ crc2
    op = 1 << 31  # x^0
    k = 3  # x^(8 * len2): bytes to bits
    n = len2
    while n:
        if n & 1:
            op = _multmodp(_X2N[k & 31], op)
        n >>= 1
        k += 1
    return _multmodp(op, crc1) ^ crc2


# -- chunks and the body they make -------------------------------------------------------------------

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
_DEFLATE_END = b"\x03\x00"  # an empty final block: what ends the concatenated deflate segments


def _deflate(raw: bytes) -> bytes:
    """`raw` as a self-contained deflate segment: no back-reference before it, ends byte-aligned and
    not final, so segments concatenate into one valid deflate stream."""
    if not raw:
        return b""
    # A window no larger than the text (and tables to match) makes a small chunk's deflater several times
    # cheaper to set up; back-references then reach less far, which any inflater reads.
    wbits = min(zlib.MAX_WBITS, max(9, (len(raw) - 1).bit_length()))
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -wbits, max(1, min(8, wbits - 7)))
    return compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _inflate(segment: bytes) -> bytes:
    """The text of a segment `_deflate` made."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(segment) if segment else b""


@dataclass(slots=True)
class _Chunk:
    """Some rendered samples, deflated, with the CRC-32 and length of their text (the text itself is not
    kept)."""

    gz: bytes
    crc: int
    length: int
    key: Any = None  # what it was rendered from; a different key means render again

    @classmethod
    def of(cls, raw: bytes, key: Any = None) -> _Chunk:
        return cls(_deflate(raw), zlib.crc32(raw), len(raw), key)

    def text(self) -> bytes:
        return _inflate(self.gz)


@dataclass(slots=True)
class _Section:
    """A family's samples over every watched vault, as they were at the last scrape: its chunks, what
    they were rendered from (the estate's version of the family's kind and of the watched vault set),
    and the CRC-32 (once a gzip scrape wanted it) and length of their text."""

    chunks: list[_Chunk]
    version: int
    vaults: int
    length: int
    crc: int | None = None
    deflated: list[bytes] | None = None  # the chunks' deflated bytes, once a gzip scrape wanted them


class _Assembly:
    """A body being put together piece by piece, plain or as one gzip member."""

    def __init__(self, first: _Chunk, openmetrics: bool, *, gzip: bool) -> None:
        self.openmetrics = openmetrics
        self.gzip = gzip
        self.parts: list[bytes | _Chunk] = [_GZIP_HEADER] if gzip else []
        self.crc = 0
        self.length = 0
        self.add(first)

    def add(self, chunk: _Chunk) -> None:
        """A chunk that stands alone (a header, the daemon's own metrics)."""
        self.add_part(chunk)
        self.count(chunk.crc, chunk.length)

    def add_part(self, chunk: _Chunk) -> None:
        """A chunk of a section, whose text `count` accounts for once the section is complete."""
        if chunk.length:
            self.parts.append(chunk.gz if self.gzip else chunk)

    def add_parts(self, section: _Section) -> None:
        """A family's chunks, whose text `count` accounts for."""
        if self.gzip:
            if section.deflated is None:
                section.deflated = [chunk.gz for chunk in section.chunks]
            self.parts.extend(section.deflated)
        else:
            self.parts.extend(section.chunks)

    def count(self, crc: int, length: int) -> None:
        """Text of this length and CRC-32 was added (the CRC matters to gzip's trailer only)."""
        if self.gzip:
            self.crc = crc32_combine(self.crc, crc, length)
        self.length += length

    def finish(self) -> Body:
        if self.openmetrics:
            self.add(_EOF)
        if not self.gzip:
            return Body(_texts(self.parts), self.length, gzip=False)
        trailer = struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)
        parts = [part for part in self.parts if isinstance(part, bytes)] + [_DEFLATE_END, trailer]
        return Body(parts, sum(map(len, parts)), gzip=True)


def _texts(parts: list[bytes | _Chunk]) -> Iterator[bytes]:
    """The text of each part, a chunk inflated only when its turn comes."""
    for part in parts:
        yield part if isinstance(part, bytes) else part.text()


_EOF = _Chunk.of(b"# EOF\n")


# -- the tracker's families --------------------------------------------------------------------------

Rows = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True, slots=True)
class _Family:
    """One family of the tracker's metrics: per vault, its samples come from `rows(state, data)` as
    (values of the labels after the vault's, value), and change only with the vault's `group` version."""

    name: str
    kind: str  # counter | gauge
    help: str
    extra: tuple[str, ...]  # label names after VAULT_LABELS
    group: str
    rows: Callable[[VaultState, VaultData], Rows]
    labels: tuple[str, ...] = field(init=False)
    sample: str = field(init=False)
    # Positions of the extra labels, in the order sorted label names put them (how samples are written).
    extra_order: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        labels = (*VAULT_LABELS, *self.extra)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sample", f"{self.name}_total" if self.kind == "counter" else self.name)
        ordered = [name for name in sorted(labels) if name in self.extra]
        object.__setattr__(self, "extra_order", tuple(self.extra.index(name) for name in ordered))

    def header(self, openmetrics: bool) -> bytes:
        return _header(self.name, self.kind, self.help, openmetrics)

    def template(self, state: VaultState) -> str:
        """The sample line with the vault's labels filled in, %s for the others and the value."""
        ref = state.ref
        vault = dict(
            zip(
                VAULT_LABELS, (ref.subscription_id, ref.resource_group, ref.name, ref.kind.value), strict=True
            )
        )
        labels = ",".join(
            f'{name}="%s"' if name in self.extra else f'{name}="{_escape(vault[name]).replace("%", "%%")}"'
            for name in sorted(self.labels)
        )
        return f"{self.sample}{{{labels}}} %s\n"

    def render(self, state: VaultState, data: VaultData) -> bytes:
        template = self.template(state)
        order = self.extra_order
        lines = [
            template % (*[_escape(values[i]) for i in order], _number(value))
            for values, value in self.rows(state, data)
        ]
        return "".join(lines).encode()


def _header(name: str, kind: str, help_text: str, openmetrics: bool) -> bytes:
    if openmetrics:
        escaped = _escape(help_text)
        return f"# HELP {name} {escaped}\n# TYPE {name} {kind}\n".encode()
    sample = f"{name}_total" if kind == "counter" else name
    escaped = help_text.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {sample} {escaped}\n# TYPE {sample} {kind}\n".encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _finished_rows(_state: VaultState, data: VaultData) -> Rows:
    values: dict[tuple[str, str, str], float] = {}
    for (operation, job_type, status), value in data.finished.items():
        values[(operation, job_type, status)] = value
    # Every final status starts at 0 once a kind of job is known, so the first failure is an increase.
    kinds = {(operation, job_type) for operation, job_type, _status in data.finished}
    kinds.update((tj.operation, tj.job_type) for tj in data.active.values() if tj.running)
    for operation, job_type in kinds:
        for status in FINAL_ORDER:
            values.setdefault((operation, job_type, status), 0.0)
    return sorted(values.items())


def _transition_rows(_state: VaultState, data: VaultData) -> Rows:
    return sorted(data.transitions.items())


def _watched_rows(_state: VaultState, data: VaultData) -> Rows:
    counts = data.watched_counts()
    extra = sorted(status for status in counts if status not in WATCHED_STATUSES)
    return [((status,), float(counts.get(status, 0))) for status in (*WATCHED_STATUSES, *extra)]


def _running_rows(_state: VaultState, data: VaultData) -> Rows:
    running = sorted(
        (tj for tj in data.active.values() if tj.running and tj.start_time is not None),
        key=lambda tj: tj.job_id,
    )
    return [
        ((tj.job_id, tj.operation, tj.job_type, tj.entity), float(tj.start_time or 0.0)) for tj in running
    ]


def _items(data: VaultData) -> list[Any]:
    return [data.items[key] for key in sorted(data.items)]


def _last_success_rows(_state: VaultState, data: VaultData) -> Rows:
    return [((i.entity, i.operation), i.last_success) for i in _items(data) if i.last_success is not None]


def _last_ok_rows(_state: VaultState, data: VaultData) -> Rows:
    return [((i.entity, i.operation), float(i.last_status_success)) for i in _items(data)]


def _last_duration_rows(_state: VaultState, data: VaultData) -> Rows:
    return [((i.entity, i.operation), i.last_duration) for i in _items(data) if i.last_duration is not None]


def _size_rows(_state: VaultState, data: VaultData) -> Rows:
    sizes: dict[str, tuple[float, int]] = {}
    for item in data.items.values():
        if item.size_bytes is None or item.size_at is None:
            continue
        if item.entity not in sizes or item.size_at > sizes[item.entity][0]:
            sizes[item.entity] = (item.size_at, item.size_bytes)
    return [((entity,), float(size)) for entity, (_at, size) in sorted(sizes.items())]


def _inventory(data: VaultData) -> list[Any]:
    if data.inventory_hidden:
        return []
    return [data.inventory[key] for key in sorted(data.inventory)]


def _item_info_rows(_state: VaultState, data: VaultData) -> Rows:
    return [
        ((row.name, row.entity, row.item_type, row.policy, row.source_resource_id), 1.0)
        for row in _inventory(data)
    ]


def _recovery_point_rows(_state: VaultState, data: VaultData) -> Rows:
    return [
        ((row.name,), row.last_recovery_point)
        for row in _inventory(data)
        if row.last_recovery_point is not None
    ]


def _first_seen_rows(_state: VaultState, data: VaultData) -> Rows:
    return [((row.name,), row.first_seen) for row in _inventory(data)]


def _protection_rows(_state: VaultState, data: VaultData) -> Rows:
    return [
        ((row.name, state), 1.0 if row.protection_state == state else 0.0)
        for row in _inventory(data)
        for state in PROTECTION_STATES
    ]


def _health_rows(_state: VaultState, data: VaultData) -> Rows:
    return [
        ((row.name, kind), 1.0 if row.health == kind else 0.0)
        for row in _inventory(data)
        for kind in HEALTH_STATES
    ]


def _poll_error_rows(_state: VaultState, data: VaultData) -> Rows:
    extra = sorted(reason for reason in data.poll_errors if reason not in POLL_ERROR_REASONS)
    return [((reason,), data.poll_errors.get(reason, 0.0)) for reason in (*POLL_ERROR_REASONS, *extra)]


def _gap_rows(_state: VaultState, data: VaultData) -> Rows:
    return [((), data.discovery_gaps)]


def _last_poll_rows(state: VaultState, _data: VaultData) -> Rows:
    return [((), state.last_ok_poll)] if state.last_ok_poll is not None else []


_ITEM = ("entity", "operation")
FAMILIES: tuple[_Family, ...] = (
    _Family(
        "azure_backup_jobs_finished",
        "counter",
        "Jobs seen reaching a final status (Completed, CompletedWithWarnings, Failed, Cancelled); "
        "each job counted once, also across restarts.",
        ("operation", "job_type", "status"),
        JOBS,
        _finished_rows,
    ),
    _Family(
        "azure_backup_job_transitions",
        "counter",
        "Job status changes observed.",
        ("operation", "from_status", "to_status"),
        JOBS,
        _transition_rows,
    ),
    _Family(
        "azure_backup_jobs_watched",
        "gauge",
        "Jobs currently tracked, by status.",
        ("status",),
        JOBS,
        _watched_rows,
    ),
    _Family(
        "azure_backup_job_running_start_timestamp_seconds",
        "gauge",
        "Start time of each job now InProgress or Cancelling; the series ends with the job.",
        ("job_id", "operation", "job_type", "entity"),
        JOBS,
        _running_rows,
    ),
    _Family(
        "azure_backup_last_success_timestamp_seconds",
        "gauge",
        "End time of the newest Completed or CompletedWithWarnings job of the protected item.",
        _ITEM,
        ITEMS,
        _last_success_rows,
    ),
    _Family(
        "azure_backup_last_job_status_success",
        "gauge",
        "1 if the newest finished job of the protected item succeeded, else 0.",
        _ITEM,
        ITEMS,
        _last_ok_rows,
    ),
    _Family(
        "azure_backup_last_job_duration_seconds",
        "gauge",
        "Duration of the newest finished job of the protected item.",
        _ITEM,
        ITEMS,
        _last_duration_rows,
    ),
    _Family(
        "azure_backup_last_backup_size_bytes",
        "gauge",
        "Backup size reported by the newest job of the protected item that reported one.",
        ("entity",),
        ITEMS,
        _size_rows,
    ),
    _Family(
        "azure_backup_item_info",
        "gauge",
        "1 for every protected item (backup instance) in Azure's inventory of the vault.",
        ("item", "entity", "item_type", "policy", "source_resource_id"),
        INVENTORY,
        _item_info_rows,
    ),
    _Family(
        "azure_backup_item_last_recovery_point_timestamp_seconds",
        "gauge",
        "Newest recovery point Azure reports for the item; absent for an item never backed up.",
        ("item",),
        INVENTORY,
        _recovery_point_rows,
    ),
    _Family(
        "azure_backup_item_first_seen_timestamp_seconds",
        "gauge",
        "When the watcher first saw the item in the inventory.",
        ("item",),
        INVENTORY,
        _first_seen_rows,
    ),
    _Family(
        "azure_backup_item_protection_state",
        "gauge",
        "The item's protection (protected, pending, stopped, suspended, error, unknown): 1 for its "
        "current state, 0 for the others.",
        ("item", "state"),
        INVENTORY,
        _protection_rows,
    ),
    _Family(
        "azure_backup_item_health",
        "gauge",
        "The item's health as Azure reports it (healthy, action_required, action_suggested): 1 for the "
        "current one; all 0 where Azure reports none.",
        ("item", "health"),
        INVENTORY,
        _health_rows,
    ),
    _Family(
        "azure_backup_watcher_poll_errors",
        "counter",
        "Failed polls by reason: throttled, server_error, timeout, connection, auth, forbidden, "
        "not_found, bad_response.",
        ("reason",),
        POLLS,
        _poll_error_rows,
    ),
    _Family(
        "azure_backup_watcher_discovery_gaps",
        "counter",
        "Times the watcher was away longer than discovery.lookback, so jobs that started and ended "
        "meanwhile may be missing (logged as discovery_gap).",
        (),
        POLLS,
        _gap_rows,
    ),
    _Family(
        "azure_backup_watcher_last_successful_poll_timestamp_seconds",
        "gauge",
        "Last time a pass over the vault (its listings and job polls) ended without any error.",
        (),
        POLLS,
        _last_poll_rows,
    ),
)

DURATIONS = "azure_backup_job_duration_seconds"
DURATIONS_HELP = "Duration of finished jobs, from start to end."
DURATION_LABELS = ("operation", "job_type", "status")
# The job duration histogram (not per vault) goes after the first family, where it always was.
DURATIONS_AFTER = 0

_METRIC_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


class TrackerExposition(Collector):
    """The tracker's jobs, items and vaults as metric families, rendered from per-vault cached chunks.

    `build()` puts the exposition into an `_Assembly`, pausing (yielding) every few milliseconds of work.
    `collect()` gives the same samples to prometheus_client (tests, `get_sample_value`); a test holds
    the two byte for byte to each other.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._chunks: list[dict[str, _Chunk]] = [{} for _ in FAMILIES]
        self._sections: dict[int, _Section] = {}
        self._refs: tuple[VaultRef, ...] = ()
        self._vaults_version = 0
        self._headers = {
            (i, om): _Chunk.of(f.header(om)) for i, f in enumerate(FAMILIES) for om in (False, True)
        }
        self._durations_headers = {
            om: _Chunk.of(_header(DURATIONS, "histogram", DURATIONS_HELP, om)) for om in (False, True)
        }
        self._durations: _Chunk | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    # -- /metrics -------------------------------------------------------------------------------

    def build(self, body: _Assembly) -> Iterator[None]:
        """Add every family to `body`; yields whenever the event loop should get a turn.

        A family none of whose facts changed anywhere since the last scrape (the tracker's version of
        its kind is the same, and so is the watched vault set) is added as it was, without a look at
        each vault: at a thousand vaults that is most families at most scrapes.
        """
        watched = list(self.tracker.watched())
        refs = tuple(state.ref for state, _data in watched)
        if refs != self._refs:
            self._refs = refs
            self._vaults_version += 1
        deadline = time.perf_counter() + SLICE_SECONDS
        for index, family in enumerate(FAMILIES):
            body.add(self._headers[(index, body.openmetrics)])
            version = self.tracker.versions[family.group]
            section = self._sections.get(index)
            if section is None or section.version != version or section.vaults != self._vaults_version:
                section = yield from self._render_section(index, family, watched, version)
                deadline = time.perf_counter() + SLICE_SECONDS
            body.add_parts(section)
            if body.gzip and section.crc is None:
                # The family's CRC-32, from its chunks' (needed once per change, by a gzip scrape).
                crc = 0
                for chunk in section.chunks:
                    crc = crc32_combine(crc, chunk.crc, chunk.length)
                    if time.perf_counter() > deadline:
                        yield
                        deadline = time.perf_counter() + SLICE_SECONDS
                section.crc = crc
            body.count(section.crc or 0, section.length)
            if index == DURATIONS_AFTER:
                body.add(self._durations_headers[body.openmetrics])
                body.add(self._durations_chunk())
            if time.perf_counter() > deadline:
                yield
                deadline = time.perf_counter() + SLICE_SECONDS

    def _render_section(
        self, index: int, family: _Family, watched: list[tuple[VaultState, VaultData]], version: int
    ) -> Generator[None, None, _Section]:
        """The family's section again: each vault's chunk reused while its own version is the same."""
        cache = self._chunks[index]
        chunks: list[_Chunk] = []
        length = 0
        deadline = time.perf_counter() + SLICE_SECONDS
        for state, data in watched:
            ref = state.ref
            key = (data.versions[family.group], ref)
            chunk = cache.get(ref.key)
            if chunk is None or chunk.key != key:
                chunk = cache[ref.key] = _Chunk.of(family.render(state, data), key)
            if chunk.length:
                chunks.append(chunk)
                length += chunk.length
            if time.perf_counter() > deadline:
                yield
                deadline = time.perf_counter() + SLICE_SECONDS
        if len(cache) > len(watched):  # vaults no longer watched
            keys = {state.ref.key for state, _data in watched}
            self._chunks[index] = {key: chunk for key, chunk in cache.items() if key in keys}
        section = self._sections[index] = _Section(chunks, version, self._vaults_version, length)
        return section

    def _durations_chunk(self) -> _Chunk:
        version = self.tracker.durations_version
        if self._durations is None or self._durations.key != version:
            lines = []
            for values, (buckets, total) in self._duration_rows():
                labels = _label_text(DURATION_LABELS, values)
                for le, count in buckets:
                    bucket = _label_text((*DURATION_LABELS, "le"), (*values, le))
                    lines.append(f"{DURATIONS}_bucket{bucket} {_number(count)}\n")
                lines.append(f"{DURATIONS}_count{labels} {_number(buckets[-1][1])}\n")
                lines.append(f"{DURATIONS}_sum{labels} {_number(total)}\n")
            self._durations = _Chunk.of("".join(lines).encode(), version)
        return self._durations

    def _duration_rows(self) -> list[tuple[tuple[str, ...], tuple[list[tuple[str, float]], float]]]:
        rows: list[tuple[tuple[str, ...], tuple[list[tuple[str, float]], float]]] = []
        for values, (buckets, total, count) in sorted(self.tracker.durations.items()):
            cumulative = []
            running = 0
            for bound, n in zip(DURATION_BUCKETS, buckets, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            cumulative.append(("+Inf", float(count)))
            rows.append((values, (cumulative, total)))
        return rows

    # -- prometheus_client ----------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        watched = list(self.tracker.watched())
        for index, family in enumerate(FAMILIES):
            metric = _METRIC_FAMILY[family.kind](family.name, family.help, labels=list(family.labels))
            for state, data in watched:
                ref = state.ref
                vault = [ref.subscription_id, ref.resource_group, ref.name, ref.kind.value]
                for values, value in family.rows(state, data):
                    metric.add_metric([*vault, *values], value)
            yield metric
            if index == DURATIONS_AFTER:
                histogram = HistogramMetricFamily(DURATIONS, DURATIONS_HELP, labels=list(DURATION_LABELS))
                for values, (buckets, total) in self._duration_rows():
                    histogram.add_metric(list(values), buckets, total)
                yield histogram


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _le(bound: float) -> str:
    return f"{bound:.1f}" if bound != int(bound) else f"{int(bound)}.0"
