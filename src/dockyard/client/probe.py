"""``dockyard probe``: how a registry answers the chunked-upload questions the spec leaves open.

It opens sessions in scratch repositories of its own, plays each scenario once, and removes what it
made (the manifests, blobs and sessions; dockyard's repository-delete extension where offered).
Every check yields a ``Check``: a stable key for machines, a label for people, the value found.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from yarl import URL

from dockyard.client.content import OCI_EMPTY, OCI_MANIFEST, digest_of
from dockyard.client.direct import DIRECT_HEADER, KIND, offered
from dockyard.client.registry import (
    FAULTS,
    TRANSPORT_ERRORS,
    Answer,
    Registry,
    RegistryError,
    repository_scope,
)
from dockyard.client.upload import parse_upload_range

DEFAULT_CHUNK = 256 * 1024


@dataclass
class Check:
    key: str
    label: str
    value: Any = None  # True/False, a number, a string; None: not determined
    detail: str = ""


@dataclass
class ProbeReport:
    registry: str
    repository: str
    checks: list[Check] = field(default_factory=list)

    def get(self, key: str) -> Check:
        return next(c for c in self.checks if c.key == key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.repository,
            "checks": [asdict(c) for c in self.checks],
            "results": {c.key: c.value for c in self.checks},
        }

    def table(self) -> str:
        rows = [(c.label, _show(c.value), c.detail) for c in self.checks]
        w1 = max(len(r[0]) for r in rows)
        w2 = max(len(r[1]) for r in rows)
        lines = [f"registry {self.registry}, scratch repository {self.repository}", ""]
        lines.append(f"{'check':<{w1}}  {'result':<{w2}}  detail")
        lines.append(f"{'-' * w1}  {'-' * w2}  {'-' * 6}")
        lines += [f"{a:<{w1}}  {b:<{w2}}  {c}".rstrip() for a, b, c in rows]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def _chunk_headers(start: int, length: int) -> dict[str, str]:
    """A chunk's headers as a client sends them, for the raw-socket scenarios."""
    return {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{start}-{start + length - 1}",
        "Content-Length": str(length),
    }


