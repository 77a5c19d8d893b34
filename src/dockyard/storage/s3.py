"""The bytes store on any S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW, R2).

Layout under ``<prefix>`` in the bucket::

    blobs/<algorithm>/<first two hex>/<hex>    content, named by digest, written once, verified
    uploads/<session id>/data                  the session's multipart upload (and, once sealed,
                                               the completed object holding its parts)
    uploads/<session id>/multipart             marker: the session has a multipart upload
    uploads/<session id>/tail-<generation>     the session's last bytes, fewer than a part

**Sessions are multipart uploads, continued from any node.** A session's staged bytes are the
parts of one S3 multipart upload followed by at most one *tail* object. What the session holds
lives in ``session.backend_state`` (persisted in the session's metadata row after every PATCH):
the upload id, the part list (number, ETag, size), and the tail's generation and size. Nothing
is ever asked of ``ListParts``; any node, handed the row, continues the upload by its id.

**Chunks of any size.** S3 parts must be at least 5 MiB (except the last), which the POST
announces as ``OCI-Chunk-Min-Length``. A writer keeps one buffer of at most ``part_size``
bytes: it starts with the tail object's bytes (re-read), takes the PATCH body, and uploads a
part each time the buffer fills. When the body ends, a buffer of 5 MiB or more becomes one more
part; a smaller one is written as a new tail object. So a client that honours the minimum maps
one PATCH onto one or more parts and never touches a tail, and a client that sends 1 KiB chunks
or one streamed PATCH of any size still works; memory stays at one part per open writer.

**A writer killed mid-PATCH** leaves parts and a tail the row does not know about. Part numbers
come from the recorded list and tail generations from the recorded generation, so the next
writer simply overwrites them; a tail superseded by a saved row is deleted by the next writer
(``stale``); anything else under ``uploads/<id>/`` goes with the session (``staging_delete``
also aborts every multipart upload under that prefix). A part list nearing S3's 10,000-part
limit is compacted: sealed, then copied server-side into a few large parts of a fresh upload.

**Commit.** The core verifies the digest before ``staging_commit`` (with the hash it computed on
the way in, or by ``staging_read``). Reading or committing *seals* the session: its multipart
upload is completed to ``uploads/<id>/data``, still out of sight of ``blobs/``. The commit then
copies data (and tail) to the digest's key server-side: one ``CopyObject`` up to
``copy_part_size``, above that a multipart upload of ``UploadPartCopy`` ranges, so blobs past
S3's 5 GiB single-copy limit work and no request copies more than ``copy_part_size``. A blob's
key is created only by a completed copy of verified bytes; the staging area is removed after.
A wrong digest never reaches ``staging_commit``: the core calls ``staging_delete`` (abort the
upload, delete data and tail) and nothing is left in the bucket.

**Reads.** ``redirect_url`` hands clients a short-lived pre-signed GET URL (or None when
redirects are off and the node streams); ``read`` streams a range with ``GetObject Range``.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from dockyard.failpoints import storage_fault_point
from dockyard.registry.digests import ALGORITHMS, Digest
from dockyard.registry.errors import DependencyUnavailable
from dockyard.registry.ports import UploadSession

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MiB = 1 << 20
GiB = 1 << 30
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_COPY_SIZE = 5 * GiB  # S3's largest CopyObject and UploadPartCopy
MAX_PARTS = 10_000
READ_SIZE = 1 << 20
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


class ObjectStoreError(OSError):
    """The object store failed a request in a way no retry mends (an ``OSError``, as the core
    expects of storage): a request it rejects, or staged bytes that are not what was recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def _not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in _NOT_FOUND or status == 404


