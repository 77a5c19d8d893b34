"""The container image: built by scripts/build-image.sh from the Containerfile, run by docker.

No registry of base images is reachable here, so the script builds the base from Debian
packages (mmdebstrap) and installs dockyard from wheels with no index; podman builds it (on vfs,
chroot isolation: no overlay mounts, no runtime), and docker runs it with host networking. The
test pushes and pulls through the running image, stops it with ``docker stop`` (graceful: exit
status 0), starts it again on the same volume and pulls again.

It takes minutes (a Debian base, a build on vfs), so it runs only when asked:
``DOCKYARD_TEST_IMAGE=1``, which ``.ci/run`` sets (12 min at load 12 on two cores, beside the
rest of the suite: it is collected first).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.interop.clients import ClientError, Skopeo
from tests.interop.conftest import DockerCli, DockerDaemon, Podman, missing_client
from tests.interop.test_docker import load_into_docker
from tests.support.oci_layout import build_image
from tests.support.server import free_port

pytestmark = [
    pytest.mark.interop,
    pytest.mark.image,
    pytest.mark.skipif(
        os.environ.get("DOCKYARD_TEST_IMAGE") != "1",
        reason="builds an image for minutes: DOCKYARD_TEST_IMAGE=1",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "dockyard-test:latest"


@pytest.fixture(scope="module")
def built_image(podman: str, dockerd: DockerDaemon) -> Iterator[str]:
    """scripts/build-image.sh's image, built by podman and loaded into the session's dockerd."""
    if shutil.which("mmdebstrap") is None:
        missing_client("mmdebstrap", " on PATH")
    home = Path(tempfile.mkdtemp(prefix="dockyard-image-"))
    # podman refuses a runroot longer than 50 characters (conmon's socket paths live there).
    tool = Podman.create(podman, home / "podman", runroot=Path(tempfile.mkdtemp(prefix="dockyard-pr-")))
    env = {
        **tool.env(),
        "ENGINE": podman,
        "ENGINE_FLAGS": " ".join(tool.global_flags()),
        "BUILD_FLAGS": "--isolation chroot --layers=false",
        "PYTHON": sys.executable,
    }
    try:
        build = [str(ROOT / "scripts" / "build-image.sh"), "localhost/dockyard:test"]
        result = subprocess.run(build, capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
        if result.returncode != 0:
            raise ClientError(f"build-image.sh exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        # A docker-archive, as `docker save` writes it, that the session's dockerd loads.
        archive = home / "image.tar"
        save = [podman, *tool.global_flags(), "save", "--format", "docker-archive", "--output", str(archive)]
        saved = subprocess.run([*save, "localhost/dockyard:test"], capture_output=True, text=True, env=env)
        if saved.returncode != 0:
            raise ClientError(f"podman save failed\n{saved.stdout}\n{saved.stderr}")
        docker = dataclasses.replace(dockerd.cli(), timeout=1800.0)
        docker.run("load", "--input", str(archive))
        docker.run("tag", "localhost/dockyard:test", IMAGE)
        yield IMAGE
    finally:
        # The storage is the test's own: as root, removing the folders is all `rmi` would do, minutes
        # faster on vfs (nothing is mounted: vfs and chroot isolation mount no layers); rootless,
        # the files belong to subordinate uids that only podman can remove.
        if os.geteuid() != 0:
            remove = [podman, *tool.global_flags(), "rmi", "--all", "--force"]
            subprocess.run(remove, capture_output=True, env=env)
        shutil.rmtree(tool.runroot, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def wait_for_registry(url: str, container: str, docker: DockerCli, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/", timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = json.loads(docker.run("inspect", "--format", "{{json .State}}", container).stdout)
        if not state["Running"]:
            logs = docker.run("logs", container, check=False)
            raise AssertionError(f"the container exited: {state}\n{logs.stdout}\n{logs.stderr}")
        time.sleep(0.5)
    raise AssertionError(f"the container did not answer on {url} in {timeout}s")


def test_the_image_serves_pushes_and_pulls_and_keeps_them_across_a_graceful_restart(
    built_image: str,
    docker_cli: DockerCli,
    skopeo_cli: Skopeo,
    layouts: Path,
    seed: int,
) -> None:
    docker = docker_cli
    port = free_port()
    host = f"127.0.0.1:{port}"
    container, volume = f"dockyard-image-{seed:x}", f"dockyard-data-{seed:x}"
    try:
        # Configured by the environment alone; loopback only, since it shares the host's network.
        docker.run(
            "run", "--detach", "--name", container, "--network", "host",
            "--env", f"DOCKYARD_LISTEN={host}", "--env", "DOCKYARD_WORKERS=2",
            "--volume", f"{volume}:/var/lib/dockyard", built_image,
        )  # fmt: skip
        wait_for_registry(f"http://{host}", container, docker)
        uid = docker.run("exec", container, "python3", "-c", "import os; print(os.getuid())").stdout
        assert uid.strip() == "10001"

        image = build_image(layouts / "src", layers=2, layer_size=128 * 1024, seed=seed, tag="v1")
        name = f"{host}/demo/app:v1"
        load_into_docker(skopeo_cli, docker, layouts / "src", "v1", name)
        digest = docker.push(name)
        image_id = docker.inspect_image(name)["Id"]
        assert docker.inspect_image(name)["RootFS"]["Layers"] == list(image.diff_ids)
        docker.run("rmi", name)
        docker.run("pull", name)
        assert docker.inspect_image(name)["Id"] == image_id

        docker.run("stop", "--time", "60", container)
        state = json.loads(docker.run("inspect", "--format", "{{json .State}}", container).stdout)
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state

        docker.run("start", container)
        wait_for_registry(f"http://{host}", container, docker)
        docker.run("rmi", name)
        docker.run("pull", f"{host}/demo/app@{digest}")
        assert docker.inspect_image(f"{host}/demo/app@{digest}")["Id"] == image_id
        with httpx.Client(base_url=f"http://{host}", timeout=30.0) as client:
            assert client.get("/v2/demo/app/tags/list").json()["tags"] == ["v1"]
    finally:
        docker.run("rm", "--force", container, check=False)
        docker.run("volume", "rm", "--force", volume, check=False)
