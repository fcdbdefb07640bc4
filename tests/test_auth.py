"""Clouds, credentials and tokens: what azure-identity is asked for, how tokens are cached, what a 401 does.

azure-identity is the Azure boundary: its `aio` classes are replaced by recorders where a test needs to
see how they were built, and used as they are where the installed version itself is under test.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import aio
from structlog.testing import capture_logs

from tests.conftest import SUB, TOKEN_ENV, FakeClock, every_job, make_config, running_watcher, wait_for
from watcher.app import AzureSide, build_azure
from watcher.azure.auth import (
    CLOUDS,
    StaticTokenCredential,
    TokenProvider,
    build_credential,
    management_endpoint,
)
from watcher.azure.models import VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.config import AzureConfig, validate_config
from watcher.errors import AuthError, ConfigError
from watcher.sim import Estate, SimJob, Simulator

pytestmark = pytest.mark.timeout(20)

RG = "rg-backup"
VAULT = "vault-a"
JOB = "41f3e94b-ae6b-4a20-b422-65abfcaf03e5"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENV_CLIENT = "0b4a3c2d-1e0f-4a5b-8c7d-6e5f4a3b2c1d"
CONFIG_CLIENT = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
IDENTITY_CLASSES = (
    "DefaultAzureCredential",
    "ManagedIdentityCredential",
    "WorkloadIdentityCredential",
    "ClientSecretCredential",
    "CertificateCredential",
    "AzureCliCredential",
)
AUTHORITY = {
    "AzurePublicCloud": "login.microsoftonline.com",
    "AzureChinaCloud": "login.chinacloudapi.cn",
    "AzureUSGovernment": "login.microsoftonline.us",
}
AZURE_ENV = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_USERNAME",
    "AZURE_TOKEN_CREDENTIALS",
)


class RecordedCredential:
    """Stands in for one azure.identity.aio class: remembers its arguments, hands out the simulator's token."""

    name = ""
    built: list[RecordedCredential]
    token = "sim-token"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        assert not args, "azure-identity credentials are built with keyword arguments here"
        self.kwargs = kwargs
        self.gets = 0
        self.closed = False
        self.built.append(self)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.gets += 1
        self.scopes = scopes
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AZURE_* variable of the machine running the tests leaks into a credential."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[RecordedCredential]]:
    """Every azure.identity.aio credential class replaced by a recorder; name -> recorder class."""
    fakes: dict[str, type[RecordedCredential]] = {}
    for name in IDENTITY_CLASSES:
        fake = type(name, (RecordedCredential,), {"name": name, "built": []})
        monkeypatch.setattr(aio, name, fake)
        fakes[name] = fake
    return fakes


@pytest.fixture(scope="module")
def rsa_certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEM file with an RSA key and its certificate, as CertificateCredential wants (made once: RSA is slow)."""
    path = tmp_path_factory.mktemp("sp") / "sp.pem"
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("backup-watcher-sp", key_type=trustme.KeyType.RSA)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture
def sp_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rsa_certificate: Path) -> dict[str, str]:
    """The environment a service principal or workload identity reads (no real secret anywhere)."""
    token_file = tmp_path / "federated-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    env = {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": ENV_CLIENT,
        "AZURE_CLIENT_SECRET": "not-a-real-secret",
        "AZURE_CLIENT_CERTIFICATE_PATH": str(rsa_certificate),
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def azure(**fields: Any) -> AzureConfig:
    """The `azure` section of a config, validated like the file's."""
    return validate_config({"azure": fields}, "test", require_vaults=False).azure


def accepted_keywords(cls: type) -> set[str]:
    """The keyword arguments the installed class names in its signature or documents (its MRO's)."""
    names = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    }
    for klass in cls.__mro__:
        names |= set(re.findall(r":(?:keyword|param)\s+(?:[^:\n]*\s)?(\w+):", klass.__doc__ or ""))
    return names


