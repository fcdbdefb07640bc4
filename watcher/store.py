"""The SQLite state store: jobs, every status transition, per-item state and metric totals.

WAL mode; every change is one transaction committed before the metrics or the log hear of it, so a
killed process loses nothing it reported. The schema carries a version (`PRAGMA user_version`) and is
brought up to date by the migrations below. One daemon writes a store at a time (an advisory lock
file beside it); readers such as `backup-watcher history` open it read-only and need no lock.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from watcher.errors import StoreError

SCHEMA_VERSION = 3

MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE jobs (
            vault_key TEXT NOT NULL,
            job_id TEXT NOT NULL,
            subscription_id TEXT NOT NULL,
            resource_group TEXT NOT NULL,
            vault TEXT NOT NULL,
            status TEXT NOT NULL,
            operation TEXT NOT NULL DEFAULT '',
            operation_detail TEXT NOT NULL DEFAULT '',
            job_type TEXT NOT NULL DEFAULT '',
            entity TEXT NOT NULL DEFAULT '',
            backup_management_type TEXT NOT NULL DEFAULT '',
            start_time REAL,
            end_time REAL,
            duration REAL,
            size_bytes INTEGER,
            detail TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL DEFAULT 'active',
            counted INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            first_seen REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (vault_key, job_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX jobs_by_state ON jobs (state, vault_key)",
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vault_key TEXT NOT NULL,
            job_id TEXT NOT NULL,
            subscription_id TEXT NOT NULL,
            resource_group TEXT NOT NULL,
            vault TEXT NOT NULL,
            operation TEXT NOT NULL,
            job_type TEXT NOT NULL,
            entity TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT NOT NULL,
            observed_at REAL NOT NULL,
            job_start REAL,
            job_end REAL
        )""",
        "CREATE INDEX transitions_by_job ON transitions (job_id, id)",
        """CREATE TABLE items (
            vault_key TEXT NOT NULL,
            entity TEXT NOT NULL,
            operation TEXT NOT NULL,
            subscription_id TEXT NOT NULL,
            resource_group TEXT NOT NULL,
            vault TEXT NOT NULL,
            last_end REAL NOT NULL,
            last_success REAL,
            last_status_success INTEGER NOT NULL,
            last_duration REAL,
            size_bytes INTEGER,
            size_at REAL,
            PRIMARY KEY (vault_key, entity, operation)
        ) WITHOUT ROWID""",
        """CREATE TABLE counters (
            metric TEXT NOT NULL,
            labels TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (metric, labels)
        ) WITHOUT ROWID""",
        "CREATE TABLE discovery (vault_key TEXT PRIMARY KEY, watermark REAL NOT NULL)",
    ],
    # Backup vaults beside Recovery Services vaults: a vault's key names its kind
    # (`recovery_services:sub/rg/name`), every row says its vault's kind, and the vaults found by listing
    # subscriptions are kept so a restart watches them at once.
    2: [
        *(
            statement
            for table in ("jobs", "transitions", "items")
            for statement in (
                f"ALTER TABLE {table} ADD COLUMN vault_type TEXT NOT NULL DEFAULT 'recovery_services'",
                f"UPDATE {table} SET vault_key = 'recovery_services:' || vault_key",  # noqa: S608 - fixed names
            )
        ),
        "UPDATE discovery SET vault_key = 'recovery_services:' || vault_key",
        """CREATE TABLE vaults (
            vault_key TEXT PRIMARY KEY,
            subscription_id TEXT NOT NULL,
            resource_group TEXT NOT NULL,
            name TEXT NOT NULL,
            vault_type TEXT NOT NULL,
            location TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{}',
            last_seen REAL NOT NULL
        ) WITHOUT ROWID""",
    ],
    # The protected-item inventory: each item as the last inventory round saw it, and when it was first
    # seen (so "never backed up since it was protected" has an age, also across restarts).
    3: [
        """CREATE TABLE inventory (
            vault_key TEXT NOT NULL,
            item TEXT NOT NULL,
            subscription_id TEXT NOT NULL,
            resource_group TEXT NOT NULL,
            vault TEXT NOT NULL,
            vault_type TEXT NOT NULL,
            name TEXT NOT NULL,
            entity TEXT NOT NULL,
            item_type TEXT NOT NULL,
            policy TEXT NOT NULL,
            source_resource_id TEXT NOT NULL,
            protection_state TEXT NOT NULL,
            azure_state TEXT NOT NULL,
            health TEXT,
            azure_health TEXT NOT NULL,
            last_recovery_point REAL,
            last_backup_status TEXT NOT NULL,
            container TEXT NOT NULL,
            error TEXT NOT NULL,
            first_seen REAL NOT NULL,
            PRIMARY KEY (vault_key, item)
        ) WITHOUT ROWID""",
        # /api/jobs pages by start time; pruning finds old transitions without a scan.
        "CREATE INDEX jobs_by_start ON jobs (coalesce(start_time, -1), vault_key, job_id)",
        # Job ids are looked up as Azure spells them in any case.
        "CREATE INDEX jobs_by_id ON jobs (lower(job_id))",
        # The status page's recent failures and warnings.
        "CREATE INDEX jobs_by_outcome ON jobs (status, end_time)",
        "CREATE INDEX transitions_by_time ON transitions (observed_at)",
    ],
}


