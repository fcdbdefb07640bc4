"""The SQLite store and the tracker on top of it: schema, locking, counting once, pruning."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import SUB, FakeClock, every_job
from watcher.azure.models import Job, VaultRef
from watcher.errors import StoreError
from watcher.metrics import Metrics
from watcher.state import FINISHED, Tracker, VaultState
from watcher.store import SCHEMA_VERSION, Store

VAULT = VaultRef(SUB, "rg-store", "vault-s")


def _job(job_id: str, status: str, start: float, end: float | None, *, entity: str = "vm-1") -> Job:
    return Job(
        job_id=job_id,
        vault=VAULT,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        operation_detail="",
        status=status,
        entity=entity,
        backup_management_type="AzureIaasVM",
        start_time=datetime.fromtimestamp(start, UTC),
        end_time=datetime.fromtimestamp(end, UTC) if end is not None else None,
        duration_seconds=None,
    )


def _tracker(path: Path, clock: FakeClock, jobs: tuple[str, ...] = ()) -> Tracker:
    tracker = Tracker(Store.open(path), clock=clock)
    tracker.set_vaults([VaultState(ref=VAULT, discover=True, configured_jobs=jobs)])
    return tracker


def test_new_store_has_current_schema_in_wal_mode(tmp_path: Path) -> None:
    """A new store is created with the current schema version and WAL journaling."""
    store = Store.open(tmp_path / "s.sqlite3")
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_second_writer_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """Two daemons on one store: the second gets a StoreError naming the lock; readers are fine."""
    first = Store.open(tmp_path / "s.sqlite3")
    try:
        with pytest.raises(StoreError, match="locked by another running backup-watcher"):
            Store.open(tmp_path / "s.sqlite3")
        reader = Store.open(tmp_path / "s.sqlite3", read_only=True)
        reader.close()
    finally:
        first.close()
    Store.open(tmp_path / "s.sqlite3").close()


def test_garbage_file_and_newer_schema_are_clear_errors(tmp_path: Path) -> None:
    """A file that is not SQLite, or a schema from a newer version, is refused with the path in the message."""
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite3"):
        Store.open(junk)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this backup-watcher"):
        Store.open(newer)


def test_a_job_is_counted_once_even_when_seen_again(tmp_path: Path) -> None:
    """Observing the same final job again (another poll, a restart, a listing) never counts it twice."""
    clock = FakeClock()
    path = tmp_path / "s.sqlite3"
    tracker = _tracker(path, clock)
    start = clock() - 100
    tracker.observe(VAULT, _job("j1", "InProgress", start, None))
    clock.advance(50)
    tracker.observe(VAULT, _job("j1", "Completed", start, clock()))
    tracker.observe(VAULT, _job("j1", "Completed", start, clock()))
    assert sum(tracker.counters[FINISHED].values()) == 1
    tracker.store.close()
    again = _tracker(path, clock)
    again.observe(VAULT, _job("j1", "Completed", start, clock()))
    assert sum(again.counters[FINISHED].values()) == 1
    assert [(t["from_status"], t["to_status"]) for t in again.store.transitions("j1")] == [
        (None, "InProgress"),
        ("InProgress", "Completed"),
    ]
    again.store.close()


def test_history_from_before_the_first_start_is_recorded_but_not_counted(tmp_path: Path) -> None:
    """A job that ended long before the store existed feeds the item's gauges but is not 'seen finishing'."""
    clock = FakeClock()
    tracker = _tracker(tmp_path / "s.sqlite3", clock)
    old_end = clock() - 3 * 86400
    tracker.observe(VAULT, _job("old", "Completed", old_end - 600, old_end))
    assert sum(tracker.counters[FINISHED].values()) == 0
    item = tracker.items[(VAULT.key, "vm-1", "Backup")]
    assert item.last_success == pytest.approx(old_end)
    tracker.store.close()


