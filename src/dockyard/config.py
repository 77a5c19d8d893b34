"""One typed settings object: defaults < YAML file (``--config``) < ``DOCKYARD_*`` env < flags."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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

    repository: str
    pull: list[str] = []
    push: list[str] = []
    delete: list[str] = []


class TrustedIssuer(BaseModel):
    """An external token issuer whose JWTs dockyard accepts (its public key, or a JWKS file)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str
    public_key: Path | None = None
    jwks: Path | None = None


class AuthSettings(BaseModel):
    """Access control (README "Access control"). ``mode``: none, basic, token or mtls."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "basic", "token", "mtls"] = "none"
    realm: str = "dockyard"
    htpasswd: Path | None = Field(None, description="bcrypt htpasswd file; default <data_dir>/auth/htpasswd")
    admins: list[str] = Field(default_factory=list, description="users allowed every action everywhere")
    groups: dict[str, list[str]] = Field(default_factory=dict)
    access: list[AccessRule] | None = Field(
        None, description="rules; none given: every authenticated user may do everything"
    )
    token_realm: str | None = Field(None, description="token endpoint URL; default <this server>/auth/token")
    token_service: str = "dockyard"
    token_issuer: str = "dockyard"
    token_key: Path | None = Field(
        None, description="signing key (PEM); default <data_dir>/auth/token-key.pem"
    )
    token_algorithm: Literal["ES256", "RS256"] = "ES256"
    token_ttl_seconds: int = Field(300, ge=60)
    refresh_token_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)
    issue_tokens: bool = Field(True, description="serve the built-in token endpoint at /auth/token")
    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list)
    max_failed_logins: int = Field(10, ge=1, description="per client address and per user, per minute")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dockyard"


class Settings(BaseSettings):
    """Every setting dockyard reads. Each is also ``DOCKYARD_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field("127.0.0.1:5000", description="HOST:PORT to listen on")
    data_dir: Path = Field(default_factory=default_data_dir, description="where blobs and metadata live")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata store; default SQLite in data_dir"
    )
    delete_enabled: bool = True
    manifest_max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    index_requires_children: bool = True
    upload_ttl_seconds: float = Field(24 * 3600.0, gt=0)
    upload_purge_interval_seconds: float = Field(300.0, gt=0)
    max_uploads_per_repository: int = Field(1000, ge=1)
    max_page_size: int = Field(10_000, ge=1)
    idle_timeout_seconds: float = Field(
        75.0, gt=0, description="close a connection idle (or still sending its headers) this long"
    )
    body_timeout_seconds: float = Field(60.0, gt=0, description="abort a request body that stalls this long")
    max_header_bytes: int = Field(8190, ge=1024, description="longest request line or header field")
    max_headers: int = Field(128, ge=16, description="most header fields in one request")
    tls_cert: Path | None = Field(None, description="serve HTTPS with this certificate (PEM, with chain)")
    tls_key: Path | None = Field(None, description="the certificate's private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA bundle for client certificates (mTLS); a valid one authenticates its CN"
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    log_level: str = "info"
    access_log: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("listen must be HOST:PORT")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.auth.mode == "mtls" and (self.tls_client_ca is None or self.tls_cert is None):
            raise ValueError("auth mode mtls needs tls_cert, tls_key and tls_client_ca")
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
