"""Manifests: parse and validate (image-spec manifest.md, image-index.md; spec: "Pushing Manifests")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.registry.digests import Digest
from dockyard.registry.errors import RegistryError
from dockyard.registry.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ParsedManifest,
    Platform,
    parse_manifest,
    referrers_index,
)
from dockyard.registry.ports import ManifestRecord, ManifestRef
from tests.unit.expect import raises_registry_error

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SBOM = "application/spdx+json"


# ---------------------------------------------------------------------------------------------
# building manifests


def digest_of(content: str) -> str:
    return str(Digest.of(content.encode()))


def descriptor(media_type: str, content: str = "x", **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(content), "size": len(content), **extra}


def image(
    media_type: str | None = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    layer_count: int = 2,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(config_type, "config"),
        "layers": [descriptor(layer_type, f"layer {i}") for i in range(layer_count)],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def index(media_type: str | None = OCI_INDEX, child_count: int = 2, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [descriptor(OCI_MANIFEST, f"child {i}") for i in range(child_count)],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def parse(doc: Any, content_type: str | None = None) -> ParsedManifest:
    if content_type is None and isinstance(doc, dict):
        content_type = doc.get("mediaType")
    return parse_manifest(encode(doc), content_type)


def assert_manifest_invalid(body: bytes, content_type: str | None = OCI_MANIFEST) -> None:
    with raises_registry_error("MANIFEST_INVALID", 400):
        parse_manifest(body, content_type)


def assert_parses_or_is_manifest_invalid(body: bytes, content_type: str | None) -> ParsedManifest | None:
    """The one contract for untrusted bytes: a manifest, or MANIFEST_INVALID; nothing else escapes."""
    try:
        parsed = parse_manifest(body, content_type)
    except RegistryError as exc:
        assert (exc.error.code, exc.status) == ("MANIFEST_INVALID", 400), exc
        return None
    assert parsed.media_type in MANIFEST_TYPES
    if parsed.media_type in INDEX_TYPES:
        assert parsed.blobs == []
    else:
        assert parsed.children == []
        assert parsed.blobs, "an image manifest always has its config"
        assert parsed.artifact_type
    for d in [*parsed.blobs, *parsed.children, *([parsed.subject] if parsed.subject else [])]:
        assert d.size >= 0
        assert Digest.parse(str(d.digest)) == d.digest
    return parsed


# ---------------------------------------------------------------------------------------------
# the accepted formats


def test_oci_image_manifest() -> None:
    doc = image()
    parsed = parse(doc)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.artifact_type == OCI_CONFIG  # no artifactType: the config's mediaType stands in
    assert parsed.subject is None
    assert parsed.children == []
    assert [str(d.digest) for d in parsed.blobs] == [
        doc["config"]["digest"],
        *(layer["digest"] for layer in doc["layers"]),
    ]
    assert [d.media_type for d in parsed.blobs] == [OCI_CONFIG, OCI_LAYER, OCI_LAYER]
    assert [d.size for d in parsed.blobs] == [len("config"), len("layer 0"), len("layer 1")]


def test_oci_image_index() -> None:
    doc = index()
    parsed = parse(doc)
    assert parsed.media_type == OCI_INDEX
    assert parsed.artifact_type is None
    assert parsed.blobs == []
    assert [str(d.digest) for d in parsed.children] == [m["digest"] for m in doc["manifests"]]


def test_docker_schema2_manifest() -> None:
    parsed = parse(image(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER))
    assert parsed.media_type == DOCKER_MANIFEST
    assert parsed.artifact_type == DOCKER_CONFIG
    assert len(parsed.blobs) == 3


def test_docker_manifest_list() -> None:
    parsed = parse(index(DOCKER_LIST, child_count=3))
    assert parsed.media_type == DOCKER_LIST
    assert parsed.artifact_type is None
    assert len(parsed.children) == 3


def test_artifact_manifest_reports_its_artifact_type() -> None:
    doc = image(config_type=OCI_EMPTY, layer_type=SBOM, layer_count=1, artifactType=SBOM)
    parsed = parse(doc)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.artifact_type == SBOM


def test_artifact_index_reports_its_artifact_type() -> None:
    assert parse(index(artifactType=SBOM)).artifact_type == SBOM


def test_artifact_with_no_layers_is_accepted() -> None:
    parsed = parse(image(config_type=OCI_EMPTY, layer_count=0, artifactType=SBOM))
    assert [d.media_type for d in parsed.blobs] == [OCI_EMPTY]


@pytest.mark.parametrize("doc", [image(), index()], ids=["image", "index"])
def test_subject_and_annotations_are_kept(doc: dict[str, Any]) -> None:
    subject = descriptor(OCI_MANIFEST, "the subject")
    parsed = parse({**doc, "subject": subject, "annotations": {"org.example": "yes"}})
    assert parsed.subject is not None
    assert str(parsed.subject.digest) == subject["digest"]
    assert parsed.subject.media_type == OCI_MANIFEST
    assert parsed.annotations == {"org.example": "yes"}


def test_null_subject_is_no_subject() -> None:
    assert parse(image(subject=None)).subject is None


@pytest.mark.parametrize(
    ("doc", "content_type", "expected"),
    [
        (image(media_type=None), OCI_MANIFEST, OCI_MANIFEST),
        (image(media_type=None), DOCKER_MANIFEST, DOCKER_MANIFEST),
        (index(media_type=None), OCI_INDEX, OCI_INDEX),
        (index(media_type=None), DOCKER_LIST, DOCKER_LIST),
        (image(media_type=None), None, OCI_MANIFEST),  # no type anywhere: told apart by shape
        (index(media_type=None), None, OCI_INDEX),
        (image(media_type=None), "application/json", OCI_MANIFEST),
        (image(), "application/octet-stream", OCI_MANIFEST),
        (index(), "application/json", OCI_INDEX),
        (image(), f"{OCI_MANIFEST}; charset=utf-8", OCI_MANIFEST),
        (image(), OCI_MANIFEST.upper(), OCI_MANIFEST),  # media types are case-insensitive
    ],
)
def test_media_type_comes_from_the_manifest_the_header_or_the_shape(
    doc: dict[str, Any], content_type: str | None, expected: str
) -> None:
    assert parse_manifest(encode(doc), content_type).media_type == expected


def test_record_and_refs_describe_the_manifest() -> None:
    layer = descriptor(OCI_LAYER, "same")
    doc = image(layer_count=0, subject=descriptor(OCI_MANIFEST, "subject"), artifactType=SBOM)
    doc["layers"] = [layer, layer]
    parsed = parse(doc)
    digest = Digest.of(encode(doc))
    record = parsed.record(digest, 123)
    assert record == ManifestRecord(
        digest=digest,
        media_type=OCI_MANIFEST,
        size=123,
        artifact_type=SBOM,
        subject=Digest.parse(doc["subject"]["digest"]),
        annotations=None,
    )
    assert parsed.refs() == [  # each blob once, in order
        ManifestRef(Digest.parse(doc["config"]["digest"]), "blob"),
        ManifestRef(Digest.parse(layer["digest"]), "blob"),
    ]
    children = parse(index()).refs()
    assert [ref.kind for ref in children] == ["manifest", "manifest"]


# ---------------------------------------------------------------------------------------------
# what is refused


@pytest.mark.parametrize(
    ("declared", "content_type"),
    [
        (OCI_MANIFEST, OCI_INDEX),
        (OCI_INDEX, OCI_MANIFEST),
        (OCI_MANIFEST, DOCKER_MANIFEST),
        (DOCKER_LIST, OCI_INDEX),
        (OCI_MANIFEST, "text/plain"),
    ],
)
def test_content_type_that_contradicts_the_media_type_is_manifest_invalid(
    declared: str, content_type: str
) -> None:
    doc = index(declared) if declared in INDEX_TYPES else image(declared)
    assert_manifest_invalid(encode(doc), content_type)


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        (image("application/vnd.docker.distribution.manifest.v1+json"), None),
        (image(None), "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (image("application/vnd.oci.image.config.v1+json"), None),
        (image(None), "text/plain"),
        (image(schemaVersion=1), OCI_MANIFEST),
        (image(schemaVersion="2"), OCI_MANIFEST),
        (image(schemaVersion=2.0), OCI_MANIFEST),  # the image-spec's schemaVersion is an int
        (image(schemaVersion=None), OCI_MANIFEST),
        ({k: v for k, v in image().items() if k != "schemaVersion"}, OCI_MANIFEST),
        (image(None, mediaType=7), OCI_MANIFEST),
        (image(artifactType=""), OCI_MANIFEST),
        (image(artifactType=["x"]), OCI_MANIFEST),
        (image(manifests=[]), OCI_MANIFEST),
        (image(layers={}), OCI_MANIFEST),
        (image(layers=None), OCI_MANIFEST),
        (image(config=None), OCI_MANIFEST),
        ({k: v for k, v in image().items() if k != "config"}, OCI_MANIFEST),
        (image(config=[]), OCI_MANIFEST),
        (image(annotations={"a": 1}), OCI_MANIFEST),
        (image(annotations=[]), OCI_MANIFEST),
        (image(subject="sha256:" + "0" * 64), OCI_MANIFEST),
        (image(subject={}), OCI_MANIFEST),
        (index(config=descriptor(OCI_CONFIG)), OCI_INDEX),
        (index(layers=[]), OCI_INDEX),
        (index(manifests=None), OCI_INDEX),
        (index(manifests={}), OCI_INDEX),
        ({"schemaVersion": 2, "mediaType": OCI_INDEX}, OCI_INDEX),
        (index(manifests=[descriptor(OCI_MANIFEST), "sha256:" + "0" * 64]), OCI_INDEX),
    ],
)
def test_malformed_manifest_is_manifest_invalid(doc: dict[str, Any], content_type: str | None) -> None:
    assert_manifest_invalid(encode(doc), content_type)


BAD_DESCRIPTOR_FIELDS: list[dict[str, Any]] = [
    {"size": -1},
    {"size": 1.5},
    {"size": 1.0},
    {"size": "1"},
    {"size": True},
    {"size": None},
    {"digest": "sha256:" + "A" * 64},
    {"digest": "sha256:" + "0" * 63},
    {"digest": "md5:" + "0" * 32},
    {"digest": "sha256:"},
    {"digest": ""},
    {"digest": None},
    {"digest": 1},
    {"mediaType": ""},
    {"mediaType": None},
    {"mediaType": 1},
    {"mediaType": "a/" + "b" * 300},
    {"artifactType": 1},
    {"urls": "https://example.com/layer"},
    {"urls": [1]},
    {"annotations": {"k": 1}},
    {"annotations": "k=v"},
]


@pytest.mark.parametrize("bad", BAD_DESCRIPTOR_FIELDS, ids=lambda bad: repr(bad)[:40])
@pytest.mark.parametrize("where", ["config", "layer", "child", "subject"])
def test_malformed_descriptor_is_manifest_invalid(where: str, bad: dict[str, Any]) -> None:
    if where == "child":
        doc = index()
        doc["manifests"][0].update(bad)
    elif where == "subject":
        doc = image(subject={**descriptor(OCI_MANIFEST, "subject"), **bad})
    else:
        doc = image()
        target = doc["config"] if where == "config" else doc["layers"][1]
        target.update(bad)
    assert_manifest_invalid(encode(doc), doc["mediaType"])


@pytest.mark.parametrize("urls", [{}, "", 0, False, {"a": "b"}, "https://example.com/x"])
def test_descriptor_urls_that_are_not_a_list_are_manifest_invalid(urls: Any) -> None:
    with raises_registry_error("MANIFEST_INVALID"):
        Descriptor.parse({**descriptor(OCI_LAYER), "urls": urls}, "layers[0]")


@pytest.mark.parametrize("missing", ["mediaType", "digest", "size"])
def test_descriptor_without_a_required_field_is_manifest_invalid(missing: str) -> None:
    value = descriptor(OCI_LAYER)
    del value[missing]
    with raises_registry_error("MANIFEST_INVALID"):
        Descriptor.parse(value, "layers[0]")


def test_descriptor_parses_every_field() -> None:
    value = descriptor(
        OCI_MANIFEST,
        "child",
        artifactType=SBOM,
        annotations={"a": "b"},
        urls=["https://example.com/x"],
        platform={"os": "linux", "architecture": "amd64", "variant": "v8"},
    )
    parsed = Descriptor.parse(value, "manifests[0]")
    assert parsed == Descriptor(
        media_type=OCI_MANIFEST,
        digest=Digest.parse(value["digest"]),
        size=len("child"),
        artifact_type=SBOM,
        annotations={"a": "b"},
        urls=("https://example.com/x",),
        platform=Platform(os="linux", architecture="amd64", variant="v8"),
    )
    assert not parsed.non_distributable


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ],
)
def test_foreign_layers_are_non_distributable(media_type: str) -> None:
    assert Descriptor.parse(descriptor(media_type), "layers[0]").non_distributable


@given(st.integers(0, 2**70))
def test_descriptor_size_may_be_any_non_negative_integer(size: int) -> None:
    assert Descriptor.parse({**descriptor(OCI_LAYER), "size": size}, "layers[0]").size == size


@given(st.integers(max_value=-1))
def test_descriptor_size_may_not_be_negative(size: int) -> None:
    with raises_registry_error("MANIFEST_INVALID"):
        Descriptor.parse({**descriptor(OCI_LAYER), "size": size}, "layers[0]")


# ---------------------------------------------------------------------------------------------
# hostile bytes


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b"{}}",
        b'{"schemaVersion": 2,}',
        b"{'schemaVersion': 2}",
        b"\xff\xfe\x00",
        b'{"a": "\xff"}',
        b"\x00" * 16,
        b'{"schemaVersion": ' + b"9" * 5000 + b"}",  # beyond int() digit limit
        b"[]",
        b"[1, 2]",
        b"1",
        b'"manifest"',
        b"null",
        b"true",
        b"NaN",
    ],
)
def test_body_that_is_not_a_json_object_is_manifest_invalid(body: bytes) -> None:
    assert_manifest_invalid(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"schemaVersion": 2, "schemaVersion": 2, "config": {}}',
        b'{"mediaType": "%s", "mediaType": "%s"}' % (OCI_MANIFEST.encode(), OCI_MANIFEST.encode()),
        encode(image())[:-1] + b', "layers": []}',
        b'{"schemaVersion": 2, "annotations": {"k": "a", "k": "b"}}',
        encode(image(annotations={"k": "v"})).replace(b'"k": "v"', b'"k": "v", "k": "w"'),
    ],
)
def test_duplicate_keys_are_manifest_invalid(body: bytes) -> None:
    """Two readers could take different values from the same bytes; refuse them all."""
    assert_manifest_invalid(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"schemaVersion": 2, "annotations": ' + b'{"a":' * 50_000 + b"{}" + b"}" * 50_001,
        b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["lists", "unclosed-lists", "objects", "annotations", "inside-object"],
)
def test_deeply_nested_json_is_manifest_invalid(body: bytes) -> None:
    assert_manifest_invalid(body)


CONTENT_TYPES = st.sampled_from(
    [None, "", "application/json", OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, "text/plain"]
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)

MANIFEST_KEYS = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
]
DESCRIPTOR_KEYS = ["mediaType", "digest", "size", "artifactType", "urls", "annotations", "platform"]
media_types = st.sampled_from(
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, OCI_CONFIG, OCI_LAYER, "", "x/y"]
)
digests = st.sampled_from(
    [digest_of("a"), str(Digest.of(b"a", "sha512")), "sha256:" + "A" * 64, "sha256:", "md5:00"]
)


def _field(key: str) -> st.SearchStrategy[Any]:
    """Plausible and implausible values for one field of a manifest or descriptor."""
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "schemaVersion": st.sampled_from([2, 1, 2.0, "2", True]),
        "mediaType": media_types,
        "artifactType": media_types,
        "digest": digests,
        "size": st.integers(-2, 2**64),
        "urls": st.lists(st.text(max_size=10), max_size=2),
        "annotations": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        "platform": st.fixed_dictionaries({"os": st.just("linux")}),
    }
    return plausible.get(key, st.nothing()) | json_values


descriptors = media_types.map(descriptor) | st.sets(st.sampled_from(DESCRIPTOR_KEYS)).flatmap(
    lambda keys: st.fixed_dictionaries({key: _field(key) for key in sorted(keys)})
)

manifest_fields: dict[str, st.SearchStrategy[Any]] = {
    "config": descriptors | json_values,
    "subject": descriptors | json_values,
    "layers": st.lists(descriptors, max_size=3) | json_values,
    "manifests": st.lists(descriptors, max_size=3) | json_values,
}


@st.composite
def manifest_like(draw: st.DrawFn) -> dict[str, Any]:
    """A document with some of a manifest's fields, each right, nearly right or wrong."""
    keys = draw(st.sets(st.sampled_from(MANIFEST_KEYS)))
    doc = {key: draw(manifest_fields.get(key, _field(key))) for key in sorted(keys)}
    if draw(st.booleans()):
        doc.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return doc


