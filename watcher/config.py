"""The YAML config: pydantic models, `load_config()`, and errors that name their location.

Every problem is reported at once, each as `location: message (line N)`, the location written the way a
user reads the file (`vaults[1].jobs[0]`, `azure.management_endpoint`). Cross-field checks inside a
section name the field they are about through the error's context (`ctx["field"]`), because pydantic
locates a model validator's error at the model itself.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import ssl
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from watcher.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_HINT = "a duration such as 30s, 5m, 1h, 1d, 1h30m or a number of seconds"


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h`, `1d`, `250ms`, `1h30m` or a plain number of seconds, as seconds."""
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif text is not None and _NUMBER.fullmatch(text.removeprefix("-")):
        seconds = float(text)
    elif text is not None and _DURATION.fullmatch(text.removeprefix("-")):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
        seconds = -seconds if text.startswith("-") else seconds
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {_show(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {_show(value)}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {_show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for printing the effective config."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a GUID such as 00000000-0000-0000-0000-000000000000, got {_show(value)}")
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(f"not a GUID: {value!r}") from None


def _path(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a file path, got an empty string")
        return Path(value).expanduser()
    return value


def _empty_list(value: Any) -> Any:
    # `jobs:` with every entry commented out is YAML null; it means "none".
    return [] if value is None else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _level(value: Any) -> Any:
    value = _lower(value)
    return "warning" if value == "warn" else value


def _field_error(field: str | int, message: str) -> PydanticCustomError:
    """An error about `field` of the model being validated (a cross-field check)."""
    return PydanticCustomError("field_conflict", "{message}", {"message": message, "field": field})


Duration = Annotated[float, BeforeValidator(parse_duration)]
Guid = Annotated[str, BeforeValidator(_uuid)]
FilePath = Annotated[Path, BeforeValidator(_path)]

_VAULT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,49}")
_RESOURCE_GROUP = re.compile(r"[-\w._()]{1,90}")

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
    backup_vault_api_version: str = "2025-09-01"
    credential: CredentialKind = "default"
    client_id: Guid | None = None
    static_token_env: str | None = None
    ca_bundle: FilePath | None = None

    @field_validator("management_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = _split_url(value)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
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

    @field_validator("api_version", "backup_vault_api_version")
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
        if value is None:
            return None
        if not value.exists():
            raise ValueError(f"CA bundle not found: {value}")
        if not value.is_file():
            raise ValueError(f"CA bundle is not a file: {value}")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(value))
        except ssl.SSLError:
            raise ValueError(f"CA bundle has no PEM certificates: {value}") from None
        except OSError as exc:
            raise ValueError(f"CA bundle cannot be read: {value} ({exc.strerror or exc})") from None
        return value

    @model_validator(mode="after")
    def _credential_fields(self) -> AzureConfig:
        if self.credential == "static_token" and not self.static_token_env:
            raise _field_error(
                "static_token_env",
                "credential static_token needs static_token_env (the env var that holds the token)",
            )
        if self.credential != "static_token" and self.static_token_env:
            raise _field_error(
                "static_token_env",
                f"only used with credential static_token, but credential is {self.credential}",
            )
        if self.client_id is not None and self.credential in ("azure_cli", "static_token"):
            raise _field_error("client_id", f"not used by credential {self.credential}")
        return self


def _split_url(value: str) -> SplitResult | None:
    """`urlsplit`, or None for text it cannot split (a bad IPv6 literal, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        return None
    return parts


class PollConfig(_Strict):
    """How often and how hard we ask Azure."""

    interval: Duration = 60.0
    discovery_interval: Duration = 300.0
    concurrency: StrictInt = Field(default=16, ge=1, le=256)
    request_timeout: Duration = 30.0
    backoff_initial: Duration = 2.0
    backoff_max: Duration = 300.0
    # ARM's read budget: a bucket of 250 refilled at 25/s per subscription and principal.
    ratelimit_burst: StrictInt = Field(default=250, ge=1)
    ratelimit_per_second: float = Field(default=25.0, gt=0, strict=True, allow_inf_nan=False)
    vault_discovery_interval: Duration = 1800.0
    inventory_interval: Duration = 900.0

    @model_validator(mode="after")
    def _order(self) -> PollConfig:
        if self.backoff_initial > self.backoff_max:
            raise _field_error(
                "backoff_initial",
                f"must not exceed backoff_max ({format_duration(self.backoff_initial)} > "
                f"{format_duration(self.backoff_max)})",
            )
        return self


class DiscoveryConfig(_Strict):
    """Listing vaults for jobs nobody named."""

    enabled: StrictBool = False
    lookback: Duration = 86400.0
    # How far each listing reaches back before the previous one, for jobs that become listable after
    # their start (agent-reported MABS/DPM and workload jobs) and for clock skew with Azure. Unset: an
    # hour, or a quarter of the lookback if that is shorter.
    overlap: Duration = 3600.0

    @model_validator(mode="before")
    @classmethod
    def _derived_overlap(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("overlap") is None:
            try:
                lookback = parse_duration(data.get("lookback", 86400.0))
            except ValueError:
                return data  # the lookback's own error is reported
            data = {**data, "overlap": min(3600.0, lookback / 4)}
        return data

    @model_validator(mode="after")
    def _overlap(self) -> DiscoveryConfig:
        if self.overlap >= self.lookback:
            raise _field_error(
                "overlap",
                f"must be shorter than lookback ({format_duration(self.overlap)} >= "
                f"{format_duration(self.lookback)})",
            )
        return self


class StoreConfig(_Strict):
    """The SQLite state store."""

    path: FilePath = Path("./backup-watcher.sqlite3")
    # How long transition history is kept; totals and per-item state are kept regardless.
    retention: Duration = 30 * 86400.0


class HttpConfig(_Strict):
    """Where /metrics and friends are served, and the status page."""

    listen: str = "0.0.0.0:9464"
    # The status page at / (and /jobs/{id}); false leaves / a plain list of the endpoints.
    ui: StrictBool = True
    # The status page calls a protected item stale when its newest recovery point is older than this
    # (the shipped alert rules' default threshold; per-item thresholds live in the rules).
    ui_stale_after: Duration = 26 * 3600.0

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        parse_listen(value)
        return value


class LoggingConfig(_Strict):
    """Log format and level."""

    format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] = "json"
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_level)] = "info"


VaultType = Literal["recovery_services", "backup_vault"]
VAULT_TYPES: tuple[VaultType, ...] = ("recovery_services", "backup_vault")


class VaultConfig(_Strict):
    """One vault named in the config, of either kind, and the jobs to watch in it."""

    subscription_id: Guid
    resource_group: str
    name: str
    type: Annotated[VaultType, BeforeValidator(_lower)] = "recovery_services"
    jobs: Annotated[list[Guid], BeforeValidator(_empty_list)] = Field(default_factory=list)
    discover: StrictBool | None = None

    @field_validator("resource_group")
    @classmethod
    def _rg(cls, value: str) -> str:
        if not _RESOURCE_GROUP.fullmatch(value) or value.endswith("."):
            raise ValueError(
                f"not a valid resource group name: {value!r} (1-90 letters, digits, "
                "'_', '-', '.', '(', ')'; not ending in '.')"
            )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _VAULT_NAME.fullmatch(value):
            raise ValueError(
                f"not a valid vault name: {value!r} (2-50 letters, digits or hyphens, starting with a letter)"
            )
        return value

    @field_validator("jobs")
    @classmethod
    def _unique_jobs(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, job in enumerate(value):
            if job in seen:
                raise _field_error(i, f"job {job} is listed twice (also jobs[{seen[job]}])")
            seen[job] = i
        return value


def _unique_types(value: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for i, kind in enumerate(value):
        if kind in seen:
            raise _field_error(i, f"{kind} is listed twice (also vault_types[{seen[kind]}])")
        seen[kind] = i
    return value


class SubscriptionConfig(_Strict):
    """A subscription whose vaults are all watched, found by listing it (as they come and go)."""

    id: Guid
    vault_types: Annotated[
        list[Annotated[VaultType, BeforeValidator(_lower)]], BeforeValidator(_empty_list)
    ] = Field(default_factory=lambda: list(VAULT_TYPES), min_length=1)
    resource_groups: Annotated[list[str], BeforeValidator(_empty_list)] = Field(default_factory=list)
    tags: Annotated[dict[str, str], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=dict
    )
    exclude_vaults: Annotated[list[str], BeforeValidator(_empty_list)] = Field(default_factory=list)

    @field_validator("vault_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _unique_types(value)

    @field_validator("resource_groups")
    @classmethod
    def _rgs(cls, value: list[str]) -> list[str]:
        for i, rg in enumerate(value):
            if not _RESOURCE_GROUP.fullmatch(rg) or rg.endswith("."):
                raise _field_error(i, f"not a valid resource group name: {rg!r}")
        return value

    @field_validator("exclude_vaults")
    @classmethod
    def _excluded(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if not _VAULT_NAME.fullmatch(name):
                raise _field_error(i, f"not a valid vault name: {name!r}")
        return value

    def wants(self, kind: str, resource_group: str, name: str, tags: dict[str, str]) -> bool:
        """Whether a vault this subscription's listing returned is to be watched."""
        if kind not in self.vault_types:
            return False
        if self.resource_groups and resource_group.lower() not in {rg.lower() for rg in self.resource_groups}:
            return False
        if name.lower() in {v.lower() for v in self.exclude_vaults}:
            return False
        # Tag names compare case-insensitively, as ARM's do; values exactly.
        lowered = {k.lower(): v for k, v in tags.items()}
        return all(lowered.get(k.lower()) == v for k, v in self.tags.items())


_SECTIONS = ("azure", "poll", "discovery", "store", "http", "logging")


class Config(_Strict):
    """The whole config file."""

    azure: AzureConfig = Field(default_factory=AzureConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    subscriptions: Annotated[list[SubscriptionConfig], BeforeValidator(_empty_list)] = Field(
        default_factory=list
    )
    vaults: Annotated[list[VaultConfig], BeforeValidator(_empty_list)] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out is YAML null; it means "all defaults".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    @model_validator(mode="after")
    def _lookback_covers_listings(self) -> Config:
        # A job that starts and ends between two listings is seen only if the second one reaches back
        # to the first: the lookback must cover a whole discovery interval.
        if self.discovery.lookback < self.poll.discovery_interval:
            raise PydanticCustomError(
                "field_conflict",
                "{message}",
                {
                    "message": f"must be at least poll.discovery_interval "
                    f"({format_duration(self.discovery.lookback)} < "
                    f"{format_duration(self.poll.discovery_interval)}): jobs that start and end between "
                    "two listings would never be seen",
                    "field": "lookback",
                    "section": "discovery",
                },
            )
        return self

    def discovers(self, vault: VaultConfig) -> bool:
        """Whether this vault is listed for new jobs."""
        return _discovers(self.discovery.enabled, vault)


STORE_PATH_ENV = "WATCHER_STORE_PATH"


def apply_env_overrides(config: Config) -> Config:
    """The config as the environment amends it: `WATCHER_STORE_PATH` replaces `store.path`."""
    store_path = os.environ.get(STORE_PATH_ENV)
    if not store_path:
        return config
    return config.model_copy(update={"store": config.store.model_copy(update={"path": Path(store_path)})})


def _discovers(enabled: bool, vault: VaultConfig) -> bool:
    return enabled if vault.discover is None else vault.discover


def parse_listen(value: Any) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` as (host, port)."""
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9464, got {_show(value)}")
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9464, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), port


# -- reading the file -------------------------------------------------------------------------------

Loc = tuple[int | str, ...]
Problem = tuple[Loc, str]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and keeps dates as text (`api_version: 2025-02-01`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key_node.value!r} (first on line {seen[key_node.value].line + 1})",
                    key_node.start_mark,
                )
            seen[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_timestamp_as_text(self, node: yaml.Node) -> str:
        return str(self.construct_scalar(node))  # type: ignore[arg-type]  # a timestamp is a scalar node


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_timestamp_as_text)


def _parse_yaml(raw: bytes, source: str) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for line numbers); ConfigError with line and column if bad."""
    loader: _Loader | None = None
    try:
        loader = _Loader(raw)  # decodes the first chunk already
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.reader.ReaderError as exc:
        raise ConfigError(source, [_reader_problem(raw, exc)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context, opened = exc.context, exc.context_mark
        if context and opened and mark and opened.line != mark.line:
            context += f" (from line {opened.line + 1}, column {opened.column + 1})"
        problem = ", ".join(part for part in (context, exc.problem) if part) or "unreadable"
        if "'\\t'" in problem:
            problem += " (indent with spaces; YAML does not allow tabs there)"
        raise ConfigError(source, [(where, f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("", f"invalid YAML: {str(exc).splitlines()[0]}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _reader_problem(raw: bytes, exc: yaml.reader.ReaderError) -> tuple[str, str]:
    if exc.encoding == "unicode":  # PyYAML's marker for a character YAML does not allow
        line = raw.decode("utf-8", "replace").count("\n", 0, exc.position) + 1
        return f"line {line}", f"invalid YAML: character #x{exc.character:04x} is not allowed ({exc.reason})"
    line = raw.count(b"\n", 0, exc.position) + 1
    return f"line {line}", f"not {exc.encoding} text ({exc.reason} at byte {exc.position}); save it as UTF-8"


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest node along `loc` (a missing key points at its parent)."""
    if root is None or not loc:
        return None
    node: yaml.Node = root
    mark = root.start_mark
    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                None,
            )
            if match is None:
                if depth == 0:
                    return None  # a top-level key the file lacks: no line to point at
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark.line + 1


# -- turning pydantic's errors into lines a user can act on -----------------------------------------


def _location(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc`, for naming the keys it knows."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


_KINDS = {
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "list_type": "a list",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "path_type": "a file path",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
}


def _problem(error: Any) -> Problem:
    kind = error["type"]
    loc: Loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    given = _show(error.get("input"))
    if kind == "field_conflict":
        section = (ctx["section"],) if "section" in ctx else ()
        return (*loc, *section, ctx["field"]), str(ctx["message"])
    if kind == "extra_forbidden":
        return loc, _unknown_key(loc)
    if kind == "invalid_key":
        return loc[:-1], f"keys must be text, got {_show(loc[-1])}"
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return loc, f"expected one of {' | '.join(choices)}, got {given}"
    if kind in _KINDS:
        return loc, f"expected {_KINDS[kind]}, got {given}"
    if kind in _BOUNDS:
        key, text = _BOUNDS[kind]
        bound = ctx.get(key)
        return loc, f"{text.format(f'{bound:g}' if isinstance(bound, float) else bound)}, got {given}"
    if kind == "finite_number":
        return loc, f"must be a finite number, got {given}"
    if kind == "value_error":
        return loc, str(error["msg"]).removeprefix("Value error, ")
    return loc, f"{error['msg']}, got {given}"


def _vault_checks(data: dict[str, Any], config: Config | None, require_vaults: bool) -> list[Problem]:
    """Checks across vaults; on a config with other errors, over the vaults that are valid themselves."""
    raw = data.get("vaults")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return []  # the model reported it
    problems: list[Problem] = []
    subscriptions = data.get("subscriptions")
    misspelt = any(
        isinstance(k, str)
        and k not in ("vaults", "subscriptions")
        and k.lower() in ("vaults", "subscriptions")
        for k in data
    )
    if not raw and not subscriptions and require_vaults and not misspelt:
        problems.append((("vaults",), "at least one of subscriptions and vaults is needed"))
    enabled: bool | None
    if config is not None:
        enabled = config.discovery.enabled
        vaults = list(enumerate(config.vaults))
    else:
        try:
            enabled = DiscoveryConfig.model_validate(data.get("discovery") or {}).enabled
        except ValidationError:
            enabled = None  # reported already; whether a vault has nothing to watch is unknown
        vaults = []
        for i, item in enumerate(raw):
            try:
                vaults.append((i, VaultConfig.model_validate(item)))
            except ValidationError:
                continue
    seen: dict[tuple[str, str, str, str], int] = {}
    for i, vault in vaults:
        key = (vault.type, vault.subscription_id, vault.resource_group.lower(), vault.name.lower())
        if key in seen:
            problems.append((("vaults", i), f"repeats vaults[{seen[key]}] ({vault.name})"))
            continue
        seen[key] = i
        if enabled is not None and not vault.jobs and not _discovers(enabled, vault):
            problems.append(
                (("vaults", i), f"{vault.name} names no jobs and does not discover: nothing to watch")
            )
    if config is not None:
        ids: dict[str, int] = {}
        for i, sub in enumerate(config.subscriptions):
            if sub.id in ids:
                problems.append((("subscriptions", i), f"repeats subscriptions[{ids[sub.id]}] ({sub.id})"))
            ids.setdefault(sub.id, i)
    return problems


def _validate(data: Any, source: str, require_vaults: bool, root: yaml.Node | None) -> Config:
    if data is None:
        raise ConfigError(source, [("", "the file is empty (no settings, only comments or blank lines)")])
    if not isinstance(data, dict):
        where = f"line {root.start_mark.line + 1}" if root else ""
        raise ConfigError(source, [(where, f"expected a mapping of keys at the top, got {_show(data)}")])
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(error) for error in exc.errors()]
    problems += _vault_checks(data, config, require_vaults)
    if problems:
        located = [(_line_of(root, loc), _location(loc), message) for loc, message in problems]
        located.sort(key=lambda p: math.inf if p[0] is None else p[0])  # file order; unplaced ones last
        details = [
            (where, f"{message} (line {line})" if line else message) for line, where, message in located
        ]
        raise ConfigError(source, details)
    assert config is not None
    return config


def validate_config(data: Any, source: str, *, require_vaults: bool = True) -> Config:
    """Validate already-parsed YAML; raise ConfigError listing every problem."""
    return _validate(data, source, require_vaults, None)


def load_config(path: str | os.PathLike[str], *, require_vaults: bool = True) -> Config:
    """Read, parse and validate a config file (UTF-8, or UTF-16 with a byte-order mark)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("", "is a directory, not a config file")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    data, root = _parse_yaml(raw, source)
    return _validate(data, source, require_vaults, root)


def _is_duration(field: FieldInfo) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in field.metadata)


def effective_config(config: Config) -> dict[str, Any]:
    """The config with every default filled in, durations spelled as in the file."""
    data = config.model_dump(mode="json")
    for section in _SECTIONS:
        values = getattr(config, section)
        for name, field in type(values).model_fields.items():
            if _is_duration(field):
                data[section][name] = format_duration(getattr(values, name))
    return data
