"""Passwords: failed logins are rate-limited, secrets never reach the log, and ``dockyard user``
manages the htpasswd file that a running server rereads."""

from __future__ import annotations

import base64
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.auth.support import (
    PASSWORDS,
    SERVICE,
    BearerFlow,
    assert_challenge,
    dockyard_cli,
    start_auth_server,
    unique,
    write_htpasswd,
)
from tests.support.api_helpers import assert_error, push_image
from tests.support.server import DockyardServer

HTPASSWD_LINE = re.compile(r"^(?P<name>[^:]+):(?P<hash>\$2y\$10\$[./A-Za-z0-9]{53})$")


def client_from(server: DockyardServer, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z is this machine)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, timeout=30.0)


def creds(user: str) -> tuple[str, str]:
    return user, PASSWORDS[user]


def assert_too_many(response: httpx.Response) -> None:
    assert_error(response, 429, "TOOMANYREQUESTS")
    assert 1 <= int(response.headers["retry-after"]) <= 61, response.headers


# -- rate limits ---------------------------------------------------------------------------------------


def test_failed_logins_block_the_address_and_the_user_even_with_the_right_password(data_dir: Path) -> None:
    server = start_auth_server(data_dir, "basic", max_failed_logins=3)
    try:
        with client_from(server, "127.0.0.2") as first, client_from(server, "127.0.0.3") as second:
            assert first.get("/v2/", auth=creds("alice")).status_code == 200
            for _ in range(3):
                assert_challenge(first.get("/v2/", auth=("alice", "guess-1234")), "basic", None)

            assert_too_many(first.get("/v2/", auth=creds("alice")))  # the address and the user
            assert_too_many(first.get("/v2/", auth=creds("bob")))  # the address
            assert_too_many(second.get("/v2/", auth=creds("alice")))  # the user
            assert second.get("/v2/", auth=creds("bob")).status_code == 200  # neither
            # A request without credentials is no login: the challenge, not 429.
            assert_challenge(first.get("/v2/"), "basic", None)
    finally:
        server.stop()


def test_failed_logins_at_the_token_endpoint_are_limited_too(data_dir: Path) -> None:
    server = start_auth_server(data_dir, "token", max_failed_logins=3)
    try:
        with client_from(server, "127.0.0.2") as first, client_from(server, "127.0.0.3") as second:
            for _ in range(3):
                form = {"grant_type": "password", "username": "bob", "password": "guess", "service": SERVICE}
                assert first.post("/auth/token", data=form).status_code == 401

            assert_too_many(first.get("/auth/token", params={"service": SERVICE}, auth=creds("bob")))
            assert_too_many(second.get("/auth/token", params={"service": SERVICE}, auth=creds("bob")))
            assert_too_many(first.get("/auth/token", params={"service": SERVICE}, auth=creds("carol")))
            assert (
                second.get("/auth/token", params={"service": SERVICE}, auth=creds("carol")).status_code == 200
            )
    finally:
        server.stop()


def test_the_failed_login_limit_holds_across_worker_processes(data_dir: Path) -> None:
    """max_failed_logins is per address per minute for the server, however many workers it runs."""
    server = start_auth_server(data_dir, "basic", max_failed_logins=3, workers=2)
    try:
        with client_from(server, "127.0.0.2") as client:
            close = {"Connection": "close"}  # each request on a new connection, to whichever worker
            for _ in range(3):
                assert client.get("/v2/", auth=("alice", "guess"), headers=close).status_code == 401
            for _ in range(8):
                assert_too_many(client.get("/v2/", auth=creds("alice"), headers=close))
    finally:
        server.stop()


def test_basic_auth_from_the_environment_without_rules_lets_every_user_do_everything(data_dir: Path) -> None:
    """``DOCKYARD_AUTH__MODE=basic`` and no ``access`` rules: users may do anything, anonymous nothing."""
    write_htpasswd(data_dir / "auth" / "htpasswd")
    server = DockyardServer(data_dir, env={"DOCKYARD_AUTH__MODE": "basic"}, ready_statuses=(401,)).start()
    try:
        repo = unique("private")
        with httpx.Client(base_url=server.url, auth=creds("bob"), timeout=30.0) as bob:
            image = push_image(bob, repo, "v1", seed=repo)
            assert repo in bob.get("/v2/_catalog").json()["repositories"]
        with httpx.Client(base_url=server.url, auth=creds("carol"), timeout=30.0) as carol:
            assert carol.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
        assert_challenge(httpx.get(f"{server.url}/v2/{repo}/tags/list"), "basic", None)
    finally:
        server.stop()