def _show(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "unknown"
    return str(value)


class Prober:
    def __init__(self, registry: Registry, repository: str, chunk: int = DEFAULT_CHUNK) -> None:
        self.registry = registry
        self.repo = repository
        self.repo_b = f"{repository}-b"
        self.repo_c = f"{repository}-c"
        self.chunk = chunk
        self.report = ProbeReport(str(registry.base), repository)
        self.sessions: list[tuple[str, URL]] = []
        self.blobs: list[tuple[str, str]] = []
        self.manifests: list[tuple[str, str]] = []
        self.digest: str | None = None

    def check(self, key: str, label: str, value: Any = None, detail: str = "") -> Check:
        found = Check(key, label, value, detail)
        self.report.checks.append(found)
        return found

    def scopes(self, repository: str | None = None) -> list[str]:
        return [repository_scope(repository or self.repo, "pull", "push")]

    def url(self, path: str, repository: str | None = None) -> URL:
        return self.registry.url(f"/v2/{repository or self.repo}/{path}")

    async def call(self, method: str, url: URL, repository: str | None = None, **kwargs: Any) -> Answer:
        kwargs.setdefault("ok", range(100, 600))
        return await self.registry.call(method, url, scopes=self.scopes(repository), **kwargs)

    async def status(self, location: URL) -> tuple[Answer, int | None]:
        answer = await self.call("GET", location)
        return answer, parse_upload_range(answer.header("Range"))

    async def settled(self, location: URL) -> int | None:
        """The session's offset once it stops moving (a request cut off may still be finishing)."""
        last: int | None = -1
        for _ in range(40):
            answer, offset = await self.status(location)
            if answer.status not in (200, 204):
                return None
            if offset == last:
                return offset
            last = offset
            await asyncio.sleep(0.25)
        return last

    async def raw(
        self, method: str, url: URL, headers: dict[str, str], body: bytes, *, read: bool, linger: float = 1.0
    ) -> bytes:
        """One request on a socket of its own; ``read=False`` hangs up ``linger`` seconds after
        sending it (time for the registry to take in what arrived), reading nothing."""
        auth = await self.registry.authorization(self.scopes())
        ssl_context = self.registry.options.ssl_context() if url.scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            url.host, url.port, ssl=ssl_context if ssl_context is not None else None
        )
        try:
            lines = [
                f"{method} {url.raw_path_qs} HTTP/1.1",
                f"Host: {url.raw_authority}",
                "Connection: close",
            ]
            if auth:
                lines.append(f"Authorization: {auth}")
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            if not read:
                await asyncio.sleep(linger)
                return b""
            return await asyncio.wait_for(reader.read(65536), 30)
        finally:
            writer.close()
            with contextlib.suppress(*TRANSPORT_ERRORS, OSError):
                await writer.wait_closed()

    async def open_session(self, repository: str | None = None) -> tuple[Answer, URL]:
        answer = await self.call("POST", self.url("blobs/uploads/", repository), repository)
        if answer.status != 202 or not answer.header("Location"):
            raise RegistryError(answer.status, "could not open an upload session", str(answer.url))
        location = self.registry.resolve(answer.url, answer.header("Location") or "")
        self.sessions.append((repository or self.repo, location))
        return answer, location

    async def patch(
        self, location: URL, data: bytes, start: int | None, *, headers: dict[str, str] | None = None
    ) -> Answer:
        send = {"Content-Type": "application/octet-stream", **(headers or {})}
        if start is not None:
            send["Content-Range"] = f"{start}-{start + len(data) - 1}"
        return await self.call("PATCH", location, body=data, headers=send)

    # -- the scenarios ------------------------------------------------------------------------------

    async def run(self) -> ProbeReport:
        ping = await self.registry.ping()
        challenge = ping.header("WWW-Authenticate") or ""
        self.check(
            "api_version",
            "GET /v2/",
            ping.status,
            f"Docker-Distribution-API-Version: {ping.header('Docker-Distribution-API-Version') or 'absent'}"
            + (f"; auth {challenge.split(' ', 1)[0]}" if challenge else ""),
        )
        try:
            await self.chunked()
            await self.single_post_and_mounts()
            await self.direct_uploads()
            await self.referrers()
        finally:
            await self.cleanup()
        return self.report

    async def chunked(self) -> None:
        answer, first = await self.open_session()
        min_length = answer.header("OCI-Chunk-Min-Length")
        self.check(
            "chunk_min_length",
            "OCI-Chunk-Min-Length",
            int(min_length) if min_length and min_length.isdigit() else "none",
            "the smallest chunk but the last the registry takes",
        )
        raw_location = answer.header("Location") or ""
        self.check(
            "location_form",
            "Location form",
            "absolute" if URL(raw_location).is_absolute() else "relative",
            raw_location[:80],
        )
        self.check(
            "upload_uuid", "Docker-Upload-UUID on POST", answer.header("Docker-Upload-UUID") is not None
        )
        chunk = max(self.chunk, int(min_length) if min_length and min_length.isdigit() else 0)
        data = os.urandom(chunk * 6)
        digest = digest_of(data)

        get, _ = await self.status(first)
        self.check("get_status", "GET on a session: status", get.status)
        self.check(
            "empty_session_range",
            "GET on an empty session: Range",
            get.header("Range") or "absent",
            "0--1 is unambiguous; 0-0 is also what a one-byte session says",
        )
        # 1. a first chunk
        patched = await self.patch(first, data[:chunk], 0)
        latest = self.registry.resolve(patched.url, patched.header("Location") or str(first))
        self.check(
            "patch_status", "PATCH with Content-Range", patched.status == 202, f"status {patched.status}"
        )
        self.check(
            "location_stable",
            "Location stable across PATCHes",
            latest == first,
            "one URL for the whole session" if latest == first else f"changed to {str(latest)[:80]}",
        )
        _, offset = await self.status(latest)
        self.check(
            "get_range",
            "GET after a chunk: Range right",
            offset == chunk,
            f"Range says {offset} bytes, {chunk} sent",
        )
        # 2. the next chunk to the first Location the session returned
        old = await self.patch(first, data[chunk : 2 * chunk], chunk)
        accepted = old.status == 202
        self.check(
            "old_locations_accepted",
            "old Locations accepted",
            accepted,
            f"PATCH to the first Location: {old.status}",
        )
        if old.header("Location"):
            latest = self.registry.resolve(old.url, old.header("Location") or "")
        position = 2 * chunk if accepted else chunk
        if not accepted:
            again = await self.patch(latest, data[chunk : 2 * chunk], chunk)
            position = parse_upload_range(again.header("Range")) or position
            if again.header("Location"):
                latest = self.registry.resolve(again.url, again.header("Location") or "")
        # 3. a chunk that does not start where the session ends
        wrong = await self.patch(latest, data[position : position + 1000], position + 1000)
        range_416 = parse_upload_range(wrong.header("Range"))
        self.check("range_416_status", "chunk out of order: status", wrong.status)
        self.check("range_416_location", "416 carries Location", wrong.header("Location") is not None)
        self.check(
            "range_416_range",
            "416 carries Range",
            wrong.header("Range") is not None,
            f"Range: {wrong.header('Range')}" + (" (right)" if range_416 == position else ""),
        )
        self.check(
            "range_416_uuid", "416 carries Docker-Upload-UUID", wrong.header("Docker-Upload-UUID") is not None
        )
        # 4. the response to a chunk is lost (the request arrived whole)
        piece = data[position : position + chunk]
        await self.raw(
            "PATCH",
            latest,
            _chunk_headers(position, chunk),
            piece,
            read=False,
        )
        settled = await self.settled(latest)
        kept = settled == position + chunk
        self.check(
            "lost_response",
            "after a lost response",
            "chunk kept" if kept else ("chunk dropped" if settled == position else f"offset {settled}"),
            "GET reports the chunk; the client goes on from there" if kept else "the client must resend",
        )
        position = settled if settled is not None else position
        # 5. a PATCH cut off mid-body
        half = chunk // 2
        await self.raw(
            "PATCH",
            latest,
            _chunk_headers(position, chunk),
            data[position : position + half],
            read=False,
        )
        settled = await self.settled(latest)
        if settled is None:
            self.check("cut_mid_body", "PATCH cut mid-body", "session lost")
            return
        self.check(
            "cut_mid_body",
            "PATCH cut mid-body",
            f"keeps {settled - position} bytes" if settled > position else "discards the chunk",
            f"{half} bytes sent of {chunk} declared",
        )
        position = settled
        # 6. streamed PATCH (no Content-Range)
        stream = data[position : position + chunk]
        streamed = await self.patch(latest, stream, None, headers={"Content-Length": str(len(stream))})
        _, after = await self.status(latest)
        self.check(
            "streamed_patch",
            "streamed PATCH (no Content-Range)",
            streamed.status == 202 and after == position + len(stream),
            f"status {streamed.status}",
        )
        position = after if after is not None else position

        # 7. PATCH without Content-Length (chunked transfer coding)
        async def pieces(rest: bytes = data[position : position + chunk]) -> AsyncIterator[bytes]:
            for i in range(0, len(rest), 65536):
                yield rest[i : i + 65536]

        try:
            chunked = await self.call(
                "PATCH", latest, body=pieces, headers={"Content-Type": "application/octet-stream"}
            )
            status = chunked.status
        except TRANSPORT_ERRORS as exc:
            status = 0
            self.check("patch_without_length", "PATCH without Content-Length", False, f"{type(exc).__name__}")
        _, after = await self.status(latest)
        if status:
            self.check(
                "patch_without_length",
                "PATCH without Content-Length",
                status == 202 and after == min(len(data), position + chunk),
                f"status {status} (Transfer-Encoding: chunked)",
            )
        position = after if after is not None else position
        # 8. the rest, and the closing PUT
        if position < len(data):
            await self.patch(latest, data[position:], position)
        put = await self.call("PUT", latest.update_query({"digest": digest}), headers={"Content-Length": "0"})
        head = await self.call("HEAD", self.url(f"blobs/{digest}"), follow_redirects=True)
        intact = put.status == 201 and head.status == 200 and head.header("Content-Length") == str(len(data))
        self.check(
            "commit", "PUT ?digest= closes the session", intact, f"status {put.status}; {len(data)} bytes"
        )
        if put.status == 201:
            self.blobs.append((self.repo, digest))
            self.sessions = [(r, s) for r, s in self.sessions if s != first]
        self.digest = digest

    async def single_post_and_mounts(self) -> None:
        small = b"dockyard probe " + uuid.uuid4().bytes
        digest = digest_of(small)
        answer = await self.call(
            "POST",
            self.url("blobs/uploads/").with_query({"digest": digest}),
            body=small,
            headers={"Content-Type": "application/octet-stream"},
        )
        if answer.status == 202 and answer.header("Location"):
            self.sessions.append(
                (self.repo, self.registry.resolve(answer.url, answer.header("Location") or ""))
            )
        if answer.status == 201:
            self.blobs.append((self.repo, digest))
        self.check(
            "single_post",
            "single POST (?digest= with the blob)",
            answer.status == 201,
            {201: "201 Created", 202: "202: a session opened, the body ignored"}.get(
                answer.status, f"status {answer.status}"
            ),
        )
        target = self.digest or digest
        for repository, key, label, query in (
            (self.repo_b, "mount_from", "mount with from", {"mount": target, "from": self.repo}),
            (self.repo_c, "mount_without_from", "mount without from", {"mount": target}),
        ):
            scopes = [*self.scopes(repository), repository_scope(self.repo, "pull")]
            mounted = await self.registry.call(
                "POST",
                self.url("blobs/uploads/", repository).with_query(query),
                scopes=scopes,
                ok=range(100, 600),
            )
            if mounted.status == 201:
                self.blobs.append((repository, target))
            elif mounted.status == 202 and mounted.header("Location"):
                self.sessions.append(
                    (repository, self.registry.resolve(mounted.url, mounted.header("Location") or ""))
                )
            self.check(
                key,
                label,
                mounted.status == 201,
                "201 Created" if mounted.status == 201 else f"status {mounted.status} (a session instead)",
            )

    async def direct_uploads(self) -> None:
        """Does a POST asking for a direct-to-bucket session get one (docs/direct-uploads.md)?"""
        answer = await self.call("POST", self.url("blobs/uploads/"), headers={DIRECT_HEADER: KIND})
        if answer.status == 202 and answer.header("Location"):
            self.sessions.append(
                (self.repo, self.registry.resolve(answer.url, answer.header("Location") or ""))
            )
        direct = offered(answer) if answer.status == 202 else None
        self.check(
            "direct_uploads",
            "direct uploads to the object store",
            direct.kind if direct else False,
            f"parts at {direct.parts_url.path}" if direct else f"status {answer.status}, not offered",
        )

    async def referrers(self) -> None:
        empty = b"{}"
        empty_digest = digest_of(empty)
        await self.call(
            "POST",
            self.url("blobs/uploads/").with_query({"digest": empty_digest}),
            body=empty,
            ok=range(100, 600),
        )
        if (await self.call("HEAD", self.url(f"blobs/{empty_digest}"))).status != 200:
            _, location = await self.open_session()
            await self.call("PUT", location.update_query({"digest": empty_digest}), body=empty)
        self.blobs.append((self.repo, empty_digest))
        descriptor = {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2}
        subject_doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor,
            "layers": [descriptor],
        }
        subject = json.dumps(subject_doc).encode()
        subject_digest = digest_of(subject)
        put = await self.call(
            "PUT",
            self.url(f"manifests/{subject_digest}"),
            body=subject,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if put.status != 201:
            self.check("referrers_api", "referrers API", None, f"could not push a manifest: {put.status}")
            return
        self.manifests.append((self.repo, subject_digest))
        artifact = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dockyard.probe",
                "config": descriptor,
                "layers": [descriptor],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject)},
            }
        ).encode()
        artifact_digest = digest_of(artifact)
        put = await self.call(
            "PUT",
            self.url(f"manifests/{artifact_digest}"),
            body=artifact,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if put.status == 201:
            self.manifests.insert(0, (self.repo, artifact_digest))
        listed = await self.call("GET", self.url(f"referrers/{subject_digest}"))
        found = False
        if listed.status == 200:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                found = any(m.get("digest") == artifact_digest for m in listed.json().get("manifests", []))
        self.check(
            "referrers_api",
            "referrers API",
            listed.status == 200 and found,
            f"status {listed.status}" + ("; OCI-Subject on PUT" if put.header("OCI-Subject") else ""),
        )

    async def cleanup(self) -> None:
        """Remove what the probe made; report what could not be removed."""
        left: list[str] = []

        async def attempt(what: str, action: Callable[[], Awaitable[Answer]], ok: tuple[int, ...]) -> bool:
            try:
                answer = await action()
            except FAULTS:
                left.append(what)
                return False
            if answer.status not in ok:
                left.append(what)
                return False
            return True

        for repository, session in self.sessions:
            await attempt(f"session {session}", partial(self.call, "DELETE", session, repository), (204, 404))
        statuses = []
        for repository in (self.repo, self.repo_b, self.repo_c):
            url = self.registry.url(f"/v2/_dockyard/repositories/{repository}")
            with contextlib.suppress(*TRANSPORT_ERRORS, RegistryError):
                answer = await self.registry.call(
                    "DELETE", url, scopes=[repository_scope(repository, "delete")], ok=range(100, 600)
                )
                statuses.append(answer.status)
        # dockyard's extension: 202 for each repository made, 404 for one never made
        extension = 202 in statuses and all(s in (202, 404) for s in statuses) and len(statuses) == 3
        if not extension:
            for repository, digest in self.manifests:
                await attempt(
                    f"manifest {digest}",
                    partial(self.call, "DELETE", self.url(f"manifests/{digest}", repository), repository),
                    (202, 404),
                )
            for repository, digest in self.blobs:
                await attempt(
                    f"blob {repository}@{digest}",
                    partial(self.call, "DELETE", self.url(f"blobs/{digest}", repository), repository),
                    (202, 404),
                )
        self.check(
            "cleanup",
            "scratch repositories removed",
            not left,
            "repository delete extension"
            if extension
            else ("; ".join(left[:3]) or "manifests and blobs deleted"),
        )


async def probe(registry: Registry, repository: str | None = None, chunk: int = DEFAULT_CHUNK) -> ProbeReport:
    name = f"{repository or 'dockyard-probe'}/{hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:10]}"
    return await Prober(registry, name, chunk).run()
