"""One typed settings object: defaults < YAML file (``--config``) < ``DOCKYARD_*`` env < flags."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dockyard.events import EVENT_TYPES
from dockyard.frozen import FrozenSettings, Secret
from dockyard.loop import EventLoopChoice

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("dockyard_config_file", default=None)


class AccessRule(BaseModel):
    """Who may do what in the repositories whose names match ``repository``.

    ``repository`` is a glob: ``*`` matches within one path component, ``**`` across them.
    Subjects: a user name, ``group:<name>``, ``authenticated`` (any user), ``anonymous`` or
    ``*`` (anyone, with or without credentials). Grants of all matching rules add up.
    """

    model_config = ConfigDict(extra="forbid")

    repository: str = Field(description="repository name glob: * within a path component, ** across them")
    pull: list[str] = Field([], description="subjects who may pull")
    push: list[str] = Field([], description="subjects who may push")
    delete: list[str] = Field([], description="subjects who may delete")


class TrustedIssuer(BaseModel):
    """An external token issuer whose JWTs dockyard accepts (its public key, or a JWKS file)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="the iss of the tokens it signs")
    public_key: Path | None = Field(None, description="its public key (PEM)")
    jwks: Path | None = Field(None, description="or its keys as a JWKS file")


class AuthSettings(BaseModel):
    """Access control (docs/access-control.md). ``mode``: none, basic, token or mtls."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "basic", "token", "mtls"] = Field(
        "none", description="who may do what, and how clients prove it"
    )
    realm: str = Field("dockyard", description="the Basic realm")
    htpasswd: Path | None = Field(None, description="bcrypt htpasswd file; default <data_dir>/auth/htpasswd")
    admins: list[str] = Field(default_factory=list, description="users allowed every action everywhere")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="group name: its users")
    access: list[AccessRule] | None = Field(
        None, description="rules; none given: every authenticated user may do everything"
    )
    token_realm: str | None = Field(None, description="token endpoint URL; default <this server>/auth/token")
    token_service: str = Field("dockyard", description="the aud of tokens (and the service clients ask for)")
    token_issuer: str = Field("dockyard", description="the iss of tokens")
    token_key: Path | None = Field(
        None, description="signing key (PEM); default <data_dir>/auth/token-key.pem"
    )
    token_algorithm: Literal["ES256", "RS256"] = Field("ES256", description="the signing algorithm")
    token_ttl_seconds: int = Field(300, ge=60, description="how long an access token works")
    refresh_token_ttl_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="how long an OAuth2 refresh token works"
    )
    issue_tokens: bool = Field(True, description="serve the built-in token endpoint at /auth/token")
    trusted_issuers: list[TrustedIssuer] = Field(
        default_factory=list, description="external issuers whose tokens are accepted"
    )
    max_failed_logins: int = Field(10, ge=1, description="per client address and per user, per minute")


class RetentionRule(BaseModel):
    """Which tags of the repositories matching ``repository`` (a glob) garbage collection drops:
    those not matching a ``keep_tags`` pattern, not among the newest ``keep_last`` (by when they
    were last moved), and, when ``max_age_days`` is set, older than that."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field(description="repository name glob: * within a path component, ** across them")
    keep_last: int | None = Field(None, ge=0, description="keep the newest this many tags")
    keep_tags: list[str] = Field(default_factory=list, description="regular expressions, full match")
    max_age_days: float | None = Field(None, gt=0, description="drop only tags older than this")


