"""Fixtures for the interop suite: real clients (skopeo, oras-py) against a real dockyard.

A client that is missing skips its tests on a developer's machine and fails them in CI
(``CI=true``), so a CI machine that lost a client cannot go green by skipping.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, Self

import pytest

from tests.interop.clients import ClientError, Skopeo
from tests.support.server import DockyardServer

# How a fresh Debian machine gets each client (quoted in the skip or fail message).
INSTALL_HINTS = {
    "skopeo": "apt-get install -y skopeo",
    "oras": "pip install 'oras>=0.2.43'",
}


def missing_client(name: str, detail: str = "") -> NoReturn:
    """Skip locally, fail loudly in CI: the interop suite must not pass by running nothing."""
    reason = f"{name} is not available{detail}; install it with: {INSTALL_HINTS[name]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def skopeo() -> str:
    """Path of the ``skopeo`` binary."""
    path = shutil.which("skopeo")
    if path is None:
        missing_client("skopeo", " on PATH")
    return path


@pytest.fixture(scope="session")
def skopeo_cli(skopeo: str, tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """``skopeo`` with an empty credentials file of its own, so the user's logins play no part."""
    auth_file = tmp_path_factory.mktemp("skopeo") / "auth.json"
    auth_file.write_text('{"auths": {}}')
    return Skopeo(binary=skopeo, auth_file=auth_file)


@pytest.fixture(scope="session")
def oras() -> ModuleType:
    """The oras-py package, with ``oras.client.OrasClient`` and ``oras.oci`` loaded."""
    try:
        importlib.import_module("oras.client")
        importlib.import_module("oras.oci")
        return importlib.import_module("oras")
    except ImportError as exc:
        missing_client("oras", f" ({exc})")


@pytest.fixture(scope="session")
def oras_layout() -> ModuleType:
    """oras-py's OCI image layout support (``oras.layout.layout``), which 0.2.37 lacks and 0.2.43 has."""
    try:
        return importlib.import_module("oras.layout.layout")
    except ImportError as exc:
        missing_client("oras", f" with OCI layout support ({exc})")


@pytest.fixture
def access_logged_server(start_server: Callable[..., DockyardServer]) -> DockyardServer:
    """A dedicated server that logs every request, for tests that check which requests a client sent."""
    return start_server(workers=1, env={"DOCKYARD_ACCESS_LOG": "true", "DOCKYARD_LOG_LEVEL": "info"})


@pytest.fixture
def seed(repo: str) -> int:
    """A seed unique to the test's repository, so the images of different tests share no blob."""
    return int(repo.rsplit("/", 1)[-1], 16)


@pytest.fixture
def layouts(tmp_path: Path) -> Path:
    """A folder for the test's OCI layouts."""
    path = tmp_path / "layouts"
    path.mkdir()
    return path


# -- podman, buildah and containerd --------------------------------------------------------------
#
# These run rootful, each on state of its own under the test's temporary folder: podman and
# buildah with the vfs storage driver (no overlay mounts, no fuse) and their own storage,
# registries, containers.conf, auth and signature-policy files; containerd as a daemon of the
# session with its own root, state, socket and config. containerd leaves nothing outside its
# folder. podman and buildah, whatever --root says, still keep their blob-info cache (digests and
# where blobs were seen, no images) in /var/lib/containers/cache, create an empty
# /run/containers/networks, and podman's ``manifest push`` (which has no --signature-policy) reads
# /etc/containers/policy.json, which Debian ships as accept-anything.

INSTALL_HINTS.update(
    {
        "podman": "apt-get install -y --no-install-recommends podman",
        "buildah": "apt-get install -y --no-install-recommends buildah",
        "containerd": "apt-get install -y --no-install-recommends containerd",
    }
)

ACCEPT_ANYTHING_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}'


def client_binary(name: str, package: str) -> str:
    """The path of ``name``, shipped by ``package``, which these tests run as root."""
    path = shutil.which(name)
    if path is None:
        missing_client(package, f" ({name} is not on PATH)")
    if os.geteuid() != 0:
        missing_client(package, f" to this user: the {name} tests run as root")
    return path


