"""Which vaults are watched: those named in the config, and those found by listing subscriptions.

Each subscription under `subscriptions:` is listed for each vault kind it asks for, every
`poll.vault_discovery_interval`; the vaults that pass its filters (resource groups, tags, exclusions)
are watched from their next pass and list their own jobs. A vault that leaves the listing, or whose own
listing answers 404, is dropped with its running series and its schedule; its history stays in the
store. A listing that fails keeps the last set it found. The sets found are kept in the store, so a
restart watches them at once. A vault both named and found is watched once, as named.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from watcher.azure.models import VaultInfo, VaultKind, VaultRef
from watcher.config import Config, SubscriptionConfig
from watcher.sharding import shard_of
from watcher.state import VaultState
from watcher.store import Store, VaultRow


@dataclass(slots=True)
class Listing:
    """One subscription and vault kind: what its last good listing found, and when to list it again."""

    subscription: SubscriptionConfig
    kind: VaultKind
    found: dict[str, VaultInfo] | None = None  # None: never listed (not even in a store)
    next_listing: float = 0.0  # monotonic
    failures: int = 0
    listed_once: bool = False  # listed by this process, or failed trying
    last_error: str | None = None

    @property
    def key(self) -> tuple[str, VaultKind]:
        return (self.subscription.id, self.kind)


@dataclass
class VaultSet:
    """The listings of every configured subscription and kind, and the vaults they found."""

    store: Store
    listings: dict[tuple[str, VaultKind], Listing] = field(default_factory=dict)

    def configure(self, config: Config) -> None:
        """Listings for the config's subscriptions; those no longer configured go with their vaults."""
        wanted: dict[tuple[str, VaultKind], SubscriptionConfig] = {
            (sub.id, VaultKind(kind)): sub for sub in config.subscriptions for kind in sub.vault_types
        }
        saved: dict[tuple[str, VaultKind], dict[str, VaultInfo]] = {}
        if any(key not in self.listings for key in wanted):
            for row in self.store.discovered_vaults():
                info = _info(row)
                saved.setdefault((row.subscription_id, info.ref.kind), {})[info.ref.key] = info
        listings = {}
        for key, sub in wanted.items():
            old = self.listings.get(key)
            if old is None:
                listings[key] = Listing(sub, key[1], found=saved.get(key))
            else:
                old.subscription = sub
                listings[key] = old
        self.listings = listings

    def found(self) -> list[VaultInfo]:
        """Every vault the listings found that its subscription's filters let through."""
        out = []
        for listing in self.listings.values():
            for info in (listing.found or {}).values():
                ref = info.ref
                if listing.subscription.wants(ref.kind.value, ref.resource_group, ref.name, dict(info.tags)):
                    out.append(info)
        return out

    def replace(self, listing: Listing, vaults: Iterable[VaultInfo]) -> tuple[list[VaultRef], list[VaultRef]]:
        """A listing's new set, kept in the store; the vaults that appeared and the ones that went."""
        new = {v.ref.key: v for v in vaults}
        old = listing.found or {}
        appeared = [v.ref for k, v in new.items() if k not in old]
        gone = [v.ref for k, v in old.items() if k not in new]
        listing.found = new
        now = time.time()
        self.store.replace_discovered_vaults(
            listing.subscription.id,
            listing.kind.value,
            [
                VaultRow(
                    vault_key=v.ref.key,
                    subscription_id=v.ref.subscription_id,
                    resource_group=v.ref.resource_group,
                    name=v.ref.name,
                    vault_type=v.ref.kind.value,
                    location=v.location,
                    tags=json.dumps(dict(v.tags), sort_keys=True),
                    last_seen=now,
                )
                for v in new.values()
            ],
        )
        return appeared, gone

    def forget(self, vault: VaultRef) -> bool:
        """A found vault that answered 404: drop it now, not at the next listing. False if not found here."""
        for listing in self.listings.values():
            if listing.found is not None and vault.key in listing.found:
                remaining = [v for k, v in listing.found.items() if k != vault.key]
                self.replace(listing, remaining)
                return True
        return False


def watched_vaults(
    config: Config, found: Iterable[VaultInfo], shard: tuple[int, int] | None
) -> list[VaultState]:
    """The vaults this replica polls: the config's, then those found (discovering their jobs)."""
    out: dict[str, VaultState] = {}
    for vault in config.vaults:
        ref = VaultRef(vault.subscription_id, vault.resource_group, vault.name, VaultKind(vault.type))
        out[ref.key] = VaultState(
            ref=ref, discover=config.discovers(vault), configured_jobs=tuple(vault.jobs)
        )
    for info in found:
        out.setdefault(info.ref.key, VaultState(ref=info.ref, discover=True))
    if shard is None:
        return list(out.values())
    index, count = shard
    return [
        state
        for state in out.values()
        if shard_of(
            state.ref.subscription_id, state.ref.resource_group, state.ref.name, count, state.ref.kind.value
        )
        == index
    ]


def _info(row: VaultRow) -> VaultInfo:
    ref = VaultRef(row.subscription_id, row.resource_group, row.name, VaultKind(row.vault_type))
    return VaultInfo(ref=ref, location=row.location, tags=json.loads(row.tags))
