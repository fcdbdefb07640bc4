"""Clouds and credentials: one `TokenProvider` whatever signs us in.

Every azure-identity credential is built from the async API (`azure.identity.aio`), with the cloud's
authority host where the credential signs in through Entra ID itself. Secrets never come from the YAML:
they are read from the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
`AZURE_CLIENT_CERTIFICATE_PATH`, `AZURE_FEDERATED_TOKEN_FILE`, ...), and a missing one is a ConfigError
that names it. The provider keeps one current token, as azure-core's BearerTokenCredentialPolicy does,
and refreshes it on that policy's rules; a failing credential is backed off, and a still-valid token
served meanwhile. A 401 from ARM asks for one forced refresh (see the client).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from watcher.config import AzureConfig
from watcher.errors import AuthError, ConfigError
from watcher.logs import get_logger, redact

log = get_logger("backup_watcher.auth")


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


class AccessTokenInfoLike(AccessTokenLike, Protocol):
    """azure-core's AccessTokenInfo: a token, its expiry and when to refresh it (epoch seconds), if said."""

    @property
    def refresh_on(self) -> int | None: ...


class AsyncCredential(Protocol):
    """What azure-identity's async credentials and our static one have in common."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...

    async def close(self) -> None: ...


@runtime_checkable
class SupportsTokenInfo(Protocol):
    """azure-core's AsyncSupportsTokenInfo as far as we use it; every azure.identity.aio credential has it."""

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfoLike: ...


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
    """Keeps one bearer token and refreshes it on azure-core's rules; one credential call at a time.

    The credential is asked through `get_token_info` where it has it, else `get_token`. A token is due for
    refresh once its `refresh_on` hint has come, or without one `refresh_margin` seconds before it expires
    (azure-core's BearerTokenCredentialPolicy, without its random delay: one provider per process has no
    crowd of clients to spread), and it is never served once `expires_on` has come. A token already due
    when it arrives (short-lived, or a credential's cached one whose own refresh failed) is asked for again
    at most every `min_refresh_interval` seconds, azure-identity's own retry delay, not per request. The
    first request to find the token due makes the call; requests arriving meanwhile wait for its outcome.

    A failed call (an exception, or a token that has already expired) starts a backoff: the credential is
    not called for `backoff_initial` seconds, doubling per consecutive failure up to `backoff_max`, forced
    refreshes included. Meanwhile a still-valid token is served, and a caller without one gets an AuthError
    with the last failure's message at once. The first failure of a streak is logged as a warning (the
    failure and the backoff, never a token).
    """

    def __init__(
        self,
        credential: AsyncCredential,
        scope: str,
        *,
        refresh_margin: float = 300.0,
        min_refresh_interval: float = 30.0,
        backoff_initial: float = 5.0,
        backoff_max: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.refresh_margin = refresh_margin
        self.min_refresh_interval = min_refresh_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._refresh_at = 0.0
        self._failures = 0
        self._failure = ""
        self._retry_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def expires_on(self) -> float:
        return self._expires_on

    @property
    def problem(self) -> str | None:
        """Why the last call to the credential failed, while it has not worked since; else None."""
        return self._failure if self._failures else None

    async def token(self, *, force_refresh: bool = False, stale: str | None = None) -> str:
        """A valid token: the current one, or a new one when it is due; AuthError when none can be had.

        With `force_refresh`, `stale` (a token ARM refused; None: the current one) is dropped first and
        never served again.
        """
        if force_refresh and (stale is None or stale == self._token):
            # Refused by ARM: never served again, as azure-core's policy forgets its token on a 401.
            self._token = None
        cached = self._cached()
        if cached is not None:
            return cached
        async with self._lock:
            # The call we waited for may have brought a token, or failed and started a backoff.
            cached = self._cached()
            if cached is not None:
                return cached
            return await self._fetch()

    def _cached(self) -> str | None:
        """The token to serve without calling the credential; None if it is to be called.

        Raises AuthError, without a call, while the credential is backed off and no valid token is held.
        """
        now = self.clock()
        if self._token is not None and now < self._expires_on:
            return self._token if now < max(self._refresh_at, self._retry_at) else None
        if now < self._retry_at:
            wait = math.ceil(self._retry_at - now)
            raise AuthError(f"{self._failure} (the credential is asked again in {wait}s)")
        return None

    async def _fetch(self) -> str:
        try:
            token, expires_on, refresh_on = await self._ask()
            if expires_on <= self.clock():
                raise AuthError(f"the credential gave an expired token for {self.scope}")
        except Exception as exc:  # azure-identity raises many kinds; all mean "no token"
            error = self._failed(exc)
            if self._token is not None and self.clock() < self._expires_on:
                return self._token  # an early refresh failed: the token serves on, retried after the backoff
            if error is exc:
                raise
            raise error from exc
        now = self.clock()
        if self._failures:
            log.info("token_refresh_recovered", scope=self.scope, failures=self._failures)
        self.fetches += 1
        self._token = token
        self._expires_on = expires_on
        due = refresh_on if refresh_on else expires_on - self.refresh_margin
        self._refresh_at = max(due, now + self.min_refresh_interval)
        self._failures = 0
        self._failure = ""
        self._retry_at = 0.0
        return token

    async def _ask(self) -> tuple[str, float, float | None]:
        """Token, expiry and refresh hint, by get_token_info where the credential has it (as azure-core)."""
        if isinstance(self.credential, SupportsTokenInfo):
            info = await self.credential.get_token_info(self.scope)
            return str(info.token), float(info.expires_on), info.refresh_on
        access = await self.credential.get_token(self.scope)
        return str(access.token), float(access.expires_on), None

    def _failed(self, exc: Exception) -> AuthError:
        """Record a failed call and start (or lengthen) the backoff; the AuthError to raise."""
        if isinstance(exc, AuthError):
            error = exc
        else:
            # Redacted here, not only by the log processor: this text goes into errors and logs.
            error = AuthError(
                f"could not get a token for {self.scope}: {type(exc).__name__}: {redact(str(exc))}"
            )
        now = self.clock()
        self._failures += 1
        # The exponent is capped: a credential failing for days must not overflow the float.
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(self._failures - 1, 32))
        self._retry_at = now + delay
        self._failure = str(error)
        if self._failures == 1:
            held = self._token is not None and now < self._expires_on
            log.warning(
                "token_refresh_failed",
                scope=self.scope,
                error=self._failure,
                retry_in=delay,
                cached_expires_in=round(self._expires_on - now) if held else None,
            )
        return error

    async def close(self) -> None:
        """Close the credential (azure-identity's hold HTTP sessions)."""
        await self.credential.close()
