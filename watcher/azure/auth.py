"""Clouds and credentials: one `TokenProvider` whatever signs us in.

Every azure-identity credential is built from the async API (`azure.identity.aio`), with the cloud's
authority host where the credential signs in through Entra ID itself. Secrets never come from the YAML:
they are read from the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
`AZURE_CLIENT_CERTIFICATE_PATH`, `AZURE_FEDERATED_TOKEN_FILE`, ...), and a missing one is a ConfigError
that names it. Tokens are cached here and refreshed ahead of expiry, so a poll round never waits on
Entra ID; a 401 from ARM asks for one forced refresh (see the client).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from watcher.config import AzureConfig
from watcher.errors import AuthError, ConfigError


@dataclass(frozen=True, slots=True)
class Cloud:
    """The endpoints of one Azure cloud."""

    name: str
    management_endpoint: str
    scope: str
    authority_host: str


# The US Government token audience is management.core.usgovcloudapi.net, not the endpoint's host.
CLOUDS: dict[str, Cloud] = {
    "AzurePublicCloud": Cloud(
        "AzurePublicCloud",
        "https://management.azure.com",
        "https://management.azure.com/.default",
        "login.microsoftonline.com",
    ),
    "AzureChinaCloud": Cloud(
        "AzureChinaCloud",
        "https://management.chinacloudapi.cn",
        "https://management.chinacloudapi.cn/.default",
        "login.chinacloudapi.cn",
    ),
    "AzureUSGovernment": Cloud(
        "AzureUSGovernment",
        "https://management.usgovcloudapi.net",
        "https://management.core.usgovcloudapi.net/.default",
        "login.microsoftonline.us",
    ),
}


class AccessTokenLike(Protocol):
    """azure-core's AccessToken, or anything with a token and its expiry (epoch seconds)."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class AsyncCredential(Protocol):
    """What azure-identity's async credentials and our static one have in common."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StaticAccessToken:
    """A token from the environment with the expiry we assume for it."""

    token: str
    expires_on: int


class StaticTokenCredential:
    """A bearer token read from an environment variable (the simulator, tests, short-lived CI tokens)."""

    def __init__(self, env_name: str, lifetime: float = 3600.0) -> None:
        self.env_name = env_name
        self.lifetime = lifetime

    async def get_token(self, *scopes: str, **kwargs: Any) -> StaticAccessToken:
        token = os.environ.get(self.env_name, "").strip()
        if not token:
            raise AuthError(f"environment variable {self.env_name} (static_token_env) is empty or unset")
        return StaticAccessToken(token, int(time.time() + self.lifetime))

    async def close(self) -> None:
        return None


def management_endpoint(config: AzureConfig) -> str:
    """The ARM endpoint to call: the override if set, else the cloud's."""
    return config.management_endpoint or CLOUDS[config.cloud].management_endpoint


def _require_env(*names: str, kind: str) -> None:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise ConfigError(
            "backup-watcher",
            [
                (
                    "azure.credential",
                    f"credential {kind} needs the environment variable(s) {', '.join(missing)}",
                )
            ],
        )


def _client_id(config: AzureConfig, kind: str) -> str:
    """The config's client_id, else AZURE_CLIENT_ID: the app registration or identity to sign in as."""
    if config.client_id:
        return config.client_id
    _require_env("AZURE_CLIENT_ID", kind=kind)
    return os.environ["AZURE_CLIENT_ID"]


def build_credential(config: AzureConfig) -> AsyncCredential:
    """The azure-identity async credential the config names, for its cloud.

    Keyword arguments are those of the installed `azure.identity.aio` classes: the async
    DefaultAzureCredential has no interactive browser step to exclude, and it only falls back to
    AZURE_CLIENT_ID for managed and workload identity when no client id is passed at all (so none is
    passed unless the config names one). ManagedIdentityCredential and AzureCliCredential take no
    authority: IMDS serves the cloud it runs in, and the CLI signs in to the cloud `az cloud set` chose.
    """
    kind = config.credential
    if kind == "static_token":
        assert config.static_token_env is not None
        return StaticTokenCredential(config.static_token_env)

    from azure.identity import aio  # imported late: the simulator and tests need no azure-identity setup

    authority = CLOUDS[config.cloud].authority_host
    try:
        if kind == "default":
            extra = {"managed_identity_client_id": config.client_id} if config.client_id else {}
            return aio.DefaultAzureCredential(authority=authority, **extra)
        if kind == "managed_identity":
            if config.client_id:
                return aio.ManagedIdentityCredential(client_id=config.client_id)
            return aio.ManagedIdentityCredential()
        if kind == "workload_identity":
            _require_env("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", kind=kind)
            return aio.WorkloadIdentityCredential(
                tenant_id=os.environ["AZURE_TENANT_ID"],
                client_id=_client_id(config, kind),
                token_file_path=os.environ["AZURE_FEDERATED_TOKEN_FILE"],
                authority=authority,
            )
        if kind == "client_secret":
            _require_env("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", kind=kind)
            return aio.ClientSecretCredential(
                tenant_id=os.environ["AZURE_TENANT_ID"],
                client_id=_client_id(config, kind),
                client_secret=os.environ["AZURE_CLIENT_SECRET"],
                authority=authority,
            )
        if kind == "certificate":
            _require_env("AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH", kind=kind)
            return aio.CertificateCredential(
                tenant_id=os.environ["AZURE_TENANT_ID"],
                client_id=_client_id(config, kind),
                certificate_path=os.environ["AZURE_CLIENT_CERTIFICATE_PATH"],
                password=os.environ.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None,
                authority=authority,
            )
        if kind == "azure_cli":
            return aio.AzureCliCredential()
    except (ValueError, OSError) as exc:
        # A tenant id that is no GUID, an unreadable or non-RSA certificate: a config problem, said so.
        raise ConfigError(
            "backup-watcher", [("azure.credential", f"credential {kind}: {type(exc).__name__}: {exc}")]
        ) from exc
    raise ConfigError("backup-watcher", [("azure.credential", f"unknown credential {kind!r}")])


class TokenProvider:
    """Caches one bearer token and refreshes it ahead of expiry; one refresh at a time.

    A token is reused until `refresh_margin` seconds before it expires, or until half its lifetime has
    passed if it lives shorter than twice the margin, so a short-lived token is not fetched per request.
    """

    def __init__(
        self,
        credential: AsyncCredential,
        scope: str,
        *,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.refresh_margin = refresh_margin
        self.clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def expires_on(self) -> float:
        return self._expires_on

    async def token(self, *, force_refresh: bool = False, stale: str | None = None) -> str:
        """A valid token: the cached one unless it is due for refresh, or `force_refresh` replaces `stale`."""
        if not force_refresh and self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            # Another caller may have refreshed while we waited for the lock.
            if self._token is not None and self._fresh() and (not force_refresh or self._token != stale):
                return self._token
            try:
                access = await self.credential.get_token(self.scope)
            except AuthError:
                raise
            except Exception as exc:  # azure-identity raises many kinds; all mean "no token"
                raise AuthError(
                    f"could not get a token for {self.scope}: {type(exc).__name__}: {exc}"
                ) from exc
            self.fetches += 1
            now = self.clock()
            self._token = str(access.token)
            self._expires_on = float(access.expires_on)
            lifetime = max(0.0, self._expires_on - now)
            self._refresh_at = self._expires_on - min(self.refresh_margin, lifetime / 2)
            return self._token

    def _fresh(self) -> bool:
        return self._token is not None and self.clock() < self._refresh_at

    async def close(self) -> None:
        """Close the credential (azure-identity's hold HTTP sessions)."""
        await self.credential.close()
