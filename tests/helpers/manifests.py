"""A small valid manifest to mutate, and the JSON Schema auditors validate bundles against."""

from __future__ import annotations

import json
from typing import Any

from airgap.model.manifest import Blob, Compression, Descriptor, Image, Manifest, Part, Platform, part_path
from tests.helpers.paths import ROOT

SCHEMA: dict[str, Any] = json.loads((ROOT / "manifests" / "bundle-v1.schema.json").read_text())
D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def make_manifest(**overrides: object) -> Manifest:
    """One arm64 image of a config (D1) and one layer (D2) in two parts; ``overrides`` replace fields."""
    fields: dict[str, object] = {
        "name": "agent",
        "sequence": 7,
        "created": "2026-11-30T00:00:00Z",
        "tool_version": "0.1.0",
        "part_size": 1000,
        "compression": Compression("zstd", 3),
        "images": (
            Image(
                ("reg.local:5000/agent:1.0",),
                Descriptor(D1, 10, "application/vnd.oci.image.config.v1+json"),
                (Descriptor(D2, 1500, "application/vnd.oci.image.layer.v1.tar"),),
                (D2,),
                Platform("linux", "arm64", "v8"),
            ),
        ),
        "blobs": (Blob(D1, 10), Blob(D2, 1500)),
        "parts": (
            Part(part_path(D1, 0), 30, "1" * 64, D1, 0, 0, 10),
            Part(part_path(D2, 0), 900, "2" * 64, D2, 0, 0, 900),
            Part(part_path(D2, 1), 700, "3" * 64, D2, 1, 900, 600),
        ),
    }
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]  # overrides are checked by Manifest itself, as tests want
