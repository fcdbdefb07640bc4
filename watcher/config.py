"""The YAML config: pydantic models, `load_config()`, and errors that name their location."""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `1d`, `250ms` or a plain number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 5m, 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m, 1h, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for printing the effective config."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a GUID such as 00000000-0000-0000-0000-000000000000, got {value!r}")
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(f"not a GUID: {value!r}") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Guid = Annotated[str, BeforeValidator(_uuid)]

_VAULT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,49}$")
_RESOURCE_GROUP = re.compile(r"^[-\w._()]{1,90}$")

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback_host(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts plain http may reach."""
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Cloud = Literal["AzurePublicCloud", "AzureChinaCloud", "AzureUSGovernment"]
CredentialKind = Literal[
    "default",
    "managed_identity",
    "workload_identity",
    "client_secret",
    "certificate",
    "azure_cli",
    "static_token",
]


class AzureConfig(_Strict):
    """Where Azure is and how we sign in."""

    cloud: Cloud = "AzurePublicCloud"
    management_endpoint: str | None = None
    api_version: str = "2025-02-01"
    credential: CredentialKind = "default"
    client_id: str | None = None
    static_token_env: str | None = None
    ca_bundle: Path | None = None

    @field_validator("management_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as https://management.azure.com, got {value!r}")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(
                "plain http is allowed only for loopback hosts (the simulator); "
                f"use https for {parts.hostname}"
            )
        if parts.username or parts.password:
            raise ValueError("the endpoint must not carry credentials")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", value):
            raise ValueError(f"expected an api-version such as 2025-02-01, got {value!r}")
        return value

    @field_validator("static_token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"not an environment variable name: {value!r}")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA bundle not found: {value}")
        return value

    @model_validator(mode="after")
    def _credential_fields(self) -> AzureConfig:
        if self.credential == "static_token" and not self.static_token_env:
            raise ValueError(
                "credential static_token needs static_token_env (the env var that holds the token)"
            )
        if self.credential != "static_token" and self.static_token_env:
            raise ValueError("static_token_env is only used with credential: static_token")
        if self.client_id is not None and self.credential in ("azure_cli", "static_token"):
            raise ValueError(f"client_id is not used by credential {self.credential}")
        return self


class PollConfig(_Strict):
    """How often and how hard we ask Azure."""

    interval: Duration = 60.0
    discovery_interval: Duration = 300.0
    concurrency: int = Field(default=16, ge=1, le=256)
    request_timeout: Duration = 30.0
    backoff_initial: Duration = 2.0
    backoff_max: Duration = 300.0
    # ARM's read budget: a bucket of 250 refilled at 25/s per subscription and principal.
    ratelimit_burst: int = Field(default=250, ge=1)
    ratelimit_per_second: float = Field(default=25.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> PollConfig:
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial must not exceed backoff_max")
        return self


class DiscoveryConfig(_Strict):
    """Listing vaults for jobs nobody named."""

    enabled: bool = False
    lookback: Duration = 86400.0


class StoreConfig(_Strict):
    """The SQLite state store."""

    path: Path = Path("./backup-watcher.sqlite3")


class HttpConfig(_Strict):
    """Where /metrics and friends are served."""

    listen: str = "0.0.0.0:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class LoggingConfig(_Strict):
    """Log format and level."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class VaultConfig(_Strict):
    """One Recovery Services vault and the jobs to watch in it."""

    subscription_id: Guid
    resource_group: str
    name: str
    jobs: list[Guid] = Field(default_factory=list)
    discover: bool | None = None

    @field_validator("resource_group")
    @classmethod
    def _rg(cls, value: str) -> str:
        if not _RESOURCE_GROUP.match(value) or value.endswith("."):
            raise ValueError(f"not a valid resource group name: {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _VAULT_NAME.match(value):
            raise ValueError(
                f"not a valid vault name: {value!r} (2-50 letters, digits or hyphens, starting with a letter)"
            )
        return value

    @field_validator("jobs")
    @classmethod
    def _unique_jobs(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for job in value:
            if job in seen:
                raise ValueError(f"job {job} is listed twice")
            seen.add(job)
        return value


class Config(_Strict):
    """The whole config file."""

    azure: AzureConfig = Field(default_factory=AzureConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    vaults: list[VaultConfig] = Field(default_factory=list)

    def discovers(self, vault: VaultConfig) -> bool:
        """Whether this vault is listed for new jobs."""
        return self.discovery.enabled if vault.discover is None else vault.discover


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` as (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9464, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), port


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return msg.removeprefix("Value error, ")


def _cross_checks(config: Config, require_vaults: bool) -> list[tuple[str, str]]:
    problems = []
    if not config.vaults and require_vaults:
        problems.append(("vaults", "at least one vault is needed"))
    seen: dict[tuple[str, str, str], int] = {}
    for i, vault in enumerate(config.vaults):
        key = (vault.subscription_id, vault.resource_group.lower(), vault.name.lower())
        if key in seen:
            problems.append((f"vaults[{i}]", f"repeats vaults[{seen[key]}] ({vault.name})"))
            continue
        seen[key] = i
        if not vault.jobs and not config.discovers(vault):
            problems.append(
                (f"vaults[{i}]", f"{vault.name} names no jobs and does not discover: nothing to watch")
            )
    return problems


def validate_config(data: Any, source: str, *, require_vaults: bool = True) -> Config:
    """Validate already-parsed YAML; raise ConfigError listing every problem."""
    if data is None:
        raise ConfigError(source, [("", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        details = [(_location(tuple(error["loc"])), _message(error)) for error in exc.errors()]
        raise ConfigError(source, details) from None
    problems = _cross_checks(config, require_vaults)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | os.PathLike[str], *, require_vaults: bool = True) -> Config:
    """Read, parse and validate a config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("", "is a directory, not a config file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [("", f"cannot read: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, [(where, f"invalid YAML: {problem}")]) from None
    return validate_config(data, source, require_vaults=require_vaults)


def effective_config(config: Config) -> dict[str, Any]:
    """The config with every default filled in, durations spelled as in the file."""
    data = config.model_dump(mode="json")
    for key in ("interval", "discovery_interval", "request_timeout", "backoff_initial", "backoff_max"):
        data["poll"][key] = format_duration(getattr(config.poll, key))
    data["discovery"]["lookback"] = format_duration(config.discovery.lookback)
    return data