class GcSettings(BaseModel):
    """Garbage collection (docs/gc.md)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(0.0, ge=0, description="collect on this schedule; 0: only `dockyard gc`")
    grace_seconds: float = Field(3600.0, ge=0, description="nothing younger than this is collected")
    delete_untagged: bool = Field(False, description="delete manifests no tag keeps")
    referrers: Literal["follow-subject", "keep"] = Field(
        "follow-subject", description="referrers go with their subject, or are always kept"
    )
    retention: list[RetentionRule] = Field(default_factory=list, description="which tags collections drop")


class S3Settings(BaseModel):
    """The S3-compatible bucket blobs live in when ``storage: s3`` (docs/scale-out.md)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field("", description="the bucket (it must exist)")
    prefix: str = Field("", description="key prefix inside the bucket, e.g. registry/")
    endpoint_url: str | None = Field(None, description="e.g. https://minio.internal:9000; AWS if unset")
    region: str | None = Field(None, description="the bucket's region; from the AWS config chain if unset")
    access_key_id: str | None = Field(None, description="with secret_access_key; else the AWS chain")
    secret_access_key: SecretStr | None = Field(None, description="the secret of access_key_id")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path-style (bucket in the path) or virtual-host (bucket in the host name)"
    )
    redirect: bool = Field(True, description="answer blob GETs with a pre-signed URL; off: stream them")
    redirect_expiry_seconds: int = Field(300, ge=1, le=7 * 24 * 3600, description="pre-signed URL lifetime")
    public_endpoint_url: str | None = Field(
        None, description="the endpoint in pre-signed URLs, if clients reach the store by another name"
    )
    part_size: int = Field(
        8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=5 * 1024**3,
        description="multipart part size: memory per upload in flight",
    )
    connect_timeout_seconds: float = Field(
        3.0, gt=0, description="opening a connection to the store longer than this fails the try"
    )
    read_timeout_seconds: float = Field(
        20.0, gt=0, description="waiting longer than this for the store's next byte fails the try"
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="tries per request to the store (retries with backoff), the first included",
    )
    direct_uploads: bool = Field(
        True, description="offer clients direct-to-bucket uploads (docs/direct-uploads.md)"
    )
    direct_upload_url_expiry_seconds: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="lifetime of a pre-signed part URL of a direct upload"
    )
    direct_upload_max_bytes: int = Field(
        5 * 1024**4, ge=1, le=5 * 1024**4, description="the largest blob a direct upload may complete"
    )


class ProxySettings(BaseModel):
    """Pull-through cache (docs/pull-through-cache.md): serve an upstream registry's content and
    keep what was fetched. Off while ``remote_url`` is unset; on, the registry takes no pushes."""

    model_config = ConfigDict(extra="forbid")

    remote_url: str | None = Field(
        None, description="the upstream registry, e.g. https://registry-1.docker.io"
    )
    username: str | None = Field(None, description="credentials for the upstream (Basic or its token realm)")
    password: SecretStr | None = Field(None, description="the upstream password")
    tag_ttl_seconds: float = Field(
        300.0, ge=0, description="trust a tag this long after the upstream confirmed it, then ask again"
    )
    timeout_seconds: float = Field(
        30.0, gt=0, description="connecting to the upstream, or waiting for its next byte, this long fails"
    )
    ca_cert: Path | None = Field(None, description="CA bundle to verify the upstream's certificate")
    insecure_tls: bool = Field(False, description="do not verify the upstream's certificate")

    @field_validator("remote_url")
    @classmethod
    def _check_remote_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("proxy.remote_url must be an http:// or https:// URL")
        return value.rstrip("/") if value else None


class EventSink(BaseModel):
    """An HTTP endpoint that receives events (README "Events"): CloudEvents 1.0, structured mode."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="names its queue and metrics")
    url: str = Field(description="http:// or https:// URL the events are POSTed to")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every event")
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key: the body's signature goes in the X-Dockyard-Signature header"
    )
    repositories: list[str] = Field(
        default_factory=lambda: ["**"], description="repository globs (* within a component, ** across)"
    )
    types: list[str] = Field(
        default_factory=list, description="event types (e.g. manifest.pushed); empty: all but manifest.pulled"
    )
    timeout_seconds: float = Field(10.0, gt=0, description="an answer slower than this is a failed attempt")
    ca_cert: Path | None = Field(None, description="CA bundle to verify the endpoint's certificate")
    insecure_tls: bool = Field(False, description="do not verify the endpoint's certificate")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("an event sink's url must be an http:// or https:// URL")
        return value

    @field_validator("types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t.removeprefix("dev.dockyard.") not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        return [t.removeprefix("dev.dockyard.") for t in value]


class EventsSettings(BaseModel):
    """Events and their delivery (README "Events"). On when a sink or a replication rule exists."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        None, description="record events; default: when any sink or replication rule is configured"
    )
    source: str | None = Field(
        None, description="the CloudEvents source: the registry's public URL; default http(s)://<listen>"
    )
    manifest_pulls: bool = Field(False, description="also record manifest.pulled (a write per pull)")
    sinks: list[EventSink] = Field(default_factory=list, description="HTTP endpoints that receive events")
    max_attempts: int = Field(12, ge=1, description="failed attempts before an event is dead-lettered")
    retry_initial_seconds: float = Field(1.0, gt=0, description="the first back-off; it doubles per failure")
    retry_max_seconds: float = Field(300.0, gt=0, description="the longest back-off")
    poll_seconds: float = Field(1.0, gt=0, description="how often each node looks for events to deliver")
    concurrency: int = Field(4, ge=1, le=64, description="repositories delivered to in parallel, per sink")
    retention_seconds: float = Field(
        7 * 24 * 3600.0, ge=0, description="delivered events are kept this long (dead letters until purged)"
    )


