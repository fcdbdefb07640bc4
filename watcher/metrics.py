"""Every metric backup-watcher exports, in one place; the registry is injected.

State that comes and goes (running jobs, per-item outcomes, watched counts) and the job totals that
are restored from the store are rendered by `TrackerCollector` from an immutable snapshot. What the
daemon itself observes about its requests to Azure uses ordinary counters and histograms.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

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
from watcher.state import DURATION_BUCKETS, FINISHED, TRANSITIONS, Snapshot

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


class Metrics:
    """The daemon's own metrics, plus the collector of job state once a tracker exists."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        # The daemon's own metrics live apart so /metrics can format them with prometheus_client and the
        # tracker's families with `TrackerCollector.lines`; `registry` still collects both.
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
        self._collector: TrackerCollector | None = None
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

    def render(self, openmetrics: bool) -> bytes:
        """The /metrics body, in the OpenMetrics form or the Prometheus text form."""
        tracker = self._collector.lines(openmetrics) if self._collector is not None else []
        if not openmetrics:
            return b"".join([generate_latest(self._own), *tracker])
        own = generate_openmetrics(self._own).removesuffix(b"# EOF\n")
        return b"".join([own, *tracker, b"# EOF\n"])

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Render job state from `snapshot()` at every scrape."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = TrackerCollector(snapshot)
        self.registry.register(self._collector)


def _label_sets(metric: Any) -> Iterator[tuple[str, ...]]:
    # prometheus_client keeps children by label tuple; there is no public iterator for them.
    with metric._lock:
        yield from list(metric._metrics.keys())


def _vault_values(ref: VaultRef) -> list[str]:
    return [ref.subscription_id, ref.resource_group, ref.name, ref.kind.value]