# -- the log ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_passwords_and_tokens_never_reach_the_log(data_dir: Path, mode: str) -> None:
    wrong = f"wrong-Pw-{uuid.uuid4().hex[:8]}"
    server = start_auth_server(
        data_dir, mode, env={"DOCKYARD_LOG_LEVEL": "debug", "DOCKYARD_ACCESS_LOG": "true"}
    )
    secrets = [*PASSWORDS.values(), wrong]
    try:
        repo = unique("private")
        if mode == "basic":
            with httpx.Client(base_url=server.url, auth=creds("alice"), timeout=30.0) as alice:
                push_image(alice, repo, "v1", seed=repo)
            for user in ("bob", "carol"):
                httpx.get(f"{server.url}/v2/{repo}/manifests/v1", auth=creds(user))
            httpx.get(f"{server.url}/v2/", auth=("alice", wrong))
        else:
            flow = BearerFlow("alice")
            with httpx.Client(base_url=server.url, auth=flow, timeout=30.0) as alice:
                push_image(alice, repo, "v1", seed=repo)
            assert flow.last_token
            secrets.append(flow.last_token)
            url = f"{server.url}/auth/token"
            answer = httpx.get(url, params={"offline_token": "true"}, auth=creds("bob")).json()
            secrets += [answer["token"], answer["refresh_token"]]
            form = {"grant_type": "password", "username": "carol", "password": PASSWORDS["carol"]}
            answer = httpx.post(url, data={**form, "access_type": "offline"}).json()
            secrets += [answer["access_token"], answer["refresh_token"]]
            answer = httpx.post(
                url, data={"grant_type": "refresh_token", "refresh_token": answer["refresh_token"]}
            )
            secrets.append(answer.json()["access_token"])
            httpx.post(url, data={**form, "password": wrong})
            httpx.get(url, auth=("alice", wrong))
            forged = flow.last_token[:-8] + "AAAAAAAA"
            secrets.append(forged)
            httpx.get(f"{server.url}/v2/", headers={"Authorization": f"Bearer {forged}"})
    finally:
        server.stop()

    log = server.log()
    assert "failed login" in log and "aiohttp.access" in log, log[-2000:]
    encoded = [
        base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in [*PASSWORDS.items(), ("alice", wrong)]
    ]
    for secret in [*secrets, *encoded]:
        assert secret not in log, f"a secret is in the log: {secret[:12]}..."
    for token in secrets[len(PASSWORDS) + 1 :]:  # nor the signature part of any token
        assert token.rsplit(".", 1)[-1] not in log


# -- dockyard user add | remove | list ------------------------------------------------------------------


def test_user_add_list_remove_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = dockyard_cli(
        "user", "add", "alice", "--password", "pw-of-alice-123", "--data-dir", str(data), process=True
    )
    dockyard_cli("user", "add", "bob", "--password", "pw-of-bob-456", "--data-dir", str(data))
    path = data / "auth" / "htpasswd"

    assert "pw-of-alice-123" not in added.stdout + added.stderr
    lines = path.read_text().splitlines()
    entries = {m["name"]: m["hash"] for m in map(HTPASSWD_LINE.match, lines) if m}
    assert sorted(entries) == ["alice", "bob"] and len(lines) == 2, lines
    # $2y$ is what `htpasswd -B` writes; it is bcrypt's $2b$.
    assert bcrypt.checkpw(b"pw-of-alice-123", b"$2b$" + entries["alice"][4:].encode())
    assert not bcrypt.checkpw(b"pw-of-bob-456", b"$2b$" + entries["alice"][4:].encode())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert dockyard_cli("user", "list", "--data-dir", str(data)).stdout.split() == ["alice", "bob"]

    # add again: a new password
    dockyard_cli("user", "add", "alice", "--password", "new-pw-789", "--data-dir", str(data))
    alice = HTPASSWD_LINE.match(path.read_text().splitlines()[0])
    assert alice and bcrypt.checkpw(b"new-pw-789", b"$2b$" + alice["hash"][4:].encode())

    dockyard_cli("user", "remove", "bob", "--data-dir", str(data))
    assert dockyard_cli("user", "list", "--data-dir", str(data)).stdout.split() == ["alice"]
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["alice"]

    missing = dockyard_cli("user", "remove", "bob", "--data-dir", str(data), check=False)
    assert missing.returncode != 0 and "bob" in missing.stderr
    for bad in ("a:b", "", " padded"):
        refused = dockyard_cli("user", "add", bad, "--password", "x", "--data-dir", str(data), check=False)
        assert refused.returncode != 0, bad
    assert dockyard_cli("user", "list", "--data-dir", str(data)).stdout.split() == ["alice"]


