"""Which failures of a dependency are a 503 (it may work later) and which stay what they are
(the request was wrong, or we are): the adapters' classifiers, fed the drivers' real errors."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError
from sqlalchemy import exc as sa_exc

from dockyard.metadata.faults import database_faults, is_database_fault
from dockyard.registry.errors import DependencyUnavailable
from dockyard.storage.s3 import ObjectStoreError, _errors, _unavailable


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "error",
    [
        _client_error("SlowDown", 503),
        _client_error("InternalError", 500),
        _client_error("TooManyRequests", 429),
        _client_error("AccessDenied", 403),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError(),
    ],
)
def test_the_object_store_out_of_reach_or_failing_is_unavailable(error: Exception) -> None:
    assert _unavailable(error)
    with pytest.raises(DependencyUnavailable) as caught, _errors("PUT x"):
        raise error
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]


@pytest.mark.parametrize(
    "error",
    [
        _client_error("InvalidPart", 400),
        _client_error("EntityTooSmall", 400),
        ParamValidationError(report="x"),
    ],
)
def test_a_request_the_object_store_rejects_is_not_unavailable(error: Exception) -> None:
    assert not _unavailable(error)
    with pytest.raises(ObjectStoreError), _errors("PUT x"):
        raise error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        ConnectionResetError(),
        TimeoutError(),
        sa_exc.TimeoutError("QueuePool limit reached"),
        sa_exc.OperationalError("SELECT 1", {}, _PgError("57P01")),  # admin_shutdown
        sa_exc.OperationalError("SELECT 1", {}, _PgError("57P03")),  # cannot_connect_now
        sa_exc.OperationalError("SELECT 1", {}, _PgError("08006")),  # connection_failure
        sa_exc.OperationalError("SELECT 1", {}, _PgError("57014")),  # query_canceled (timeout)
        sa_exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")),
        sa_exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("disk I/O error")),
        sa_exc.InterfaceError("SELECT 1", {}, Exception("connection is closed")),
    ],
)
def test_the_database_away_is_unavailable(error: Exception) -> None:
    assert is_database_fault(error)
    with pytest.raises(DependencyUnavailable) as caught, database_faults():
        raise error
    assert caught.value.status == 503 and caught.value.body()["errors"][0]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    "error",
    [
        sa_exc.IntegrityError("INSERT", {}, _PgError("23505")),  # unique_violation: our bug
        sa_exc.OperationalError("INSERT", {}, _PgError("53100")),  # disk_full: the write path's 507
        sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")),
        sa_exc.ProgrammingError("SELEC 1", {}, _PgError("42601")),  # syntax_error: our bug
        ValueError("not a database fault"),
    ],
)
def test_our_own_mistakes_and_a_full_disk_are_not_unavailable(error: Exception) -> None:
    assert not is_database_fault(error)
    with pytest.raises(type(error)), database_faults():
        raise error
