"""The status page for people: `GET /` (the estate at a glance) and `GET /jobs/{id}` (one job).

Server-rendered with Jinja2, autoescaped (vault, item and error texts come from Azure and may hold
markup), one small stylesheet, no JavaScript and nothing fetched from elsewhere, so it works air-gapped;
it refreshes itself every 30 s. It reads what the watcher keeps in memory (vaults, running jobs, the
inventory) and a few indexed, bounded queries of the store (the last day's failures and warnings, one
page of jobs), so it stays fast for a large estate. It is read-only: its one form filters by query
string, nothing on it changes state.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from watcher import __version__
from watcher.azure.models import ACTIVE_STATUSES, ProtectionState, VaultKind, VaultRef
from watcher.state import TrackedJob, Tracker, VaultData, VaultState, job_from_row

if TYPE_CHECKING:
    from watcher.app import Watcher

RUNBOOKS = "https://github.com/backup-watcher/backup-watcher/blob/main/docs/runbooks.md"
RECENT_SECONDS = 86400.0
LIST_LIMIT = 50
VAULT_PAGE = 100
REFRESH_SECONDS = 30
OUTCOMES = ("Failed", "CompletedWithWarnings")
STATUSES = ("InProgress", "Cancelling", "Paused", "Completed", "CompletedWithWarnings", "Failed", "Cancelled")
KIND_LABELS = {VaultKind.RECOVERY_SERVICES: "Recovery Services vault", VaultKind.BACKUP_VAULT: "Backup vault"}
# Items in these states are not expected to get new recovery points.
RESTING = {ProtectionState.STOPPED.value, ProtectionState.SUSPENDED.value}
HEADERS = {
    # Nothing but the page's own stylesheet may load; no script runs, no frame embeds it.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("watcher", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["quote"] = lambda value: quote(str(value), safe="")
    env.filters["seconds"] = human_seconds
    env.filters["iso"] = _iso
    return env


def human_seconds(seconds: float | None) -> str:
    """3d 4h, 2h 05m, 12m 30s, 45s."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Filters:
    """What the page is narrowed to, from its query string; values it cannot use are noted, not fatal."""

    subscription: str = ""
    vault: str = ""
    vault_type: str = ""
    status: str = ""
    page: int = 1
    cursor: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> tuple[Filters, list[str]]:
        notes: list[str] = []
        vault_type = query.get("vault_type", "").strip()
        if vault_type and vault_type not in {kind.value for kind in VaultKind}:
            notes.append(f"vault type {vault_type[:40]!r} is not one of recovery_services, backup_vault")
            vault_type = ""
        status = query.get("status", "").strip()
        canonical = {s.lower(): s for s in STATUSES}
        if status and status.lower() not in canonical:
            notes.append(f"status {status[:40]!r} is not one of {', '.join(STATUSES)}")
            status = ""
        page = query.get("page", "1")
        number = int(page) if page.isdigit() and 0 < int(page) < 100_000 else 1
        return (
            cls(
                subscription=query.get("subscription", "").strip()[:100],
                vault=query.get("vault", "").strip()[:100],
                vault_type=vault_type,
                status=canonical.get(status.lower(), ""),
                page=number,
                cursor=query.get("cursor", "")[:500],
            ),
            notes,
        )

    @property
    def active(self) -> bool:
        return bool(self.subscription or self.vault or self.vault_type or self.status)

    def matches(self, ref: VaultRef) -> bool:
        return (
            (not self.subscription or ref.subscription_id.lower() == self.subscription.lower())
            and (not self.vault or ref.name.lower() == self.vault.lower())
            and (not self.vault_type or ref.kind.value == self.vault_type)
        )

    def link(self, **changes: Any) -> str:
        """The page's address with these filters, some changed (paging resets unless given)."""
        fresh: dict[str, Any] = {"page": 1, "cursor": ""}
        changed = replace(self, **(fresh | changes))
        params = {
            key: str(value)
            for key, value in (
                ("subscription", changed.subscription),
                ("vault", changed.vault),
                ("vault_type", changed.vault_type),
                ("status", changed.status),
                ("page", changed.page if changed.page > 1 else ""),
                ("cursor", changed.cursor),
            )
            if value
        }
        return "/?" + urlencode(params) if params else "/"


