"""What the watcher asks of Azure Backup, whatever the vault kind: one small interface, two providers.

A provider (`recoveryservices.RecoveryServices`, `dataprotection.DataProtection`) knows its URLs, body
parser, status spellings and listing strategy; `BackupApi` picks the one a vault's kind calls for. The
scheduler, the tracker, the store and the metrics know no provider's field names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

from watcher.azure.client import ArmClient
from watcher.azure.dataprotection import DataProtection
from watcher.azure.models import (
    Job,
    JobPage,
    ProtectedItem,
    RejectedItem,
    RunningJob,
    VaultInfo,
    VaultKind,
    VaultRef,
)
from watcher.azure.recoveryservices import RecoveryServices
from watcher.config import Config


class Provider(Protocol):
    """One vault kind's API."""

    kind: VaultKind
    api_version: str

    async def get_job(self, client: ArmClient, vault: VaultRef, job_id: str) -> Job:
        """GET one job, with everything a GET has (extendedInfo)."""
        ...

    def jobs_since(
        self, client: ArmClient, vault: VaultRef, since: float, until: float
    ) -> AsyncIterator[JobPage]:
        """Pages of the vault's jobs that started between `since` and `until` (epoch seconds)."""
        ...

    async def still_running(
        self, client: ArmClient, vault: VaultRef, jobs: Sequence[RunningJob], margin: float, now: float
    ) -> tuple[dict[str, Job], list[RejectedItem]] | None:
        """`jobs` that one listing shows unfinished (by lower-case id), and the items it set aside;
        None when a listing would not save requests over a GET each."""
        ...

    def vaults(
        self, client: ArmClient, subscription_id: str
    ) -> AsyncIterator[tuple[list[VaultInfo], list[RejectedItem]]]:
        """Pages of the subscription's vaults of this kind."""
        ...

    def items(
        self, client: ArmClient, vault: VaultRef, known: Mapping[str, float | None]
    ) -> AsyncIterator[tuple[list[ProtectedItem], list[RejectedItem]]]:
        """Pages of the vault's protected items, each with its newest recovery point (`known`: the newest
        the watcher already knows, by lower-case item name, where that saves requests)."""
        ...


class BackupApi:
    """The providers of both vault kinds over one ARM client."""

    def __init__(
        self, client: ArmClient, *, recovery_services_api_version: str, backup_vault_api_version: str
    ) -> None:
        self.client = client
        self.providers: dict[VaultKind, Provider] = {
            VaultKind.RECOVERY_SERVICES: RecoveryServices(recovery_services_api_version),
            VaultKind.BACKUP_VAULT: DataProtection(backup_vault_api_version),
        }

    @classmethod
    def for_config(cls, client: ArmClient, config: Config) -> BackupApi:
        """The providers at the config's api-versions."""
        return cls(
            client,
            recovery_services_api_version=config.azure.api_version,
            backup_vault_api_version=config.azure.backup_vault_api_version,
        )

    def provider(self, kind: VaultKind) -> Provider:
        return self.providers[kind]

    async def get_job(self, vault: VaultRef, job_id: str) -> Job:
        return await self.providers[vault.kind].get_job(self.client, vault, job_id)

    def jobs_since(self, vault: VaultRef, since: float, until: float) -> AsyncIterator[JobPage]:
        return self.providers[vault.kind].jobs_since(self.client, vault, since, until)

    async def still_running(
        self, vault: VaultRef, jobs: Sequence[RunningJob], margin: float, now: float
    ) -> tuple[dict[str, Job], list[RejectedItem]] | None:
        return await self.providers[vault.kind].still_running(self.client, vault, jobs, margin, now)

    def vaults(
        self, subscription_id: str, kind: VaultKind
    ) -> AsyncIterator[tuple[list[VaultInfo], list[RejectedItem]]]:
        return self.providers[kind].vaults(self.client, subscription_id)

    def items(
        self, vault: VaultRef, known: Mapping[str, float | None]
    ) -> AsyncIterator[tuple[list[ProtectedItem], list[RejectedItem]]]:
        return self.providers[vault.kind].items(self.client, vault, known)
