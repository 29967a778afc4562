"""The manifest model: exact round trips, the published JSON Schema, and any input parsed or refused
with a format error."""

from __future__ import annotations

import contextlib
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.errors import FormatError
from airgap.model.manifest import Manifest, Part
from tests.helpers.manifests import D2, SCHEMA, make_manifest


def test_round_trip_is_exact() -> None:
    m = make_manifest()
    data = m.to_bytes()
    assert Manifest.from_bytes(data) == m
    assert Manifest.from_bytes(data).to_bytes() == data


def test_written_manifest_validates_against_published_schema() -> None:
    jsonschema.validate(json.loads(make_manifest().to_bytes()), SCHEMA)


def test_unknown_field_rejected() -> None:
    d = json.loads(make_manifest().to_bytes())
    d["parts"][0]["evil"] = 1
    with pytest.raises(FormatError, match="unknown field 'evil'"):
        Manifest.from_dict(d)


def test_missing_field_rejected() -> None:
    d = json.loads(make_manifest().to_bytes())
    del d["images"][0]["diff_ids"]
    with pytest.raises(FormatError, match="diff_ids"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/shadow", "parts/../manifest.json", "parts/x.zst"])
def test_part_path_escaping_bundle_rejected(path: str) -> None:
    d = json.loads(make_manifest().to_bytes())
    d["parts"][1]["path"] = path
    with pytest.raises(FormatError, match="not the name airgap gives"):
        Manifest.from_dict(d)


def test_float_rejected() -> None:
    data = make_manifest().to_bytes().replace(b'"sequence": 7', b'"sequence": 7.0')
    with pytest.raises(FormatError, match="floating point"):
        Manifest.from_bytes(data)


def test_gap_between_parts_rejected() -> None:
    m = make_manifest()
    parts = list(m.parts)
    parts[2] = Part(parts[2].path, 700, "3" * 64, D2, 1, 901, 599)
    with pytest.raises(FormatError, match="gap"):
        make_manifest(parts=tuple(parts))


def test_swapped_part_order_rejected() -> None:
    m = make_manifest()
    with pytest.raises(FormatError, match="out of order"):
        make_manifest(parts=(m.parts[0], m.parts[2], m.parts[1]))


def test_part_larger_than_part_size_rejected() -> None:
    with pytest.raises(FormatError, match="larger than the bundle's part size"):
        make_manifest(part_size=800)


def test_empty_image_list_rejected() -> None:
    with pytest.raises(FormatError, match="no image"):
        make_manifest(images=())


def test_newer_schema_version_named() -> None:
    d = json.loads(make_manifest().to_bytes())
    d["schema_version"] = 2
    with pytest.raises(FormatError, match="schema_version 2 is not supported"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("garbage", [b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"schema_version": 1}', b"[" * 100000])
def test_malformed_json_gives_format_error(garbage: bytes) -> None:
    with pytest.raises(FormatError):
        Manifest.from_bytes(garbage)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_parses_or_raises_format_error(value: object) -> None:
    with contextlib.suppress(FormatError):
        Manifest.from_dict(value)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_manifest_parses_or_raises_format_error(data: st.DataObject) -> None:
    d = json.loads(make_manifest().to_bytes())
    section = data.draw(st.sampled_from(["top", "image", "part", "blob"]))
    target = {"top": d, "image": d["images"][0], "part": d["parts"][1], "blob": d["blobs"][0]}[section]
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(json_values)
    try:
        m = Manifest.from_dict(d)
    except FormatError:
        return
    jsonschema.validate(json.loads(m.to_bytes()), SCHEMA)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=2000)
    | st.builds(lambda b, i: make_manifest().to_bytes()[:i] + b, st.binary(max_size=40), st.integers(0, 3000))
)
def test_any_bytes_parse_or_raise_format_error(data: bytes) -> None:
    """Fuzz target for the manifest parser: raw bytes, and a good manifest cut and spliced at random."""
    with contextlib.suppress(FormatError):
        Manifest.from_bytes(data)


def test_field_from_a_newer_airgap_says_so_naming_the_version_the_bundle_names() -> None:
    d = {
        "schema_version": 1, "media_type": "application/vnd.airgap.bundle.manifest.v1+json", "name": "a",
        "sequence": 1, "created": "2026-01-01T00:00:00Z", "expires": None, "base": None,
        "tool": {"name": "airgap", "version": "9.9"}, "part_size": 1, "compression": {"algorithm": "zstd", "level": 3},
        "images": [], "blobs": [], "parts": [], "something_new": [],
    }  # fmt: skip
    try:
        Manifest.from_dict(d)
    except FormatError as e:
        assert "unknown field 'something_new'" in e.message
        assert e.hint is not None and "newer airgap" in e.hint and "9.9" in e.hint
    else:
        raise AssertionError("a manifest with an unknown field was read")