# The store is busy, starting, failing or refusing our credentials: the request may work later.
_UNAVAILABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "ServiceUnavailable", "InternalError", "OperationAborted",
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
}  # fmt: skip
_UNAVAILABLE_BOTOCORE = (
    botocore.exceptions.ConnectionError,  # refused, reset, connect and read timeouts
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.NoCredentialsError,
)


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot serve now (503), rather than that we asked wrong."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = exc.response.get("Error", {}).get("Code")
        return status >= 500 or status in (403, 408, 429) or code in _UNAVAILABLE_CODES
    if isinstance(exc, BotoCoreError):
        return isinstance(exc, _UNAVAILABLE_BOTOCORE)
    return True  # aiohttp's connection errors, timeouts, OSError: the store is out of reach


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """The one place the client's failures are translated: the store out of reach, failing or
    throttling is ``DependencyUnavailable`` (503, the client retries); anything else is an
    ``ObjectStoreError``."""
    try:
        yield
    except ObjectStoreError:
        raise
    except (ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        if _unavailable(exc):
            raise DependencyUnavailable("object store", f"{what} failed: {exc!r}") from exc
        raise ObjectStoreError(f"object store: {what} failed: {exc}") from exc


_AIO_SESSION: AioSession | None = None


def _aio_session() -> AioSession:
    """One botocore session per process: it caches the service model every client loads."""
    global _AIO_SESSION
    if _AIO_SESSION is None:
        _AIO_SESSION = get_session()
    return _AIO_SESSION


@dataclass(frozen=True)
class S3Options:
    """Where the bytes go and how to reach them (``Settings.s3_*``)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "auto"  # "auto", "path" or "virtual"
    redirect: bool = True
    redirect_expiry_seconds: int = 300
    public_endpoint_url: str | None = None  # the endpoint in redirect URLs, if clients see another
    part_size: int = 8 * MiB
    copy_part_size: int = 256 * MiB
    max_connections: int = 64
    connect_timeout: float = 3.0  # seconds to open a connection to the store
    read_timeout: float = 20.0  # seconds to wait for the store's next byte
    max_attempts: int = 3  # tries per request (botocore's standard retries), the first included


@dataclass
class _Staging:
    """A session's staged bytes as recorded in ``session.backend_state``."""

    upload: str | None = None  # the multipart upload id
    parts: list[list[Any]] = field(default_factory=list)  # [number, etag, size], numbered 1..n
    tail: int = 0  # size of the tail object (0: none)
    gen: int = 0  # generation of the newest tail object written for this row
    stale: list[str] = field(default_factory=list)  # keys superseded by this state
    sealed: bool = False  # the upload was completed into uploads/<id>/data

    @classmethod
    def of(cls, session: UploadSession) -> _Staging:
        st = session.backend_state
        return cls(
            upload=st.get("upload"),
            parts=[list(p) for p in st.get("parts", [])],
            tail=int(st.get("tail", 0)),
            gen=int(st.get("gen", 0)),
            stale=list(st.get("stale", [])),
            sealed=bool(st.get("sealed", False)),
        )

    def store(self, session: UploadSession) -> None:
        session.backend_state.clear()
        session.backend_state.update(
            {
                "upload": self.upload,
                "parts": self.parts,
                "tail": self.tail,
                "gen": self.gen,
                "stale": self.stale,
                "sealed": self.sealed,
            }
        )

    @property
    def parts_size(self) -> int:
        return sum(int(p[2]) for p in self.parts)

    @property
    def size(self) -> int:
        return self.parts_size + self.tail


@dataclass(frozen=True)
class _Piece:
    """Bytes ``first``..``last`` of object ``key`` (``whole``: all of it) as one copied part."""

    key: str
    first: int
    last: int
    whole: bool = False


def copy_ranges(size: int, part: int) -> list[tuple[int, int]]:
    """Split ``size`` bytes into inclusive ranges of about ``part`` bytes, each at least 5 MiB
    (a short remainder joins the range before it), for ``UploadPartCopy``."""
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < size:
        end = min(start + part, size)
        if size - end < MIN_PART_SIZE:
            end = size
        ranges.append((start, end - 1))
        start = end
    return ranges


class _S3StagingWriter:
    """Appends to a session: a buffer of at most one part, flushed as parts or a tail."""

    def __init__(self, store: S3BlobStore, session: UploadSession, staging: _Staging, tail: bytes) -> None:
        self._store = store
        self._session = session
        self._staging = staging
        self._buffer = bytearray(tail)
        self._tail_in_buffer = bool(tail)  # the recorded tail's bytes start the buffer
        self._dirty = False

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._dirty = True
        view = memoryview(data)
        while view:
            room = self._store.part_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) >= self._store.part_size:
                await self._flush_part()

    async def _flush_part(self) -> None:
        part, self._buffer = self._buffer, bytearray()
        await self._store._upload_part(self._session, self._staging, bytes(part))
        if self._tail_in_buffer:
            # The old tail's bytes are now in a part (a tail is smaller than any part).
            self._staging.stale.append(self._store._tail_key(self._session.id, self._staging.gen))
            self._staging.tail = 0
            self._tail_in_buffer = False
        self._staging.store(self._session)

    async def close(self) -> int:
        storage_fault_point("staging.close")  # tests: the buffer never reaches the store
        if self._dirty and self._buffer:
            if len(self._buffer) >= MIN_PART_SIZE:
                await self._flush_part()
            else:
                await self._store._write_tail(self._session, self._staging, bytes(self._buffer))
                self._buffer = bytearray()
                self._staging.store(self._session)
        self._buffer = bytearray()
        return self._staging.size