def _label_vault_types(conn: sqlite3.Connection) -> None:
    """Version 2: every counter series with vault labels gains `vault_type="recovery_services"`."""
    rows = conn.execute("SELECT metric, labels, value FROM counters").fetchall()
    for metric, labels, value in rows:
        parsed = json.loads(labels)
        if not isinstance(parsed, dict) or "vault" not in parsed:
            continue  # the duration histogram's rows have no vault labels
        new = labels_key({**parsed, "vault_type": "recovery_services"})
        conn.execute("DELETE FROM counters WHERE metric = ? AND labels = ?", (metric, labels))
        conn.execute(
            "INSERT INTO counters (metric, labels, value) VALUES (?, ?, ?) "
            "ON CONFLICT (metric, labels) DO UPDATE SET value = value + excluded.value",
            (metric, new, value),
        )


# Steps of a migration that SQL alone cannot do, run after its statements in the same transaction.
MIGRATION_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _label_vault_types}

JOB_COLUMNS = (
    "vault_key",
    "job_id",
    "subscription_id",
    "resource_group",
    "vault",
    "status",
    "operation",
    "operation_detail",
    "job_type",
    "entity",
    "backup_management_type",
    "start_time",
    "end_time",
    "duration",
    "size_bytes",
    "detail",
    "state",
    "counted",
    "last_error",
    "first_seen",
    "updated_at",
    "vault_type",
)


@dataclass(slots=True)
class JobRow:
    """A job as the store keeps it."""

    vault_key: str
    job_id: str
    subscription_id: str
    resource_group: str
    vault: str
    status: str
    operation: str
    operation_detail: str
    job_type: str
    entity: str
    backup_management_type: str
    start_time: float | None
    end_time: float | None
    duration: float | None
    size_bytes: int | None
    detail: str
    state: str
    counted: int
    last_error: str | None
    first_seen: float
    updated_at: float
    vault_type: str

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in JOB_COLUMNS)


@dataclass(slots=True)
class TransitionRow:
    vault_key: str
    job_id: str
    subscription_id: str
    resource_group: str
    vault: str
    operation: str
    job_type: str
    entity: str
    from_status: str | None
    to_status: str
    observed_at: float
    job_start: float | None
    job_end: float | None
    vault_type: str


@dataclass(slots=True)
class ItemRow:
    vault_key: str
    entity: str
    operation: str
    subscription_id: str
    resource_group: str
    vault: str
    last_end: float
    last_success: float | None
    last_status_success: int
    last_duration: float | None
    size_bytes: int | None
    size_at: float | None
    vault_type: str


ITEM_COLUMNS = tuple(f.name for f in fields(ItemRow))


@dataclass(slots=True)
class VaultRow:
    """A vault a subscription's listing found; `tags` is JSON text."""

    vault_key: str
    subscription_id: str
    resource_group: str
    name: str
    vault_type: str
    location: str
    tags: str
    last_seen: float


VAULT_COLUMNS = tuple(f.name for f in fields(VaultRow))


@dataclass(slots=True)
class InventoryRow:
    """A protected item as the store keeps it; `item` is its lower-case name, the key within its vault."""

    vault_key: str
    item: str
    subscription_id: str
    resource_group: str
    vault: str
    vault_type: str
    name: str
    entity: str
    item_type: str
    policy: str
    source_resource_id: str
    protection_state: str
    azure_state: str
    health: str | None
    azure_health: str
    last_recovery_point: float | None
    last_backup_status: str
    container: str
    error: str
    first_seen: float


INVENTORY_COLUMNS = tuple(f.name for f in fields(InventoryRow))