# -- clouds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "endpoint", "scope", "authority"),
    [
        (
            "AzurePublicCloud",
            "https://management.azure.com",
            "https://management.azure.com/.default",
            "login.microsoftonline.com",
        ),
        (
            "AzureChinaCloud",
            "https://management.chinacloudapi.cn",
            "https://management.chinacloudapi.cn/.default",
            "login.chinacloudapi.cn",
        ),
        (
            "AzureUSGovernment",
            "https://management.usgovcloudapi.net",
            "https://management.core.usgovcloudapi.net/.default",
            "login.microsoftonline.us",
        ),
    ],
)
async def test_each_cloud_has_its_endpoint_scope_and_authority(
    cloud: str, endpoint: str, scope: str, authority: str, tmp_path: Path
) -> None:
    """Each cloud's ARM endpoint, token scope (US Gov: management.core.) and authority reach the client."""
    assert (CLOUDS[cloud].management_endpoint, CLOUDS[cloud].scope, CLOUDS[cloud].authority_host) == (
        endpoint,
        scope,
        authority,
    )
    config = validate_config(
        {
            "azure": {"cloud": cloud, "credential": "static_token", "static_token_env": TOKEN_ENV},
            "store": {"path": str(tmp_path / "s.db")},
        },
        "test",
        require_vaults=False,
    )
    side = build_azure(config, None, SubscriptionLimiter())
    try:
        assert side.client.endpoint == endpoint
        assert side.tokens.scope == scope
    finally:
        await side.close()


def test_custom_management_endpoint_overrides_the_clouds() -> None:
    """management_endpoint replaces the cloud's endpoint (trailing slash dropped); unset, the cloud's is used."""
    assert management_endpoint(azure(cloud="AzureChinaCloud")) == "https://management.chinacloudapi.cn"
    custom = azure(cloud="AzureUSGovernment", management_endpoint="https://arm.contoso.example/")
    assert management_endpoint(custom) == "https://arm.contoso.example"


def test_secrets_have_no_place_in_the_config_file() -> None:
    """A client secret, tenant or certificate in the YAML is an unknown key: secrets come from the env."""
    with pytest.raises(ConfigError) as info:
        validate_config(
            {"azure": {"client_secret": "x", "tenant_id": TENANT, "certificate_path": "/c.pem"}},
            "f.yaml",
            require_vaults=False,
        )
    problems = sorted(info.value.details)
    assert [loc for loc, _ in problems] == [
        "azure.certificate_path",
        "azure.client_secret",
        "azure.tenant_id",
    ]
    assert all(msg.startswith("unknown key") for _, msg in problems)


# -- credentials ----------------------------------------------------------------------------

CREDENTIAL_CASES = [
    ("default", None, "DefaultAzureCredential", lambda a, e: {"authority": a}),
    (
        "default",
        CONFIG_CLIENT,
        "DefaultAzureCredential",
        lambda a, e: {"authority": a, "managed_identity_client_id": CONFIG_CLIENT},
    ),
    ("managed_identity", None, "ManagedIdentityCredential", lambda a, e: {}),
    (
        "managed_identity",
        CONFIG_CLIENT,
        "ManagedIdentityCredential",
        lambda a, e: {"client_id": CONFIG_CLIENT},
    ),
    (
        "workload_identity",
        None,
        "WorkloadIdentityCredential",
        lambda a, e: {
            "tenant_id": TENANT,
            "client_id": ENV_CLIENT,
            "token_file_path": e["AZURE_FEDERATED_TOKEN_FILE"],
            "authority": a,
        },
    ),
    (
        "workload_identity",
        CONFIG_CLIENT,
        "WorkloadIdentityCredential",
        lambda a, e: {
            "tenant_id": TENANT,
            "client_id": CONFIG_CLIENT,
            "token_file_path": e["AZURE_FEDERATED_TOKEN_FILE"],
            "authority": a,
        },
    ),
    (
        "client_secret",
        None,
        "ClientSecretCredential",
        lambda a, e: {
            "tenant_id": TENANT,
            "client_id": ENV_CLIENT,
            "client_secret": "not-a-real-secret",
            "authority": a,
        },
    ),
    (
        "certificate",
        CONFIG_CLIENT,
        "CertificateCredential",
        lambda a, e: {
            "tenant_id": TENANT,
            "client_id": CONFIG_CLIENT,
            "certificate_path": e["AZURE_CLIENT_CERTIFICATE_PATH"],
            "password": None,
            "authority": a,
        },
    ),
    ("azure_cli", None, "AzureCliCredential", lambda a, e: {}),
]


