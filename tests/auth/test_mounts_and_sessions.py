"""Cross-repository mounts and upload sessions under access control.

A mount takes a blob only from a repository the client may pull (spec: a registry that cannot
mount answers 202 with an ordinary upload session); an upload session belongs to the repository
and the identity that opened it: anyone else, or any other repository's URL, finds no session.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from tests.auth.conftest import AuthMode
from tests.auth.support import assert_challenge, assert_denied, comparable, unique
from tests.support.api_helpers import (
    ExpectingClient,
    assert_error,
    assert_raw_error,
    digest_of,
    open_session,
    push_blob,
    session_offset,
)
from tests.support.server import DockyardServer

AsUser = Callable[[str | None], httpx.Client]
Clients = Callable[[AuthMode, str | None], httpx.Client]


def mount(client: httpx.Client, target: str, digest: str, source: str | None = None) -> httpx.Response:
    params = {"mount": digest} if source is None else {"mount": digest, "from": source}
    return client.post(f"/v2/{target}/blobs/uploads/", params=params)


def assert_not_mounted(response: httpx.Response, client: httpx.Client, target: str, digest: str) -> None:
    """202 with an ordinary, empty upload session, and the blob still unknown to ``target``."""
    assert response.status_code == 202, (response.status_code, response.text)
    location = response.headers["location"]
    assert location.startswith(f"/v2/{target}/blobs/uploads/")
    assert response.headers["docker-upload-uuid"] == location.rsplit("/", 1)[1]
    assert session_offset(client, location) == 0
    assert_error(client.get(f"/v2/{target}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.delete(location).status_code == 204


def assert_mounted(response: httpx.Response, client: httpx.Client, target: str, blob: bytes) -> None:
    digest = digest_of(blob)
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers["location"] == f"/v2/{target}/blobs/{digest}"
    assert response.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/{target}/blobs/{digest}").content == blob


# -- mounts ------------------------------------------------------------------------------------------------


def test_mount_from_a_repository_the_caller_may_not_pull_opens_a_plain_session(
    mode: AuthMode, as_user: AsUser
) -> None:
    source, target = unique("private"), unique("team")
    alice, bob = as_user("alice"), as_user("bob")
    blob = f"private layer of {source}".encode()
    digest = push_blob(alice, source, blob)

    assert_not_mounted(mount(bob, target, digest, source), bob, target, digest)
    # A source that does not exist reads the same.
    assert_not_mounted(mount(bob, target, digest, unique("private")), bob, target, digest)

    # alice may pull the source and push the target: the blob is mounted, and bob sees it there.
    assert_mounted(mount(alice, target, digest, source), bob, target, blob)


def test_mount_from_a_readable_repository_links_the_blob(mode: AuthMode, as_user: AsUser) -> None:
    source, target = unique("public"), unique("team")
    blob = f"public layer of {source}".encode()
    push_blob(as_user("alice"), source, blob)
    bob = as_user("bob")

    assert_mounted(mount(bob, target, digest_of(blob), source), bob, target, blob)


def test_mount_without_from_takes_the_blob_only_from_a_repository_the_caller_may_read(
    mode: AuthMode, as_user: AsUser
) -> None:
    private, public, target = unique("private"), unique("public"), unique("team")
    alice, bob = as_user("alice"), as_user("bob")
    blob = f"layer first private, then public, {target}".encode()
    digest = push_blob(alice, private, blob)

    assert_not_mounted(mount(bob, target, digest), bob, target, digest)

    push_blob(alice, public, blob)
    assert_mounted(mount(bob, target, digest), bob, target, blob)


def test_mount_into_a_repository_without_push_is_refused(mode: AuthMode, as_user: AsUser) -> None:
    """carol may pull private/ (group readers) but not push there, mount or not."""
    source, target = unique("private"), unique("private")
    digest = push_blob(as_user("alice"), source, f"layer of {source}".encode())
    carol = as_user("carol")

    assert_denied(mount(carol, target, digest, source), mode.name, target, "push")
    assert_error(as_user("alice").get(f"/v2/{target}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


# -- upload sessions -------------------------------------------------------------------------------------


def test_an_upload_session_cannot_be_used_by_another_user(mode: AuthMode, as_user: AsUser) -> None:
    """bob (same group, same rights) and root (an admin) find no session alice opened."""
    repo = unique("team")
    alice = as_user("alice")
    location = open_session(alice, repo)
    first = alice.patch(location, content=b"abcd")
    assert (first.status_code, first.headers["range"]) == (202, "0-3")

    upload_id = location.rsplit("/", 1)[1]
    unknown_id = str(uuid.uuid4())
    for thief in (as_user("bob"), as_user("root")):
        # What a thief sees is what anyone sees of a session that does not exist.
        assert comparable(thief.get(location), upload_id) == comparable(
            thief.get(location.replace(upload_id, unknown_id)), unknown_id
        )
        for response in (
            thief.get(location),
            thief.patch(location, content=b"EVIL", headers={"Content-Range": "4-7"}),
            thief.patch(location, content=b"EVIL"),
            thief.put(location, params={"digest": digest_of(b"abcdEVIL")}, content=b"EVIL"),
            thief.put(location, params={"digest": digest_of(b"abcd")}),
            thief.delete(location),
        ):
            entry = assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
            assert "location" not in response.headers and "range" not in response.headers, entry
        # Not even a trace of what was sent.
        assert_error(thief.get(f"/v2/{repo}/blobs/{digest_of(b'abcdEVIL')}"), 404, "BLOB_UNKNOWN")
        assert_error(thief.get(f"/v2/{repo}/blobs/{digest_of(b'abcd')}"), 404, "BLOB_UNKNOWN")

    assert session_offset(alice, location) == 4
    done = alice.put(location, params={"digest": digest_of(b"abcdefgh")}, content=b"efgh")
    assert done.status_code == 201, done.text
    assert as_user("bob").get(f"/v2/{repo}/blobs/{digest_of(b'abcdefgh')}").content == b"abcdefgh"
    assert_error(alice.get(location), 404, "BLOB_UPLOAD_UNKNOWN")

    if mode.has_anonymous:
        with mode.raw() as anonymous:
            again = open_session(alice, repo)
            assert_challenge(anonymous.get(again), mode.name, f"repository:{repo}:pull,push")
            assert_challenge(anonymous.delete(again), mode.name, f"repository:{repo}:pull,push")
            assert session_offset(alice, again) == 0


def test_an_upload_session_cannot_be_used_through_another_repository(
    any_mode: AuthMode, clients: Clients
) -> None:
    """Also without access control: a session lives at one repository's URL."""
    user = None if any_mode.name == "none" else "alice"
    repo, other = unique("team"), unique("team")
    client = clients(any_mode, user)
    location = open_session(client, repo)
    assert client.patch(location, content=b"abcd").status_code == 202
    elsewhere = f"/v2/{other}/blobs/uploads/{location.rsplit('/', 1)[1]}"

    for response in (
        client.get(elsewhere),
        client.patch(elsewhere, content=b"EVIL", headers={"Content-Range": "4-7"}),
        client.put(elsewhere, params={"digest": digest_of(b"abcdEVIL")}, content=b"EVIL"),
        client.put(elsewhere, params={"digest": digest_of(b"abcd")}),
        client.delete(elsewhere),
    ):
        assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")

    assert session_offset(client, location) == 4
    assert client.put(location, params={"digest": digest_of(b"abcd")}).status_code == 201
    assert_error(client.get(f"/v2/{other}/blobs/{digest_of(b'abcd')}"), 404, "BLOB_UNKNOWN")
    assert client.get(f"/v2/{repo}/blobs/{digest_of(b'abcd')}").content == b"abcd"


def test_a_push_without_credentials_is_challenged_before_its_body(basic_server: DockyardServer) -> None:
    """With ``Expect: 100-continue`` the 401 comes first: a client does not send a layer only to
    learn it must log in."""
    connection = ExpectingClient("127.0.0.1", basic_server.port, timeout=5.0)
    try:
        target = f"/v2/{unique('expect')}/blobs/uploads/?digest={digest_of(b'x' * 4096)}"
        connection.send_head("POST", target, {"Content-Length": "4096"})
        response = connection.read_response("POST")  # no byte of the body was sent
    finally:
        connection.close()
    assert_raw_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == 'Basic realm="dockyard"'
    assert response.headers["connection"].lower() == "close"