class S3BlobStore:
    """Blobs and upload staging in an S3 bucket (see the module docstring for the design)."""

    #: S3's minimum part size; smaller chunks work too (they go through the tail object)
    chunk_min_length: int | None = MIN_PART_SIZE

    def __init__(self, options: S3Options) -> None:
        if not MIN_PART_SIZE <= options.part_size <= MAX_COPY_SIZE:
            raise ValueError("the S3 part size must be between 5 MiB and 5 GiB")
        if not MIN_PART_SIZE <= options.copy_part_size <= MAX_COPY_SIZE - MIN_PART_SIZE:
            raise ValueError("the S3 copy part size must be between 5 MiB and 5 GiB - 5 MiB")
        self.options = options
        self.bucket = options.bucket
        self.prefix = options.prefix.strip("/") + "/" if options.prefix.strip("/") else ""
        self.part_size = options.part_size
        self.max_parts = MAX_PARTS
        self._session = _aio_session()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._presigner: S3Client | None = None

    # -- the client (one per event loop: each worker process builds its own store) ----------------

    def _config(self) -> AioConfig:
        return AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": self.options.addressing_style},
            max_pool_connections=self.options.max_connections,
            # Bounded: a store that is down fails the request in seconds (503), never in minutes.
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            retries={"mode": "standard", "max_attempts": self.options.max_attempts},
            # Third-party stores vary in their support for the newer default checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def _client_args(self, endpoint_url: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"config": self._config()}
        if endpoint_url:
            args["endpoint_url"] = endpoint_url
        if self.options.region:
            args["region_name"] = self.options.region
        if self.options.access_key_id and self.options.secret_access_key:
            args["aws_access_key_id"] = self.options.access_key_id
            args["aws_secret_access_key"] = self.options.secret_access_key
        return args

    async def _s3(self) -> S3Client:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._client, self._presigner, self._stack = loop, None, None, None, None
        if self._client is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    with _errors("connect"):
                        client = await stack.enter_async_context(
                            self._session.create_client("s3", **self._client_args(self.options.endpoint_url))
                        )
                        presigner = client
                        if self.options.public_endpoint_url:
                            presigner = await stack.enter_async_context(
                                self._session.create_client(
                                    "s3", **self._client_args(self.options.public_endpoint_url)
                                )
                            )
                    self._stack, self._presigner, self._client = stack, presigner, client
        return self._client

    async def close(self) -> None:
        """Close the client of the running event loop (if it made one)."""
        if self._stack is not None and self._loop is asyncio.get_running_loop():
            stack, self._stack, self._client, self._presigner = self._stack, None, None, None
            await stack.aclose()

    # -- keys ------------------------------------------------------------------------------------

    def _blob_key(self, digest: Digest) -> str:
        # Digest.parse guarantees a registered algorithm and lowercase hex.
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _upload_prefix(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/"

    def _data_key(self, upload_id: str) -> str:
        return self._upload_prefix(upload_id) + "data"

    def _marker_key(self, upload_id: str) -> str:
        return self._upload_prefix(upload_id) + "multipart"

    def _tail_key(self, upload_id: str, gen: int) -> str:
        return self._upload_prefix(upload_id) + f"tail-{gen}"

    # -- small helpers -----------------------------------------------------------------------------

    async def _head(self, key: str) -> dict[str, Any] | None:
        s3 = await self._s3()
        with _errors(f"HEAD {key}"):
            try:
                return dict(await s3.head_object(Bucket=self.bucket, Key=key))
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise

    async def _get(self, key: str) -> bytes:
        s3 = await self._s3()
        with _errors(f"GET {key}"):
            response = await s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return await body.read()

    async def _stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk: int = READ_SIZE
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        s3 = await self._s3()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        with _errors(f"GET {key}"):
            response = await s3.get_object(**args)
            async with response["Body"] as body:
                while True:
                    data = await body.read(chunk)
                    if not data:
                        return
                    yield data

    async def _delete_keys(self, keys: list[str]) -> None:
        s3 = await self._s3()
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            with _errors("DeleteObjects"):
                if len(batch) == 1:
                    await s3.delete_object(Bucket=self.bucket, Key=batch[0])
                else:
                    result = await s3.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
                    failed = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                    if failed:
                        raise ObjectStoreError(f"object store: DeleteObjects failed: {failed[0]}")

    async def _list(self, prefix: str) -> AsyncIterator[str]:
        s3 = await self._s3()
        with _errors(f"LIST {prefix}"):
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield entry["Key"]

    async def _multipart_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads in progress under ``prefix``."""
        s3 = await self._s3()
        found: list[tuple[str, str]] = []
        with _errors(f"ListMultipartUploads {prefix}"):
            async for page in s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for upload in page.get("Uploads", []):
                    found.append((upload["Key"], upload["UploadId"]))
        return found

    async def _abort(self, key: str, upload_id: str) -> None:
        s3 = await self._s3()
        with _errors("AbortMultipartUpload"):
            try:
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if not _not_found(exc):
                    raise

    async def _copy(self, source: str, size: int, target: str, tail: tuple[str, int] | None = None) -> None:
        """Server-side copy of ``source`` (``size`` bytes), then ``tail`` (key, size), to ``target``.

        One ``CopyObject`` when the bytes fit in one copy part; otherwise a multipart upload of
        ``UploadPartCopy`` ranges, completed only when every part is in.
        """
        s3 = await self._s3()
        if tail is None and size <= self.options.copy_part_size:
            with _errors(f"COPY {source} -> {target}"):
                await s3.copy_object(
                    Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}
                )
            return
        pieces = [_Piece(source, a, b) for a, b in copy_ranges(size, self._copy_part_size(size))]
        if tail is not None:
            pieces.append(_Piece(tail[0], 0, tail[1] - 1, whole=True))
        with _errors(f"multipart COPY {source} -> {target}"):
            upload = (await s3.create_multipart_upload(Bucket=self.bucket, Key=target))["UploadId"]
            try:
                parts = await self._copy_parts(target, upload, pieces)
                await s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]},
                )
            except BaseException:
                await self._abort(target, upload)
                raise

    def _copy_part_size(self, size: int) -> int:
        """The configured copy part size, or larger where S3's part count would run out."""
        return min(
            max(self.options.copy_part_size, -(-size // (MAX_PARTS - 1))), MAX_COPY_SIZE - MIN_PART_SIZE
        )

    async def _copy_parts(self, target: str, upload: str, pieces: list[_Piece]) -> list[list[Any]]:
        """``UploadPartCopy`` each piece as parts 1.. of ``upload``, four at a time."""
        s3 = await self._s3()
        limit = asyncio.Semaphore(4)

        async def copy(number: int, piece: _Piece) -> list[Any]:
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": target,
                "UploadId": upload,
                "PartNumber": number,
                "CopySource": {"Bucket": self.bucket, "Key": piece.key},
            }
            if not piece.whole:
                args["CopySourceRange"] = f"bytes={piece.first}-{piece.last}"
            async with limit:
                result = await s3.upload_part_copy(**args)
            return [number, result["CopyPartResult"]["ETag"], piece.last - piece.first + 1]

        return list(await asyncio.gather(*(copy(i + 1, piece) for i, piece in enumerate(pieces))))

    # -- content ---------------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> int | None:
        head = await self._head(self._blob_key(digest))
        return None if head is None else int(head["ContentLength"])

    def local_path(self, digest: Digest) -> Path | None:
        return None

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        async for data in self._stream(self._blob_key(digest), offset, length):
            yield data

    async def read_all(self, digest: Digest) -> bytes:
        return await self._get(self._blob_key(digest))

    async def put(self, digest: Digest, data: bytes) -> None:
        s3 = await self._s3()
        with _errors(f"PUT {digest}"):
            await s3.put_object(Bucket=self.bucket, Key=self._blob_key(digest), Body=data)

    async def delete(self, digest: Digest) -> None:
        await self._delete_keys([self._blob_key(digest)])

    async def redirect_url(self, digest: Digest) -> str | None:
        if not self.options.redirect:
            return None
        await self._s3()
        assert self._presigner is not None
        with _errors("presign"):
            return await self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._blob_key(digest)},
                ExpiresIn=self.options.redirect_expiry_seconds,
            )

    async def iter_digests(self) -> AsyncIterator[Digest]:
        base = f"{self.prefix}blobs/"
        async for key in self._list(base):
            algorithm, _, rest = key[len(base) :].partition("/")
            _two, _, hex_ = rest.partition("/")
            if algorithm in ALGORITHMS and hex_ and "/" not in hex_:
                yield Digest(algorithm, hex_)

    async def age(self, digest: Digest) -> float | None:
        head = await self._head(self._blob_key(digest))
        return None if head is None else time.time() - head["LastModified"].timestamp()

    # -- staging -----------------------------------------------------------------------------------

    async def staging_open(self, session: UploadSession) -> _S3StagingWriter:
        staging = _Staging.of(session)
        if staging.size != session.offset:
            raise ObjectStoreError(
                f"upload {session.id}: recorded parts hold {staging.size} bytes, the session {session.offset}"
            )
        if staging.stale:
            # Superseded by the saved row this writer was handed: nothing refers to them now.
            await self._delete_keys(staging.stale)
            staging.stale = []
        tail = b""
        if staging.tail:
            tail = await self._get(self._tail_key(session.id, staging.gen))
            if len(tail) != staging.tail:
                raise ObjectStoreError(f"upload {session.id}: the tail object has {len(tail)} bytes")
        staging.store(session)
        return _S3StagingWriter(self, session, staging, tail)

    async def _upload_part(self, session: UploadSession, staging: _Staging, body: bytes) -> None:
        """Upload ``body`` as the next part (numbered after the recorded ones) and record it."""
        s3 = await self._s3()
        if len(staging.parts) >= self.max_parts - 1:
            await self._compact(session, staging)
        if staging.upload is None:
            with _errors("CreateMultipartUpload"):
                created = await s3.create_multipart_upload(Bucket=self.bucket, Key=self._data_key(session.id))
                staging.upload = created["UploadId"]
                await s3.put_object(
                    Bucket=self.bucket, Key=self._marker_key(session.id), Body=staging.upload.encode()
                )
        elif staging.sealed:
            await self._unseal(session, staging)

        async def upload_part() -> tuple[int, Any]:
            number = len(staging.parts) + 1
            assert staging.upload is not None  # opened above (or reopened by _unseal)
            part = await s3.upload_part(
                Bucket=self.bucket,
                Key=self._data_key(session.id),
                UploadId=staging.upload,
                PartNumber=number,
                Body=body,
            )
            return number, part

        with _errors(f"UploadPart {len(staging.parts) + 1}"):
            try:
                number, result = await upload_part()
            except ClientError as exc:
                if not _not_found(exc):
                    raise
                # The upload was completed by a commit that did not finish: reopen it.
                await self._seal(session, staging)
                await self._unseal(session, staging)
                number, result = await upload_part()
        staging.parts.append([number, result["ETag"], len(body)])

    async def _write_tail(self, session: UploadSession, staging: _Staging, data: bytes) -> None:
        """Store ``data`` as the session's tail, under a new generation (the old one goes stale)."""
        s3 = await self._s3()
        gen = staging.gen + 1
        with _errors("PUT tail"):
            await s3.put_object(Bucket=self.bucket, Key=self._tail_key(session.id, gen), Body=data)
        if staging.tail:
            staging.stale.append(self._tail_key(session.id, staging.gen))
        staging.gen, staging.tail = gen, len(data)

    async def _seal(self, session: UploadSession, staging: _Staging) -> None:
        """Complete the multipart upload into ``uploads/<id>/data`` (idempotent)."""
        if staging.sealed or not staging.parts:
            return
        s3 = await self._s3()
        key = self._data_key(session.id)
        with _errors("CompleteMultipartUpload"):
            try:
                await s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=staging.upload or "",
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in staging.parts]
                    },
                )
            except ClientError as exc:
                if not _not_found(exc):
                    raise
        # Completed now, or by an earlier commit that did not finish: the object must hold the parts.
        head = await self._head(key)
        if head is None or int(head["ContentLength"]) != staging.parts_size:
            raise ObjectStoreError(f"upload {session.id}: its multipart upload is gone")
        staging.sealed = True
        staging.store(session)

    async def _unseal(self, session: UploadSession, staging: _Staging) -> None:
        """Continue a sealed session: a fresh multipart upload whose first parts are server-side
        copies of the sealed object (also how a long part list is compacted)."""
        s3 = await self._s3()
        key = self._data_key(session.id)
        size = staging.parts_size
        pieces = [_Piece(key, a, b) for a, b in copy_ranges(size, self._copy_part_size(size))]
        with _errors("reopen multipart upload"):
            upload = (await s3.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]
            await s3.put_object(Bucket=self.bucket, Key=self._marker_key(session.id), Body=upload.encode())
            parts = await self._copy_parts(key, upload, pieces)
        staging.upload, staging.parts, staging.sealed = upload, parts, False
        staging.store(session)

    async def _compact(self, session: UploadSession, staging: _Staging) -> None:
        await self._seal(session, staging)
        await self._unseal(session, staging)

    async def staging_size(self, session: UploadSession) -> int | None:
        """The recorded size while the staging area is there; None once it is gone (committed)."""
        staging = _Staging.of(session)
        if staging.upload is not None and staging.parts:
            key = self._marker_key(session.id)
        elif staging.tail:
            key = self._tail_key(session.id, staging.gen)
        else:
            return 0 if session.offset == 0 else None
        return staging.size if await self._head(key) is not None else None

    async def staging_read(self, session: UploadSession) -> AsyncIterator[bytes]:
        """The staged bytes (sealing the multipart upload first: parts are not readable before)."""
        staging = _Staging.of(session)
        if staging.parts:
            await self._seal(session, staging)
            async for data in self._stream(self._data_key(session.id), 0, staging.parts_size, 8 * READ_SIZE):
                yield data
        if staging.tail:
            async for data in self._stream(self._tail_key(session.id, staging.gen), 0, staging.tail):
                yield data

    async def staging_commit(self, session: UploadSession, digest: Digest) -> None:
        staging = _Staging.of(session)
        target = self._blob_key(digest)
        tail_key = self._tail_key(session.id, staging.gen)
        if await self.stat(digest) != staging.size:
            # The same digest already stored is the same bytes: only a missing key needs the copy.
            if staging.parts:
                await self._seal(session, staging)
                tail = (tail_key, staging.tail) if staging.tail else None
                await self._copy(self._data_key(session.id), staging.parts_size, target, tail)
            elif staging.tail:
                await self._copy(tail_key, staging.tail, target)
            else:
                await self.put(digest, b"")
        # Staging is gone from the moment its first key is: remove that one first, so a crash
        # midway reads as "committed" (staging_size None) and never as half a staging area.
        if staging.parts:
            await self._delete_keys([self._marker_key(session.id)])
        elif staging.tail:
            await self._delete_keys([tail_key])
        await self.staging_delete(session)

    async def staging_delete(self, session: UploadSession) -> None:
        prefix = self._upload_prefix(session.id)
        staging = _Staging.of(session)
        uploads = set(await self._multipart_uploads(prefix))
        if staging.upload is not None and not staging.sealed:
            uploads.add((self._data_key(session.id), staging.upload))
        await asyncio.gather(*(self._abort(key, upload) for key, upload in uploads))
        keys = [key async for key in self._list(prefix)]
        await self._delete_keys(keys)

    async def staging_ids(self) -> list[str]:
        base = f"{self.prefix}uploads/"
        ids = {key[len(base) :].split("/", 1)[0] async for key in self._list(base)}
        ids.update(key[len(base) :].split("/", 1)[0] for key, _ in await self._multipart_uploads(base))
        return sorted(ids)