@pytest.mark.parametrize("cloud", list(AUTHORITY))
@pytest.mark.parametrize(
    ("kind", "client_id", "class_name", "expected"),
    CREDENTIAL_CASES,
    ids=[f"{kind}{'-client_id' if cid else ''}" for kind, cid, _, _ in CREDENTIAL_CASES],
)
def test_each_credential_is_built_with_the_arguments_of_its_cloud(
    identity: dict[str, type[RecordedCredential]],
    sp_env: dict[str, str],
    cloud: str,
    kind: str,
    client_id: str | None,
    class_name: str,
    expected: Any,
) -> None:
    """Every kind builds its azure.identity.aio class once, with the cloud's authority and keywords it takes."""
    credential = build_credential(azure(cloud=cloud, credential=kind, client_id=client_id))
    assert type(credential).__name__ == class_name
    assert isinstance(credential, RecordedCredential)
    assert [len(identity[n].built) for n in IDENTITY_CLASSES].count(1) == 1
    assert credential.kwargs == expected(AUTHORITY[cloud], sp_env)


@pytest.mark.parametrize(("kind", "client_id", "class_name", "expected"), CREDENTIAL_CASES)
def test_credential_keywords_exist_in_the_installed_azure_identity(
    monkeypatch: pytest.MonkeyPatch,
    sp_env: dict[str, str],
    kind: str,
    client_id: str | None,
    class_name: str,
    expected: Any,
) -> None:
    """Each keyword we pass is one the installed class names or documents (no silently ignored kwargs)."""
    accepted = accepted_keywords(getattr(aio, class_name))
    kwargs = expected(AUTHORITY["AzureChinaCloud"], sp_env)
    assert set(kwargs) <= accepted, f"{class_name} does not take {set(kwargs) - accepted}"


def test_keyword_check_knows_what_the_async_classes_do_not_take() -> None:
    """The keyword check has teeth: async DefaultAzureCredential has no browser step to exclude; MI and CLI take no authority."""
    assert "exclude_interactive_browser_credential" not in accepted_keywords(aio.DefaultAzureCredential)
    assert "authority" in accepted_keywords(aio.DefaultAzureCredential)
    assert "authority" not in accepted_keywords(aio.ManagedIdentityCredential)
    assert "authority" not in accepted_keywords(aio.AzureCliCredential)
    assert "authority" in accepted_keywords(aio.WorkloadIdentityCredential)


@pytest.mark.parametrize("cloud", list(AUTHORITY))
@pytest.mark.parametrize("kind", ["client_secret", "certificate", "workload_identity"])
async def test_real_credentials_sign_in_at_the_clouds_authority(
    sp_env: dict[str, str], cloud: str, kind: str
) -> None:
    """The installed azure-identity, built by us (no network), points its Entra client at the cloud's authority."""
    classes = {
        "client_secret": aio.ClientSecretCredential,
        "certificate": aio.CertificateCredential,
        "workload_identity": aio.WorkloadIdentityCredential,
    }
    credential: Any = build_credential(azure(cloud=cloud, credential=kind))
    try:
        assert isinstance(credential, classes[kind])
        assert credential._client._authority == f"https://{AUTHORITY[cloud]}"
        assert credential._client._tenant_id == TENANT
    finally:
        await credential.close()


