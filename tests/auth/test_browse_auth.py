"""The browsing pages under access control: they show exactly what the API would let the same
client pull, and a browser can log in to them with a password in basic and in token mode.

Each mode gets a server of its own with one rule, so the repository list is known exactly:
bob may pull ``shop/app`` and nothing else; ``root`` (an admin) pushes everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.support import PASSWORDS, assert_challenge, mode_client, start_auth_server
from tests.support.api_helpers import Image, no_server_errors, push_image
from tests.support.html_page import Page, assert_page_headers
from tests.support.server import DockyardServer

RULES = [{"repository": "shop/app", "pull": ["bob"]}]
REPOSITORIES = ["secret/x", "shop/app", "shop/other"]
BASIC = 'Basic realm="dockyard"'


class Site:
    """A server in one mode, with an image tagged v1 in each of REPOSITORIES."""

    def __init__(self, mode: str, data_dir: Path) -> None:
        self.mode = mode
        self.server: DockyardServer = start_auth_server(data_dir, mode, access=RULES)
        self.images: dict[str, Image] = {}
        with self.api_client("root") as admin:
            for repo in REPOSITORIES:
                self.images[repo] = push_image(admin, repo, "v1", seed=repo)

    def browser(self, user: str | None, password: str | None = None) -> httpx.Client:
        """What a browser sends after its login prompt: Basic credentials, whatever the mode."""
        auth = None if user is None else httpx.BasicAuth(user, password or PASSWORDS[user])
        return httpx.Client(
            base_url=self.server.url, auth=auth, timeout=30.0, event_hooks={"response": [no_server_errors]}
        )

    def api_client(self, user: str) -> httpx.Client:
        """A registry client the mode's way (the token flow in token mode)."""
        return mode_client(self.server, self.mode, user)


@pytest.fixture(scope="module", params=["basic", "token"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    made = Site(request.param, tmp_path_factory.mktemp(f"browse-{request.param}") / "data")
    yield made
    made.server.stop()


def listed(client: httpx.Client) -> list[str]:
    r = client.get("/ui/")
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return [cell.text for cell in Page.of(r).table().column("Repository")]


def assert_refused_page(response: httpx.Response, status: int) -> None:
    """A refusal the pages' way: an HTML page; 401 always with a Basic challenge a browser answers."""
    assert response.status_code == status, (response.request.url, response.status_code)
    assert_page_headers(response)
    Page.of(response)
    if status == 401:
        assert response.headers["www-authenticate"] == BASIC
    else:
        assert "www-authenticate" not in response.headers


def test_a_user_sees_only_the_repositories_they_may_pull(site: Site) -> None:
    with site.browser("bob") as bob, site.browser("root") as root:
        assert listed(bob) == ["shop/app"]
        assert listed(root) == REPOSITORIES
        with site.api_client("bob") as api:  # the same answer as the catalog's
            assert api.get("/v2/_catalog").json()["repositories"] == ["shop/app"]


def test_pages_of_a_repository_need_pull_on_it(site: Site) -> None:
    image = site.images["shop/app"]
    with site.browser("bob") as bob:
        page = Page.of(bob.get("/ui/r/shop/app"))
        assert [r["Digest"].titles for r in page.table("Tags").records()] == [[image.digest]]
        manifest = Page.of(bob.get(f"/ui/r/shop/app/manifests/{image.digest}"))
        assert manifest.fields["Tags"].hrefs == ["/ui/r/shop/app/manifests/v1"]
        download = manifest.table("Config").column("Digest")[0].hrefs[0]
        if site.mode == "basic":  # the API's URL, so the API's rules: the same password works
            assert bob.get(download).content == image.config
        else:  # the API wants a token (README "Browsing")
            assert bob.get(download).status_code == 401
        for path in (
            "/ui/r/shop/other",
            "/ui/r/shop/other/manifests/v1",
            f"/ui/r/secret/x/manifests/{site.images['secret/x'].digest}",
            "/ui/r/shop/never-pushed",  # no different from one that exists
        ):
            assert_refused_page(bob.get(path), 403)


def test_anonymous_browsers_get_a_basic_challenge(site: Site) -> None:
    with site.browser(None) as anonymous:
        for path in ("/ui/", "/ui/r/shop/app", "/ui/r/shop/app/manifests/v1", "/ui/r/secret/x"):
            assert_refused_page(anonymous.get(path), 401)
        r = anonymous.get("/", follow_redirects=False)  # the way in asks nothing
        assert (r.status_code, r.headers["location"]) == (302, "/ui/")


def test_a_wrong_password_gets_the_challenge_again(site: Site) -> None:
    with site.browser("bob", "not-bobs-password") as wrong:
        assert_refused_page(wrong.get("/ui/r/shop/app"), 401)
        assert_refused_page(wrong.get("/ui/"), 401)


def test_the_api_keeps_its_own_scheme(site: Site) -> None:
    """Basic credentials count on the pages only: in token mode the API still wants a token."""
    with site.browser("bob") as bob:
        r = bob.get("/v2/shop/app/tags/list")
        if site.mode == "basic":
            assert r.json() == {"name": "shop/app", "tags": ["v1"]}
        else:
            assert_challenge(r, "token", "repository:shop/app:pull")
    with site.browser(None) as anonymous:
        assert_challenge(anonymous.get("/v2/_catalog"), site.mode, "registry:catalog:*")


def test_search_finds_only_what_the_user_may_pull(site: Site) -> None:
    with site.browser("bob") as bob, site.browser("root") as root:
        found = Page.of(bob.get("/ui/", params={"q": "shop"}))
        assert [c.text for c in found.table().column("Repository")] == ["shop/app"]
        assert "No repositories match." in Page.of(bob.get("/ui/", params={"q": "secret"})).text
        by_push = Page.of(bob.get("/ui/", params={"sort": "pushed"}))
        assert [c.text for c in by_push.table().column("Repository")] == ["shop/app"]
        everything = Page.of(root.get("/ui/", params={"q": "shop"}))
        assert [c.text for c in everything.table().column("Repository")] == ["shop/app", "shop/other"]


def test_the_operations_page_is_for_administrators(site: Site) -> None:
    with site.browser("root") as root, site.browser("bob") as bob, site.browser(None) as anonymous:
        page = Page.of(root.get("/ui/operations"))
        assert page.fields["Repositories"].text == str(len(REPOSITORIES))
        assert Page.of(root.get("/ui/")).link_to("/ui/operations").text == "operations"
        assert_refused_page(bob.get("/ui/operations"), 403)
        assert all(link.href != "/ui/operations" for link in Page.of(bob.get("/ui/")).links)
        assert_refused_page(anonymous.get("/ui/operations"), 401)