def _registry_url(value: str, what: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{what} must be an http:// or https:// URL")
    return value.rstrip("/")


def _regular_expression(value: str, what: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{what}: not a regular expression: {exc}") from exc
    return value


class ReplicationRule(BaseModel):
    """Push what is pushed here to another registry (README "Replication"), driven by events."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="names its queue and metrics")
    url: str = Field(description="the target registry, e.g. https://registry.example.com")
    repositories: list[str] = Field(default_factory=lambda: ["**"], description="repository globs")
    tags: str = Field(".*", description="regular expression (full match) for the tags to copy")
    untagged: bool = Field(False, description="also copy manifests pushed by digest without a tag")
    prefix: str = Field("", description="put copies under this prefix on the target (e.g. mirror/)")
    deletes: bool = Field(False, description="also delete tags on the target when they are deleted here")
    username: str | None = Field(None, description="user name at the target (Basic, or for its token realm)")
    password: SecretStr | None = Field(None, description="password at the target")
    ca_cert: Path | None = Field(None, description="CA bundle to verify the target's certificate")
    insecure_tls: bool = Field(False, description="do not verify the target's certificate")
    referrers: bool = Field(True, description="copy signatures, SBOMs and other referrers along")
    timeout_seconds: float = Field(60.0, gt=0, description="no byte sent or received this long fails a copy")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _registry_url(value, "a replication target's url")

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: str) -> str:
        return _regular_expression(value, "replication tags")


class SyncRule(BaseModel):
    """Pull repositories from an upstream registry on a schedule (docs/events.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="names the rule in status")
    url: str = Field(description="the upstream registry, e.g. https://registry.example.com")
    repositories: list[str] = Field(min_length=1, description="repository names on the upstream")
    tags: str = Field(".*", description="regular expression (full match) for the tags to pull")
    prefix: str = Field("", description="put copies under this prefix here (e.g. upstream/)")
    interval_seconds: float = Field(300.0, gt=0, description="how often to look for new or moved tags")
    username: str | None = Field(None, description="user name at the upstream")
    password: SecretStr | None = Field(None, description="password at the upstream")
    ca_cert: Path | None = Field(None, description="CA bundle to verify the upstream's certificate")
    insecure_tls: bool = Field(False, description="do not verify the upstream's certificate")
    referrers: bool = Field(True, description="pull signatures, SBOMs and other referrers along")
    timeout_seconds: float = Field(60.0, gt=0, description="no byte sent or received this long fails a copy")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _registry_url(value, "a sync upstream's url")

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: str) -> str:
        return _regular_expression(value, "sync tags")


class ReplicationSettings(BaseModel):
    """Where to copy pushed images (README "Replication"); the source is this registry itself."""

    model_config = ConfigDict(extra="forbid")

    rules: list[ReplicationRule] = Field(
        default_factory=list, description="copy what is pushed here elsewhere"
    )
    sync: list[SyncRule] = Field(
        default_factory=list, description="pull from upstream registries on a schedule"
    )
    source_url: str | None = Field(
        None, description="how the copier reaches this registry; default http(s)://<listen>"
    )
    source_username: str | None = Field(
        None, description="credentials to pull from this registry (rules) and push to it (sync)"
    )
    source_password: SecretStr | None = Field(None, description="the password of source_username")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dockyard"


class Settings(BaseSettings):
    """Every setting dockyard reads. Each is also ``DOCKYARD_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field("127.0.0.1:5000", description="HOST:PORT to listen on")
    data_dir: Path = Field(default_factory=default_data_dir, description="where blobs and metadata live")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="worker processes sharing one listening socket",
    )
    event_loop: EventLoopChoice = Field(
        "auto",
        description="the event loop: uvloop where it is installed (auto), the stock asyncio loop, "
        "or uvloop required",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata store; default SQLite in data_dir"
    )
    database_auto_migrate: bool = Field(
        True, description="migrate the schema at start; off: refuse to start on an old schema"
    )
    database_connect_timeout_seconds: float = Field(
        5.0, gt=0, description="PostgreSQL: opening a connection that takes longer than this fails"
    )
    database_statement_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="PostgreSQL: a statement (or a wait for a pooled connection) longer than this fails",
    )
    cache_ttl_seconds: float = Field(
        5.0,
        ge=0,
        description="PostgreSQL: how long a worker may answer tags, manifests and blob links from its "
        "cache without hearing of a change (changes are heard within milliseconds); 0: no cache",
    )
    storage: Literal["filesystem", "s3"] = Field("filesystem", description="where blobs live")
    s3: S3Settings = Field(default_factory=S3Settings)
    delete_enabled: bool = Field(True, description="allow DELETE of manifests, tags and blobs; off: 405")
    manifest_max_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger manifests get 413")
    index_requires_children: bool = Field(
        True, description="an index whose child manifests are missing gets 400 MANIFEST_BLOB_UNKNOWN"
    )
    upload_ttl_seconds: float = Field(24 * 3600.0, gt=0, description="idle upload sessions expire after this")
    upload_purge_interval_seconds: float = Field(300.0, gt=0, description="how often expired sessions go")
    max_uploads_per_repository: int = Field(
        1000, ge=1, description="open upload sessions per repository; more get 429 with Retry-After"
    )
    max_page_size: int = Field(10_000, ge=1, description="the most tags or repositories one page returns")
    idle_timeout_seconds: float = Field(
        75.0, gt=0, description="close a connection idle (or still sending its headers) this long"
    )
    body_timeout_seconds: float = Field(60.0, gt=0, description="abort a request body that stalls this long")
    takeover_after_seconds: float = Field(
        5.0, gt=0, description="a body stalled this long yields its upload session to a newer request"
    )
    health_listen: str | None = Field(
        None,
        description="also serve /health/live and /health/ready on this HOST:PORT, plain HTTP without "
        "credentials (probes when auth.mode is mtls)",
    )
    startup_wait_seconds: float = Field(
        60.0, ge=0, description="at start, wait this long for the database and the bucket to answer"
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, requests in flight get this long to finish"
    )
    max_header_bytes: int = Field(8190, ge=1024, description="longest request line or header field")
    max_headers: int = Field(128, ge=16, description="most header fields in one request")
    tls_cert: Path | None = Field(None, description="serve HTTPS with this certificate (PEM, with chain)")
    tls_key: Path | None = Field(None, description="the certificate's private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA bundle for client certificates (mTLS); a valid one authenticates its CN"
    )
    ui: bool = Field(True, description="serve the HTML pages for browsing under /ui/")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)
    log_level: str = Field("info", description="debug, info, warning or error")
    access_log: bool = Field(False, description="log every request")

    @field_validator("listen", "health_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("listen and health_listen must be HOST:PORT")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.auth.mode == "mtls" and (self.tls_client_ca is None or self.tls_cert is None):
            raise ValueError("auth mode mtls needs tls_cert, tls_key and tls_client_ca")
        return self

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3.bucket:
            raise ValueError("storage s3 needs s3.bucket (DOCKYARD_S3__BUCKET)")
        return self

    @model_validator(mode="after")
    def _check_event_names(self) -> Settings:
        names = [s.name for s in self.events.sinks] + [
            f"replication.{r.name}" for r in self.replication.rules
        ]
        names += [f"sync.{r.name}" for r in self.replication.sync]
        if len(set(names)) != len(names):
            raise ValueError("event sink and replication rule names must be unique")
        return self

    @property
    def local_url(self) -> str:
        """This server as a client on the same machine reaches it (loopback for 0.0.0.0)."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    @property
    def events_enabled(self) -> bool:
        if self.events.enabled is not None:
            return self.events.enabled
        return bool(self.events.sinks or self.replication.rules)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'metadata.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the defaults, the YAML file, the environment and explicit overrides."""
    if config_file is None and os.environ.get("DOCKYARD_CONFIG"):
        config_file = Path(os.environ["DOCKYARD_CONFIG"])
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)


def freeze(settings: Settings) -> Settings:
    """``settings`` as plain values (frozen.py), for a worker, which then never imports pydantic:
    every field and every property (its value), read-only; no ``model_*`` methods. Typed as the
    settings it stands for: it answers the same attributes."""
    return cast(Settings, _frozen(settings))


def _frozen(value: Any) -> Any:
    if isinstance(value, BaseModel):
        model = type(value)
        values = {name: _frozen(getattr(value, name)) for name in model.model_fields}
        for cls in model.__mro__:
            if cls.__module__ == __name__:  # ours, not pydantic's (model_extra, ...)
                for name, attribute in vars(cls).items():
                    if isinstance(attribute, property):
                        values[name] = _frozen(getattr(value, name))
        return FrozenSettings(values)
    if isinstance(value, SecretStr):
        return Secret(value.get_secret_value())
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_frozen(item) for item in value)
    if isinstance(value, dict):
        return {key: _frozen(item) for key, item in value.items()}
    return value