def test_pruning_forgets_old_finished_jobs_without_losing_totals(tmp_path: Path) -> None:
    """Old finished jobs leave memory and the store; totals and item state stay; configured jobs stay."""
    clock = FakeClock()
    path = tmp_path / "s.sqlite3"
    tracker = _tracker(path, clock, jobs=("keep",))
    start = clock() - 60
    for job_id in ("keep", "drop", "running"):
        tracker.observe(VAULT, _job(job_id, "InProgress", start, None, entity=f"vm-{job_id}"))
    clock.advance(30)
    tracker.observe(VAULT, _job("keep", "Completed", start, clock(), entity="vm-keep"))
    tracker.observe(VAULT, _job("drop", "Failed", start, clock(), entity="vm-drop"))
    totals = dict(tracker.counters[FINISHED])
    clock.advance(40 * 86400)
    removed, more = tracker.prune(lookback=86400, retention=30 * 86400)
    assert (removed, more) == (1, False)
    assert {k[1] for k in every_job(tracker)} == {"keep", "running"}
    assert tracker.counters[FINISHED] == totals
    # No job for longer than the retention: the item leaves /metrics; its row stays in the store.
    assert (VAULT.key, "vm-drop", "Backup") not in tracker.items
    assert "vm-drop" in {item.entity for item in tracker.store.items()}
    assert tracker.store.transitions() == []
    tracker.store.close()
    restored = _tracker(path, clock, jobs=("keep",))
    assert {k[1] for k in every_job(restored)} == {"keep", "running"}
    assert restored.counters[FINISHED] == totals
    restored.store.close()


def test_an_item_without_jobs_for_the_retention_leaves_the_metrics_until_its_next_job(tmp_path: Path) -> None:
    """A decommissioned item's series age out after store.retention without jobs; a new job brings it back."""
    clock = FakeClock()
    tracker = _tracker(tmp_path / "s.sqlite3", clock)
    start = clock() - 600
    tracker.observe(VAULT, _job("old", "Completed", start, clock(), entity="vm-gone"))
    clock.advance(20 * 86400)
    tracker.observe(VAULT, _job("new", "Completed", clock() - 600, clock(), entity="vm-alive"))
    clock.advance(11 * 86400)
    metrics = Metrics(CollectorRegistry(), "test")
    metrics.watch(tracker)
    assert 'entity="vm-gone"' in metrics.render(False).decode()
    tracker.prune(lookback=86400, retention=30 * 86400)
    assert {key[1] for key in tracker.items} == {"vm-alive"}
    scrape = metrics.render(False).decode()
    assert 'entity="vm-alive"' in scrape
    assert 'entity="vm-gone"' not in scrape
    tracker.observe(VAULT, _job("back", "Completed", clock() - 600, clock(), entity="vm-gone"))
    assert {key[1] for key in tracker.items} == {"vm-alive", "vm-gone"}
    tracker.store.close()


def test_a_commit_that_fails_ends_its_transaction(tmp_path: Path) -> None:
    """A write whose COMMIT fails raises StoreError and leaves no transaction open: the next write works."""
    clock = FakeClock()
    tracker = _tracker(tmp_path / "s.sqlite3", clock)
    store = tracker.store
    # A deferred foreign key that every new job row violates: the violation surfaces at COMMIT.
    store.conn.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TEMP TABLE child (id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TEMP TRIGGER orphan AFTER INSERT ON main.jobs BEGIN INSERT INTO child VALUES (1); END;
        """
    )
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        tracker.observe(VAULT, _job("a", "InProgress", clock() - 60, None))
    assert not store.conn.in_transaction
    store.conn.execute("DROP TRIGGER temp.orphan")
    tracker.observe(VAULT, _job("b", "InProgress", clock() - 60, None))
    assert [row.job_id for row in store.jobs()] == ["b"]
    store.close()


def test_a_final_job_is_never_set_back_to_running(tmp_path: Path) -> None:
    """A listing that raced the GET which saw the end (it still says InProgress) does not undo the end."""
    clock = FakeClock()
    tracker = _tracker(tmp_path / "s.sqlite3", clock)
    start = clock() - 600
    tracker.observe(VAULT, _job("j", "InProgress", start, None))
    tracker.observe(VAULT, _job("j", "Completed", start, clock()))
    stale = tracker.observe_many(VAULT, [_job("j", "InProgress", start, None)], detailed=False)
    assert stale == []
    tj = tracker.known(VAULT, "j")
    assert tj is not None
    assert (tj.status, str(tj.state)) == ("Completed", "final")
    assert [t["to_status"] for t in tracker.store.transitions("j")] == ["InProgress", "Completed"]
    tracker.store.close()