@dataclass(slots=True)
class VaultRow:
    ref: VaultRef
    running: int = 0
    failed: int = 0
    warnings: int = 0
    items: int = 0
    stale: int = 0
    never: int = 0
    last_ok: float | None = None
    problem: str = ""
    level: str = "ok"  # ok | warn | bad

    @property
    def kind(self) -> str:
        return KIND_LABELS[self.ref.kind]

    @property
    def rank(self) -> tuple[int, int, str]:
        severity = {"bad": 0, "warn": 1, "ok": 2}[self.level]
        return (severity, -(self.failed + self.stale + self.never + self.warnings), self.ref.key)


@dataclass(slots=True)
class KindRow:
    kind: VaultKind
    vaults: int = 0
    troubled: int = 0
    running: int = 0
    failed: int = 0
    warnings: int = 0
    items: int = 0
    stale: int = 0
    never: int = 0

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind] + "s"


@dataclass(frozen=True, slots=True)
class ItemProblem:
    ref: VaultRef
    name: str
    entity: str
    item_type: str
    policy: str
    protection_state: str
    health: str
    last_recovery_point: float | None
    first_seen: float
    never: bool

    def age(self, now: float) -> float:
        return now - (self.first_seen if self.last_recovery_point is None else self.last_recovery_point)


@dataclass(slots=True)
class Health:
    ready: bool
    vaults: int
    polled_ok: int
    oldest_ok: tuple[float, VaultRef] | None
    problems: list[str] = field(default_factory=list)
    throttled: dict[str, float] = field(default_factory=dict)
    unauthorized: list[tuple[VaultRef, str]] = field(default_factory=list)
    token_problem: str | None = None
    reload: Any = None
    config_ok: bool = True

    @property
    def level(self) -> str:
        if not self.config_ok or self.unauthorized or self.token_problem or self.problems:
            return "bad"
        if not self.ready or self.throttled or self.polled_ok < self.vaults:
            return "warn"
        return "ok"


class RecentOutcomes:
    """Jobs that ended failed or with warnings in the last day, counted by vault and status in memory:
    read from the store once, then told by the tracker of each job that ends so (its listeners), so a
    page view does not count a day of jobs in SQLite."""

    def __init__(self, tracker: Tracker, window: float) -> None:
        self.tracker = tracker
        self.window = window
        self.entries: deque[tuple[float, str, str, str]] = deque()  # (end, vault key, job id, status)
        self.seen: set[tuple[str, str]] = set()  # (vault key, lower-case job id) of the entries
        for end, vault_key, job_id, status in tracker.store.outcome_times(OUTCOMES, tracker.clock() - window):
            self._add(end, vault_key, job_id, status)
        tracker.listeners.append(self.changed)

    def _add(self, end: float, vault_key: str, job_id: str, status: str) -> None:
        if (vault_key, job_id) in self.seen:
            return
        self.seen.add((vault_key, job_id))
        self.entries.append((end, vault_key, job_id, status))

    def changed(self, tj: TrackedJob, _previous: str | None, status: str) -> None:
        if (
            status in OUTCOMES
            and tj.end_time is not None
            and tj.end_time >= self.tracker.clock() - self.window
        ):
            self._add(tj.end_time, tj.vault.key, tj.job_id.lower(), status)

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.tracker.listeners.remove(self.changed)

    def counts(self, since: float) -> dict[tuple[str, str], int]:
        """Jobs that ended with one of OUTCOMES at or after `since` (within the window), by (vault key,
        status)."""
        # Mostly in order of end time (a job found late may end before the last one): drop from the front
        # what is older than the window, and check each of the rest.
        horizon = self.tracker.clock() - self.window
        while self.entries and self.entries[0][0] < horizon:
            _end, vault_key, job_id, _status = self.entries.popleft()
            self.seen.discard((vault_key, job_id))
        out: Counter[tuple[str, str]] = Counter()
        for end, vault_key, _job_id, status in self.entries:
            if end >= since:
                out[(vault_key, status)] += 1
        return out