@dataclass
class Batch:
    """Everything one change writes, in one transaction."""

    jobs: list[JobRow]
    transitions: list[TransitionRow]
    items: list[ItemRow]
    counters: list[tuple[str, str, float]]  # (metric, labels json, increment)


class Store:
    """A SQLite file of jobs, transitions, items and totals."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int | None) -> None:
        self.conn = conn
        self.path = path
        self._lock_fd = lock_fd

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> Store:
        """Open (creating and migrating if needed) or, read-only, just open."""
        db = Path(path)
        lock_fd = None
        try:
            if read_only:
                if not db.is_file():
                    raise StoreError(f"state store {db} does not exist")
                conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
            else:
                if db.is_dir():
                    raise StoreError(
                        f"cannot use state store {db}: it is a directory; store.path must name a file"
                    )
                db.parent.mkdir(parents=True, exist_ok=True)
                lock_fd = _lock(db)
                conn = sqlite3.connect(db, timeout=5.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL survives a killed process (the WAL is in the OS cache); only power loss could drop
                # the newest commits, and even then the file stays consistent.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            store = cls(conn, db, lock_fd)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {db} has schema version {version}, newer than this backup-watcher "
                    f"understands ({SCHEMA_VERSION}); upgrade backup-watcher or use another store.path"
                )
            if read_only:
                if version < SCHEMA_VERSION:
                    raise StoreError(
                        f"state store {db} has an old schema ({version}); run the daemon once to migrate"
                    )
            else:
                store._migrate(version)
            conn.execute("SELECT count(*) FROM jobs").fetchone()
            return store
        except sqlite3.DatabaseError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise StoreError(f"cannot use state store {db}: {exc}") from exc
        except OSError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise StoreError(f"cannot use state store {db}: {exc.strerror or exc}") from exc

    def _migrate(self, current: int) -> None:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                for statement in MIGRATIONS[version]:
                    self.conn.execute(statement)
                if version in MIGRATION_STEPS:
                    MIGRATION_STEPS[version](self.conn)
                if version == 1:
                    self.conn.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)",
                        (str(time.time()),),
                    )
                self.conn.execute(f"PRAGMA user_version = {int(version)}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"state store {self.path} is busy: {exc}") from exc
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT that fails (disk full, a deferred constraint) leaves the transaction open: end it,
            # or every later BEGIN fails too.
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error that brought us here is the one to report
                self.conn.execute("ROLLBACK")

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- reading ----------------------------------------------------------------------------

    @property
    def created_at(self) -> float:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        return float(row[0]) if row else time.time()

    def jobs(self, states: Iterable[str] | None = None) -> list[JobRow]:
        sql = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"  # noqa: S608 - fixed column names
        args: tuple[Any, ...] = ()
        if states is not None:
            wanted = list(states)
            sql += f" WHERE state IN ({', '.join('?' for _ in wanted)})"
            args = tuple(wanted)
        return [JobRow(*row) for row in self.conn.execute(sql, args)]

    def job_rows(self, vault_key: str, job_ids: list[str]) -> list[JobRow]:
        """The stored rows of these jobs of one vault (ids compare without regard to case)."""
        out: list[JobRow] = []
        cols = ", ".join(JOB_COLUMNS)
        for start in range(0, len(job_ids), 500):
            chunk = [j.lower() for j in job_ids[start : start + 500]]
            if not chunk:
                continue
            marks = ", ".join("?" for _ in chunk)
            # The key is (vault_key, job_id) as first written; ids come back in their own case.
            sql = f"SELECT {cols} FROM jobs WHERE vault_key = ? AND lower(job_id) IN ({marks})"  # noqa: S608 - fixed names
            out.extend(JobRow(*row) for row in self.conn.execute(sql, (vault_key, *chunk)))
        return out

    def jobs_with_id(self, job_id: str) -> list[JobRow]:
        """Every stored job with this id (in any vault; ids compare without regard to case)."""
        cols = ", ".join(JOB_COLUMNS)
        sql = f"SELECT {cols} FROM jobs WHERE lower(job_id) = ?"  # noqa: S608 - fixed names
        return [JobRow(*row) for row in self.conn.execute(sql, (job_id.lower(),))]

    def final_counts(self) -> list[tuple[str, str, str, str, str, str, int]]:
        """Finished jobs kept, by vault and status: (key, kind, subscription, group, name, status, count)."""
        rows = self.conn.execute(
            "SELECT vault_key, vault_type, subscription_id, resource_group, vault, status, count(*) "
            "FROM jobs WHERE state = 'final' GROUP BY vault_key, status"
        )
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def jobs_page(
        self,
        *,
        vault_keys: set[str],
        narrow: bool,
        status: str | None,
        since: float | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRow], str | None]:
        """A page of jobs of `vault_keys`, newest start first, filtered; and the cursor of the next page.

        `narrow` asks the database for those vaults only (a few vaults of many); otherwise rows of other
        vaults (no longer watched) are read and skipped. The cursor is the last row's (start time, vault
        key, job id), so pages do not shift while jobs are added; jobs without a start time come last.
        ValueError for a cursor this store did not give.
        """
        clauses: list[str] = []
        args: list[Any] = []
        if narrow:
            if not vault_keys:
                return [], None
            clauses.append(f"vault_key IN ({', '.join('?' for _ in vault_keys)})")
            args.extend(sorted(vault_keys))
        if status is not None:
            clauses.append("lower(status) = lower(?)")
            args.append(status)
        if since is not None:
            clauses.append("coalesce(start_time, -1) >= ?")
            args.append(since)
        after = _decode_cursor(cursor) if cursor is not None else None
        cols = ", ".join(JOB_COLUMNS)
        page: list[JobRow] = []
        batch = max(limit * 2, 50)
        while len(page) <= limit:
            where = list(clauses)
            params = list(args)
            if after is not None:
                # The first term alone lets SQLite seek in the index; the row value orders ties.
                where.append("coalesce(start_time, -1) <= ?")
                where.append("(coalesce(start_time, -1), vault_key, job_id) < (?, ?, ?)")
                params.extend((after[0], *after))
            sql = (
                f"SELECT {cols} FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "  # noqa: S608 - fixed names and ? only
                "ORDER BY coalesce(start_time, -1) DESC, vault_key DESC, job_id DESC LIMIT ?"
            )
            rows = [JobRow(*row) for row in self.conn.execute(sql, (*params, batch))]
            # Rows of vaults no longer watched are skipped; reading goes on after the last one read.
            page.extend(row for row in rows if row.vault_key in vault_keys)
            if len(rows) < batch:
                break
            last = rows[-1]
            after = (last.start_time if last.start_time is not None else -1.0, last.vault_key, last.job_id)
        more = len(page) > limit
        page = page[:limit]
        if not more:
            return page, None
        tail = page[-1]
        start = tail.start_time if tail.start_time is not None else -1.0
        return page, _encode_cursor(start, tail.vault_key, tail.job_id)

    def outcome_counts(self, statuses: tuple[str, ...], since: float) -> dict[tuple[str, str], int]:
        """Jobs that ended with one of `statuses` at or after `since`, by (vault key, status)."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.conn.execute(
            f"SELECT vault_key, status, count(*) FROM jobs WHERE status IN ({marks}) AND end_time >= ? "  # noqa: S608 - ? only
            "GROUP BY vault_key, status",
            (*statuses, since),
        )
        return {(vault_key, status): n for vault_key, status, n in rows}

    def outcome_times(self, statuses: tuple[str, ...], since: float) -> list[tuple[float, str, str, str]]:
        """(end time, vault key, lower-case job id, status) of jobs that ended with one of `statuses` at or
        after `since`, oldest first."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.conn.execute(
            f"SELECT end_time, vault_key, lower(job_id), status FROM jobs WHERE status IN ({marks}) "  # noqa: S608 - ? only
            "AND end_time >= ? ORDER BY end_time",
            (*statuses, since),
        )
        return [(float(end), vault_key, job_id, status) for end, vault_key, job_id, status in rows]

    def recent_outcomes(
        self, statuses: tuple[str, ...], since: float, *, vault_keys: set[str], narrow: bool, limit: int
    ) -> list[JobRow]:
        """The newest jobs of `vault_keys` that ended with one of `statuses` at or after `since`.

        One status at a time, read newest first along `jobs_by_outcome` (no sort of a day's jobs), then
        the newest `limit` of them all.
        """
        if narrow and not vault_keys:
            return []
        cols = ", ".join(JOB_COLUMNS)
        where = "status = ? AND end_time >= ?"
        extra: list[str] = []
        if narrow:
            where += f" AND vault_key IN ({', '.join('?' for _ in vault_keys)})"
            extra = sorted(vault_keys)
        sql = f"SELECT {cols} FROM jobs WHERE {where} ORDER BY end_time DESC"  # noqa: S608 - ? only
        out: list[JobRow] = []
        for status in statuses:
            taken = 0
            for row in self.conn.execute(sql, [status, since, *extra]):
                job = JobRow(*row)
                if job.vault_key in vault_keys:
                    out.append(job)
                    taken += 1
                    if taken >= limit:
                        break
        out.sort(key=lambda job: job.end_time or 0.0, reverse=True)
        return out[:limit]

    def transitions_of(
        self, jobs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[str | None, str, float]]]:
        """The transitions of these (vault key, job id) pairs, oldest first, by (vault key, lower-case id)."""
        out: dict[tuple[str, str], list[tuple[str | None, str, float]]] = {}
        wanted = {(v, j.lower()) for v, j in jobs}
        ids = sorted({j for _v, j in jobs})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self.conn.execute(
                "SELECT vault_key, job_id, from_status, to_status, observed_at FROM transitions "  # noqa: S608 - ? only
                f"WHERE job_id IN ({marks}) ORDER BY id",
                chunk,
            )
            for vault_key, job_id, src, dst, at in rows:
                key = (vault_key, job_id.lower())
                if key in wanted:
                    out.setdefault(key, []).append((src, dst, at))
        return out

    def watermarks(self) -> dict[str, float]:
        """Every vault's discovery watermark, by vault key."""
        return {r[0]: float(r[1]) for r in self.conn.execute("SELECT vault_key, watermark FROM discovery")}

    def items(self) -> list[ItemRow]:
        cols = ", ".join(ITEM_COLUMNS)
        return [ItemRow(*row) for row in self.conn.execute(f"SELECT {cols} FROM items")]  # noqa: S608 - fixed names

    def counters(self) -> list[tuple[str, str, float]]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute("SELECT metric, labels, value FROM counters")]

    def discovered_vaults(self) -> list[VaultRow]:
        """The vaults subscription listings found, as last listed."""
        cols = ", ".join(VAULT_COLUMNS)
        rows = self.conn.execute(f"SELECT {cols} FROM vaults")  # noqa: S608 - fixed column names
        return [VaultRow(*row) for row in rows]

    def inventory(self) -> list[InventoryRow]:
        """Every protected item of the last inventory rounds."""
        cols = ", ".join(INVENTORY_COLUMNS)
        return [InventoryRow(*row) for row in self.conn.execute(f"SELECT {cols} FROM inventory")]  # noqa: S608 - fixed names

    def write_inventory(self, vault_key: str, changed: list[InventoryRow], gone: list[str]) -> None:
        """One vault's inventory round: the items that are new or changed, and those that left (by key)."""
        cols = ", ".join(INVENTORY_COLUMNS)
        try:
            with self._tx():
                if changed:
                    self.conn.executemany(
                        f"INSERT OR REPLACE INTO inventory ({cols}) "  # noqa: S608 - fixed column names
                        f"VALUES ({', '.join('?' for _ in INVENTORY_COLUMNS)})",
                        [tuple(getattr(row, c) for c in INVENTORY_COLUMNS) for row in changed],
                    )
                if gone:
                    self.conn.executemany(
                        "DELETE FROM inventory WHERE vault_key = ? AND item = ?",
                        [(vault_key, i) for i in gone],
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc

    def watermark(self, vault_key: str) -> float | None:
        row = self.conn.execute(
            "SELECT watermark FROM discovery WHERE vault_key = ?", (vault_key,)
        ).fetchone()
        return float(row[0]) if row else None

    def transitions(self, job_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, job_id, subscription_id, resource_group, vault, vault_type, operation, job_type, "
            "entity, from_status, to_status, observed_at, job_start, job_end FROM transitions"
        )
        args: list[Any] = []
        if job_id is not None:
            sql += " WHERE lower(job_id) = lower(?)"
            args.append(job_id)
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql[: -len(' ORDER BY id')]} ORDER BY id DESC LIMIT ?) ORDER BY id"  # noqa: S608 - no user text
            args.append(limit)
        return [dict(row) for row in self.conn.execute(sql, args)]

    def all_transitions(self) -> list[tuple[str, str, str | None, str, float]]:
        """(vault_key, job_id, from, to, observed_at) of every transition, oldest first."""
        rows = self.conn.execute(
            "SELECT vault_key, job_id, from_status, to_status, observed_at FROM transitions ORDER BY id"
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # -- writing ----------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Commit one batch of changes atomically."""
        try:
            with self._tx():
                if batch.jobs:
                    placeholders = ", ".join("?" for _ in JOB_COLUMNS)
                    self.conn.executemany(
                        f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) "  # noqa: S608 - fixed names
                        f"VALUES ({placeholders})",
                        [job.values() for job in batch.jobs],
                    )
                if batch.transitions:
                    self.conn.executemany(
                        "INSERT INTO transitions (vault_key, job_id, subscription_id, resource_group, vault, "
                        "operation, job_type, entity, from_status, to_status, observed_at, "
                        "job_start, job_end, vault_type) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                t.vault_key,
                                t.job_id,
                                t.subscription_id,
                                t.resource_group,
                                t.vault,
                                t.operation,
                                t.job_type,
                                t.entity,
                                t.from_status,
                                t.to_status,
                                t.observed_at,
                                t.job_start,
                                t.job_end,
                                t.vault_type,
                            )
                            for t in batch.transitions
                        ],
                    )
                if batch.items:
                    cols = ITEM_COLUMNS
                    self.conn.executemany(
                        # Fixed column names, values bound as parameters.
                        f"INSERT OR REPLACE INTO items ({', '.join(cols)}) "  # noqa: S608
                        f"VALUES ({', '.join('?' for _ in cols)})",
                        [tuple(getattr(i, c) for c in cols) for i in batch.items],
                    )
                if batch.counters:
                    self.conn.executemany(
                        "INSERT INTO counters (metric, labels, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (metric, labels) DO UPDATE SET value = value + excluded.value",
                        batch.counters,
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc

    def prune(
        self,
        *,
        finished_started_before: float,
        transitions_before: float,
        keep: set[tuple[str, str]],
        limit: int = 5000,
    ) -> tuple[dict[tuple[str, str], int], bool]:
        """Forget at most `limit` finished jobs that started before a cutoff (except `keep`), and as many
        old transitions; the jobs forgotten by (vault key, status), and whether more are left."""
        try:
            with self._tx():
                rows = self.conn.execute(
                    "SELECT vault_key, job_id, status FROM jobs "
                    "WHERE state = 'final' AND start_time < ? LIMIT ?",
                    (finished_started_before, limit),
                ).fetchall()
                doomed = [(r[0], r[1], r[2]) for r in rows if (r[0], r[1].lower()) not in keep]
                self.conn.executemany(
                    "DELETE FROM jobs WHERE vault_key = ? AND job_id = ?", [(v, j) for v, j, _ in doomed]
                )
                old = self.conn.execute(
                    "DELETE FROM transitions WHERE id IN "
                    "(SELECT id FROM transitions WHERE observed_at < ? LIMIT ?)",
                    (transitions_before, limit),
                ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc
        removed: dict[tuple[str, str], int] = {}
        for vault_key, _job, status in doomed:
            removed[(vault_key, status)] = removed.get((vault_key, status), 0) + 1
        return removed, len(rows) >= limit or old >= limit

    def replace_discovered_vaults(
        self, subscription_id: str, vault_type: str, vaults: list[VaultRow]
    ) -> None:
        """The vaults of one kind that a subscription's listing found now, in place of the last ones."""
        cols = ", ".join(VAULT_COLUMNS)
        try:
            with self._tx():
                self.conn.execute(
                    "DELETE FROM vaults WHERE subscription_id = ? AND vault_type = ?",
                    (subscription_id, vault_type),
                )
                self.conn.executemany(
                    f"INSERT OR REPLACE INTO vaults ({cols}) "  # noqa: S608 - fixed column names
                    f"VALUES ({', '.join('?' for _ in VAULT_COLUMNS)})",
                    [tuple(getattr(v, c) for c in VAULT_COLUMNS) for v in vaults],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc

    def set_watermark(self, vault_key: str, watermark: float) -> None:
        try:
            with self._tx():
                self.conn.execute(
                    "INSERT INTO discovery (vault_key, watermark) VALUES (?, ?) "
                    "ON CONFLICT (vault_key) DO UPDATE SET watermark = excluded.watermark",
                    (vault_key, watermark),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state store {self.path}: {exc}") from exc


def _encode_cursor(start: float, vault_key: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([start, vault_key, job_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str, str]:
    """A cursor from `jobs_page`; ValueError for anything else."""
    try:
        start, key, job = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(start), str(key), str(job)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a cursor this watcher gave: {cursor[:40]!r}") from exc


def labels_key(labels: dict[str, str]) -> str:
    """A stable text form of a label set, for the counters table."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _lock(db: Path) -> int:
    lock_path = db.with_name(db.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"state store {db} is locked by another running backup-watcher "
            f"(lock file {lock_path}); give each watcher its own store.path"
        ) from None
    return fd
