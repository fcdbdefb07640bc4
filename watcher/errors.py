"""The exception tree of backup-watcher.

```
WatcherError
 +-- ConfigError            bad config file; .details lists (location, message)
 +-- StoreError             the state store cannot be opened or written
 +-- AzureError             anything that went wrong talking to Azure; .reason is the metric label
      +-- TlsVerificationError  the endpoint's certificate does not verify (set ca_bundle)     (connection)
      +-- AuthError             401 after one forced token refresh, or no token at all     (auth)
      +-- ForbiddenError        403: the identity may not read this vault                  (forbidden)
      +-- NotFoundError         404: no such job, vault or operation                        (not_found)
      +-- BadRequestError       400 and other 4xx that retrying cannot fix                  (bad_response)
      |    +-- ApiVersionError      ARM rejected the api-version; .supported lists the ones it takes
      +-- ForeignHostError      a URL Azure handed back points outside the management host  (bad_response)
      +-- BadResponseError      a body that is not what Azure documents                    (bad_response)
      |    +-- EndlessListingError  a listing whose nextLink did not stop within MAX_PAGES   (bad_response)
      +-- RetryableError        worth trying again after .retry_after seconds (or backoff)
           +-- ThrottledError       429                                                     (throttled)
           +-- ServerError          408 and 5xx                                             (server_error)
           +-- RequestTimeout       no answer within the timeout                            (timeout)
           +-- ConnectionFailed     could not connect / connection dropped                   (connection)
```
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error backup-watcher raises on purpose."""


class ConfigError(WatcherError):
    """A config file that cannot be used; every problem with its location."""

    def __init__(self, source: str, details: list[tuple[str, str]]) -> None:
        self.source = source
        self.details = details
        lines = [f"{loc}: {msg}" if loc else msg for loc, msg in details]
        super().__init__(f"{source}: " + "; ".join(lines))

    def lines(self) -> list[str]:
        """One line per problem: `FILE: location: message`."""
        return [
            f"{self.source}: {loc}: {msg}" if loc else f"{self.source}: {msg}" for loc, msg in self.details
        ]


class StoreError(WatcherError):
    """The state store cannot be opened, read or written."""


class AzureError(WatcherError):
    """Azure answered with an error, or did not answer at all.

    `retry_after`: the least time to wait before asking again, when the error says so (Azure's
    Retry-After, capped; or a fault that will not cure itself in seconds).
    """

    reason = "bad_response"
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TlsVerificationError(AzureError):
    """The endpoint's TLS certificate does not verify: retrying cannot help, `ca_bundle` may."""

    reason = "connection"


class AuthError(AzureError):
    """No usable token: 401 after one forced refresh, or the credential failed."""

    reason = "auth"


class ForbiddenError(AzureError):
    """403: the identity lacks a role that can read this vault's jobs."""

    reason = "forbidden"


class NotFoundError(AzureError):
    """404: the job, vault or operation does not exist (or is not visible)."""

    reason = "not_found"


class BadRequestError(AzureError):
    """A 4xx that retrying will not fix."""

    # The contract's poll-error reasons have no separate "bad request": ARM refused what we sent.
    reason = "bad_response"


class ApiVersionError(BadRequestError):
    """ARM does not accept the configured api-version."""

    def __init__(self, message: str, *, status: int | None, code: str | None, supported: list[str]) -> None:
        super().__init__(message, status=status, code=code)
        self.supported = supported


class ForeignHostError(AzureError):
    """A URL to follow points at a host other than the configured management endpoint."""

    reason = "bad_response"


class BadResponseError(AzureError):
    """Azure answered, but not with a body we can use."""

    reason = "bad_response"


class EndlessListingError(BadResponseError):
    """A listing's nextLink kept leading to new pages: the vault waits a whole backoff_max to try again."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableError(AzureError):
    """Trying again later may succeed; `retry_after` is Azure's own wish, if it said one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ThrottledError(RetryableError):
    """429: ARM's request budget for the subscription is spent."""

    reason = "throttled"


class ServerError(RetryableError):
    """408 or 5xx."""

    reason = "server_error"


class RequestTimeout(RetryableError):
    """No complete answer within the request timeout."""

    reason = "timeout"


class ConnectionFailed(RetryableError):
    """The connection could not be made or broke."""

    reason = "connection"