class StatusPage:
    """The handlers of `/`, `/jobs/{id}` and the stylesheet, reading the running watcher."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.env = _environment()
        self.css = resources.files("watcher").joinpath("static/watcher.css").read_bytes()
        self._outcomes: RecentOutcomes | None = None

    def outcome_counts(self, tracker: Tracker, since: float) -> dict[tuple[str, str], int]:
        """The last day's failures and warnings by (vault key, status), from memory."""
        if self._outcomes is None or self._outcomes.tracker is not tracker:
            if self._outcomes is not None:
                self._outcomes.detach()
            self._outcomes = RecentOutcomes(tracker, RECENT_SECONDS)
        return self._outcomes.counts(since)

    def enabled(self) -> bool:
        return self.watcher.config.http.ui

    async def stylesheet(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self.css,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        filters, notes = Filters.parse(request.query)
        html = self.render_index(filters, notes)
        return self._html(html)

    async def job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        html, found = self.render_job(job_id)
        return self._html(html, status=200 if found else 404)

    def _html(self, html: str, status: int = 200) -> web.Response:
        return web.Response(
            text=html, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
        )

    # -- the overview ---------------------------------------------------------------------------

    def render_index(self, filters: Filters, notes: list[str]) -> str:
        watcher = self.watcher
        tracker = watcher.tracker
        now = watcher.clock()
        if tracker is None:
            return self.env.get_template("starting.html").render(version=__version__, refresh=REFRESH_SECONDS)
        watched = [(state, data) for state, data in tracker.watched() if filters.matches(state.ref)]
        keys = {state.ref.key for state, _data in watched}
        narrow = len(keys) < len(tracker.vaults)
        counts = self.outcome_counts(tracker, now - RECENT_SECONDS)
        stale_after = watcher.config.http.ui_stale_after
        scheduler = watcher.scheduler
        stale = {s.ref.key for s in scheduler.stale_vaults()} if scheduler is not None else set()
        rows: list[VaultRow] = []
        items: list[ItemProblem] = []
        running: list[TrackedJob] = []
        for state, data in watched:
            row = self._vault_row(state, data, counts, stale)
            problems = list(_item_problems(state.ref, data, now, stale_after))
            row.stale = sum(1 for p in problems if not p.never)
            row.never = sum(1 for p in problems if p.never)
            if row.level == "ok" and (row.failed or row.stale or row.never):
                row.level = "warn"
            items.extend(problems)
            running.extend(
                tj
                for tj in data.active.values()
                if tj.status in ACTIVE_STATUSES and _status_ok(filters, tj.status)
            )
            rows.append(row)
        kinds = _kinds(rows)
        rows.sort(key=lambda r: r.rank)
        first = (filters.page - 1) * VAULT_PAGE
        vault_page = rows[first : first + VAULT_PAGE]
        running.sort(key=lambda tj: (tj.start_time is None, tj.start_time or 0.0, tj.job_id))
        items.sort(key=lambda p: (-p.age(now), p.ref.key, p.name))
        outcomes = tuple(s for s in OUTCOMES if _status_ok(filters, s))
        failures = (
            [
                _failure(job_from_row(row))
                for row in tracker.store.recent_outcomes(
                    outcomes, now - RECENT_SECONDS, vault_keys=keys, narrow=narrow, limit=LIST_LIMIT
                )
            ]
            if outcomes
            else []
        )
        listed: list[dict[str, Any]] = []
        next_cursor: str | None = None
        if filters.status:
            try:
                listed, next_cursor = tracker.api_jobs(
                    subscription=filters.subscription or None,
                    vault=filters.vault or None,
                    vault_type=filters.vault_type or None,
                    status=filters.status,
                    limit=LIST_LIMIT,
                    cursor=filters.cursor or None,
                )
            except ValueError:
                notes.append("that page of jobs is no longer there; showing the newest")
                listed, next_cursor = tracker.api_jobs(
                    subscription=filters.subscription or None,
                    vault=filters.vault or None,
                    vault_type=filters.vault_type or None,
                    status=filters.status,
                    limit=LIST_LIMIT,
                )
        template = self.env.get_template("index.html")
        return template.render(
            version=__version__,
            refresh=REFRESH_SECONDS,
            now=now,
            shard=watcher.shard,
            health=self._health(now),
            filters=filters,
            notes=notes,
            subscriptions=sorted({s.ref.subscription_id for s in tracker.vaults.values()}, key=str.lower),
            statuses=STATUSES,
            kinds=kinds,
            vault_rows=vault_page,
            vault_total=len(rows),
            vault_first=first,
            vault_more=first + VAULT_PAGE < len(rows),
            running=running[:LIST_LIMIT],
            running_total=len(running),
            failures=failures,
            items=items[:LIST_LIMIT],
            items_total=len(items),
            stale_after=stale_after,
            listed=listed,
            next_cursor=next_cursor,
            runbooks=RUNBOOKS,
            kind_labels={kind.value: label for kind, label in KIND_LABELS.items()},
        )

    def _vault_row(
        self, state: VaultState, data: VaultData, counts: dict[tuple[str, str], int], stale: set[str]
    ) -> VaultRow:
        ref = state.ref
        row = VaultRow(
            ref,
            running=sum(1 for tj in data.active.values() if tj.status in ACTIVE_STATUSES),
            failed=counts.get((ref.key, "Failed"), 0),
            warnings=counts.get((ref.key, "CompletedWithWarnings"), 0),
            items=0 if data.inventory_hidden else len(data.inventory),
            last_ok=state.last_ok_poll,
        )
        scheduler = self.watcher.scheduler
        schedule = scheduler.schedule_of(ref.key) if scheduler is not None else None
        if state.unauthorized:
            row.problem, row.level = f"no access: {state.unauthorized}", "bad"
        elif schedule is not None and scheduler is not None and ref.key in stale:
            why = schedule.why(scheduler.monotonic()) or "no good poll"
            row.problem, row.level = f"stale: {why}", "bad"
        elif schedule is not None and schedule.last_error:
            row.problem, row.level = schedule.last_error, "warn"
        elif state.last_ok_poll is None:
            row.problem, row.level = "not polled yet", "warn"
        if data.inventory_hidden:
            reason = schedule.last_inventory_error if schedule is not None else None
            row.problem = "; ".join(
                p for p in (row.problem, f"inventory failing: {reason or 'unknown'}") if p
            )
            row.level = "bad"
        return row

    def _health(self, now: float) -> Health:
        watcher = self.watcher
        tracker = watcher.tracker
        assert tracker is not None
        scheduler = watcher.scheduler
        polled = [(state.last_ok_poll, state.ref) for state in tracker.vaults.values()]
        known = [(when, ref) for when, ref in polled if when is not None]
        interval = watcher.config.poll.interval
        health = Health(
            ready=bool(scheduler and scheduler.ready),
            vaults=len(polled),
            polled_ok=sum(1 for when, _ref in known if now - when <= 3 * interval),
            oldest_ok=min(known, key=lambda pair: pair[0]) if known else None,
            problems=watcher.stale_vaults(),
            throttled=watcher.metrics.throttled_by_subscription(),
            unauthorized=[(s.ref, s.unauthorized) for s in tracker.vaults.values() if s.unauthorized],
            token_problem=watcher.azure.tokens.problem if watcher.azure is not None else None,
            reload=watcher.last_reload,
            config_ok=watcher.last_reload is None or watcher.last_reload.ok,
        )
        health.unauthorized.sort(key=lambda pair: pair[0].key)
        return health

    # -- one job --------------------------------------------------------------------------------

    def render_job(self, job_id: str) -> tuple[str, bool]:
        watcher = self.watcher
        tracker = watcher.tracker
        template = self.env.get_template("job.html")
        if tracker is None:
            return template.render(
                version=__version__, job_id=job_id, records=[], refresh=REFRESH_SECONDS
            ), False
        rows = tracker.store.jobs_with_id(job_id)
        transitions = tracker.store.transitions_of([(row.vault_key, row.job_id) for row in rows])
        records = []
        now = watcher.clock()
        for row in sorted(rows, key=lambda r: (r.vault_key not in tracker.vaults, r.vault_key)):
            tj = tracker.followed(job_from_row(row).vault, row.job_id) or job_from_row(row)
            state = tracker.vaults.get(row.vault_key)
            records.append(
                {
                    "job": tj,
                    "api": tracker.api_job(tj, state),
                    "watched": state is not None,
                    "kind": KIND_LABELS[tj.vault.kind],
                    "running_for": now - tj.start_time if tj.running and tj.start_time else None,
                    "transitions": transitions.get((row.vault_key, row.job_id.lower()), []),
                    "track": _track_command(watcher.config_path, tj),
                    "runbook": _runbook(tj.status),
                    "api_link": "/api/jobs?"
                    + urlencode(
                        {
                            "subscription": tj.vault.subscription_id,
                            "vault": tj.vault.name,
                            "vault_type": tj.vault.kind.value,
                        }
                    ),
                    "raw": json.dumps(tracker.api_job(tj, state), indent=2, sort_keys=True),
                }
            )
        html = template.render(version=__version__, job_id=job_id, records=records, refresh=REFRESH_SECONDS)
        return html, bool(records)


def _status_ok(filters: Filters, status: str) -> bool:
    return not filters.status or filters.status == status


def _item_problems(ref: VaultRef, data: VaultData, now: float, stale_after: float) -> Iterable[ItemProblem]:
    """The vault's items whose newest recovery point is older than `stale_after`, or that have none."""
    if data.inventory_hidden:
        return
    for row in data.inventory.values():
        if row.protection_state in RESTING:
            continue
        point = row.last_recovery_point
        if point is not None and now - point <= stale_after:
            continue
        yield ItemProblem(
            ref,
            row.name,
            row.entity,
            row.item_type,
            row.policy,
            row.protection_state,
            row.health or "",
            point,
            row.first_seen,
            never=point is None,
        )


def _kinds(rows: list[VaultRow]) -> list[KindRow]:
    kinds = {kind: KindRow(kind) for kind in VaultKind}
    for row in rows:
        k = kinds[row.ref.kind]
        k.vaults += 1
        k.troubled += row.level != "ok"
        k.running += row.running
        k.failed += row.failed
        k.warnings += row.warnings
        k.items += row.items
        k.stale += row.stale
        k.never += row.never
    return [k for k in kinds.values() if k.vaults]


def _failure(tj: TrackedJob) -> dict[str, Any]:
    errors = tj.detail.get("errors") or []
    first = errors[0] if errors else {}
    return {
        "job": tj,
        "code": str(first.get("code") or ""),
        "title": str(first.get("title") or ""),
        "message": str(first.get("message") or ""),
        "runbook": _runbook(tj.status),
    }


def _runbook(status: str) -> str:
    anchor = {
        "Failed": "azurebackupjobfailed",
        "Cancelled": "azurebackupjobfailed",
        "CompletedWithWarnings": "azurebackupjobcompletedwithwarnings",
        "InProgress": "azurebackupjobrunningtoolong",
        "Cancelling": "azurebackupjobrunningtoolong",
    }.get(status)
    return f"{RUNBOOKS}#{anchor}" if anchor else RUNBOOKS


def _shell(word: str) -> str:
    """A word as a POSIX shell reads it back unchanged."""
    if word and all(c.isalnum() or c in "-_./:=@%+," for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _track_command(config_path: str | None, tj: TrackedJob) -> str:
    words = [
        "backup-watcher",
        "track",
        "--config",
        config_path or "config.yaml",
        "--vault-id",
        tj.vault.arm_id,
        "--job-id",
        tj.job_id,
    ]
    return " ".join(_shell(word) for word in words)