@settings(max_examples=300)
@given(st.binary(max_size=200), CONTENT_TYPES)
def test_arbitrary_bytes_are_a_manifest_or_manifest_invalid(body: bytes, content_type: str | None) -> None:
    assert_parses_or_is_manifest_invalid(body, content_type)


@settings(max_examples=300)
@given(json_values, CONTENT_TYPES)
def test_arbitrary_json_is_a_manifest_or_manifest_invalid(value: Any, content_type: str | None) -> None:
    assert_parses_or_is_manifest_invalid(encode(value), content_type)


@settings(max_examples=200)
@given(manifest_like(), CONTENT_TYPES)
def test_manifest_like_json_is_a_manifest_or_manifest_invalid(
    doc: dict[str, Any], content_type: str | None
) -> None:
    assert_parses_or_is_manifest_invalid(encode(doc), content_type)


@given(
    st.lists(st.builds(lambda t: descriptor(OCI_LAYER, t), st.text(max_size=8)), max_size=4),
    st.sampled_from([OCI_MANIFEST, DOCKER_MANIFEST]),
    st.one_of(st.none(), media_types.filter(bool)),
)
def test_valid_image_manifest_lists_config_then_layers(
    layers: list[dict[str, Any]], media_type: str, artifact_type: str | None
) -> None:
    doc = image(media_type, layer_count=0)
    doc["layers"] = layers
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    parsed = parse(doc)
    assert parsed.media_type == media_type
    assert parsed.artifact_type == (artifact_type or OCI_CONFIG)
    assert [str(d.digest) for d in parsed.blobs] == [doc["config"]["digest"]] + [
        layer["digest"] for layer in layers
    ]