def test_user_commands_use_the_htpasswd_file_the_config_names(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc" / "users.htpasswd"
    config = tmp_path / "dockyard.yaml"
    config.write_text(f"auth:\n  mode: basic\n  htpasswd: {elsewhere}\n")

    dockyard_cli("user", "add", "erin", "--password", "pw-erin", "--config", str(config))
    assert dockyard_cli("user", "list", "--config", str(config)).stdout.split() == ["erin"]
    assert elsewhere.read_text().startswith("erin:$2y$")
    other = tmp_path / "explicit"
    dockyard_cli("user", "add", "frank", "--password", "pw-frank", "--htpasswd", str(other))
    assert other.read_text().startswith("frank:$2y$")


def test_users_added_changed_and_removed_while_the_server_runs(basic_server: DockyardServer) -> None:
    """Both workers see each change at once: no restart, no stale cached password."""
    server = basic_server
    name = f"dave-{uuid.uuid4().hex[:6]}"
    first, second = "first-pw-of-dave", "second-pw-of-dave"

    def status(password: str) -> set[int]:
        return {
            httpx.get(f"{server.url}/v2/", auth=(name, password), headers={"Connection": "close"}).status_code
            for _ in range(4)
        }

    assert status(first) == {401}
    dockyard_cli("user", "add", name, "--password", first, "--data-dir", str(server.data_dir))
    assert status(first) == {200}

    dockyard_cli("user", "add", name, "--password", second, "--data-dir", str(server.data_dir))
    assert status(first) == {401}
    assert status(second) == {200}

    dockyard_cli("user", "remove", name, "--data-dir", str(server.data_dir))
    assert status(second) == {401}
    # The others were never disturbed.
    assert httpx.get(f"{server.url}/v2/", auth=creds("alice")).status_code == 200


@pytest.fixture
def htpasswd_file(basic_server: DockyardServer) -> Iterator[Path]:
    """The shared basic server's htpasswd file, as it was again after the test."""
    path = basic_server.data_dir / "auth" / "htpasswd"
    before = path.read_bytes()
    yield path
    path.write_bytes(before)


def test_htpasswd_entries_written_by_other_tools_are_read(
    basic_server: DockyardServer, htpasswd_file: Path
) -> None:
    """``$2b$`` and ``$2a$`` (other bcrypt writers), comments and blank lines; other hash
    schemes (MD5 ``$apr1$``, ``{SHA}``) are refused, not crashed on."""
    url = f"{basic_server.url}/v2/"
    with open(htpasswd_file, "a") as f:
        f.write("# written by hand\n\n")
        f.write("erin:" + bcrypt.hashpw(b"pw-erin", bcrypt.gensalt(10)).decode() + "\n")
        f.write("frank:$2a$" + bcrypt.hashpw(b"pw-frank", bcrypt.gensalt(10)).decode()[4:] + "\n")
        f.write("gina:$apr1$Kp1y2Z9F$3eYwsy.e1Dwc9QkWfmSUp/\n")
        f.write("hugo:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    assert httpx.get(url, auth=("erin", "pw-erin")).status_code == 200
    assert httpx.get(url, auth=("frank", "pw-frank")).status_code == 200
    assert httpx.get(url, auth=("erin", "pw-frank")).status_code == 401
    assert_challenge(httpx.get(url, auth=("gina", "password")), "basic", None)
    assert_challenge(httpx.get(url, auth=("hugo", "password")), "basic", None)
    assert httpx.get(url, auth=creds("alice")).status_code == 200


def test_malformed_basic_credentials_are_challenged(basic_server: DockyardServer) -> None:
    """A 401 always carries WWW-Authenticate (RFC 9110 11.6.1), whatever was wrong with the header."""
    for header in (
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":no-user").decode(),
        "Basic",  # (httpx will not send a header value ending in a space)
    ):
        response = httpx.get(f"{basic_server.url}/v2/", headers={"Authorization": header})
        assert_challenge(response, "basic", None)
