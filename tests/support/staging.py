"""Looking into a test server's upload staging, whichever backend it runs on.

A few API tests check what a session left in storage (a staging file that appears, grows, or
goes). On the filesystem that is ``<data_dir>/uploads/<id>/``; on S3 it is the objects and
multipart uploads under ``<prefix>uploads/<id>/``, and "a PATCH holds the session" is its
PostgreSQL advisory lock. These helpers answer the same questions for both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.server import DockyardServer


def _env(server: DockyardServer, name: str) -> str | None:
    return server.env.get(f"DOCKYARD_{name}")


def on_s3(server: DockyardServer) -> bool:
    return _env(server, "STORAGE") == "s3"


def _s3(server: DockyardServer) -> Any:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=_env(server, "S3__ENDPOINT_URL"),
        region_name=_env(server, "S3__REGION"),
        aws_access_key_id=_env(server, "S3__ACCESS_KEY_ID"),
        aws_secret_access_key=_env(server, "S3__SECRET_ACCESS_KEY"),
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def _prefix(server: DockyardServer, upload_id: str) -> str:
    return f"{_env(server, 'S3__PREFIX') or ''}uploads/{upload_id}/"


def staging_exists(server: DockyardServer, upload_id: str) -> bool:
    """Whether anything is staged for the session (a directory, objects or a multipart upload)."""
    if not on_s3(server):
        return (server.data_dir / "uploads" / upload_id).exists()
    client, bucket, prefix = _s3(server), _env(server, "S3__BUCKET"), _prefix(server, upload_id)
    objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return bool(objects or uploads)


def staged_bytes(server: DockyardServer, upload_id: str) -> bytes | None:
    """The session's staged bytes when they can be read without the registry, else None.

    On S3 that is when they are all in the tail object (fewer bytes than one part)."""
    if not on_s3(server):
        return (server.data_dir / "uploads" / upload_id / "data").read_bytes()
    client, bucket, prefix = _s3(server), _env(server, "S3__BUCKET"), _prefix(server, upload_id)
    if client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads"):
        return None
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    tails = [k for k in keys if k.rsplit("/", 1)[1].startswith("tail-")]
    if not tails:
        return b""
    newest = max(tails, key=lambda k: int(k.rsplit("-", 1)[1]))
    data: bytes = client.get_object(Bucket=bucket, Key=newest)["Body"].read()
    return data


def staged_past(server: DockyardServer, upload_id: str, offset: int) -> bool:
    """Whether a PATCH in flight has put bytes into storage beyond ``offset`` (the recorded end).

    On S3 a streaming PATCH reaches storage a part at a time: a part uploaded is the sign."""
    if not on_s3(server):
        path = server.data_dir / "uploads" / upload_id / "data"
        return path.exists() and path.stat().st_size > offset
    client, bucket, prefix = _s3(server), _env(server, "S3__BUCKET"), _prefix(server, upload_id)
    for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        if parts.get("Parts"):
            return True
    return False


def session_writer_active(server: DockyardServer, upload_id: str) -> bool:
    """Whether a request holds the session's writer lock (a PATCH or PUT is streaming into it)."""
    url = _env(server, "DATABASE_URL")
    if url is None or not url.startswith("postgresql"):
        return (server.data_dir / "uploads" / upload_id / "data").exists()
    from dockyard.metadata.pglocks import lock_key

    key = lock_key("upload", upload_id) & 0xFFFF_FFFF_FFFF_FFFF

    async def held() -> bool:
        import asyncpg

        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = $1 AND objid = $2 AND objsubid = 1",
                key >> 32,
                key & 0xFFFF_FFFF,
            )
            return bool(count)
        finally:
            await conn.close()

    return asyncio.run(held())
