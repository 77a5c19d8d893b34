"""Pushes with events on (and their sink down) against pushes with events off, same run.

Two ``dockyard serve`` (default workers, fresh data dirs): one without events, one with a sink
whose endpoint refuses connections, so every push adds an event to a growing backlog and the
delivery loop keeps failing in the background. Rounds alternate ABBA; each round is ``--images``
small images (config + layer by single POST, manifest PUT by tag) pushed by ``--clients`` at once.
Prints images/s per round and the ratio of the medians (events on / off): the target is ≥ 0.9.

    .venv/bin/python bench/events_push.py [--rounds 4] [--images 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from procs import free_port, wait_http

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def start(data_dir: Path, config: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = Path(sys.executable).with_name("dockyard")
    cmd = [str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/v2/", proc=proc)
    time.sleep(2)  # every worker up
    return proc, base


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_one(session: aiohttp.ClientSession, base: str, repo: str, seed: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer {seed} ".encode() * 100
    for blob in (config, layer):
        async with session.post(
            f"{base}/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob
        ) as r:
            assert r.status == 201, r.status
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    async with session.put(
        f"{base}/v2/{repo}/manifests/{seed}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as r:
        assert r.status == 201, r.status


async def round_(base: str, images: int, clients: int, tag: str) -> float:
    queue = list(range(images))
    async with aiohttp.ClientSession() as session:

        async def worker(w: int) -> None:
            while queue:
                i = queue.pop()
                await push_one(session, base, f"bench/r{i % 16}", f"{tag}-{i}")

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        return images / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-events-") as tmp:
        root = Path(tmp)
        config = root / "events.yaml"
        config.write_text(
            f"events:\n  sinks:\n    - name: down\n      url: http://127.0.0.1:{free_port()}/hook\n"
        )
        off, off_url = start(root / "off", None)
        on, on_url = start(root / "on", config)
        figures: dict[str, list[float]] = {"off": [], "on": []}
        try:
            order = ["off", "on", "on", "off"] * ((args.rounds + 1) // 2)
            for n, which in enumerate(order[: 2 * args.rounds]):
                url = off_url if which == "off" else on_url
                rate = asyncio.run(round_(url, args.images, args.clients, f"{which}{n}"))
                figures[which].append(rate)
                print(f"round {n + 1} events {which:3}: {rate:7.1f} images/s", flush=True)
        finally:
            for proc in (off, on):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        ratio = statistics.median(figures["on"]) / statistics.median(figures["off"])
        print(
            f"median images/s: events off {statistics.median(figures['off']):.1f}, "
            f"on with the sink down {statistics.median(figures['on']):.1f}; ratio {ratio:.2f} (target >= 0.9)"
        )
        return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
