"""Is the bucket usable with the configured credentials? The S3 store's start-up and readiness
probe, and which of its failures are worth waiting out.

Final (waiting will not help; the node refuses to start): the store rejects the credentials
(``SignatureDoesNotMatch``, ``InvalidAccessKeyId``, ``AccessDenied`` and other ``403``s), the
bucket does not exist, the region is wrong, no credentials were found. Anything else —
connection refused or reset, a timeout, a ``5xx``, ``SlowDown`` — is a store that is not up
yet, and is retried.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from dockyard.registry.ports import DependencyDown

if TYPE_CHECKING:
    from dockyard.storage.s3 import S3BlobStore

_PROBE = b"dockyard start-up probe\n"
_WRONG_REGION = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)


def _endpoint(store: S3BlobStore) -> str:
    """Where the store is, for messages: host and port, never credentials or paths."""
    url = store.options.endpoint_url
    if not url:
        return f"AWS S3 ({store.options.region or 'default region'})"
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else url


def _cause(exc: BaseException) -> BaseException:
    """The client library's own exception behind our wrappers (``ObjectStoreError`` etc.)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BotoCoreError | ClientError | aiohttp.ClientError | TimeoutError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def classify(store: S3BlobStore, exc: BaseException) -> DependencyDown:
    """One line naming the setting to look at, and whether waiting can help."""
    bucket = store.bucket
    where = _endpoint(store)
    cause = _cause(exc)
    if isinstance(cause, NoCredentialsError | PartialCredentialsError):
        return DependencyDown(
            "s3.access_key_id",
            "no credentials for the object store (set s3.access_key_id and s3.secret_access_key, "
            "or the AWS_* environment)",
            final=True,
        )
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "SignatureDoesNotMatch":
            return DependencyDown(
                "s3.secret_access_key",
                f"credentials rejected by bucket {bucket} at {where} (the signature does not match: "
                "wrong secret key)",
                final=True,
            )
        if code in ("InvalidAccessKeyId", "InvalidToken", "InvalidClientTokenId"):
            return DependencyDown(
                "s3.access_key_id",
                f"credentials rejected by bucket {bucket} at {where} ({code}: unknown access key)",
                final=True,
            )
        if code == "NoSuchBucket" or (status == 404 and not code.startswith("NoSuchKey")):
            return DependencyDown("s3.bucket", f"bucket {bucket} does not exist at {where}", final=True)
        if code in _WRONG_REGION:
            return DependencyDown(
                "s3.region", f"bucket {bucket} at {where} is in another region ({code})", final=True
            )
        if status == 403 or code == "AccessDenied":
            return DependencyDown(
                "s3.access_key_id",
                f"access denied by bucket {bucket} at {where} ({code or status}): the credentials must "
                "list, read, write and delete objects under s3.prefix",
                final=True,
            )
        return DependencyDown(
            "s3.endpoint_url", f"the object store at {where} answered {status or '?'} {code}".rstrip()
        )
    if isinstance(cause, EndpointConnectionError | aiohttp.ClientError | ConnectionError | TimeoutError):
        return DependencyDown(
            "s3.endpoint_url", f"object store at {where} unreachable ({type(cause).__name__})"
        )
    return DependencyDown("s3.endpoint_url", f"object store at {where} failed: {type(cause).__name__}")


async def check_bucket(store: S3BlobStore, write: bool) -> None:
    """List under the prefix (the cheap probe); with ``write``, also put and delete an object
    there: what a node needs of its credentials. Raises ``DependencyDown``."""
    key = f"{store.prefix}probe/{uuid.uuid4().hex}"
    try:
        s3: Any = await store._s3()
        await s3.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}probe/", MaxKeys=1)
        if write:
            await s3.put_object(Bucket=store.bucket, Key=key, Body=_PROBE)
            await s3.delete_object(Bucket=store.bucket, Key=key)
    except DependencyDown:
        raise
    except Exception as exc:
        raise classify(store, exc) from exc
