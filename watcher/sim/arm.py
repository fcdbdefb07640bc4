"""Azure Resource Manager's plumbing for the simulator: what a path names, which api-versions its
resource type takes, the error envelope, JSON answers and `$skipToken` paging.

ARM checks the api-version per resource type: backup jobs, items and operations of a Recovery
Services vault take the Recovery Services Backup versions, the vault itself and vault listings the
Recovery Services versions, everything under Microsoft.DataProtection the Data Protection versions.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from watcher.sim.estate import BACKUP_VAULT, RECOVERY_SERVICES

T = TypeVar("T")

# Stable api-versions of the Recovery Services Backup provider (backupJobs, protected items,
# operations), newest first, plus the preview its Azure-AsyncOperation URLs name.
SUPPORTED_API_VERSIONS = (
    "2026-10-01",
    "2026-02-01",
    "2026-01-01",
    "2025-08-01",
    "2025-02-01",
    "2025-01-01",
    "2024-10-01",
    "2024-04-01",
    "2024-02-01",
    "2024-01-01",
    "2023-08-01",
    "2023-06-01",
    "2023-04-01",
    "2023-02-01",
    "2023-01-01",
    "2022-10-01",
    "2022-04-01",
    "2022-03-01",
    "2022-02-01",
    "2022-01-01",
    "2021-12-01",
    "2021-10-01",
    "2021-08-01",
    "2021-07-01",
    "2021-06-01",
    "2021-04-01",
    "2021-03-01",
    "2021-02-01",
    "2021-01-01",
    "2020-12-01",
    "2020-10-01",
    "2020-02-02",
    "2019-06-15",
    "2019-05-13-preview",
    "2019-05-13",
    "2017-07-01",
    "2016-12-01",
    "2016-08-10",
    "2016-06-01",
)
# Stable api-versions of Microsoft.RecoveryServices/vaults (the vault and vault listings).
VAULT_API_VERSIONS = (
    "2026-08-01",
    "2026-07-01",
    "2026-05-01",
    "2026-02-01",
    "2026-01-01",
    "2025-08-01",
    "2025-02-01",
    "2025-01-01",
    "2024-10-01",
    "2024-04-01",
    "2024-02-01",
    "2024-01-01",
    "2023-08-01",
    "2023-06-01",
    "2023-04-01",
    "2023-02-01",
    "2023-01-01",
    "2022-10-01",
    "2022-09-10",
    "2022-08-01",
    "2022-05-01",
    "2022-04-01",
    "2022-03-01",
    "2022-02-01",
    "2022-01-01",
    "2021-12-01",
    "2021-08-01",
    "2021-07-01",
    "2021-06-01",
    "2021-04-01",
    "2021-03-01",
    "2021-02-10",
    "2021-01-01",
    "2020-10-01",
    "2020-02-02",
    "2016-06-01",
)
# Stable api-versions of Microsoft.DataProtection (Backup vaults), newest first.
DATAPROTECTION_API_VERSIONS = (
    "2026-07-01",
    "2026-06-01",
    "2026-03-01",
    "2025-09-01",
    "2025-07-01",
    "2025-02-01",
    "2025-01-01",
    "2024-04-01",
    "2024-03-01",
    "2023-12-01",
    "2023-11-01",
    "2023-08-01",
    "2023-05-01",
    "2023-01-01",
    "2022-12-01",
    "2022-05-01",
    "2022-04-01",
    "2022-03-01",
    "2022-01-01",
    "2021-07-01",
    "2021-01-01",
)
# (provider namespace, resource type), lower-case, of the two vault kinds.
_VAULT_TYPES = {
    ("microsoft.recoveryservices", "vaults"): RECOVERY_SERVICES,
    ("microsoft.dataprotection", "backupvaults"): BACKUP_VAULT,
}
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class ArmError(Exception):
    """An answer in ARM's error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def arm_error(code: str, message: str) -> dict[str, Any]:
    """The ARM error envelope every failed request answers with."""
    return {"error": {"code": code, "message": message}}


def json_response(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    """A JSON answer with ARM's content type."""
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={**headers, "Content-Type": JSON_CONTENT_TYPE}
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What a request path names (segments keep the request's spelling).

    `route` is `vaults` (a vault listing; `resource_group` empty for a whole subscription), `vault`
    (a vault and what is below it, `rest`), `location` (a Data Protection operation named by region:
    `rest` is the location, `operationStatus`/`operationResults` and the operation id) or `` (unknown).
    """

    route: str
    kind: str = RECOVERY_SERVICES
    subscription_id: str = ""
    resource_group: str = ""
    name: str = ""
    rest: tuple[str, ...] = ()

    @classmethod
    def parse(cls, segments: Sequence[str]) -> Target:
        """The target of a path split at `/` (a leading empty segment, no trailing one)."""
        w = [s.lower() for s in segments]
        if len(w) < 3 or w[1] != "subscriptions":
            return cls("")
        sub = segments[2]
        if len(w) == 6 and w[3] == "providers" and (w[4], w[5]) in _VAULT_TYPES:
            return cls("vaults", _VAULT_TYPES[(w[4], w[5])], sub)
        if (
            len(w) == 9
            and w[3:6] == ["providers", "microsoft.dataprotection", "locations"]
            and w[7] in ("operationstatus", "operationresults")
        ):
            return cls("location", BACKUP_VAULT, sub, rest=(segments[6], w[7], segments[8]))
        if len(w) >= 8 and w[3] == "resourcegroups" and w[5] == "providers" and (w[6], w[7]) in _VAULT_TYPES:
            kind = _VAULT_TYPES[(w[6], w[7])]
            if len(w) == 8:
                return cls("vaults", kind, sub, segments[4])
            return cls("vault", kind, sub, segments[4], segments[8], tuple(segments[9:]))
        return cls("")

    @property
    def api_versions(self) -> tuple[str, ...]:
        """The api-versions ARM accepts for this resource type."""
        if self.kind == BACKUP_VAULT:
            return DATAPROTECTION_API_VERSIONS
        if self.route == "vaults" or (self.route == "vault" and not self.rest):
            return VAULT_API_VERSIONS
        return SUPPORTED_API_VERSIONS


def page(
    rows: Sequence[T], key: Callable[[T], str], token: str | None, size: int
) -> tuple[list[T], str | None]:
    """The page of `rows` (sorted by `key`) after the `$skipToken` `token`, and the next page's token.

    A token is the last key of its page, so rows added or removed meanwhile shift no later page.
    """
    after = read_token(token) if token else None
    rest = [r for r in rows if after is None or key(r) > after]
    chunk = rest[:size]
    return chunk, make_token(key(chunk[-1])) if len(rest) > size else None


def make_token(position: str) -> str:
    """An opaque `$skipToken` for a listing position."""
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def read_token(token: str) -> str:
    """The position a `make_token` token names; raise ArmError 400 for anything else."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ArmError(400, "InvalidSkipToken", "The $skipToken is invalid.") from e
