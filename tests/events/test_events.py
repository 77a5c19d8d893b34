"""Events: exactly the expected events for every change, signed, filtered, delivered at least
once across a sink outage, a sink answering 500 and a kill -9 between the change and delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from dockyard.events.signing import verify
from tests.events.receiver import Receiver
from tests.support.api_helpers import (
    OCI_MANIFEST,
    api_client,
    dumps,
    push_blob,
    push_image,
    put_manifest,
)
from tests.support.server import DockyardServer

SECRET = "a secret for the hook"
# Retries a second apart at most, and never running out while a test waits (12 attempts a second
# apart ran out while a busy machine took longer than that to restart a stopped target).
FAST_RETRIES = {
    "retry_initial_seconds": 0.2,
    "retry_max_seconds": 1.0,
    "poll_seconds": 0.2,
    "max_attempts": 100_000,
}


def sink(receiver: Receiver, name: str = "hook", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": receiver.url, "secret": SECRET, **extra}


def metric(server: DockyardServer, name: str, sink_name: str) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    prefix = f'{name}{{sink="{sink_name}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s")
        time.sleep(0.1)


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    data = event["data"]
    detail = data.get("tag") or tuple(data.get("tags", ())) or data.get("from")
    return event["type"].removeprefix("dev.dockyard."), event["subject"], data.get("digest"), detail


def dockyard_cli(server: DockyardServer, *args: str) -> str:
    config = server.extra_args[server.extra_args.index("--config") + 1]
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", *args, "--config", config, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_change_produces_exactly_its_events_in_order(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    hook = receivers().start()
    server = configured_server(workers=2, events={"sinks": [sink(hook)], **FAST_RETRIES})
    repo, other = "shop/app", "shop/mirror"
    with api_client(server.url) as c:
        image = push_image(c, repo, "v1", seed="one")
        by_digest = push_image(c, repo, None, seed="two")  # by digest, no tag
        r = c.put(
            f"/v2/{repo}/manifests/{by_digest.digest}",
            params=[("tag", "a"), ("tag", "b")],
            content=by_digest.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201
        # a referrer of the first image (a signature, say)
        empty = b"{}"
        push_blob(c, repo, empty)
        referrer = dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/example.signature",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _d(empty), "size": 2},
                "layers": [
                    {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _d(empty), "size": 2}
                ],
                "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
            }
        )
        assert put_manifest(c, repo, _d(referrer), referrer, OCI_MANIFEST).status_code == 201
        layer = image.layers[0]
        r = c.post(f"/v2/{other}/blobs/uploads/", params={"mount": _d(layer), "from": repo})
        assert r.status_code == 201
        assert c.delete(f"/v2/{repo}/manifests/a").status_code == 202
        assert c.delete(f"/v2/{repo}/manifests/{by_digest.digest}").status_code == 202
        assert c.delete(f"/v2/{repo}/manifests/nope").status_code == 404  # no change, no event
        assert c.delete(f"/v2/_dockyard/repositories/{other}").status_code == 202
    expected = [
        ("manifest.pushed", repo, image.digest, ("v1",)),
        ("manifest.pushed", repo, by_digest.digest, None),
        ("manifest.pushed", repo, by_digest.digest, ("a", "b")),
        ("manifest.pushed", repo, _d(referrer), None),
        ("blob.mounted", other, _d(layer), repo),
        ("tag.deleted", repo, by_digest.digest, "a"),
        ("manifest.deleted", repo, by_digest.digest, ("b",)),
        ("repository.deleted", other, None, None),
    ]
    events = hook.wait_for(lambda found: len(found) >= len(expected))
    time.sleep(1.0)  # nothing more may come
    events = hook.events()
    # in the order of the changes within each repository (repositories are delivered in parallel)
    for name in (repo, other):
        assert [summary(e) for e in events if e["subject"] == name] == [x for x in expected if x[1] == name]
    assert len(events) == len(expected)
    # the envelope: CloudEvents 1.0, unique ids, our URL as the source
    assert len({e["id"] for e in events}) == len(events)
    for e in events:
        assert e["specversion"] == "1.0" and e["source"] == server.url
        assert e["datacontenttype"] == "application/json" and e["time"].endswith("Z")
    mine = [e for e in events if e["subject"] == repo]  # (the other repository's may come first)
    pushed = mine[0]["data"]
    assert pushed["mediaType"] == OCI_MANIFEST and pushed["size"] == len(image.manifest)
    assert mine[3]["data"]["subject"] == image.digest
    assert mine[3]["data"]["artifactType"] == "application/example.signature"
    for received in hook.received:
        assert received.headers["content-type"].startswith("application/cloudevents+json")
        assert verify(SECRET.encode(), received.body, received.headers["x-dockyard-signature"])
        assert not verify(b"another secret", received.body, received.headers["x-dockyard-signature"])
    assert metric(server, "dockyard_events_delivered_total", "hook") == len(expected)
    assert metric(server, "dockyard_events_pending", "hook") == 0


def _d(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_each_sink_gets_only_the_repositories_and_types_it_asked_for(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    teams, pushes, everything = receivers().start(), receivers().start(), receivers().start()
    server = configured_server(
        events={
            "sinks": [
                sink(teams, "teams", repositories=["team/*"]),
                sink(pushes, "pushes", types=["manifest.pushed"], repositories=["**"]),
                sink(everything, "everything"),
            ],
            **FAST_RETRIES,
        }
    )
    with api_client(server.url) as c:
        push_image(c, "team/a", "v1", seed="1")
        push_image(c, "team/a/deep", "v1", seed="2")  # * stays within one component
        push_image(c, "other/b", "v1", seed="3")
        assert c.delete("/v2/team/a/manifests/v1").status_code == 202
    everything.wait_for(lambda found: len(found) == 4)
    pushes.wait_for(lambda found: len(found) == 3)
    teams.wait_for(lambda found: len(found) == 2)
    time.sleep(1.0)
    assert [summary(e)[:2] for e in teams.events()] == [
        ("manifest.pushed", "team/a"),
        ("tag.deleted", "team/a"),
    ]
    assert {e["type"] for e in pushes.events()} == {"dev.dockyard.manifest.pushed"}
    assert len(everything.events()) == 4


def test_a_sink_that_is_down_gets_every_event_once_it_is_back(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    hook = receivers()  # not listening yet
    server = configured_server(workers=2, events={"sinks": [sink(hook)], **FAST_RETRIES})
    with api_client(server.url) as c:
        digests = [push_image(c, f"down/r{i % 3}", f"t{i}", seed=str(i)).digest for i in range(9)]
    wait_until(lambda: (metric(server, "dockyard_events_failed_total", "hook") or 0) >= 3)
    assert metric(server, "dockyard_events_pending", "hook") == 9
    assert (metric(server, "dockyard_events_oldest_pending_age_seconds", "hook") or 0) > 0
    hook.start()
    events = hook.wait_for(lambda found: {e["data"]["digest"] for e in found} >= set(digests))
    # each repository's events arrive in the order of its changes
    for r in range(3):
        tags = [e["data"]["tags"][0] for e in events if e["subject"] == f"down/r{r}"]
        firsts = list(dict.fromkeys(tags))
        assert firsts == [f"t{i}" for i in range(r, 9, 3)]
    wait_until(lambda: metric(server, "dockyard_events_pending", "hook") == 0)
    assert metric(server, "dockyard_events_dead", "hook") == 0


def test_kill_9_between_the_change_and_its_delivery_loses_no_event(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    hook = receivers().start()
    server = configured_server(
        events={"sinks": [sink(hook)], **FAST_RETRIES}, env={"DOCKYARD_FAILPOINTS": "manifest.after_record"}
    )
    with api_client(server.url) as c:
        try:
            push_image(c, "crash/app", "v1", seed="crash")
            raise AssertionError("the server should have died after recording the manifest")
        except httpx.TransportError:
            pass
    assert server.process is not None
    server.process.wait(timeout=60)  # killed itself (SIGKILL) right after the commit
    assert hook.events() == []
    server.env.pop("DOCKYARD_FAILPOINTS")
    server.start()
    events = hook.wait_for(lambda found: len(found) >= 1)
    assert [summary(e)[:2] for e in events] == [("manifest.pushed", "crash/app")]
    with api_client(server.url) as c:
        r = c.get("/v2/crash/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.headers["docker-content-digest"] == events[0]["data"]["digest"]


def test_a_sink_answering_500_backs_off_then_dead_letters_and_can_be_redelivered(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    hook = receivers().start()
    hook.status = 500
    server = configured_server(events={"sinks": [sink(hook)], **FAST_RETRIES, "max_attempts": 3})
    with api_client(server.url) as c:
        image = push_image(c, "dead/app", "v1", seed="dead")
    wait_until(lambda: metric(server, "dockyard_events_dead", "hook") == 1)
    assert hook.attempts == 3
    assert metric(server, "dockyard_events_failed_total", "hook") == 3
    assert metric(server, "dockyard_events_dead_lettered_total", "hook") == 1
    assert metric(server, "dockyard_events_pending", "hook") == 0
    listed = [json.loads(line) for line in dockyard_cli(server, "events", "list", "--json").splitlines()]
    assert [(d["state"], d["attempts"], d["event"]["data"]["digest"]) for d in listed] == [
        ("dead", 3, image.digest)
    ]
    assert "HTTP 500" in listed[0]["last_error"]
    hook.status = 204
    assert "1 deliveries queued again" in dockyard_cli(server, "events", "redeliver")
    events = hook.wait_for(lambda found: len(found) == 1)
    assert events[0]["id"] == listed[0]["id"]
    wait_until(lambda: metric(server, "dockyard_events_dead", "hook") == 0)
    assert "1 deliveries purged" in dockyard_cli(server, "events", "purge")
    assert dockyard_cli(server, "events", "list") == ""


def test_pulls_are_events_only_when_asked_for(
    configured_server: Callable[..., DockyardServer], receivers: Callable[[], Receiver]
) -> None:
    quiet, loud = receivers().start(), receivers().start()
    server = configured_server(
        events={
            "sinks": [sink(quiet, "quiet"), sink(loud, "loud", types=["manifest.pulled"])],
            "manifest_pulls": True,
            **FAST_RETRIES,
        }
    )
    with api_client(server.url) as c:
        image = push_image(c, "pulled/app", "v1", seed="p")
        assert c.get("/v2/pulled/app/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 200
        assert c.head("/v2/pulled/app/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 200
    events = loud.wait_for(lambda found: len(found) >= 1)
    quiet.wait_for(lambda found: len(found) >= 1)
    time.sleep(1.0)
    assert [summary(e) for e in loud.events()] == [("manifest.pulled", "pulled/app", image.digest, None)]
    assert events[0]["data"]["reference"] == "v1"
    assert [summary(e)[0] for e in quiet.events()] == ["manifest.pushed"]  # pulls: only when subscribed
