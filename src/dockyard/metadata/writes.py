"""The push path's write transactions, each a function of a synchronous ``Connection``: on SQLite
the writer thread runs them (``sqlitewriter.py``), on PostgreSQL ``AsyncConnection.run_sync``.

Their statements are built once with bind parameters. On SQLite each runs as its SQL text,
compiled once, straight to the driver: SQLAlchemy's per-execution work (cache key, compile
lookup) cost more than the statement itself, on the thread that shares the GIL with the event
loop. PostgreSQL gets the same statements through SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, CursorResult, bindparam, delete, func, select, update
from sqlalchemy.dialects import sqlite

from dockyard.metadata import schema as s
from dockyard.metadata.outbox import Outbox
from dockyard.registry import errors
from dockyard.registry.ports import ManifestRecord, ManifestRef, UploadSession

_SQLITE_NAMED = sqlite.dialect(paramstyle="named")


class Statement:
    """One statement, for both dialects: ``build(insert)`` gets the dialect's ``insert``. The
    PostgreSQL one is built at its first use: a SQLite server never imports that dialect
    (~2 MiB a worker)."""

    def __init__(self, build: Callable[[Callable[[Any], Any]], Any]) -> None:
        self._build = build
        self._sqlite = str(build(sqlite.insert).compile(dialect=_SQLITE_NAMED))
        self._other: Any = None

    def __call__(self, conn: Connection, params: dict[str, Any] | list[dict[str, Any]]) -> CursorResult[Any]:
        named = [_named(p) for p in params] if isinstance(params, list) else _named(params)
        if conn.dialect.name == "sqlite":
            return conn.exec_driver_sql(self._sqlite, named)
        if self._other is None:
            from sqlalchemy.dialects import postgresql

            self._other = self._build(postgresql.insert)
        return conn.execute(self._other, named)


def _p(name: str) -> Any:
    # (an INSERT's or UPDATE's bind parameter may not share a column's name)
    return bindparam(f"p_{name}")


def _named(params: dict[str, Any]) -> dict[str, Any]:
    return {f"p_{key}": value for key, value in params.items()}


_ENSURE_REPOSITORY = Statement(
    lambda insert: (
        insert(s.repositories).values(name=_p("repository"), created_at=_p("now")).on_conflict_do_nothing()
    )
)
_RECORD_BLOB = Statement(
    lambda insert: (
        insert(s.blobs)
        .values(digest=_p("digest"), size=_p("size"), created_at=_p("now"))
        # row-locks an existing record (see put_manifest and forget_blob)
        .on_conflict_do_update(index_elements=[s.blobs.c.digest], set_={"size": s.blobs.c.size})
    )
)
_LINK = Statement(
    lambda insert: (
        insert(s.repository_blobs)
        .values(repository=_p("repository"), digest=_p("digest"), created_at=_p("now"))
        .on_conflict_do_update(
            index_elements=[s.repository_blobs.c.repository, s.repository_blobs.c.digest],
            set_={"created_at": _p("now")},
        )
    )
)
_END_UPLOAD = Statement(lambda _: delete(s.uploads).where(s.uploads.c.id == _p("upload_id")))
_TOUCH_LINK = Statement(
    lambda _: (
        update(s.repository_blobs)
        .where(
            s.repository_blobs.c.repository == _p("repository"), s.repository_blobs.c.digest == _p("digest")
        )
        .values(created_at=_p("now"))
    )
)
_COUNT_MANIFEST = Statement(
    lambda _: select(func.count()).where(
        s.manifests.c.repository == _p("repository"), s.manifests.c.digest == _p("digest")
    )
)
_RECORD_MANIFEST = Statement(
    lambda insert: (
        insert(s.manifests)
        .values(
            repository=_p("repository"),
            digest=_p("digest"),
            media_type=_p("media_type"),
            size=_p("size"),
            artifact_type=_p("artifact_type"),
            subject=_p("subject"),
            annotations=_p("annotations"),
            created_at=_p("now"),
        )
        # A no-op update rather than "do nothing": it row-locks an existing manifest, so a concurrent
        # delete_manifest runs wholly before this push (which then inserts it anew) or wholly after
        # it (and so also removes the tags set here), never between.
        .on_conflict_do_update(
            index_elements=[s.manifests.c.repository, s.manifests.c.digest], set_={"size": s.manifests.c.size}
        )
    )
)
_RECORD_REF = Statement(
    lambda insert: (
        insert(s.manifest_refs)
        .values(repository=_p("repository"), manifest=_p("manifest"), digest=_p("digest"), kind=_p("kind"))
        .on_conflict_do_nothing()
    )
)
_SET_TAG = Statement(
    lambda insert: (
        insert(s.tags)
        .values(repository=_p("repository"), name=_p("tag"), digest=_p("digest"), updated_at=_p("now"))
        .on_conflict_do_update(
            index_elements=[s.tags.c.repository, s.tags.c.name],
            set_={"digest": _p("digest"), "updated_at": _p("now")},
        )
    )
)
_DELETE_TAG = Statement(
    lambda _: (
        delete(s.tags)
        .where(s.tags.c.repository == _p("repository"), s.tags.c.name == _p("tag"))
        .returning(s.tags.c.digest)
    )
)
_CREATE_UPLOAD = Statement(
    lambda _: s.uploads.insert().values(
        id=_p("id"),
        repository=_p("repository"),
        staged_bytes=_p("staged_bytes"),
        algorithm=_p("algorithm"),
        created_at=_p("created_at"),
        updated_at=_p("updated_at"),
        owner=_p("owner"),
        backend_state=_p("backend_state"),
    )
)


def link_blob(
    conn: Connection,
    repository: str,
    digest: str,
    size: int,
    now: float,
    outbox: Outbox | None = None,
    mounted_from: str | None = None,
    ending_upload: str | None = None,
) -> None:
    """Record the blob and link it. A link made again (re-upload, mount) counts as fresh:
    garbage collection measures its grace period from the last time the link was made or used."""
    _ENSURE_REPOSITORY(conn, {"repository": repository, "now": now})
    _RECORD_BLOB(conn, {"digest": digest, "size": size, "now": now})
    _LINK(conn, {"repository": repository, "digest": digest, "now": now})
    if outbox is not None:
        outbox.blob_mounted(conn, repository, digest, size, mounted_from)
    if ending_upload is not None:
        _END_UPLOAD(conn, {"upload_id": ending_upload})


def put_manifest(
    conn: Connection,
    repository: str,
    record: ManifestRecord,
    refs: Sequence[ManifestRef],
    tags: Sequence[str],
    now: float,
    outbox: Outbox | None,
) -> None:
    digest = str(record.digest)
    _ENSURE_REPOSITORY(conn, {"repository": repository, "now": now})
    _check_refs_still_there(conn, repository, refs, now)
    _RECORD_MANIFEST(
        conn,
        {
            "repository": repository,
            "digest": digest,
            "media_type": record.media_type,
            "size": record.size,
            "artifact_type": record.artifact_type,
            "subject": str(record.subject) if record.subject else None,
            "annotations": json.dumps(record.annotations) if record.annotations else None,
            "now": now,
        },
    )
    if refs:
        _RECORD_REF(
            conn,
            [
                {"repository": repository, "manifest": digest, "digest": str(r.digest), "kind": r.kind}
                for r in refs
            ],
        )
    for tag in tags:
        _SET_TAG(conn, {"repository": repository, "tag": tag, "digest": digest, "now": now})
    if outbox is not None:
        outbox.manifest_pushed(conn, repository, record, tags)


def _check_refs_still_there(
    conn: Connection, repository: str, refs: Sequence[ManifestRef], now: float
) -> None:
    """Inside the manifest's transaction: what it needs is (still) there. Touching the links
    also tells garbage collection they are in use, so a collection cannot race the push."""
    for r in refs:
        if not r.required:
            continue
        params = {"repository": repository, "digest": str(r.digest), "now": now}
        if r.kind == "blob":
            if not _TOUCH_LINK(conn, params).rowcount:
                raise errors.RegistryError(
                    errors.MANIFEST_BLOB_UNKNOWN,
                    message="a blob the manifest references is not in the repository",
                )
        elif r.kind == "manifest" and not _COUNT_MANIFEST(conn, params).scalar():
            raise errors.RegistryError(
                errors.MANIFEST_BLOB_UNKNOWN,
                message="a manifest the index references is not in the repository",
            )


def delete_tag(conn: Connection, repository: str, tag: str, outbox: Outbox | None) -> bool:
    digest = _DELETE_TAG(conn, {"repository": repository, "tag": tag}).scalar()
    if digest is not None and outbox is not None:
        outbox.tag_deleted(conn, repository, tag, digest)
    return digest is not None


def create_upload(conn: Connection, session: UploadSession) -> None:
    _CREATE_UPLOAD(
        conn,
        {
            "id": session.id,
            "repository": session.repository,
            "staged_bytes": session.offset,
            "algorithm": session.algorithm,
            "created_at": session.created_at,
            "updated_at": session.updated_at,
            "owner": session.owner,
            "backend_state": json.dumps(session.backend_state),
        },
    )


def end_upload(conn: Connection, upload_id: str) -> None:
    _END_UPLOAD(conn, {"upload_id": upload_id})
