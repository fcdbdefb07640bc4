"""A store written by an earlier release opens, migrates and keeps every total, transition and last success."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.conftest import every_job
from watcher.azure.models import VaultKind, VaultRef
from watcher.metrics import Metrics
from watcher.state import FINISHED, TRANSITIONS, Tracker, VaultState
from watcher.store import SCHEMA_VERSION, Store

RELEASE_0_1_0 = Path(__file__).resolve().parent / "data" / "stores" / "release-0.1.0-884d313.sqlite3"


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "state.sqlite3"
    shutil.copyfile(RELEASE_0_1_0, path)
    return path


def _before(path: Path) -> tuple[Counter[str], dict[tuple[str, str, str], float | None], int, int]:
    """From the old file itself: finished totals by status, last successes, transitions, jobs."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        totals: Counter[str] = Counter()
        for labels, value in conn.execute("SELECT labels, value FROM counters WHERE metric = ?", (FINISHED,)):
            totals[json.loads(labels)["status"]] += value
        items = {
            (vault_key, entity, operation): last_success
            for vault_key, entity, operation, last_success in conn.execute(
                "SELECT vault_key, entity, operation, last_success FROM items"
            )
        }
        transitions = conn.execute("SELECT count(*) FROM transitions").fetchone()[0]
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()
    return totals, items, transitions, jobs


def test_a_release_0_1_0_store_migrates_and_keeps_totals_history_and_last_successes(tmp_path: Path) -> None:
    """Schema 1 -> current: totals by status, every transition, every item's last success, all kept; every vault is a Recovery Services vault."""
    path = _copy(tmp_path)
    totals, items, transitions, jobs = _before(path)
    assert sum(totals.values()) > 0
    assert any(v is not None for v in items.values())

    store = Store.open(path)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tracker = Tracker(store)
        migrated: Counter[str] = Counter()
        for labels, value in tracker.counters[FINISHED].items():
            parsed = json.loads(labels)
            assert parsed["vault_type"] == "recovery_services"
            migrated[parsed["status"]] += value
        assert migrated == totals
        assert all(
            json.loads(labels)["vault_type"] == "recovery_services"
            for labels in tracker.counters[TRANSITIONS]
        )
        assert {
            (key.removeprefix("recovery_services:"), entity, op): item.last_success
            for (key, entity, op), item in tracker.items.items()
        } == items
        assert all(tj.vault.kind is VaultKind.RECOVERY_SERVICES for tj in every_job(tracker).values())
        assert len(every_job(tracker)) == jobs
        assert len(store.transitions()) == transitions
    finally:
        store.close()


def test_a_migrated_store_serves_its_totals_with_vault_type_on_metrics(tmp_path: Path) -> None:
    """The migrated totals reach /metrics under vault_type="recovery_services", and reopening migrates nothing twice."""
    path = _copy(tmp_path)
    totals, _items, _transitions, _jobs = _before(path)
    Store.open(path).close()
    store = Store.open(path)  # a second start finds the current schema
    try:
        tracker = Tracker(store)
        vaults = {tj.vault.key: tj.vault for tj in every_job(tracker).values()}
        tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in vaults.values()])
        metrics = Metrics(CollectorRegistry(), "test")
        metrics.watch(tracker)
        by_status: Counter[str] = Counter()
        for family in metrics.registry.collect():
            if family.name == "azure_backup_jobs_finished":
                for sample in family.samples:
                    assert sample.labels["vault_type"] == "recovery_services"
                    by_status[sample.labels["status"]] += sample.value
        assert +by_status == totals
        assert all(isinstance(ref, VaultRef) for ref in vaults.values())
    finally:
        store.close()
