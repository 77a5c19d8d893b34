"""A randomised load test: many clients push, pull, list and delete at once against one server with
two workers; nothing acknowledged may be lost, nothing deleted may come back, no answer is a 5xx,
and ``dockyard fsck`` finds the data directory clean afterwards.

Seeded: the seed is printed (and ``LOAD_SEED`` replays it); ``LOAD_SECONDS`` sets the duration
(default 60) and ``LOAD_CLIENTS`` the number of concurrent clients (default 8). Thread timing
still varies between runs, so a replay repeats the same choices, not the same interleaving.

The model: every blob link, manifest and tag is *owned* by the client that created it, and only
its owner changes it, so each object's true state is known exactly once the owner's request is
acknowledged. Every client reads everything. A read is held strictly to the model only when the
object did not change (and no change was in flight) while the read was under way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from tests.reliability.support import STATS, run_fsck, server_errors
from tests.support.api_helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)
from tests.support.server import DockyardServer

StartServer = Callable[..., DockyardServer]
T = TypeVar("T", bound="Tracked")

DURATION = float(os.environ.get("LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "8"))
SEED = int(os.environ.get("LOAD_SEED") or random.SystemRandom().randrange(2**32))
SHARED_REPOS = [f"load/shared-{k}" for k in range(4)]
ARTIFACT_TYPES = ["application/vnd.example.sbom+json", "application/vnd.example.sig", "application/x-test"]
ARTIFACT_CONFIG = "application/vnd.example.config+json"
UPLOAD_PATHS = ["single POST", "monolithic", "chunked", "streamed", "chunked with resume"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the model ---------------------------------------------------------------------------------------


@dataclass
class Tracked:
    """One object's known state: changed only by its owner, readable by all."""

    owner: int
    live: bool = False
    changed: int = 0  # the model's event number when it last started or finished changing
    pending: bool = False  # a change of it is in flight
    unknown: bool = False  # a change got no answer: its outcome is not known


@dataclass
class BlobLink(Tracked):
    data: bytes = b""


@dataclass
class Manifest(Tracked):
    body: bytes = b""
    media_type: str = OCI_MANIFEST
    subject: str | None = None
    artifact_type: str | None = None


@dataclass
class Tag(Tracked):
    digest: str | None = None