# ---------------------------------------------------------------------------------------------
# referrers


def test_referrers_index_with_no_referrers_is_an_empty_index() -> None:
    assert referrers_index([]) == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_index_lists_each_referrer_as_a_descriptor() -> None:
    sbom = ManifestRecord(
        digest=Digest.of(b"sbom"),
        media_type=OCI_MANIFEST,
        size=321,
        artifact_type=SBOM,
        subject=Digest.of(b"image"),
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    )
    plain = ManifestRecord(digest=Digest.of(b"plain"), media_type=OCI_INDEX, size=12)
    assert referrers_index([sbom, plain]) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": str(sbom.digest),
                "size": 321,
                "artifactType": SBOM,
                "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
            },
            {"mediaType": OCI_INDEX, "digest": str(plain.digest), "size": 12},
        ],
    }


records = st.builds(
    ManifestRecord,
    digest=st.binary(max_size=8).map(Digest.of),
    media_type=st.sampled_from(sorted(MANIFEST_TYPES)),
    size=st.integers(0, 2**40),
    artifact_type=st.one_of(st.none(), st.sampled_from([SBOM, OCI_CONFIG, "application/x.sig"])),
    subject=st.none(),
    annotations=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
)


@given(st.lists(records, max_size=5))
def test_referrers_index_is_itself_a_valid_image_index(referrers: list[ManifestRecord]) -> None:
    body = encode(referrers_index(referrers))
    parsed = parse_manifest(body, OCI_INDEX)
    assert parsed.media_type == OCI_INDEX
    assert [d.digest for d in parsed.children] == [r.digest for r in referrers]
    assert [d.size for d in parsed.children] == [r.size for r in referrers]
    assert [d.artifact_type for d in parsed.children] == [r.artifact_type for r in referrers]
    assert [d.annotations for d in parsed.children] == [r.annotations or None for r in referrers]
