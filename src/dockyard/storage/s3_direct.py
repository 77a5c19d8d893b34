"""Direct-to-bucket uploads on S3 (docs/direct-uploads.md): the client ``PUT``s the parts.

A direct session is an ordinary S3 staging area (``storage/s3.py``) whose multipart upload at
``uploads/<session id>/data`` is fed by the client through pre-signed ``UploadPart`` URLs
instead of by the registry. Its row records the upload id and ``direct`` in
``session.backend_state``; the parts are never recorded: the store's ``ListParts`` answer is
the only account of them the registry trusts.

Each URL is signed for one part number of one upload, with its ``Content-Length`` among the
signed headers (a body of another size is refused by the store), for
``url_expiry_seconds``. ``complete`` joins the listed parts into ``uploads/<id>/data`` and leaves
the row in the shape of a sealed ordinary session, so the registry's digest check
(``staging_read``, the one read of the object) and publishing (``staging_commit``, a server-side
copy) are the ordinary ones; a wrong digest removes the session's keys like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from dockyard.registry.ports import PartUrl, StoredPart, UploadSession
from dockyard.storage.s3 import (
    MAX_COPY_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    ObjectStoreError,
    _errors,
    _not_found,
    _Staging,
)

if TYPE_CHECKING:
    from dockyard.storage.s3 import S3BlobStore

KIND = "s3-multipart"
MAX_OBJECT_SIZE = 5 * (1 << 40)  # S3's largest object


class S3DirectUploads:
    """The ``DirectUploads`` port on an ``S3BlobStore``."""

    kind = KIND
    min_part_size = MIN_PART_SIZE
    max_part_size = MAX_COPY_SIZE  # 5 GiB, S3's largest part
    max_parts = MAX_PARTS

    def __init__(self, store: S3BlobStore, url_expiry_seconds: int, max_size: int = MAX_OBJECT_SIZE) -> None:
        self._store = store
        self.url_expiry_seconds = url_expiry_seconds
        self.max_size = min(max_size, MAX_OBJECT_SIZE)

    def is_direct(self, session: UploadSession) -> bool:
        return session.backend_state.get("direct") == KIND

    def is_completed(self, session: UploadSession) -> bool:
        return self.is_direct(session) and bool(session.backend_state.get("sealed"))

    async def open(self, session: UploadSession) -> None:
        store = self._store
        s3 = await store._s3()
        with _errors("CreateMultipartUpload"):
            created = await s3.create_multipart_upload(Bucket=store.bucket, Key=store._data_key(session.id))
            upload = created["UploadId"]
            # The marker, as for an ordinary session: staging_size sees the staging area by it.
            await s3.put_object(Bucket=store.bucket, Key=store._marker_key(session.id), Body=upload.encode())
        _Staging(upload=upload).store(session)
        session.backend_state["direct"] = KIND

    def _upload_id(self, session: UploadSession) -> str:
        upload = session.backend_state.get("upload")
        if not self.is_direct(session) or not isinstance(upload, str):
            raise ObjectStoreError(f"upload {session.id} is not a direct upload")
        return upload

    async def part_urls(self, session: UploadSession, parts: Sequence[StoredPart]) -> list[PartUrl]:
        store = self._store
        upload = self._upload_id(session)
        await store._s3()
        presigner = store._presigner
        assert presigner is not None  # made with the client
        urls = []
        with _errors("presign UploadPart"):
            for part in parts:
                url = await presigner.generate_presigned_url(
                    "upload_part",
                    Params={
                        "Bucket": store.bucket,
                        "Key": store._data_key(session.id),
                        "UploadId": upload,
                        "PartNumber": part.number,
                        # Signed: the store refuses a body of any other length.
                        "ContentLength": part.size,
                    },
                    ExpiresIn=self.url_expiry_seconds,
                )
                urls.append(PartUrl(part.number, part.size, url, {"Content-Length": str(part.size)}))
        return urls

    async def list_parts(self, session: UploadSession) -> list[StoredPart] | None:
        store = self._store
        upload = self._upload_id(session)
        s3 = await store._s3()
        found: dict[int, tuple[Any, StoredPart]] = {}
        with _errors("ListParts"):
            try:
                async for page in s3.get_paginator("list_parts").paginate(
                    Bucket=store.bucket, Key=store._data_key(session.id), UploadId=upload
                ):
                    for p in page.get("Parts", []):
                        part = StoredPart(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                        # A part uploaded again replaces the earlier one. S3 lists only the
                        # newest; SeaweedFS lists both, the newest last (and never earlier).
                        # Their times have whole seconds: two in one second cannot be told apart.
                        seen = found.get(part.number)
                        when = p.get("LastModified")
                        if seen is None or when > seen[0]:
                            found[part.number] = (when, part)
                        elif when == seen[0] and part.etag != seen[1].etag:
                            found[part.number] = (when, replace(part, ambiguous=True))
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise
        return [found[n][1] for n in sorted(found)]

    async def complete(self, session: UploadSession, parts: Sequence[StoredPart] | None) -> int:
        store = self._store
        upload = self._upload_id(session)
        key = store._data_key(session.id)
        s3 = await store._s3()
        staging = _Staging.of(session)
        if parts:
            with _errors("CompleteMultipartUpload"):
                try:
                    await s3.complete_multipart_upload(
                        Bucket=store.bucket,
                        Key=key,
                        UploadId=upload,
                        MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
                    )
                except ClientError as exc:
                    if not _not_found(exc):
                        raise
            staging.parts = [[p.number, p.etag, p.size] for p in parts]
        head = await store._head(key)
        if head is None:
            raise ObjectStoreError(f"upload {session.id}: its multipart upload is gone")
        size = int(head["ContentLength"])
        if parts and size != sum(p.size for p in parts):
            raise ObjectStoreError(f"upload {session.id}: the completed object has {size} bytes")
        if not parts:
            # Completed by an earlier request that did not finish: the object is the one part.
            staging.parts = [[1, str(head.get("ETag", "")), size]]
        staging.sealed = True
        staging.store(session)
        session.backend_state["direct"] = KIND
        return size
