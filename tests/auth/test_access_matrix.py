"""Who may pull, push, delete and list, in every auth mode (basic, token, mtls).

The same users and rules in each mode (tests/auth/support.py); what changes is how a client
proves who it is and how a refusal reads: an anonymous client gets 401 UNAUTHORIZED with the
mode's challenge; an authenticated one without the right gets 403 DENIED, or in token mode a
401 whose challenge says ``insufficient_scope``. Nothing tells whether a private repository exists.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.auth.conftest import AuthMode
from tests.auth.support import READABLE, SCOPE_ACTIONS, assert_challenge, assert_denied, comparable, unique
from tests.support.api_helpers import (
    OCI_MANIFEST,
    Image,
    assert_error,
    digest_of,
    push_blob,
    push_image,
    put_manifest,
)

AsUser = Callable[[str | None], httpx.Client]
NO_SUCH_UPLOAD = "3f9a2c4e-1b7d-4e8f-9a0b-5c6d7e8f9a0b"


def seed_image(mode: AuthMode, repo: str, tag: str = "v1") -> Image:
    """An image pushed to ``repo:tag`` by the admin."""
    with mode.client("root") as admin:
        return push_image(admin, repo, tag, seed=repo)


def attempts(repo: str, image: Image) -> list[tuple[str, str, dict[str, Any], str]]:
    """Every route a client can use on ``repo``: method, path, request arguments, action needed."""
    layer = digest_of(image.layers[0])
    other = b"another blob for " + repo.encode()
    uploads = f"/v2/{repo}/blobs/uploads"
    return [
        ("GET", f"/v2/{repo}/manifests/v1", {}, "pull"),
        ("HEAD", f"/v2/{repo}/manifests/v1", {}, "pull"),
        ("GET", f"/v2/{repo}/manifests/{image.digest}", {}, "pull"),
        ("GET", f"/v2/{repo}/blobs/{layer}", {}, "pull"),
        ("HEAD", f"/v2/{repo}/blobs/{layer}", {}, "pull"),
        ("GET", f"/v2/{repo}/tags/list", {}, "pull"),
        ("GET", f"/v2/{repo}/referrers/{image.digest}", {}, "pull"),
        ("POST", f"{uploads}/", {}, "push"),
        ("POST", f"{uploads}/", {"params": {"digest": digest_of(other)}, "content": other}, "push"),
        ("POST", f"{uploads}/", {"params": {"mount": layer, "from": repo}}, "push"),
        ("GET", f"{uploads}/{NO_SUCH_UPLOAD}", {}, "push"),
        ("PATCH", f"{uploads}/{NO_SUCH_UPLOAD}", {"content": b"x"}, "push"),
        ("PUT", f"{uploads}/{NO_SUCH_UPLOAD}", {"params": {"digest": digest_of(b"x")}}, "push"),
        ("DELETE", f"{uploads}/{NO_SUCH_UPLOAD}", {}, "push"),
        (
            "PUT",
            f"/v2/{repo}/manifests/v2",
            {"content": image.manifest, "headers": {"Content-Type": OCI_MANIFEST}},
            "push",
        ),
        ("DELETE", f"/v2/{repo}/manifests/{image.digest}", {}, "delete"),
        ("DELETE", f"/v2/{repo}/blobs/{layer}", {}, "delete"),
    ]


def assert_untouched(mode: AuthMode, repo: str, image: Image) -> None:
    with mode.client("root") as admin:
        r = admin.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert (r.status_code, r.content) == (200, image.manifest)
        assert admin.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]
        for blob in (image.config, *image.layers):
            assert admin.head(f"/v2/{repo}/blobs/{digest_of(blob)}").status_code == 200


def catalog(client: httpx.Client, page: int = 7) -> list[str]:
    """The whole catalog, page by page, following ``Link``."""
    names: list[str] = []
    url: str | None = f"/v2/_catalog?n={page}"
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200, (r.status_code, r.text)
        batch = r.json()["repositories"]
        assert len(batch) <= page
        names += batch
        link = r.headers.get("link")
        url = re.match(r"<([^>]+)>", link).group(1) if link else None  # type: ignore[union-attr]
    assert names == sorted(names) and len(set(names)) == len(names), names
    return names


# -- the owner, the others ----------------------------------------------------------------------------


def test_owner_may_pull_push_and_delete_a_private_repository(mode: AuthMode, as_user: AsUser) -> None:
    repo = unique("private")
    alice = as_user("alice")

    image = push_image(alice, repo, "v1", seed=repo)

    r = alice.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert (r.status_code, r.content) == (200, image.manifest)
    assert alice.head(f"/v2/{repo}/manifests/v1").status_code == 200
    layer = alice.get(f"/v2/{repo}/blobs/{digest_of(image.layers[0])}")
    assert (layer.status_code, layer.content) == (200, image.layers[0])
    assert alice.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["v1"]}
    assert alice.get(f"/v2/{repo}/referrers/{image.digest}").status_code == 200

    assert alice.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert alice.delete(f"/v2/{repo}/blobs/{digest_of(image.layers[0])}").status_code == 202
    assert_error(alice.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("user", ["bob", "carol"])
def test_a_user_without_the_right_is_refused_on_every_route(
    mode: AuthMode, as_user: AsUser, user: str
) -> None:
    """bob has no right on private/; carol may pull there (group readers) but not push or delete."""
    repo = unique("private")
    image = seed_image(mode, repo)
    client = as_user(user)

    for method, path, kwargs, action in attempts(repo, image):
        response = client.request(method, path, **kwargs)
        if user == "carol" and action == "pull":
            assert response.status_code == 200, (method, path, response.status_code)
        else:
            assert_denied(response, mode.name, repo, action)

    assert_untouched(mode, repo, image)


def test_anonymous_client_is_challenged_on_every_private_route(password_mode: AuthMode) -> None:
    """(mtls refuses a client without a certificate in the handshake: test_tls.py.)"""
    mode = password_mode
    repo = unique("private")
    image = seed_image(mode, repo)

    with mode.raw() as anonymous:
        assert_challenge(anonymous.get("/v2/"), mode.name, None)
        assert_challenge(anonymous.head("/v2/"), mode.name, None)
        catalog_scope = "registry:catalog:*"
        assert_challenge(anonymous.get("/v2/_catalog"), mode.name, catalog_scope)
        for method, path, kwargs, action in attempts(repo, image):
            response = anonymous.request(method, path, **kwargs)
            assert_challenge(response, mode.name, f"repository:{repo}:{SCOPE_ACTIONS[action]}")

    assert_untouched(mode, repo, image)


def test_wrong_password_or_unknown_user_is_challenged_again(password_mode: AuthMode) -> None:
    mode = password_mode
    with mode.raw() as client:
        for user, password in [("alice", "not-her-password"), ("mallory", "whatever"), ("alice", "")]:
            if mode.name == "basic":
                response = client.get("/v2/", auth=(user, password))
                assert_challenge(response, mode.name, None)
            else:
                response = client.get(
                    "/auth/token",
                    params={"service": "dockyard", "scope": "repository:team/x:pull"},
                    auth=(user, password),
                )
                assert_error(response, 401, "UNAUTHORIZED")
                assert "token" not in response.json()


def assert_same_answers(mode: AuthMode, client: httpx.Client) -> None:
    """Every route of a private repository that exists answers ``client`` like one that does not."""
    existing, missing = unique("private"), unique("private")
    image = seed_image(mode, existing)
    for (method, path, kwargs, _), (_, other_path, other_kwargs, _) in zip(
        attempts(existing, image), attempts(missing, image), strict=True
    ):
        there = client.request(method, path, **kwargs)
        absent = client.request(method, other_path, **other_kwargs)
        assert there.status_code in (401, 403), (method, path, there.status_code)
        assert comparable(there, existing) == comparable(absent, missing), (method, path)


def test_a_private_repository_that_does_not_exist_answers_a_user_like_one_that_does(
    mode: AuthMode, as_user: AsUser
) -> None:
    assert_same_answers(mode, as_user("bob"))


def test_a_private_repository_that_does_not_exist_answers_anonymous_like_one_that_does(
    password_mode: AuthMode,
) -> None:
    with password_mode.raw() as anonymous:
        assert_same_answers(password_mode, anonymous)


# -- patterns: public, anonymous, authenticated, groups, admins -------------------------------------------


def test_anyone_pulls_a_public_repository_but_only_alice_pushes(mode: AuthMode, as_user: AsUser) -> None:
    repo = unique("public")
    image = seed_image(mode, repo)
    pullers = ["bob", "carol", "alice"] + ([None] if mode.has_anonymous else [])

    for user in pullers:
        client = as_user(user)
        r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert (r.status_code, r.content) == (200, image.manifest), user
        assert client.get(f"/v2/{repo}/blobs/{digest_of(image.config)}").content == image.config

    if mode.has_anonymous:
        with mode.raw() as anonymous:
            push_scope, delete_scope = f"repository:{repo}:pull,push", f"repository:{repo}:delete"
            assert_challenge(anonymous.post(f"/v2/{repo}/blobs/uploads/"), mode.name, push_scope)
            assert_challenge(
                anonymous.delete(f"/v2/{repo}/manifests/{image.digest}"), mode.name, delete_scope
            )
    for user in ("bob", "carol"):
        client = as_user(user)
        assert_denied(client.post(f"/v2/{repo}/blobs/uploads/"), mode.name, repo, "push")
        assert_denied(put_manifest(client, repo, "v2", image.manifest, OCI_MANIFEST), mode.name, repo, "push")
        assert_denied(client.delete(f"/v2/{repo}/manifests/{image.digest}"), mode.name, repo, "delete")
    alice = as_user("alice")
    assert put_manifest(alice, repo, "v2", image.manifest, OCI_MANIFEST).status_code == 201
    assert_denied(alice.delete(f"/v2/{repo}/manifests/v2"), mode.name, repo, "delete")
    assert as_user("root").get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1", "v2"]


def test_anonymous_pattern_admits_only_clients_without_credentials_one_level_deep(
    password_mode: AuthMode,
) -> None:
    mode = password_mode
    shallow = unique("anon")
    deep = f"{shallow}/deeper"  # "anon/*" does not reach across a "/"
    seed_image(mode, shallow)
    seed_image(mode, deep)

    with mode.raw() as anonymous:
        assert anonymous.get(f"/v2/{shallow}/manifests/v1").status_code == 200
        assert_challenge(anonymous.get(f"/v2/{deep}/manifests/v1"), mode.name, f"repository:{deep}:pull")
        assert_challenge(
            anonymous.post(f"/v2/{shallow}/blobs/uploads/"), mode.name, f"repository:{shallow}:pull,push"
        )


def test_authenticated_pattern_admits_every_user_and_no_anonymous_client(
    mode: AuthMode, as_user: AsUser
) -> None:
    repo = unique("members")
    seed_image(mode, repo)

    for user in ("alice", "bob", "carol"):
        client = as_user(user)
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200, user
        assert_denied(client.post(f"/v2/{repo}/blobs/uploads/"), mode.name, repo, "push")
    if mode.has_anonymous:
        with mode.raw() as anonymous:
            assert_challenge(anonymous.get(f"/v2/{repo}/manifests/v1"), mode.name, f"repository:{repo}:pull")


def test_group_members_share_a_repository_and_others_do_not(mode: AuthMode, as_user: AsUser) -> None:
    repo = unique("team")
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    image = push_image(alice, repo, "v1", seed=repo)

    assert bob.get(f"/v2/{repo}/manifests/v1").content == image.manifest
    second = push_image(bob, repo, "v2", seed=repo + "-bob")
    assert alice.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1", "v2"]
    assert bob.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert alice.get(f"/v2/{repo}/manifests/{second.digest}").status_code == 200

    for method, path, kwargs, action in attempts(repo, second):
        assert_denied(carol.request(method, path, **kwargs), mode.name, repo, action)


def test_admin_may_do_everything_everywhere(mode: AuthMode, as_user: AsUser) -> None:
    root = as_user("root")
    for prefix in ("private", "team", "public", "anon", "members"):
        repo = unique(prefix)
        image = push_image(root, repo, "v1", seed=repo)
        assert root.get(f"/v2/{repo}/manifests/v1").content == image.manifest
        assert root.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
        assert root.delete(f"/v2/{repo}/blobs/{digest_of(image.config)}").status_code == 202
    outside = f"elsewhere/{uuid.uuid4().hex[:12]}"  # no rule names it: only an admin may touch it
    push_blob(root, outside, b"admin's own")
    assert_denied(as_user("alice").get(f"/v2/{outside}/tags/list"), mode.name, outside, "pull")


# -- the catalog ------------------------------------------------------------------------------------------


def test_catalog_lists_only_the_repositories_the_caller_may_pull(mode: AuthMode, as_user: AsUser) -> None:
    mine = {prefix: unique(prefix) for prefix in ("private", "team", "public", "anon", "members")}
    hidden = f"elsewhere/{uuid.uuid4().hex[:12]}"
    with mode.client("root") as root:
        for repo in (*mine.values(), hidden):
            push_blob(root, repo, repo.encode())
        everything = catalog(root)
    assert set(mine.values()) | {hidden} <= set(everything)

    for user in ("alice", "bob", "carol"):
        listed = catalog(as_user(user))
        readable = READABLE[user]
        assert all(name.startswith(readable) for name in listed), (user, listed)
        expected = {repo for repo in mine.values() if repo.startswith(readable)}
        assert set(listed) & ({*mine.values(), hidden}) == expected, user
        # Filtering happens before paging: every page is full until the last.
        assert listed == [name for name in everything if name.startswith(readable)], user