def run_client(
    cmd: list[str], env: dict[str, str], timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise ClientError(
            f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass(frozen=True)
class ContainersTool:
    """buildah (or, subclassed, podman) on a vfs storage and configuration files of its own.

    Every registry in these tests is dockyard on 127.0.0.1 over plain HTTP, so the commands
    that talk to one get ``--tls-verify=false`` from the test.
    """

    binary: str
    home: Path
    runroot: Path
    timeout: float = 120.0

    @classmethod
    def create(cls, binary: str, home: Path, runroot: Path | None = None) -> Self:
        """A tool whose files all live in ``home``, except ``runroot`` if given elsewhere."""
        runroot = runroot or home / "runroot"
        for folder in ("root", "tmp", "libpod"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        runroot.mkdir(parents=True, exist_ok=True)
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{home / "root"}"\n'
        )
        # Only fully qualified references (127.0.0.1:PORT/...): no search registries, no mirrors.
        (home / "registries.conf").write_text("unqualified-search-registries = []\n")
        (home / "containers.conf").write_text(
            '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n'
        )
        (home / "auth.json").write_text('{"auths": {}}')
        (home / "policy.json").write_text(ACCEPT_ANYTHING_POLICY)
        return cls(binary=binary, home=home, runroot=runroot)

    def global_flags(self) -> list[str]:
        root, runroot = str(self.home / "root"), str(self.runroot)
        return ["--storage-driver", "vfs", "--root", root, "--runroot", runroot]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
            "CONTAINERS_CONF": str(self.home / "containers.conf"),
            "REGISTRY_AUTH_FILE": str(self.home / "auth.json"),
            "TMPDIR": str(self.home / "tmp"),  # where images are staged while they are copied
        }

    @property
    def policy(self) -> list[str]:
        """The flag that makes a copying command use our accept-anything signature policy."""
        return ["--signature-policy", str(self.home / "policy.json")]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_client([self.binary, *self.global_flags(), *args], self.env(), self.timeout, check)

    def push(self, image: str, destination: str, *flags: str) -> str:
        """Push ``image`` to ``destination`` (a ``docker://`` reference); returns the manifest digest."""
        digest_file = self.home / "tmp" / "pushed.digest"
        digest_file.unlink(missing_ok=True)
        digest = ["--digestfile", str(digest_file)]
        self.run("push", *self.policy, "--tls-verify=false", *digest, *flags, image, destination)
        return digest_file.read_text().strip()

    def pull(self, reference: str, *flags: str) -> str:
        """Pull ``reference`` from a registry; returns the image ID (the config digest's hex)."""
        result = self.run("pull", *self.policy, "--tls-verify=false", "--quiet", *flags, reference)
        return result.stdout.strip()


@dataclass(frozen=True)
class Buildah(ContainersTool):
    """``buildah``: builds (``from``, ``copy``, ``config``, ``commit``) and pushes with no daemon."""


@dataclass(frozen=True)
class Podman(ContainersTool):
    """``podman``, with libpod's own state (``--tmpdir``) in its folder and no events journal."""

    def global_flags(self) -> list[str]:
        return [
            *super().global_flags(),
            "--tmpdir", str(self.home / "libpod"),
            "--events-backend", "none",
            "--cgroup-manager", "cgroupfs",
        ]  # fmt: skip

    def inspect_image(self, reference: str) -> dict[str, Any]:
        """``podman image inspect``: ``Id``, ``Digest``, ``RepoDigests``, ``Architecture``, ``RootFS``..."""
        return dict(json.loads(self.run("image", "inspect", reference).stdout)[0])


@pytest.fixture(scope="session")
def podman() -> str:
    """Path of the ``podman`` binary (run as root)."""
    return client_binary("podman", "podman")


@pytest.fixture(scope="session")
def buildah() -> str:
    """Path of the ``buildah`` binary (run as root)."""
    return client_binary("buildah", "buildah")


@pytest.fixture
def new_podman(podman: str, tmp_path: Path) -> Iterator[Callable[[], Podman]]:
    """Make a ``podman`` on an empty storage of its own, as often as a test likes."""
    runroots: list[Path] = []

    def new() -> Podman:
        # podman refuses a runroot longer than 50 characters (conmon's socket paths live there).
        runroots.append(Path(tempfile.mkdtemp(prefix="dockyard-podman-")))
        return Podman.create(podman, tmp_path / f"podman-{len(runroots)}", runroot=runroots[-1])

    yield new
    for runroot in runroots:
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def podman_cli(new_podman: Callable[[], Podman]) -> Podman:
    """``podman`` on an empty storage of the test's own."""
    return new_podman()


@pytest.fixture
def buildah_cli(buildah: str, tmp_path: Path) -> Buildah:
    """``buildah`` on an empty storage of the test's own."""
    return Buildah.create(buildah, tmp_path / "buildah")


@dataclass(frozen=True)
class Ctr:
    """``ctr`` talking to one containerd, in a namespace of its own; registries are plain HTTP."""

    binary: str
    address: Path
    namespace: str
    hosts_dir: Path
    timeout: float = 120.0

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--address", str(self.address), "--namespace", self.namespace, *args]
        # native: unpacking is a plain copy, with no overlay mount.
        return run_client(cmd, {**os.environ, "CONTAINERD_SNAPSHOTTER": "native"}, self.timeout, check)

    def registry_flags(self) -> list[str]:
        """``--hosts-dir`` an empty folder, so /etc/containerd/certs.d plays no part."""
        return ["--plain-http", "--hosts-dir", str(self.hosts_dir)]

    def pull(self, reference: str, *flags: str) -> None:
        self.run("images", "pull", *self.registry_flags(), *flags, reference)

    def push(self, destination: str, image: str, *flags: str) -> None:
        self.run("images", "push", *self.registry_flags(), *flags, destination, image)

    def images(self) -> dict[str, tuple[str, str]]:
        """``ctr images ls``: each image name with the media type and digest of its target."""
        lines = self.run("images", "ls").stdout.splitlines()[1:]
        return {name: (media_type, digest) for name, media_type, digest, *_ in map(str.split, lines)}

    def content(self) -> set[str]:
        """Digests of every blob (manifests included) in the content store."""
        return set(self.run("content", "ls", "--quiet").stdout.split())


@dataclass
class Containerd:
    """A ``containerd`` daemon with its own root, state, sockets and a config that loads only
    the content, metadata, image, lease and snapshot services (native snapshotter) that ``ctr``
    needs to pull and push: no CRI, no runtimes, no overlayfs."""

    binary: str
    ctr_binary: str
    home: Path
    process: subprocess.Popen[bytes] | None = None

    DISABLED_PLUGINS = (
        "io.containerd.grpc.v1.cri",
        "io.containerd.internal.v1.opt",
        "io.containerd.internal.v1.restart",
        "io.containerd.internal.v1.tracing",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.runtime.v1.linux",
        "io.containerd.runtime.v2.task",
        "io.containerd.monitor.v1.cgroups",
        "io.containerd.service.v1.tasks-service",
        "io.containerd.grpc.v1.tasks",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.overlayfs",
        "io.containerd.snapshotter.v1.zfs",
    )

    @property
    def address(self) -> Path:
        return self.home / "containerd.sock"

    @property
    def log_path(self) -> Path:
        return self.home / "containerd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def config(self) -> str:
        disabled = ", ".join(f'"{name}"' for name in self.DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.home / "root"}"\n'
            f'state = "{self.home / "state"}"\n'
            f"disabled_plugins = [{disabled}]\n"
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
        )

    def start(self, timeout: float = 120.0) -> Containerd:
        (self.home / "hosts").mkdir(parents=True, exist_ok=True)
        config = self.home / "config.toml"
        config.write_text(self.config())
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        cmd = [self.binary, "--config", str(config)]
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited early:\n{self.log()}")
            if self.address.exists():
                probe_cmd = [self.ctr_binary, "--address", str(self.address), "version"]
                probe = subprocess.run(probe_cmd, capture_output=True, timeout=10)
                if probe.returncode == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not answer on {self.address} in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def ctr(self, namespace: str) -> Ctr:
        hosts_dir = self.home / "hosts"
        return Ctr(binary=self.ctr_binary, address=self.address, namespace=namespace, hosts_dir=hosts_dir)


@pytest.fixture(scope="session")
def ctr() -> str:
    """Path of the ``ctr`` binary (containerd's own client, run as root)."""
    return client_binary("ctr", "containerd")


@pytest.fixture(scope="session")
def containerd(ctr: str) -> Iterator[Containerd]:
    """One containerd daemon for the session, killed at the end; tests use namespaces of their own."""
    binary = client_binary("containerd", "containerd")
    # A unix socket path must stay under 108 bytes, which a deep pytest basetemp may exceed.
    home = Path(tempfile.mkdtemp(prefix="dockyard-containerd-"))
    daemon = Containerd(binary=binary, ctr_binary=ctr, home=home)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def ctr_cli(containerd: Containerd, repo: str) -> Ctr:
    """``ctr`` on the session's containerd, in a namespace named after the test's repository."""
    return containerd.ctr(namespace=repo.replace("/", "-"))
