"""One typed settings object: defaults < YAML file (``--config``) < ``DOCKYARD_*`` env < flags."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

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
