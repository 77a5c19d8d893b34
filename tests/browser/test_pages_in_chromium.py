"""The browsing pages in a real browser: each page renders, the search finds what it should and
nothing the user may not pull, links lead where they say, no console errors, nothing is fetched
from another origin, phone widths do not scroll sideways, dark mode and the keyboard work.
Screenshots at desktop and phone widths go to ``test-artifacts/screenshots``."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.auth.support import PASSWORDS, mode_client, start_auth_server
from tests.browser.conftest import ARTIFACTS, console_problems, requested_urls
from tests.support.api_helpers import Image, push_image
from tests.support.server import DockyardServer

RULES = [{"repository": "shop/**", "pull": ["bob"]}]
REPOSITORIES = ["secret/vault", "shop/app", "shop/web", "tools/lint"]
DESKTOP, PHONE = (1280, 900), (390, 844)


class Site:
    def __init__(self, server: DockyardServer, images: dict[str, Image]) -> None:
        self.server = server
        self.images = images
        self.origin = server.url.rstrip("/")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Basic auth, one rule: bob may pull shop/**; root (an admin) pushed everything."""
    server = start_auth_server(tmp_path_factory.mktemp("browser") / "data", "basic", access=RULES)
    images: dict[str, Image] = {}
    with mode_client(server, "basic", "root") as admin:
        for repo in REPOSITORIES:
            images[repo] = push_image(admin, repo, "v1", seed=repo)
        images["shop/app:v2"] = push_image(admin, "shop/app", "v2", seed="second")
    yield Site(server, images)
    server.stop()


def log_in(driver: Any, user: str) -> None:
    """What a browser sends once its login prompt was answered: Basic credentials."""
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def visit(driver: Any, site: Site, path: str) -> str:
    """Open a page; its h1. Every request it made went to the registry, and the console is clean."""
    requested_urls(driver)  # forget what came before
    console_problems(driver)
    driver.get(site.origin + path)
    h1: str = driver.find_element(By.TAG_NAME, "h1").text
    foreign = [
        u for u in requested_urls(driver) if not u.startswith(site.origin) and not u.startswith("data:")
    ]
    assert foreign == [], foreign
    assert console_problems(driver) == []
    return h1


def screenshot(driver: Any, name: str) -> None:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.set_window_size(width, height)
        if label == "phone":  # readable on a phone: the page itself never scrolls sideways
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, (name, overflow)
        path = folder / f"{name}-{label}.png"
        driver.save_screenshot(str(path))
        assert path.stat().st_size > 1000
    driver.set_window_size(*DESKTOP)


def repository_names(driver: Any) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "main table tbody tr td:first-child a")]


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    yield chromium
    chromium.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_every_page_renders_links_lead_where_they_say_and_nothing_comes_from_elsewhere(
    browser: Any, site: Site
) -> None:
    log_in(browser, "root")
    assert visit(browser, site, "/ui/") == "Repositories"
    assert repository_names(browser) == REPOSITORIES
    assert "4 repositories" in browser.find_element(By.CLASS_NAME, "totals").text
    screenshot(browser, "repositories")

    browser.find_element(By.LINK_TEXT, "shop/app").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "shop/app"
    assert urlsplit(browser.current_url).path == "/ui/r/shop/app"
    tags = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "main table tbody tr td:first-child a")]
    assert tags == ["v2", "v1"]  # the newest push first
    pull = browser.find_element(By.CSS_SELECTOR, "input.copy").get_attribute("value")
    assert pull == f"docker pull {urlsplit(site.origin).netloc}/shop/app:v2"
    screenshot(browser, "repository")

    browser.find_element(By.LINK_TEXT, "v1").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "shop/app:v1"
    digest = browser.find_element(By.CSS_SELECTOR, "dd input.copy").get_attribute("value")
    assert digest == site.images["shop/app"].digest
    screenshot(browser, "manifest")
    assert console_problems(browser) == []

    crumbs = browser.find_elements(By.CSS_SELECTOR, "header nav[aria-label=breadcrumbs] a")
    assert [(a.text, urlsplit(a.get_attribute("href")).path) for a in crumbs] == [
        ("dockyard", "/ui/"),
        ("shop/app", "/ui/r/shop/app"),
        ("v1", "/ui/r/shop/app/manifests/v1"),
    ]
    browser.find_element(By.LINK_TEXT, "operations").click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Operations"
    screenshot(browser, "operations")

    for path in (
        "/ui/?sort=pushed",
        "/ui/r/shop/app?sort=name",
        f"/ui/r/tools/lint/manifests/{site.images['tools/lint'].digest}",
    ):
        visit(browser, site, path)


def test_the_search_finds_what_it_should_and_nothing_the_user_may_not_pull(browser: Any, site: Site) -> None:
    log_in(browser, "bob")
    visit(browser, site, "/ui/")
    assert repository_names(browser) == ["shop/app", "shop/web"]
    box = browser.find_element(By.CSS_SELECTOR, "form[role=search] input[name=q]")
    box.send_keys("web", Keys.ENTER)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Repositories"
    assert urlsplit(browser.current_url).query.startswith("q=web")
    assert repository_names(browser) == ["shop/web"]
    screenshot(browser, "search")
    for query in ("secret", "vault", "tools"):
        visit(browser, site, f"/ui/?q={query}")
        assert repository_names(browser) == []
        assert "No repositories match." in browser.find_element(By.TAG_NAME, "main").text
    assert browser.find_elements(By.LINK_TEXT, "operations") == []


def test_dark_mode_and_the_keyboard(browser: Any, site: Site) -> None:
    log_in(browser, "root")
    light = "rgb(255, 255, 255)"
    visit(browser, site, "/ui/r/shop/app")
    assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == light
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    try:
        visit(browser, site, "/ui/r/shop/app")
        background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background != light and sum(int(c) for c in background[4:-1].split(",")) < 120, background
        screenshot(browser, "repository-dark")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    visit(browser, site, "/ui/")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    focused: list[str] = []
    for _ in range(12):  # the search box and every link can be reached with Tab
        browser.switch_to.active_element.send_keys(Keys.TAB)
        element = browser.switch_to.active_element
        focused.append(element.get_attribute("name") or element.text)
    assert "q" in focused and "shop/app" in focused, focused
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
