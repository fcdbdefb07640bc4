"""Which vaults a replica owns when several share the work (a StatefulSet of N watchers)."""

from __future__ import annotations

import hashlib
import os
import re


def shard_of(
    subscription_id: str, resource_group: str, vault: str, count: int, kind: str = "recovery_services"
) -> int:
    """The shard (0..count-1) a vault belongs to: stable across versions, hosts and restarts.

    It depends on the vault's identity alone, so a vault keeps its shard while others come and go. A
    Recovery Services vault hashes as it always has; a Backup vault's kind is part of its key.
    """
    name = f"{subscription_id}/{resource_group}/{vault}"
    if kind != "recovery_services":
        name = f"{kind}:{name}"
    return int(hashlib.sha256(name.lower().encode()).hexdigest(), 16) % count


def index_from_pod_name(name: str | None) -> int | None:
    """`backup-watcher-3` -> 3, as StatefulSet pods are named."""
    if not name:
        return None
    m = re.search(r"-(\d+)$", name.strip())
    return int(m.group(1)) if m else None


def resolve_shard(index: int | None, count: int | None) -> tuple[int, int] | None:
    """(index, count) from flags or environment; None when not sharded. ValueError if inconsistent."""
    if count is None:
        env_count = os.environ.get("WATCHER_SHARD_COUNT")
        count = int(env_count) if env_count else None
    if index is None:
        env_index = os.environ.get("WATCHER_SHARD_INDEX")
        index = int(env_index) if env_index else None
    if count is None:
        if index is not None:
            raise ValueError("--shard-index needs --shard-count")
        return None
    if count < 1:
        raise ValueError(f"--shard-count must be at least 1, got {count}")
    if index is None:
        index = index_from_pod_name(os.environ.get("POD_NAME") or os.environ.get("HOSTNAME"))
        if index is None:
            raise ValueError(
                "--shard-count given but no --shard-index, and no ordinal in POD_NAME/HOSTNAME (name-N)"
            )
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return index, count