@dataclass(frozen=True, slots=True)
class _Family:
    """One family of the tracker's metrics as rows of label values; rendered by either path."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    # (label values, value); a histogram's value is (cumulative [(le, count)], sum).
    rows: list[tuple[tuple[str, ...], Any]]


_METRIC_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


class TrackerCollector(Collector):
    """Job state from the tracker's snapshot: nothing here awaits or touches the store.

    `collect()` serves prometheus_client (tests, `get_sample_value`); /metrics uses `lines()`, which
    writes the same samples directly and reuses each series' line while its value stays the same:
    prometheus_client spends about 25 us formatting a sample, and 10,000 items make 40,000 series.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot
        self._lines: dict[tuple[str, tuple[str, ...]], tuple[Any, bytes]] = {}

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for family in self._families(self.snapshot()):
            if family.kind == "histogram":
                metric: Any = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
                for values, (buckets, total) in family.rows:
                    metric.add_metric(list(values), buckets, total)
            else:
                metric = _METRIC_FAMILY[family.kind](family.name, family.help, labels=list(family.labels))
                for values, value in family.rows:
                    metric.add_metric(list(values), value)
            yield metric

    def lines(self, openmetrics: bool) -> list[bytes]:
        """The exposition of every family, in the Prometheus or the OpenMetrics form, line by line."""
        out: list[bytes] = []
        previous, self._lines = self._lines, {}
        for family in self._families(self.snapshot()):
            sample = f"{family.name}_total" if family.kind == "counter" else family.name
            header = family.name if openmetrics else sample
            help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
            if openmetrics:
                help_text = help_text.replace('"', r"\"")
            out.append(f"# HELP {header} {help_text}\n# TYPE {header} {family.kind}\n".encode())
            order = sorted(range(len(family.labels)), key=family.labels.__getitem__)
            if family.kind == "histogram":
                out.extend(line.encode() for line in _histogram_lines(family, order))
                continue
            for values, value in family.rows:
                key = (family.name, values)
                cached = previous.get(key)
                if cached is None or cached[0] != value:
                    labels = _label_text(family.labels, order, values)
                    cached = (value, f"{sample}{labels} {_number(value)}\n".encode())
                self._lines[key] = cached
                out.append(cached[1])
        return out

    def _families(self, snap: Snapshot) -> Iterator[_Family]:
        yield self._finished(snap)
        yield self._durations(snap)
        yield self._transitions(snap)
        yield self._watched(snap)
        yield self._running(snap)
        yield from self._items(snap)
        yield from self._inventory(snap)
        yield from self._polls(snap)

    def _finished(self, snap: Snapshot) -> _Family:
        values: dict[tuple[str, ...], float] = {}
        for labels_json, value in snap.counters.get(FINISHED, {}).items():
            labels = json.loads(labels_json)
            key = tuple(labels[k] for k in (*VAULT_LABELS, "operation", "job_type"))
            values[(*key, labels["status"])] = value
            # Every final status starts at 0 once a kind of job is known, so the first failure is an increase.
            for status in FINAL_ORDER:
                values.setdefault((*key, status), 0.0)
        for vault, _job_id, operation, job_type, _entity, _start in snap.running:
            key = (*_vault_values(vault), operation, job_type)
            for status in FINAL_ORDER:
                values.setdefault((*key, status), 0.0)
        return _Family(
            "azure_backup_jobs_finished",
            "counter",
            "Jobs seen reaching a final status (Completed, CompletedWithWarnings, Failed, Cancelled); "
            "each job counted once, also across restarts.",
            (*VAULT_LABELS, "operation", "job_type", "status"),
            sorted(values.items()),
        )

    def _durations(self, snap: Snapshot) -> _Family:
        rows: list[tuple[tuple[str, ...], Any]] = []
        for (operation, job_type, status), (buckets, total, count) in sorted(snap.durations.items()):
            cumulative = []
            running = 0
            for bound, n in zip(DURATION_BUCKETS, buckets, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            cumulative.append(("+Inf", float(count)))
            rows.append(((operation, job_type, status), (cumulative, total)))
        return _Family(
            "azure_backup_job_duration_seconds",
            "histogram",
            "Duration of finished jobs, from start to end.",
            ("operation", "job_type", "status"),
            rows,
        )

    def _transitions(self, snap: Snapshot) -> _Family:
        names = (*VAULT_LABELS, "operation", "from_status", "to_status")
        rows: list[tuple[tuple[str, ...], Any]] = []
        for labels_json, value in sorted(snap.counters.get(TRANSITIONS, {}).items()):
            labels = json.loads(labels_json)
            rows.append((tuple(labels[k] for k in names), value))
        return _Family("azure_backup_job_transitions", "counter", "Job status changes observed.", names, rows)

    def _watched(self, snap: Snapshot) -> _Family:
        counts = {(vault.key, status): n for vault, status, n in snap.watched}
        extra: dict[str, set[str]] = {}
        for key, status in counts:
            if status not in WATCHED_STATUSES:
                extra.setdefault(key, set()).add(status)
        rows: list[tuple[tuple[str, ...], Any]] = []
        for vault in snap.vaults:
            for status in (*WATCHED_STATUSES, *sorted(extra.get(vault.key, ()))):
                rows.append(((*_vault_values(vault), status), float(counts.get((vault.key, status), 0))))
        return _Family(
            "azure_backup_jobs_watched",
            "gauge",
            "Jobs currently tracked, by status.",
            (*VAULT_LABELS, "status"),
            rows,
        )

    def _running(self, snap: Snapshot) -> _Family:
        return _Family(
            "azure_backup_job_running_start_timestamp_seconds",
            "gauge",
            "Start time of each job now InProgress or Cancelling; the series ends with the job.",
            (*VAULT_LABELS, "job_id", "operation", "job_type", "entity"),
            [
                ((*_vault_values(vault), job_id, operation, job_type, entity), start)
                for vault, job_id, operation, job_type, entity, start in snap.running
            ],
        )

    def _items(self, snap: Snapshot) -> Iterator[_Family]:
        labels = (*VAULT_LABELS, "entity", "operation")
        last_success: list[tuple[tuple[str, ...], Any]] = []
        last_ok: list[tuple[tuple[str, ...], Any]] = []
        last_duration: list[tuple[tuple[str, ...], Any]] = []
        sizes: dict[tuple[str, ...], tuple[float, int]] = {}
        for item in sorted(snap.items, key=lambda i: (i.vault_key, i.entity, i.operation)):
            vault = (item.subscription_id, item.resource_group, item.vault, item.vault_type)
            values = (*vault, item.entity, item.operation)
            if item.last_success is not None:
                last_success.append((values, item.last_success))
            last_ok.append((values, float(item.last_status_success)))
            if item.last_duration is not None:
                last_duration.append((values, item.last_duration))
            if item.size_bytes is not None and item.size_at is not None:
                entity = (*vault, item.entity)
                if entity not in sizes or item.size_at > sizes[entity][0]:
                    sizes[entity] = (item.size_at, item.size_bytes)
        yield _Family(
            "azure_backup_last_success_timestamp_seconds",
            "gauge",
            "End time of the newest Completed or CompletedWithWarnings job of the protected item.",
            labels,
            last_success,
        )
        yield _Family(
            "azure_backup_last_job_status_success",
            "gauge",
            "1 if the newest finished job of the protected item succeeded, else 0.",
            labels,
            last_ok,
        )
        yield _Family(
            "azure_backup_last_job_duration_seconds",
            "gauge",
            "Duration of the newest finished job of the protected item.",
            labels,
            last_duration,
        )
        yield _Family(
            "azure_backup_last_backup_size_bytes",
            "gauge",
            "Backup size reported by the newest job of the protected item that reported one.",
            (*VAULT_LABELS, "entity"),
            [(entity, float(value)) for entity, (_at, value) in sorted(sizes.items())],
        )

    def _inventory(self, snap: Snapshot) -> Iterator[_Family]:
        info: list[tuple[tuple[str, ...], Any]] = []
        points: list[tuple[tuple[str, ...], Any]] = []
        first_seen: list[tuple[tuple[str, ...], Any]] = []
        states: list[tuple[tuple[str, ...], Any]] = []
        health: list[tuple[tuple[str, ...], Any]] = []
        for row in sorted(snap.inventory, key=lambda r: (r.vault_key, r.item)):
            item = (row.subscription_id, row.resource_group, row.vault, row.vault_type, row.name)
            info.append(((*item, row.entity, row.item_type, row.policy, row.source_resource_id), 1.0))
            if row.last_recovery_point is not None:
                points.append((item, row.last_recovery_point))
            first_seen.append((item, row.first_seen))
            for state in PROTECTION_STATES:
                states.append(((*item, state), 1.0 if row.protection_state == state else 0.0))
            for kind in HEALTH_STATES:
                health.append(((*item, kind), 1.0 if row.health == kind else 0.0))
        labels = (*VAULT_LABELS, "item")
        yield _Family(
            "azure_backup_item_info",
            "gauge",
            "1 for every protected item (backup instance) in Azure's inventory of the vault.",
            (*labels, "entity", "item_type", "policy", "source_resource_id"),
            info,
        )
        yield _Family(
            "azure_backup_item_last_recovery_point_timestamp_seconds",
            "gauge",
            "Newest recovery point Azure reports for the item; absent for an item never backed up.",
            labels,
            points,
        )
        yield _Family(
            "azure_backup_item_first_seen_timestamp_seconds",
            "gauge",
            "When the watcher first saw the item in the inventory.",
            labels,
            first_seen,
        )
        yield _Family(
            "azure_backup_item_protection_state",
            "gauge",
            "The item's protection (protected, pending, stopped, suspended, error, unknown): 1 for its "
            "current state, 0 for the others.",
            (*labels, "state"),
            states,
        )
        yield _Family(
            "azure_backup_item_health",
            "gauge",
            "The item's health as Azure reports it (healthy, action_required, action_suggested): 1 for the "
            "current one; all 0 where Azure reports none.",
            (*labels, "health"),
            health,
        )

    def _polls(self, snap: Snapshot) -> Iterator[_Family]:
        extra: dict[str, set[str]] = {}
        for key, reason in snap.poll_errors:
            if reason not in POLL_ERROR_REASONS:
                extra.setdefault(key, set()).add(reason)
        errors: list[tuple[tuple[str, ...], Any]] = []
        for vault in snap.vaults:
            for reason in (*POLL_ERROR_REASONS, *sorted(extra.get(vault.key, ()))):
                count = snap.poll_errors.get((vault.key, reason), 0.0)
                errors.append(((*_vault_values(vault), reason), count))
        yield _Family(
            "azure_backup_watcher_poll_errors",
            "counter",
            "Failed polls by reason: throttled, server_error, timeout, connection, auth, forbidden, "
            "not_found, bad_response.",
            (*VAULT_LABELS, "reason"),
            errors,
        )
        yield _Family(
            "azure_backup_watcher_discovery_gaps",
            "counter",
            "Times the watcher was away longer than discovery.lookback, so jobs that started and ended "
            "meanwhile may be missing (logged as discovery_gap).",
            VAULT_LABELS,
            [(tuple(_vault_values(vault)), snap.discovery_gaps.get(vault.key, 0.0)) for vault in snap.vaults],
        )
        yield _Family(
            "azure_backup_watcher_last_successful_poll_timestamp_seconds",
            "gauge",
            "Last time a pass over the vault (its listings and job polls) ended without any error.",
            VAULT_LABELS,
            [(tuple(_vault_values(vault)), when) for vault, when in snap.last_ok_poll],
        )


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(names: tuple[str, ...], order: list[int], values: tuple[str, ...]) -> str:
    return "{" + ",".join(f'{names[i]}="{_escape(values[i])}"' for i in order) + "}"


def _histogram_lines(family: _Family, order: list[int]) -> Iterator[str]:
    names = (*family.labels, "le")
    with_le = sorted(range(len(names)), key=names.__getitem__)
    for values, (buckets, total) in family.rows:
        for le, count in buckets:
            yield f"{family.name}_bucket{_label_text(names, with_le, (*values, le))} {_number(count)}\n"
        labels = _label_text(family.labels, order, values)
        yield f"{family.name}_count{labels} {_number(buckets[-1][1])}\n"
        yield f"{family.name}_sum{labels} {_number(total)}\n"


def _le(bound: float) -> str:
    return f"{bound:.1f}" if bound != int(bound) else f"{int(bound)}.0"
