"""Pushing and pulling manifests (spec: "Pushing Manifests", "Pulling manifests")."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api_helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    NON_DISTRIBUTABLE_LAYER,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest_of,
    dumps,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
)

FOUR_MIB = 4 * 1024 * 1024


def _assert_pushed(r: httpx.Response, repo: str, body: bytes) -> str:
    digest = digest_of(body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{repo}/manifests/{digest}"
    assert r.headers["docker-content-digest"] == digest
    return digest


def _assert_pulls_back(client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str) -> None:
    r = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == digest_of(body)


def _index(children: list[tuple[str, bytes]], media_type: str = OCI_INDEX, **extra: Any) -> bytes:
    manifests = []
    for i, (child_type, child) in enumerate(children):
        platform = {"architecture": ["amd64", "arm64", "s390x"][i % 3], "os": "linux"}
        manifests.append(descriptor(child_type, child, platform=platform))
    return dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests, **extra})


def test_oci_image_manifest_pushes_by_tag_and_pulls_back_byte_identical(
    client: httpx.Client, repo: str
) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(2_000)
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    body = image_manifest(config, [layer], annotations={"org.example": "value"})
    digest = _assert_pushed(put_manifest(client, repo, "v1", body, OCI_MANIFEST), repo, body)
    _assert_pulls_back(client, repo, "v1", body, OCI_MANIFEST)
    _assert_pulls_back(client, repo, digest, body, OCI_MANIFEST)


def test_oci_index_pushes_and_pulls_back_byte_identical(client: httpx.Client, repo: str) -> None:
    a = push_image(client, repo, seed="a")
    b = push_image(client, repo, seed="b")
    body = _index([(OCI_MANIFEST, a.manifest), (OCI_MANIFEST, b.manifest)])
    digest = _assert_pushed(put_manifest(client, repo, "multi", body, OCI_INDEX), repo, body)
    _assert_pulls_back(client, repo, "multi", body, OCI_INDEX)
    _assert_pulls_back(client, repo, digest, body, OCI_INDEX)


def test_docker_schema2_manifest_pushes_and_pulls_back_byte_identical(
    client: httpx.Client, repo: str
) -> None:
    image = push_image(client, repo, "docker", media_type=DOCKER_MANIFEST)
    _assert_pulls_back(client, repo, "docker", image.manifest, DOCKER_MANIFEST)
    _assert_pulls_back(client, repo, image.digest, image.manifest, DOCKER_MANIFEST)


def test_docker_manifest_list_pushes_and_pulls_back_byte_identical(client: httpx.Client, repo: str) -> None:
    a = push_image(client, repo, seed="a", media_type=DOCKER_MANIFEST)
    b = push_image(client, repo, seed="b", media_type=DOCKER_MANIFEST)
    body = _index([(DOCKER_MANIFEST, a.manifest), (DOCKER_MANIFEST, b.manifest)], media_type=DOCKER_LIST)
    digest = _assert_pushed(put_manifest(client, repo, "list", body, DOCKER_LIST), repo, body)
    _assert_pulls_back(client, repo, "list", body, DOCKER_LIST)
    _assert_pulls_back(client, repo, digest, body, DOCKER_LIST)


def test_artifact_manifest_with_artifact_type_pushes_and_pulls_back(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, b"{}")
    payload = b"signature bytes"
    push_blob(client, repo, payload)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature.v1",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [descriptor("application/vnd.example.signature.v1+raw", payload)],
        }
    )
    digest = _assert_pushed(put_manifest(client, repo, "sig", body, OCI_MANIFEST), repo, body)
    _assert_pulls_back(client, repo, digest, body, OCI_MANIFEST)


def test_manifest_without_media_type_field_is_stored_with_the_content_type(
    client: httpx.Client, repo: str
) -> None:
    config = b'{"os":"linux"}'
    push_blob(client, repo, config)
    doc = {"schemaVersion": 2, "config": descriptor(OCI_CONFIG, config), "layers": []}
    body = dumps(doc)
    _assert_pushed(put_manifest(client, repo, "plain", body, OCI_MANIFEST), repo, body)
    _assert_pulls_back(client, repo, "plain", body, OCI_MANIFEST)


def test_put_manifest_by_digest(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo)  # by digest
    _assert_pulls_back(client, repo, image.digest, image.manifest, OCI_MANIFEST)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json()["tags"] in ([], None)


def test_put_by_digest_with_tag_parameters_returns_oci_tag_headers(client: httpx.Client, repo: str) -> None:
    config = b'{"tagged": true}'
    push_blob(client, repo, config)
    body = image_manifest(config, [])
    digest = digest_of(body)
    r = client.put(
        f"/v2/{repo}/manifests/{digest}",
        params=[("tag", "a"), ("tag", "b")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    _assert_pushed(r, repo, body)
    tags = {t.strip() for value in r.headers.get_list("oci-tag") for t in value.split(",")}
    assert tags == {"a", "b"}
    for tag in ("a", "b"):
        _assert_pulls_back(client, repo, tag, body, OCI_MANIFEST)
    assert sorted(client.get(f"/v2/{repo}/tags/list").json()["tags"]) == ["a", "b"]


def test_manifest_with_subject_returns_oci_subject_even_if_the_subject_does_not_exist(
    client: httpx.Client, repo: str
) -> None:
    absent = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "note": "never pushed"})
    push_blob(client, repo, b"{}")
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [],
            "subject": descriptor(OCI_MANIFEST, absent),
        }
    )
    r = put_manifest(client, repo, digest_of(body), body, OCI_MANIFEST)
    _assert_pushed(r, repo, body)
    assert r.headers["oci-subject"] == digest_of(absent)


def test_manifest_without_subject_has_no_oci_subject_header(client: httpx.Client, repo: str) -> None:
    config = b'{"no": "subject"}'
    push_blob(client, repo, config)
    r = put_manifest(client, repo, "v1", image_manifest(config, []), OCI_MANIFEST)
    assert r.status_code == 201
    assert "oci-subject" not in r.headers


@pytest.mark.parametrize(
    ("content_type", "media_type"),
    [
        (OCI_INDEX, OCI_MANIFEST),
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (OCI_MANIFEST, DOCKER_MANIFEST),
    ],
)
def test_content_type_not_matching_media_type_returns_400_manifest_invalid(
    client: httpx.Client, repo: str, content_type: str, media_type: str
) -> None:
    config = b'{"mismatch": 1}'
    push_blob(client, repo, config)
    body = image_manifest(config, [], media_type=media_type)
    assert_error(put_manifest(client, repo, "v1", body, content_type), 400, "MANIFEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_image_manifest_with_layer_not_in_the_repository_returns_400_manifest_blob_unknown(
    client: httpx.Client, repo: str
) -> None:
    config = b'{"missing": "layer"}'
    layer = os.urandom(500)
    push_blob(client, repo, config)
    push_blob(client, f"{repo}-elsewhere", layer)  # exists in the registry, not linked here
    body = image_manifest(config, [layer])
    assert_error(put_manifest(client, repo, "v1", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_image_manifest_with_missing_config_returns_400_manifest_blob_unknown(
    client: httpx.Client, repo: str
) -> None:
    body = image_manifest(b'{"never": "pushed"}', [])
    assert_error(put_manifest(client, repo, "v1", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_with_missing_child_returns_400_manifest_blob_unknown(client: httpx.Client, repo: str) -> None:
    present = push_image(client, repo, seed="present")
    missing = image_manifest(b'{"missing": "child"}', [])
    body = _index([(OCI_MANIFEST, present.manifest), (OCI_MANIFEST, missing)])
    assert_error(put_manifest(client, repo, "idx", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/manifests/idx"), 404, "MANIFEST_UNKNOWN")


def test_non_distributable_layer_is_accepted_without_its_blob(client: httpx.Client, repo: str) -> None:
    config = b'{"os": "windows"}'
    push_blob(client, repo, config)
    foreign = b"bytes that live on another server"
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [
                descriptor(NON_DISTRIBUTABLE_LAYER, foreign, urls=["https://example.com/layer.tar.gz"]),
            ],
        }
    )
    _assert_pushed(put_manifest(client, repo, "win", body, OCI_MANIFEST), repo, body)
    _assert_pulls_back(client, repo, "win", body, OCI_MANIFEST)


def _huge_manifest(repo: str, client: httpx.Client) -> bytes:
    config = b'{"huge": true}'
    push_blob(client, repo, config)
    return image_manifest(config, [], annotations={"padding": "x" * (FOUR_MIB + 10)})


def test_manifest_over_4_mib_returns_413_with_json_error(client: httpx.Client, repo: str) -> None:
    body = _huge_manifest(repo, client)
    assert len(body) > FOUR_MIB
    r = put_manifest(client, repo, "huge", body, OCI_MANIFEST)
    assert_error(r, 413, "SIZE_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/huge"), 404, "MANIFEST_UNKNOWN")


def test_manifest_over_4_mib_streamed_without_content_length_returns_413(
    client: httpx.Client, repo: str
) -> None:
    body = _huge_manifest(repo, client)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    r = client.put(f"/v2/{repo}/manifests/huge", content=pieces(), headers={"Content-Type": OCI_MANIFEST})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 413, "SIZE_INVALID")


def test_manifest_just_under_the_limit_is_accepted(client: httpx.Client, repo: str) -> None:
    config = b'{"big": true}'
    push_blob(client, repo, config)
    base = image_manifest(config, [], annotations={"padding": ""})
    body = image_manifest(config, [], annotations={"padding": "x" * (FOUR_MIB - len(base))})
    assert len(body) == FOUR_MIB
    _assert_pushed(put_manifest(client, repo, "big", body, OCI_MANIFEST), repo, body)
    _assert_pulls_back(client, repo, "big", body, OCI_MANIFEST)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"a string"',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": 5}',
        b'{"schemaVersion": 1, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_invalid_manifest_returns_400_manifest_invalid(client: httpx.Client, repo: str, body: bytes) -> None:
    assert_error(put_manifest(client, repo, "bad", body, OCI_MANIFEST), 400, "MANIFEST_INVALID")


def test_descriptor_size_not_matching_the_blob_returns_400(client: httpx.Client, repo: str) -> None:
    config = b'{"size": "lies"}'
    push_blob(client, repo, config)
    doc = json.loads(image_manifest(config, []))
    doc["config"]["size"] = len(config) + 1
    r = put_manifest(client, repo, "v1", dumps(doc), OCI_MANIFEST)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] in ("MANIFEST_INVALID", "SIZE_INVALID")


def test_digest_in_url_not_matching_body_returns_400_digest_invalid(client: httpx.Client, repo: str) -> None:
    config = b'{"digest": "mismatch"}'
    push_blob(client, repo, config)
    body = image_manifest(config, [])
    wrong = digest_of(body + b" ")
    assert_error(put_manifest(client, repo, wrong, body, OCI_MANIFEST), 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/manifests/{wrong}"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/manifests/{digest_of(body)}"), 404, "MANIFEST_UNKNOWN")


def test_put_by_sha512_digest_is_accepted(client: httpx.Client, repo: str) -> None:
    config = b'{"sha": 512}'
    push_blob(client, repo, config)
    body = image_manifest(config, [])
    digest = digest_of(body, "sha512")
    r = put_manifest(client, repo, digest, body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert client.get(f"/v2/{repo}/manifests/{digest}").content == body


def test_tag_move_points_the_tag_at_the_new_manifest(client: httpx.Client, repo: str) -> None:
    old = push_image(client, repo, "latest", seed="old")
    new = push_image(client, repo, "latest", seed="new")
    assert old.digest != new.digest
    _assert_pulls_back(client, repo, "latest", new.manifest, OCI_MANIFEST)
    _assert_pulls_back(client, repo, old.digest, old.manifest, OCI_MANIFEST)  # still there by digest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]


def test_same_manifest_pushed_twice_is_idempotent(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "one")
    r = put_manifest(client, repo, "one", image.manifest, OCI_MANIFEST)
    _assert_pushed(r, repo, image.manifest)
    _assert_pulls_back(client, repo, "one", image.manifest, OCI_MANIFEST)


@pytest.mark.parametrize("tag", ["-leading-dash", ".dot", "x" * 129, "has space", "a+b"])
def test_invalid_tag_is_refused_with_400(client: httpx.Client, repo: str, tag: str) -> None:
    config = b'{"bad": "tag"}'
    push_blob(client, repo, config)
    r = put_manifest(client, repo, tag, image_manifest(config, []), OCI_MANIFEST)
    assert r.status_code == 400, r.text
    assert r.json()["errors"]


def test_layer_blob_of_the_manifest_is_pullable(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    layer = json.loads(image.manifest)["layers"][0]
    assert layer["mediaType"] == OCI_LAYER
    assert client.get(f"/v2/{repo}/blobs/{layer['digest']}").content == image.layers[0]
