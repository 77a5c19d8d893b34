"""Start-up: a node waits for what is not up yet (containers start in any order), refuses at once
what waiting cannot fix, and says in one line which setting to look at."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.lifecycle.support import (
    last_line,
    ready_status,
    refuses_connections,
    serve_once,
    wait_for,
)
from tests.support.api_helpers import api_client, push_blob
from tests.support.server import DockyardServer, free_port
from tests.support.services import PostgresServer, SharedBackends


def test_a_node_waits_for_postgresql_and_starts_when_it_comes_up(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.url("postgres").replace("postgres@", "postgres:not-a-real-password@")
    node = DockyardServer(
        tmp_path / "data",
        env={"DOCKYARD_DATABASE_URL": url, "DOCKYARD_STARTUP_WAIT_SECONDS": "600"},
    )
    node.launch()
    try:
        wait_for(lambda: "waiting for the database" in node.log(), "the node says what it waits for")
        line = next(line for line in node.log().splitlines() if "waiting for the database" in line)
        assert f"database_url: PostgreSQL at 127.0.0.1:{own_postgres.port}" in line
        assert "not-a-real-password" not in node.log()
        assert node.process is not None and node.process.poll() is None  # still waiting
        assert refuses_connections(node.port)  # nothing listens before the checks pass
        own_postgres.start()
        wait_for(lambda: ready_status(node) == 200, "the node starts once PostgreSQL is up")
        assert not list(node.data_dir.glob(".probe-*"))  # the start-up probe left nothing behind
        with api_client(node.url) as client:
            push_blob(client, "waited/blob", os.urandom(1000))
    finally:
        node.stop()


def test_a_node_gives_up_when_the_database_stays_down_and_names_the_setting(tmp_path: Path) -> None:
    db_port = free_port()  # nothing listens there
    url = f"postgresql://dockyard:s3cret-pw@127.0.0.1:{db_port}/registry"
    env = {"DOCKYARD_DATABASE_URL": url, "DOCKYARD_STARTUP_WAIT_SECONDS": "1"}
    code, output = serve_once(tmp_path / "data", env, free_port())
    assert code != 0
    line = last_line(output)
    assert line.startswith("Error: database_url: PostgreSQL at 127.0.0.1:")
    assert f":{db_port}" in line and "unreachable" in line and "startup_wait_seconds" in line
    assert "cannot listen" not in output
    assert "s3cret-pw" not in output


def test_a_schema_behind_with_auto_migrate_off_names_the_setting(tmp_path: Path) -> None:
    env = {"DOCKYARD_DATABASE_AUTO_MIGRATE": "false", "DOCKYARD_STARTUP_WAIT_SECONDS": "1"}
    code, output = serve_once(tmp_path / "data", env, free_port())
    assert code != 0
    line = last_line(output)
    assert line.startswith("Error: database_auto_migrate: the metadata schema is at revision None")
    assert "dockyard db upgrade" in line


@pytest.mark.parametrize(
    ("change", "setting", "words"),
    [
        ({"DOCKYARD_S3__SECRET_ACCESS_KEY": "wrong-secret"}, "s3.secret_access_key", "credentials rejected"),
        ({"DOCKYARD_S3__BUCKET": "no-such-bucket-here"}, "s3.bucket", "does not exist"),
    ],
)
def test_wrong_s3_settings_refuse_to_start_at_once_naming_the_setting(
    tmp_path: Path, shared_backends: SharedBackends, change: dict[str, str], setting: str, words: str
) -> None:
    env = {**shared_backends.server_env(), **change, "DOCKYARD_STARTUP_WAIT_SECONDS": "3600"}
    # It does not wait the hour: rejected credentials are final (the deadline only guards a hang).
    code, output = serve_once(tmp_path / "data", env, free_port(), timeout=300)
    assert code != 0
    line = last_line(output)
    assert line.startswith(f"Error: {setting}: "), output
    assert words in line
    bucket = env["DOCKYARD_S3__BUCKET"]
    assert f"bucket {bucket}" in line
    assert "wrong-secret" not in output and shared_backends.s3.secret_key not in output


def test_a_data_dir_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("a file where the data directory should be")
    code, output = serve_once(not_a_directory, {}, free_port())
    assert code != 0
    assert last_line(output).startswith(f"Error: data_dir: {not_a_directory} is not writable")


def test_only_an_address_in_use_says_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, output = serve_once(tmp_path / "data", {}, port)
    assert code != 0
    assert last_line(output) == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_database_that_does_not_exist_refuses_to_start_at_once(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    env = {"DOCKYARD_DATABASE_URL": postgres.url("no_such_database"), "DOCKYARD_STARTUP_WAIT_SECONDS": "3600"}
    code, output = serve_once(tmp_path / "data", env, free_port(), timeout=300)  # not the hour
    assert code != 0
    line = last_line(output)
    assert line.startswith(f"Error: database_url: PostgreSQL at 127.0.0.1:{postgres.port}"), output
    assert "the database does not exist (SQLSTATE 3D000)" in line
