"""Every metric backup-watcher exports, in one place; the registry is injected.

State that comes and goes (running jobs, per-item outcomes, watched counts) and the job totals that
are restored from the store are rendered by `TrackerCollector` from an immutable snapshot. What the
daemon itself observes about its requests to Azure uses ordinary counters and histograms.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from watcher.azure.models import ACTIVE_STATUSES, FINAL_STATUSES
from watcher.state import DURATION_BUCKETS, FINISHED, TRANSITIONS, Snapshot

# `_created` series double the output and no rule of ours uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

VAULT_LABELS = ("subscription_id", "resource_group", "vault")
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
WATCHED_STATUSES = ("InProgress", "Cancelling", "Completed", "CompletedWithWarnings", "Failed", "Cancelled")
FINAL_ORDER = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
assert set(FINAL_ORDER) == FINAL_STATUSES
assert set(WATCHED_STATUSES) == FINAL_STATUSES | ACTIVE_STATUSES

API_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The daemon's own metrics, plus the collector of job state once a tracker exists."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "azure_backup_watcher_build_info",
            "backup-watcher build information; always 1.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(version=version).set(1)
        self.api_requests = Counter(
            "azure_backup_watcher_api_requests_total",
            "Requests sent to Azure Resource Manager, by kind and HTTP status (error: no response).",
            ["subscription_id", "endpoint", "code"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "azure_backup_watcher_api_request_duration_seconds",
            "Latency of requests to Azure Resource Manager.",
            ["endpoint"],
            buckets=API_LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_throttled = Counter(
            "azure_backup_watcher_api_throttled_total",
            "429 Too Many Requests answers from Azure Resource Manager.",
            ["subscription_id"],
            registry=registry,
        )
        self.ratelimit_remaining = Gauge(
            "azure_backup_watcher_ratelimit_remaining_reads",
            "Remaining read budget Azure last reported for the subscription "
            "(x-ms-ratelimit-remaining-subscription-reads or -resource-requests).",
            ["subscription_id"],
            registry=registry,
        )
        self.config_reload_ok = Gauge(
            "azure_backup_watcher_config_last_reload_successful",
            "1 if the last config (re)load succeeded, else 0.",
            registry=registry,
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


def _vault_values(ref: Any) -> list[str]:
    return [ref.subscription_id, ref.resource_group, ref.name]


class TrackerCollector(Collector):
    """Job state from the tracker's snapshot: nothing here awaits or touches the store."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        yield from self._finished(snap)
        yield self._durations(snap)
        yield self._transitions(snap)
        yield self._watched(snap)
        yield self._running(snap)
        yield from self._items(snap)
        yield from self._polls(snap)

    def _finished(self, snap: Snapshot) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "azure_backup_jobs_finished",
            "Jobs seen reaching a final status (Completed, CompletedWithWarnings, Failed, Cancelled); "
            "each job counted once, also across restarts.",
            labels=[*VAULT_LABELS, "operation", "job_type", "status"],
        )
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
        for labels, value in sorted(values.items()):
            family.add_metric(list(labels), value)
        yield family

    def _durations(self, snap: Snapshot) -> Metric:
        family = HistogramMetricFamily(
            "azure_backup_job_duration_seconds",
            "Duration of finished jobs, from start to end.",
            labels=["operation", "job_type", "status"],
        )
        for (operation, job_type, status), (buckets, total, count) in sorted(snap.durations.items()):
            cumulative = []
            running = 0
            for bound, n in zip(DURATION_BUCKETS, buckets, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            cumulative.append(("+Inf", float(count)))
            family.add_metric([operation, job_type, status], cumulative, total)
        return family

    def _transitions(self, snap: Snapshot) -> Metric:
        family = CounterMetricFamily(
            "azure_backup_job_transitions",
            "Job status changes observed.",
            labels=[*VAULT_LABELS, "operation", "from_status", "to_status"],
        )
        for labels_json, value in sorted(snap.counters.get(TRANSITIONS, {}).items()):
            labels = json.loads(labels_json)
            family.add_metric(
                [labels[k] for k in (*VAULT_LABELS, "operation", "from_status", "to_status")], value
            )
        return family

    def _watched(self, snap: Snapshot) -> Metric:
        family = GaugeMetricFamily(
            "azure_backup_jobs_watched",
            "Jobs currently tracked, by status.",
            labels=[*VAULT_LABELS, "status"],
        )
        counts = {(vault.key, status): n for vault, status, n in snap.watched}
        for vault in snap.vaults:
            statuses = list(WATCHED_STATUSES) + sorted(
                {s for (k, s) in counts if k == vault.key and s not in WATCHED_STATUSES}
            )
            for status in statuses:
                family.add_metric([*_vault_values(vault), status], float(counts.get((vault.key, status), 0)))
        return family

    def _running(self, snap: Snapshot) -> Metric:
        family = GaugeMetricFamily(
            "azure_backup_job_running_start_timestamp_seconds",
            "Start time of each job now InProgress or Cancelling; the series ends with the job.",
            labels=[*VAULT_LABELS, "job_id", "operation", "job_type", "entity"],
        )
        for vault, job_id, operation, job_type, entity, start in snap.running:
            family.add_metric([*_vault_values(vault), job_id, operation, job_type, entity], start)
        return family

    def _items(self, snap: Snapshot) -> Iterator[Metric]:
        labels = [*VAULT_LABELS, "entity", "operation"]
        last_success = GaugeMetricFamily(
            "azure_backup_last_success_timestamp_seconds",
            "End time of the newest Completed or CompletedWithWarnings job of the protected item.",
            labels=labels,
        )
        last_ok = GaugeMetricFamily(
            "azure_backup_last_job_status_success",
            "1 if the newest finished job of the protected item succeeded, else 0.",
            labels=labels,
        )
        last_duration = GaugeMetricFamily(
            "azure_backup_last_job_duration_seconds",
            "Duration of the newest finished job of the protected item.",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "azure_backup_last_backup_size_bytes",
            "Backup size reported by the newest job of the protected item that reported one.",
            labels=[*VAULT_LABELS, "entity"],
        )
        sizes: dict[tuple[str, str, str, str], tuple[float, int]] = {}
        for item in sorted(snap.items, key=lambda i: (i.vault_key, i.entity, i.operation)):
            values = [item.subscription_id, item.resource_group, item.vault, item.entity, item.operation]
            if item.last_success is not None:
                last_success.add_metric(values, item.last_success)
            last_ok.add_metric(values, float(item.last_status_success))
            if item.last_duration is not None:
                last_duration.add_metric(values, item.last_duration)
            if item.size_bytes is not None and item.size_at is not None:
                entity = (item.subscription_id, item.resource_group, item.vault, item.entity)
                if entity not in sizes or item.size_at > sizes[entity][0]:
                    sizes[entity] = (item.size_at, item.size_bytes)
        for entity, (_at, value) in sorted(sizes.items()):
            size.add_metric(list(entity), float(value))
        yield last_success
        yield last_ok
        yield last_duration
        yield size

    def _polls(self, snap: Snapshot) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "azure_backup_watcher_poll_errors",
            "Failed polls by reason: throttled, server_error, timeout, connection, auth, forbidden, "
            "not_found, bad_response.",
            labels=[*VAULT_LABELS, "reason"],
        )
        for vault in snap.vaults:
            reasons = list(POLL_ERROR_REASONS) + sorted(
                {r for (k, r) in snap.poll_errors if k == vault.key and r not in POLL_ERROR_REASONS}
            )
            for reason in reasons:
                errors.add_metric(
                    [*_vault_values(vault), reason], snap.poll_errors.get((vault.key, reason), 0.0)
                )
        yield errors
        last_poll = GaugeMetricFamily(
            "azure_backup_watcher_last_successful_poll_timestamp_seconds",
            "Last time all of the vault's jobs were polled without error.",
            labels=list(VAULT_LABELS),
        )
        for vault, when in snap.last_ok_poll:
            last_poll.add_metric(_vault_values(vault), when)
        yield last_poll


def _le(bound: float) -> str:
    return f"{bound:.1f}" if bound != int(bound) else f"{int(bound)}.0"