@dataclass
class Model:
    """Everything acknowledged so far, keyed by (repository, digest or tag)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    event: int = 0
    blobs: dict[tuple[str, str], BlobLink] = field(default_factory=dict)
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    tags: dict[tuple[str, str], Tag] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)  # reads held to the model vs. let pass

    def now(self) -> int:
        with self.lock:
            return self.event

    def begin(self, obj: Tracked) -> None:
        with self.lock:
            self.event += 1
            obj.changed, obj.pending = self.event, True

    def end(self, obj: Tracked, live: bool | None, **updates: Any) -> None:
        """The change was answered: ``live`` is the new state (None: refused, state unchanged)."""
        with self.lock:
            self.event += 1
            obj.changed, obj.pending = self.event, False
            if live is not None:
                obj.live = live
                for name, value in updates.items():
                    setattr(obj, name, value)

    def lost(self, obj: Tracked) -> None:
        with self.lock:
            self.event += 1
            obj.changed, obj.pending, obj.unknown = self.event, False, True

    def stable(self, obj: Tracked, since: int) -> bool:
        """Whether ``obj`` neither changed nor had a change in flight since event ``since``."""
        return self.settled(obj, since) is not None

    def settled(self, obj: T, since: int) -> T | None:
        """A copy of ``obj`` if it neither changed nor had a change in flight since ``since``."""
        with self.lock:
            if obj.pending or obj.unknown or obj.changed > since:
                self.reads["changed meanwhile"] = self.reads.get("changed meanwhile", 0) + 1
                return None
            self.reads["checked strictly"] = self.reads.get("checked strictly", 0) + 1
            return copy.copy(obj)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def sample(
        self, table: dict[tuple[str, str], Any], rng: random.Random
    ) -> tuple[tuple[str, str], Any] | None:
        with self.lock:
            if not table:
                return None
            keys = list(table)
        key = keys[rng.randrange(len(keys))]
        return key, table[key]


# -- one client ------------------------------------------------------------------------------------


class Client:
    """One load client: its own connection, its own random stream, its own objects."""

    def __init__(self, index: int, url: str, model: Model, deadline: float) -> None:
        self.index = index
        self.model = model
        self.deadline = deadline
        self.rng = random.Random(SEED * 1000 + index)
        self.requests = 0
        self.counter = 0
        self.private = f"load/private-{index}"
        self.http = httpx.Client(
            base_url=url, timeout=120.0, event_hooks={"request": [self._count], "response": [self._check]}
        )

    # -- plumbing ------------------------------------------------------------------------------------

    def _count(self, request: httpx.Request) -> None:
        self.requests += 1

    def _check(self, response: httpx.Response) -> None:
        with self.model.lock:
            self.model.statuses[response.status_code] = self.model.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            response.read()
            self.model.fail(
                f"{response.request.method} {response.request.url.path} -> {response.status_code} "
                f"{response.text[:200]}"
            )

    def expect(self, r: httpx.Response, *statuses: int) -> bool:
        if r.status_code in statuses:
            return True
        if r.status_code < 500:  # 5xx are reported by the hook
            self.model.fail(
                f"{r.request.method} {r.request.url.path}?{r.request.url.query.decode()[:80]} -> "
                f"{r.status_code}, expected {statuses}: {r.text[:200]}"
            )
        return False

    def unique(self, size: int) -> bytes:
        self.counter += 1
        head = f"client {self.index} object {self.counter} seed {SEED}\n".encode()
        return head + self.rng.randbytes(max(0, size - len(head)))

    def blob_size(self) -> int:
        roll = self.rng.random()
        if roll < 0.80:
            return self.rng.randrange(0, 16 * 1024)
        if roll < 0.99:
            return self.rng.randrange(16 * 1024, 256 * 1024)
        return self.rng.randrange(256 * 1024, 2 * 1024 * 1024)

    def repo(self) -> str:
        return self.private if self.rng.random() < 0.25 else self.rng.choice(SHARED_REPOS)

    # -- writes ------------------------------------------------------------------------------------------

    def upload(self, repo: str, data: bytes) -> bool:
        """Push ``data`` into ``repo`` by a random upload path; True when acknowledged (201)."""
        digest = sha256(data)
        uploads = f"/v2/{repo}/blobs/uploads/"
        path = self.rng.choice(UPLOAD_PATHS)
        if path == "single POST":
            return self.expect(self.http.post(uploads, params={"digest": digest}, content=data), 201)
        r = self.http.post(uploads)
        if not self.expect(r, 202):
            return False
        location = r.headers["location"]
        if path == "monolithic":
            return self.expect(self.http.put(location, params={"digest": digest}, content=data), 201)
        if path == "streamed":
            stream = (data[i : i + 8192] for i in range(0, len(data), 8192))
            r = self.http.patch(location, content=stream)
            if not self.expect(r, 202):
                return False
            return self.expect(self.http.put(r.headers["location"], params={"digest": digest}), 201)
        chunk = max(1, len(data) // self.rng.randint(1, 4) + 1)
        offset = 0
        while offset < len(data) - chunk:
            piece = data[offset : offset + chunk]
            r = self.http.patch(
                location, content=piece, headers={"Content-Range": f"{offset}-{offset + len(piece) - 1}"}
            )
            if not self.expect(r, 202):
                return False
            location = r.headers["location"]
            offset += len(piece)
            if path == "chunked with resume":  # as a client that lost its place: ask, then go on
                status = self.http.get(location)
                if not self.expect(status, 204):
                    return False
                if status.headers["range"] != f"0-{offset - 1}":
                    self.model.fail(
                        f"session {location} says {status.headers['range']}, {offset} bytes were sent"
                    )
                    return False
        rest = data[offset:]
        headers = {"Content-Range": f"{offset}-{offset + len(rest) - 1}"} if rest else {}
        r = self.http.put(location, params={"digest": digest}, content=rest, headers=headers)
        return self.expect(r, 201)

    def push_blob(self, repo: str, data: bytes) -> str | None:
        digest = sha256(data)
        with self.model.lock:
            link = self.model.blobs.setdefault((repo, digest), BlobLink(owner=self.index, data=data))
        if link.owner != self.index:
            return None  # another client's link: it may delete it at any time
        self.model.begin(link)
        try:
            ok = self.upload(repo, data)
        except httpx.TransportError as exc:
            self.model.lost(link)
            self.model.fail(f"push blob {repo}@{digest}: {exc!r}")
            return None
        self.model.end(link, True if ok else None)
        return digest if ok else None

    def push_manifest(
        self, repo: str, body: bytes, media_type: str, tag: str | None, extra_tags: list[str], **info: Any
    ) -> bool:
        digest = sha256(body)
        with self.model.lock:
            manifest = self.model.manifests.setdefault(
                (repo, digest), Manifest(owner=self.index, body=body, media_type=media_type, **info)
            )
            tags = [
                self.model.tags.setdefault((repo, t), Tag(owner=self.index))
                for t in ([tag] if tag else []) + extra_tags
            ]
        for obj in [manifest, *tags]:
            self.model.begin(obj)
        try:
            r = self.http.put(
                f"/v2/{repo}/manifests/{tag or digest}",
                params={"tag": extra_tags} if extra_tags else None,
                content=body,
                headers={"Content-Type": media_type},
            )
        except httpx.TransportError as exc:
            for obj in [manifest, *tags]:
                self.model.lost(obj)
            self.model.fail(f"push manifest {repo}@{digest}: {exc!r}")
            return False
        ok = self.expect(r, 201) and r.headers.get("docker-content-digest") == digest
        self.model.end(manifest, True if ok else None)
        for t in tags:
            self.model.end(t, True if ok else None, digest=digest)
        return ok

    def op_push_image(self) -> None:
        repo = self.repo()
        docker = self.rng.random() < 0.2
        layers = [self.unique(self.blob_size()) for _ in range(self.rng.randint(1, 3))]
        config = json.dumps({"architecture": "amd64", "os": "linux", "id": self.unique(0).decode()}).encode()
        digests = [self.push_blob(repo, b) for b in [config, *layers]]
        if None in digests:
            return
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        config_type = DOCKER_CONFIG if docker else OCI_CONFIG
        layer_type = DOCKER_LAYER if docker else OCI_LAYER
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": sha256(b), "size": len(b)} for b in layers],
        }
        body = json.dumps(doc, indent=self.rng.choice([None, 2])).encode()
        tag = f"w{self.index}-{self.rng.randrange(6)}" if self.rng.random() < 0.6 else None
        extra = [f"w{self.index}-x{self.rng.randrange(4)}"] if tag is None and self.rng.random() < 0.3 else []
        self.push_manifest(repo, body, media_type, tag, extra, artifact_type=config_type)

    def op_push_pool_blob(self, pool: list[bytes]) -> None:
        """Content every client pushes too, into its own repository: one copy on disk, many links."""
        self.push_blob(self.private, self.rng.choice(pool))

    def op_push_referrer(self) -> None:
        found = self.model.sample(self.model.manifests, self.rng)
        if found is None:
            return
        (repo, subject), target = found
        config = json.dumps({"referrer": self.unique(0).decode()}).encode()
        blob = self.unique(self.rng.randrange(0, 2048))
        if self.push_blob(repo, config) is None or self.push_blob(repo, blob) is None:
            return
        artifact_type = self.rng.choice(ARTIFACT_TYPES)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": ARTIFACT_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": "application/octet-stream", "digest": sha256(blob), "size": len(blob)}],
            "subject": {"mediaType": target.media_type, "digest": subject, "size": len(target.body)},
        }
        body = json.dumps(doc).encode()
        self.push_manifest(repo, body, OCI_MANIFEST, None, [], subject=subject, artifact_type=artifact_type)

    def op_push_index(self) -> None:
        with self.model.lock:
            mine = [
                (key, m) for key, m in self.model.manifests.items()
                if m.owner == self.index and m.live and not m.pending and m.media_type == OCI_MANIFEST
            ]  # fmt: skip
        if not mine:
            return
        repo = self.rng.choice(mine)[0][0]
        children = [(k, m) for k, m in mine if k[0] == repo][: self.rng.randint(1, 3)]
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": m.media_type, "digest": k[1], "size": len(m.body),
                           "platform": {"architecture": "amd64", "os": "linux"}} for k, m in children],
            "annotations": {"id": self.unique(0).decode()},
        }  # fmt: skip
        self.push_manifest(repo, json.dumps(doc).encode(), OCI_INDEX, f"w{self.index}-index", [])

    def op_mount(self) -> None:
        found = self.model.sample(self.model.blobs, self.rng)
        if found is None:
            return
        (source, digest), link = found
        if source == self.private:
            return
        start = self.model.now()
        before = self.model.settled(link, start)
        source_stable = before is not None and before.live
        with self.model.lock:
            target = self.model.blobs.setdefault(
                (self.private, digest), BlobLink(owner=self.index, data=link.data)
            )
        if target.owner != self.index:
            return
        self.model.begin(target)
        try:
            r = self.http.post(f"/v2/{self.private}/blobs/uploads/", params={"mount": digest, "from": source})
        except httpx.TransportError as exc:
            self.model.lost(target)
            self.model.fail(f"mount {digest}: {exc!r}")
            return
        if r.status_code == 201:
            self.model.end(target, True)
            return
        self.model.end(target, None)
        if self.expect(r, 202):  # could not mount: a session was opened instead; close it
            self.expect(self.http.delete(r.headers["location"]), 204)
            if source_stable and self.model.stable(link, start):
                self.model.fail(f"mount of {digest} from {source} refused though the source had it")

    def op_delete_manifest(self) -> None:
        with self.model.lock:
            mine = [(k, m) for k, m in self.model.manifests.items() if m.owner == self.index and m.live]
            if not mine:
                return
            (repo, digest), manifest = self.rng.choice(mine)
            tags = [t for (r, _), t in self.model.tags.items() if r == repo and t.live and t.digest == digest]
        for obj in [manifest, *tags]:
            self.model.begin(obj)
        try:
            r = self.http.delete(f"/v2/{repo}/manifests/{digest}")
        except httpx.TransportError as exc:
            for obj in [manifest, *tags]:
                self.model.lost(obj)
            self.model.fail(f"delete manifest {digest}: {exc!r}")
            return
        ok = self.expect(r, 202)
        for obj in [manifest, *tags]:
            self.model.end(obj, False if ok else None)

    def op_delete_tag(self) -> None:
        with self.model.lock:
            mine = [(k, t) for k, t in self.model.tags.items() if t.owner == self.index and t.live]
            if not mine:
                return
            (repo, name), tag = self.rng.choice(mine)
        self.model.begin(tag)
        try:
            r = self.http.delete(f"/v2/{repo}/manifests/{name}")
        except httpx.TransportError as exc:
            self.model.lost(tag)
            self.model.fail(f"delete tag {name}: {exc!r}")
            return
        self.model.end(tag, False if self.expect(r, 202) else None)

    def op_delete_blob(self) -> None:
        with self.model.lock:
            mine = [(k, b) for k, b in self.model.blobs.items() if b.owner == self.index and b.live]
            if not mine:
                return
            (repo, digest), link = self.rng.choice(mine)
        self.model.begin(link)
        try:
            r = self.http.delete(f"/v2/{repo}/blobs/{digest}")
        except httpx.TransportError as exc:
            self.model.lost(link)
            self.model.fail(f"delete blob {digest}: {exc!r}")
            return
        self.model.end(link, False if self.expect(r, 202) else None)

    # -- reads ---------------------------------------------------------------------------------------------

    def op_pull_manifest(self) -> None:
        found = self.model.sample(self.model.manifests, self.rng)
        if found is None:
            return
        (repo, digest), tracked = found
        start = self.model.now()
        method = "HEAD" if self.rng.random() < 0.2 else "GET"
        r = self.http.request(method, f"/v2/{repo}/manifests/{digest}")
        if r.status_code == 200 and method == "GET" and r.content != tracked.body:
            self.model.fail(f"GET {repo}@{digest} served other bytes")
        manifest = self.model.settled(tracked, start)
        if manifest is None:
            return
        if manifest.live:
            if self.expect(r, 200):
                if method == "GET" and r.content != manifest.body:
                    self.model.fail(f"GET {repo}@{digest} served other bytes")
                said = r.headers.get("docker-content-digest")
                if said != digest:
                    self.model.fail(f"{method} {repo}@{digest}: Docker-Content-Digest {said}")
                if r.headers.get("content-type") != manifest.media_type:
                    self.model.fail(f"{method} {repo}@{digest}: Content-Type {r.headers.get('content-type')}")
        else:
            self.expect(r, 404)

    def op_pull_tag(self) -> None:
        found = self.model.sample(self.model.tags, self.rng)
        if found is None:
            return
        (repo, name), tracked = found
        start = self.model.now()
        r = self.http.get(f"/v2/{repo}/manifests/{name}")
        if r.status_code == 200 and sha256(r.content) != r.headers.get("docker-content-digest"):
            self.model.fail(f"GET {repo}:{name}: the body does not hash to Docker-Content-Digest")
        tag = self.model.settled(tracked, start)
        if tag is None:
            return
        if tag.live:
            if self.expect(r, 200) and r.headers.get("docker-content-digest") != tag.digest:
                self.model.fail(
                    f"GET {repo}:{name} -> {r.headers.get('docker-content-digest')}, not {tag.digest}"
                )
        else:
            self.expect(r, 404)

    def op_pull_blob(self) -> None:
        found = self.model.sample(self.model.blobs, self.rng)
        if found is None:
            return
        (repo, digest), tracked = found
        start = self.model.now()
        ranged = len(tracked.data) > 2 and self.rng.random() < 0.3
        headers: dict[str, str] = {}
        first, last = 0, len(tracked.data) - 1
        if ranged:
            first = self.rng.randrange(len(tracked.data))
            last = self.rng.randrange(first, len(tracked.data))
            headers["Range"] = f"bytes={first}-{last}"
        r = self.http.get(f"/v2/{repo}/blobs/{digest}", headers=headers)
        if r.status_code in (200, 206):
            want = tracked.data[first : last + 1] if ranged and r.status_code == 206 else tracked.data
            if r.content != want:
                self.model.fail(f"GET {repo}/blobs/{digest} {headers} served other bytes")
        link = self.model.settled(tracked, start)
        if link is None:
            return
        if link.live:
            self.expect(r, 206 if ranged else 200)
        else:
            self.expect(r, 404)

    def op_list_tags(self) -> None:
        repo = self.repo()
        start = self.model.now()
        r = self.http.get(f"/v2/{repo}/tags/list")
        if r.status_code == 404:
            return  # nothing pushed there yet
        if not self.expect(r, 200):
            return
        listed = set(r.json()["tags"] or [])
        with self.model.lock:
            mine = [(name, t) for (rp, name), t in self.model.tags.items() if rp == repo]
        for name, tracked in mine:
            tag = self.model.settled(tracked, start)
            if tag is not None and (name in listed) != tag.live:
                self.model.fail(
                    f"tags/list of {repo}: {name} {'missing' if tag.live else 'deleted but listed'}"
                )
        with self.model.lock:
            known = {name for (rp, name) in self.model.tags if rp == repo}
        if listed - known:
            self.model.fail(f"tags/list of {repo} names tags nobody pushed: {sorted(listed - known)[:5]}")

    def op_list_referrers(self) -> None:
        found = self.model.sample(self.model.manifests, self.rng)
        if found is None:
            return
        (repo, subject), _ = found
        artifact_type = self.rng.choice([None, *ARTIFACT_TYPES])
        start = self.model.now()
        r = self.http.get(
            f"/v2/{repo}/referrers/{subject}",
            params={"artifactType": artifact_type} if artifact_type else None,
        )
        if not self.expect(r, 200):
            return
        entries = {e["digest"]: e for e in r.json()["manifests"]}
        with self.model.lock:
            referrers = [
                (d, m) for (rp, d), m in self.model.manifests.items() if rp == repo and m.subject == subject
            ]
        for digest, tracked in referrers:
            if artifact_type and tracked.artifact_type != artifact_type:
                if digest in entries:
                    self.model.fail(f"referrers of {subject} filtered by {artifact_type} list {digest}")
                continue
            m = self.model.settled(tracked, start)
            if m is None:
                continue
            if m.live and digest not in entries:
                self.model.fail(f"referrers of {repo}@{subject}: {digest} missing")
            elif not m.live and digest in entries:
                self.model.fail(f"referrers of {repo}@{subject}: deleted {digest} listed")
            elif m.live and (
                entries[digest]["size"] != len(m.body)
                or entries[digest].get("artifactType") != m.artifact_type
            ):
                self.model.fail(f"referrers of {repo}@{subject}: wrong descriptor {entries[digest]}")

    def op_catalog(self) -> None:
        r = self.http.get("/v2/_catalog", params={"n": self.rng.choice([5, 50, 1000])})
        if self.expect(r, 200):
            names = r.json()["repositories"]
            if names != sorted(names):
                self.model.fail(f"_catalog is not sorted: {names[:10]}")

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, pool: list[bytes]) -> None:
        ops: dict[str, tuple[float, Callable[[], None]]] = {
            "push image": (24, self.op_push_image),
            "push shared content": (5, lambda: self.op_push_pool_blob(pool)),
            "push referrer": (7, self.op_push_referrer),
            "push index": (3, self.op_push_index),
            "mount": (3, self.op_mount),
            "pull manifest": (14, self.op_pull_manifest),
            "pull by tag": (8, self.op_pull_tag),
            "pull blob": (14, self.op_pull_blob),
            "list tags": (5, self.op_list_tags),
            "list referrers": (4, self.op_list_referrers),
            "catalog": (1, self.op_catalog),
            "delete manifest": (5, self.op_delete_manifest),
            "delete tag": (4, self.op_delete_tag),
            "delete blob": (4, self.op_delete_blob),
        }
        names = list(ops)
        weights = [ops[n][0] for n in names]
        try:
            while time.monotonic() < self.deadline:
                (name,) = self.rng.choices(names, weights)
                op = ops[name][1]
                with self.model.lock:
                    self.model.operations[name] = self.model.operations.get(name, 0) + 1
                try:
                    op()
                except httpx.TransportError as exc:
                    self.model.fail(f"client {self.index} {name}: {exc!r}")
        except Exception as exc:  # a bug in the test itself must not pass as a quiet thread
            self.model.fail(f"client {self.index} crashed: {exc!r}")
            raise
        finally:
            self.http.close()


# -- the final reckoning --------------------------------------------------------------------------------


def verify_final_state(url: str, model: Model) -> tuple[list[str], int]:
    """With every client stopped, the registry holds exactly what the model says; returns failures."""
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=120.0) as http:
        requests = 0
        for (repo, digest), link in model.blobs.items():
            if link.unknown:
                continue
            r = http.get(f"/v2/{repo}/blobs/{digest}")
            requests += 1
            if link.live and (r.status_code != 200 or sha256(r.content) != digest):
                failures.append(f"acknowledged blob lost: {repo}@{digest} -> {r.status_code}")
            elif not link.live and r.status_code != 404:
                failures.append(
                    f"deleted (or never acknowledged) blob served: {repo}@{digest} -> {r.status_code}"
                )
        for (repo, digest), m in model.manifests.items():
            if m.unknown:
                continue
            r = http.get(f"/v2/{repo}/manifests/{digest}")
            requests += 1
            if m.live and (r.status_code != 200 or r.content != m.body):
                failures.append(f"acknowledged manifest lost: {repo}@{digest} -> {r.status_code}")
            elif not m.live and r.status_code != 404:
                failures.append(f"deleted manifest served: {repo}@{digest} -> {r.status_code}")
        repos = {repo for repo, _ in model.tags} | {repo for repo, _ in model.manifests}
        for repo in sorted(repos):
            r = http.get(f"/v2/{repo}/tags/list")
            requests += 1
            listed = set(r.json().get("tags") or []) if r.status_code == 200 else set()
            live = {name for (rp, name), t in model.tags.items() if rp == repo and t.live and not t.unknown}
            unknown = {name for (rp, name), t in model.tags.items() if rp == repo and t.unknown}
            if (listed - unknown) != live:
                missing, extra = sorted(live - listed)[:10], sorted(listed - live - unknown)[:10]
                failures.append(f"tags/list of {repo}: missing {missing}, extra {extra}")
        for (repo, name), tag in model.tags.items():
            if tag.unknown or not tag.live:
                continue
            r = http.head(f"/v2/{repo}/manifests/{name}")
            requests += 1
            if r.headers.get("docker-content-digest") != tag.digest:
                failures.append(
                    f"tag {repo}:{name} -> {r.headers.get('docker-content-digest')}, not {tag.digest}"
                )
        subjects = {(repo, m.subject) for (repo, _), m in model.manifests.items() if m.subject is not None}
        for repo, subject in sorted(subjects):
            r = http.get(f"/v2/{repo}/referrers/{subject}")
            requests += 1
            listed = {e["digest"] for e in r.json()["manifests"]}
            want = {
                d for (rp, d), m in model.manifests.items() if rp == repo and m.subject == subject and m.live
            }
            unknown = {
                d
                for (rp, d), m in model.manifests.items()
                if rp == repo and m.subject == subject and m.unknown
            }
            if listed - unknown != want:
                failures.append(
                    f"referrers of {repo}@{subject}: missing {want - listed}, extra {listed - want - unknown}"
                )
    return failures, requests


@pytest.fixture
def load_server(start_server: StartServer) -> Iterator[DockyardServer]:
    yield start_server(workers=2)


@pytest.mark.slow
def test_randomised_load_loses_nothing_acknowledged(
    load_server: DockyardServer, capsys: pytest.CaptureFixture[str]
) -> None:
    print(f"\nload test: seed {SEED} (LOAD_SEED={SEED} replays it), {DURATION:.0f} s, {CLIENTS} clients")
    STATS["load test seed"] = SEED
    model = Model()
    rng = random.Random(SEED)
    pool = [rng.randbytes(rng.choice([1, 4096, 100_000, 600_000])) for _ in range(8)]
    started = time.monotonic()
    clients = [Client(i, load_server.url, model, started + DURATION) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, args=(pool,), name=f"load-{c.index}") for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION + 600)
    assert not any(t.is_alive() for t in threads), "a load client hung"
    elapsed = time.monotonic() - started
    sent = sum(c.requests for c in clients)
    final_failures, final_requests = verify_final_state(load_server.url, model)
    total = sent + final_requests
    STATS["load test requests sent"] = total
    summary = (
        f"load test: {total} requests ({sent} under load in {elapsed:.1f} s, {sent / elapsed:.0f}/s; "
        f"{final_requests} to verify); statuses {dict(sorted(model.statuses.items()))}; "
        f"{sum(1 for b in model.blobs.values() if b.live)} blob links, "
        f"{sum(1 for m in model.manifests.values() if m.live)} manifests, "
        f"{sum(1 for t in model.tags.values() if t.live)} tags live at the end; "
        f"operations {dict(sorted(model.operations.items()))}; reads {model.reads}"
    )
    print(summary)
    assert model.failures == [], f"{len(model.failures)} failure(s) under load:\n" + "\n".join(
        model.failures[:40]
    )
    assert final_failures == [], f"{len(final_failures)} failure(s) at the end:\n" + "\n".join(
        final_failures[:40]
    )
    load_server.stop()
    errors = server_errors(load_server.log(), ignore_startup_race=True)
    assert errors == [], f"{len(errors)} unhandled error(s) logged:\n" + "\n".join(errors[:20])
    code, report = run_fsck(load_server.data_dir)
    assert report["clean"] is True and code == 0, report