@pytest.mark.parametrize("cloud", list(AUTHORITY))
@pytest.mark.parametrize(("client_id", "used_id"), [(None, ENV_CLIENT), (CONFIG_CLIENT, CONFIG_CLIENT)])
async def test_real_default_credential_carries_the_authority_and_client_id(
    sp_env: dict[str, str], cloud: str, client_id: str | None, used_id: str
) -> None:
    """DefaultAzureCredential signs in at the cloud's authority; MI and workload identity use client_id, else AZURE_CLIENT_ID."""
    credential: Any = build_credential(azure(cloud=cloud, credential="default", client_id=client_id))
    try:
        chain = {type(c).__name__: c for c in credential.credentials}
        environment = chain["EnvironmentCredential"]._credential
        assert isinstance(environment, aio.ClientSecretCredential)
        assert environment._client._authority == f"https://{AUTHORITY[cloud]}"
        managed = chain["ManagedIdentityCredential"]._credential
        assert managed._client._identity_config == {"client_id": used_id}
        assert chain["WorkloadIdentityCredential"]._client._client_id == used_id
    finally:
        await credential.close()


@pytest.mark.parametrize(
    ("kind", "unset", "named"),
    [
        ("client_secret", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"),
        ("client_secret", "AZURE_TENANT_ID", "AZURE_TENANT_ID"),
        ("client_secret", "AZURE_CLIENT_ID", "AZURE_CLIENT_ID"),
        ("certificate", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PATH"),
        ("certificate", "AZURE_TENANT_ID", "AZURE_TENANT_ID"),
        ("workload_identity", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE"),
        ("workload_identity", "AZURE_CLIENT_ID", "AZURE_CLIENT_ID"),
    ],
)
def test_a_missing_environment_variable_is_named(
    identity: dict[str, type[RecordedCredential]],
    sp_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    unset: str,
    named: str,
) -> None:
    """A credential missing one of its env vars is a ConfigError naming that variable; nothing is built."""
    monkeypatch.delenv(unset)
    with pytest.raises(ConfigError) as info:
        build_credential(azure(credential=kind))
    (line,) = info.value.lines()
    assert "azure.credential" in line
    assert f"credential {kind} needs the environment variable(s) {named}" in line
    assert all(not fake.built for fake in identity.values())


@pytest.mark.parametrize(
    ("content", "error"),
    [(None, "FileNotFoundError"), ("not a certificate", "ValueError")],
)
def test_an_unusable_certificate_is_a_config_error(
    sp_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, error: str
) -> None:
    """A missing or unreadable certificate is a ConfigError, not a traceback from azure-identity."""
    path = tmp_path / "bad.pem"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("AZURE_CLIENT_CERTIFICATE_PATH", str(path))
    with pytest.raises(ConfigError) as info:
        build_credential(azure(credential="certificate"))
    assert f"credential certificate: {error}" in str(info.value)


async def test_static_token_reads_its_env_var_at_each_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """static_token takes the token from the named env var when asked (so a rotation is picked up)."""
    credential = build_credential(azure(credential="static_token", static_token_env="MY_TOKEN"))
    assert isinstance(credential, StaticTokenCredential)
    monkeypatch.setenv("MY_TOKEN", "first")
    assert (await credential.get_token("scope")).token == "first"
    monkeypatch.setenv("MY_TOKEN", "second")
    assert (await credential.get_token("scope")).token == "second"
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(AuthError, match="MY_TOKEN"):
        await credential.get_token("scope")


# -- the token cache --------------------------------------------------------------------------


class CountingCredential:
    """A credential with get_token only (like our static one): a new token per call, valid `lifetime` seconds.

    With a `gate`, each call waits for it to be set, so a test can pile callers up behind one call.
    """

    def __init__(self, clock: FakeClock, lifetime: float, gate: asyncio.Event | None = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.gate = gate
        self.methods: list[str] = []
        self.closed = False
        self.fail: Exception | None = None

    @property
    def calls(self) -> int:
        return len(self.methods)

    async def issue(self, method: str) -> tuple[str, int]:
        self.methods.append(method)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return f"token-{self.calls}", int(self.clock() + self.lifetime)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(*await self.issue("get_token"))

    async def close(self) -> None:
        self.closed = True


class TokenInfoCredential(CountingCredential):
    """Like azure.identity.aio's credentials: get_token_info too, with a refresh_on hint `refresh_in` seconds ahead."""

    def __init__(self, clock: FakeClock, lifetime: float, refresh_in: float | None = None) -> None:
        super().__init__(clock, lifetime)
        self.refresh_in = refresh_in

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        token, expires_on = await self.issue("get_token_info")
        refresh_on = None if self.refresh_in is None else int(self.clock() + self.refresh_in)
        return AccessTokenInfo(token, expires_on, refresh_on=refresh_on)


SCOPE = CLOUDS["AzurePublicCloud"].scope


def test_installed_async_credentials_offer_get_token_info() -> None:
    """Every azure.identity.aio class we build has get_token_info, so its refresh_on hint reaches the cache."""
    assert [n for n in IDENTITY_CLASSES if not hasattr(getattr(aio, n), "get_token_info")] == []


@pytest.mark.parametrize("kind", [CountingCredential, TokenInfoCredential])
async def test_token_is_reused_until_shortly_before_expiry(
    clock: FakeClock, kind: type[CountingCredential]
) -> None:
    """Without a refresh_on hint, one fetch serves every request until 300 s before expiry (azure-core's window)."""
    clock.now = 1_000_000.0
    credential = kind(clock, lifetime=3600)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    assert {await tokens.token() for _ in range(50)} == {"token-1"}
    clock.advance(3600 - 301)
    assert await tokens.token() == "token-1"
    clock.advance(1)
    assert await tokens.token() == "token-2"
    assert await tokens.token() == "token-2"
    assert (credential.calls, tokens.fetches) == (2, 2)


async def test_refresh_on_hint_is_honoured_through_get_token_info(clock: FakeClock) -> None:
    """A credential with get_token_info is asked through it, and its token refreshed once refresh_on has come."""
    clock.now = 1_000_000.0
    credential = TokenInfoCredential(clock, lifetime=86400, refresh_in=43200)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    assert {await tokens.token() for _ in range(50)} == {"token-1"}
    clock.advance(43199)
    assert await tokens.token() == "token-1"
    clock.advance(1)
    assert await tokens.token() == "token-2"
    assert credential.methods == ["get_token_info", "get_token_info"]


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(lambda clock: CountingCredential(clock, lifetime=120), id="short-lived"),
        pytest.param(
            lambda clock: TokenInfoCredential(clock, lifetime=3600, refresh_in=-60), id="refresh_on-passed"
        ),
    ],
)
async def test_a_token_due_on_arrival_is_asked_for_at_most_every_30_seconds(
    clock: FakeClock, credential: Any
) -> None:
    """A token already due when it comes (short-lived, or refresh_on passed) is not fetched per request: 30 s apart."""
    clock.now = 1_000_000.0
    credential = credential(clock)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    assert {await tokens.token() for _ in range(50)} == {"token-1"}
    clock.advance(29)
    assert await tokens.token() == "token-1"
    clock.advance(1)
    assert await tokens.token() == "token-2"
    assert credential.calls == 2


async def test_concurrent_callers_share_one_fetch(clock: FakeClock) -> None:
    """Twenty requests starting at once wait for one token fetch, not twenty."""
    gate = asyncio.Event()
    credential = CountingCredential(clock, lifetime=3600, gate=gate)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    callers = [asyncio.create_task(tokens.token()) for _ in range(20)]
    await asyncio.sleep(0)  # every caller runs up to the credential or the lock
    gate.set()
    assert set(await asyncio.gather(*callers)) == {"token-1"}
    assert credential.calls == 1


async def test_forced_refresh_replaces_only_the_stale_token(clock: FakeClock) -> None:
    """Several 401s on the same token cause one refresh; a caller whose token was already replaced reuses it."""
    gate = asyncio.Event()
    credential = CountingCredential(clock, lifetime=3600, gate=gate)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    gate.set()
    stale = await tokens.token()
    gate.clear()
    callers = [asyncio.create_task(tokens.token(force_refresh=True, stale=stale)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*callers)) == {"token-2"}
    assert credential.calls == 2


async def test_credential_failure_is_an_auth_error(clock: FakeClock) -> None:
    """azure-identity's ClientAuthenticationError becomes AuthError (reason auth) naming the scope."""
    credential = CountingCredential(clock, lifetime=3600)
    credential.fail = ClientAuthenticationError("AADSTS700016: application not found in the directory")
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    with pytest.raises(AuthError) as info:
        await tokens.token()
    assert info.value.reason == "auth"
    assert SCOPE in str(info.value)
    assert "AADSTS700016" in str(info.value)
    assert isinstance(info.value.__cause__, ClientAuthenticationError)


async def test_failed_early_refresh_keeps_serving_the_valid_token(clock: FakeClock) -> None:
    """A refresh failing before expiry serves the cached token, retries after backoff, warns once without the token."""
    clock.now = 1_000_000.0
    credential = CountingCredential(clock, lifetime=3600)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    assert await tokens.token() == "token-1"
    clock.advance(3600 - 300)
    credential.fail = ClientAuthenticationError("AADSTS7000222: the client secret has expired")
    with capture_logs() as logs:
        assert {await tokens.token() for _ in range(20)} == {"token-1"}
        assert credential.calls == 2
        clock.advance(5)
        assert await tokens.token() == "token-1"
        assert credential.calls == 3
        clock.advance(10)
        assert await tokens.token() == "token-1"
        assert credential.calls == 4
        credential.fail = None
        clock.advance(20)
        assert await tokens.token() == "token-5"
        assert await tokens.token() == "token-5"
    assert credential.calls == 5
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["token_refresh_failed"]
    assert "AADSTS7000222" in warnings[0]["error"]
    assert warnings[0]["cached_expires_in"] == 300
    assert [e["event"] for e in logs] == ["token_refresh_failed", "token_refresh_recovered"]
    # Captured before any processor ran: the redaction processor is not what keeps the token out.
    assert not [e for e in logs if "token-" in repr(e)]


async def test_failing_credential_is_backed_off_exponentially(clock: FakeClock) -> None:
    """Without a token, callers during a backoff get the last failure at once; retries 5 s apart, doubling to 300 s."""
    credential = CountingCredential(clock, lifetime=3600)
    credential.fail = ClientAuthenticationError("AADSTS700016: application not found in the directory")
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    with pytest.raises(AuthError):
        await tokens.token()
    refused = await asyncio.gather(*(tokens.token() for _ in range(400)), return_exceptions=True)
    assert all(isinstance(e, AuthError) and "AADSTS700016" in str(e) for e in refused)
    assert credential.calls == 1
    for delay in (5, 10, 20, 40, 80, 160, 300, 300):
        clock.advance(delay - 1)
        with pytest.raises(AuthError, match="AADSTS700016"):
            await tokens.token()
        calls = credential.calls
        clock.advance(1)
        with pytest.raises(AuthError, match="AADSTS700016"):
            await tokens.token()
        assert credential.calls == calls + 1
    credential.fail = None
    clock.advance(300)
    assert await tokens.token() == f"token-{credential.calls}"


async def test_callers_queued_behind_a_failing_refresh_do_not_call_again(clock: FakeClock) -> None:
    """400 requests waiting on one credential call that fails all get its AuthError; the credential is called once."""
    gate = asyncio.Event()
    credential = CountingCredential(clock, lifetime=3600, gate=gate)
    credential.fail = ClientAuthenticationError("AADSTS50126: invalid credentials")
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    callers = [asyncio.create_task(tokens.token()) for _ in range(400)]
    await asyncio.sleep(0)
    gate.set()
    refused = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(e, AuthError) and "AADSTS50126" in str(e) for e in refused)
    assert credential.calls == 1


async def test_forced_refresh_is_backed_off_too(clock: FakeClock) -> None:
    """After a 401 and a failed refresh, further forced refreshes wait out the backoff; the refused token is not served."""
    credential = CountingCredential(clock, lifetime=3600)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    stale = await tokens.token()
    credential.fail = ClientAuthenticationError("AADSTS50173: the provided grant has expired")
    with pytest.raises(AuthError, match="AADSTS50173"):
        await tokens.token(force_refresh=True, stale=stale)
    with pytest.raises(AuthError, match="AADSTS50173"):
        await tokens.token(force_refresh=True, stale=stale)
    with pytest.raises(AuthError, match="AADSTS50173"):
        await tokens.token()
    assert credential.calls == 2
    credential.fail = None
    clock.advance(5)
    assert await tokens.token() == "token-3"


async def test_an_expired_token_from_the_credential_is_a_failure(clock: FakeClock) -> None:
    """A token that has expired when it arrives is never served: an AuthError, and the credential is backed off."""
    credential = CountingCredential(clock, lifetime=0)
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    with pytest.raises(AuthError, match="expired"):
        await tokens.token()
    with pytest.raises(AuthError, match="expired"):
        await tokens.token()
    assert credential.calls == 1


async def test_secrets_in_a_credential_error_are_redacted(clock: FakeClock) -> None:
    """A JWT quoted in a credential's error reaches neither the AuthError nor the warning, redaction processor or not."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSJ9.c2lnbmF0dXJl"
    credential = CountingCredential(clock, lifetime=3600)
    credential.fail = ClientAuthenticationError(
        f"AADSTS700024: client assertion {jwt} is not within its valid time range"
    )
    tokens = TokenProvider(credential, SCOPE, clock=clock)
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        await tokens.token()
    assert "AADSTS700024" in str(info.value)
    assert jwt not in str(info.value)
    assert logs
    assert not [e for e in logs if jwt in repr(e)]


async def test_closing_the_provider_closes_the_credential(clock: FakeClock) -> None:
    """TokenProvider.close() closes the azure-identity credential (its HTTP session)."""
    credential = CountingCredential(clock, lifetime=3600)
    await TokenProvider(credential, SCOPE, clock=clock).close()
    assert credential.closed


# -- 401 from ARM -----------------------------------------------------------------------------


def add_job(estate: Estate, clock: FakeClock, duration: float = 600.0) -> SimJob:
    """A running IaaS VM backup in the test vault."""
    return estate.add(
        SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=VAULT,
            job_id=JOB,
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity="vm-web-01",
            backup_management_type="AzureIaasVM",
            start=clock() - 10,
            duration=duration,
        )
    )


def vault_config(sim: Simulator, tmp_path: Path, **azure_fields: Any) -> Any:
    """A config watching the test job on the simulator."""
    return make_config(
        sim.url,
        [{"subscription_id": SUB, "resource_group": RG, "name": VAULT, "jobs": [JOB]}],
        tmp_path / "state.db",
        azure=azure_fields,
    )


@pytest.fixture
async def arm(sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path) -> AsyncIterator[AzureSide]:
    """Session, token cache and client for the simulator, wired as the daemon wires them."""
    add_job(estate, clock)
    side = build_azure(vault_config(sim, tmp_path), None, SubscriptionLimiter())
    try:
        yield side
    finally:
        await side.close()


async def test_one_401_forces_one_refresh_and_one_retry(arm: AzureSide, sim: Simulator) -> None:
    """After a 401 the token is fetched again once and the request retried once, successfully."""
    sim.inject(401, path_contains="/backupJobs/", times=1)
    job = await arm.api.get_job(VaultRef(SUB, RG, VAULT), JOB)
    assert job.status == "InProgress"
    assert arm.tokens.fetches == 2
    assert [r.status for r in sim.requests] == [401, 200]
    assert all(r.headers["authorization"] == "Bearer sim-token" for r in sim.requests)


async def test_two_401s_become_an_auth_error_after_exactly_one_refresh(
    arm: AzureSide, sim: Simulator
) -> None:
    """A 401 on the retry too is an AuthError (401, reason auth); one refresh, two requests, no third."""
    sim.inject(401, path_contains="/backupJobs/", times=5)
    with pytest.raises(AuthError) as info:
        await arm.api.get_job(VaultRef(SUB, RG, VAULT), JOB)
    assert (info.value.status, info.value.reason, info.value.code) == (
        401,
        "auth",
        "InvalidAuthenticationToken",
    )
    assert arm.tokens.fetches == 2
    assert [r.status for r in sim.requests] == [401, 401]


async def test_a_rotated_token_is_picked_up_by_the_forced_refresh(
    arm: AzureSide, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ARM starts refusing the cached token, the refresh reads the new one and the request succeeds."""
    await arm.api.get_job(VaultRef(SUB, RG, VAULT), JOB)
    sim.token = "rotated-token"
    monkeypatch.setenv(TOKEN_ENV, "rotated-token")
    job = await arm.api.get_job(VaultRef(SUB, RG, VAULT), JOB)
    assert job.job_id == JOB
    assert [r.status for r in sim.requests] == [200, 401, 200]
    assert sim.requests[-1].headers["authorization"] == "Bearer rotated-token"


async def test_daemon_reports_auth_failure_and_keeps_the_last_known_state(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path
) -> None:
    """Refused tokens: poll errors with reason auth, an auth_failed log, and the job stays InProgress."""
    add_job(estate, clock, duration=30)
    config = vault_config(sim, tmp_path)
    labels = {
        "subscription_id": SUB,
        "resource_group": RG,
        "vault": VAULT,
        "vault_type": "recovery_services",
        "reason": "auth",
    }
    with capture_logs() as logs:
        async with running_watcher(config) as watcher:
            assert watcher.tracker is not None
            tracker = watcher.tracker
            await wait_for(lambda: any(tj.status == "InProgress" for tj in every_job(tracker).values()))
            sim.token = "a-token-we-do-not-have"
            clock.advance(60)  # the job has ended on Azure's side; we cannot see it
            await wait_for(
                lambda: (
                    (watcher.registry.get_sample_value("azure_backup_watcher_poll_errors_total", labels) or 0)
                    >= 1
                )
            )
            assert [tj.status for tj in every_job(tracker).values()] == ["InProgress"]
    failures = [e for e in logs if e["event"] == "auth_failed"]
    assert failures
    assert failures[0]["reason"] == "auth"
    assert failures[0]["vault"] == VAULT


async def test_daemon_fetches_one_token_and_closes_the_credential_on_shutdown(
    identity: dict[str, type[RecordedCredential]],
    sim: Simulator,
    estate: Estate,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A managed identity is asked for a token once across many polls, and closed when the daemon stops."""
    add_job(estate, clock)
    config = vault_config(sim, tmp_path, credential="managed_identity", static_token_env=None)
    async with running_watcher(config):
        await wait_for(lambda: len(sim.requests) >= 3)
        (credential,) = identity["ManagedIdentityCredential"].built
        assert not credential.closed
    assert credential.gets == 1
    assert credential.scopes == (CLOUDS["AzurePublicCloud"].scope,)
    assert credential.closed
    assert all(r.headers["authorization"] == "Bearer sim-token" for r in sim.requests)


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The static token's env var unset."""
    monkeypatch.delenv(TOKEN_ENV)


async def test_no_token_at_all_is_an_auth_error_without_a_request(
    no_env_token: None, arm: AzureSide, sim: Simulator
) -> None:
    """An empty static_token env var is an AuthError naming the variable; nothing is sent to ARM."""
    with pytest.raises(AuthError, match=TOKEN_ENV):
        await arm.api.get_job(VaultRef(SUB, RG, VAULT), JOB)
    assert sim.requests == []
