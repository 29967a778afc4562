"""Image manifests and indexes for a bundle's images, as registries and OCI layouts hold them.

The config blob and the layer blobs are the bundle's own, byte for byte, so the image ID (the config
digest) never changes.  Images whose config is Docker's get a Docker schema 2 manifest (what
``docker push`` writes); others an OCI manifest.  Zstd layers exist only in OCI manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from airgap.model.manifest import Descriptor, Image, Platform
from airgap.model.mediatypes import (
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_DOCKER_LAYER_GZIP,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST,
)

_AS_DOCKER = {MT_OCI_LAYER: MT_DOCKER_LAYER, MT_DOCKER_LAYER: MT_DOCKER_LAYER, MT_OCI_LAYER_GZIP: MT_DOCKER_LAYER_GZIP}
_AS_OCI = {MT_DOCKER_LAYER: MT_OCI_LAYER, MT_DOCKER_LAYER_GZIP: MT_OCI_LAYER_GZIP}


def compression_of(media_type: str) -> str | None:
    """How a layer media type says its tar is compressed: "gzip", "zstd", or None (an uncompressed tar).
    Docker's and OCI's names alike (``...tar.gzip``, ``...tar+zstd``, the non-distributable variants)."""
    for name in ("gzip", "zstd"):
        if media_type.endswith((f"+{name}", f".{name}")):
            return name
    return None


def digest_of(data: bytes) -> str:
    """The sha256 digest of ``data``, as registries name blobs and manifests."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(desc: Descriptor, media_type: str) -> dict[str, object]:
    """A descriptor as image manifests write it, under the given media type."""
    return {"mediaType": media_type, "digest": desc.digest, "size": desc.size}


def uses_docker_schema(image: Image) -> bool:
    """Whether a Docker schema 2 manifest can describe the image: a Docker config, and layers whose types map
    to Docker's (zstd layers need OCI)."""
    return image.config.media_type == MT_DOCKER_CONFIG and all(layer.media_type in _AS_DOCKER for layer in image.layers)


def image_manifest(image: Image, oci: bool = False) -> tuple[bytes, str]:
    """The manifest bytes and media type for ``image`` (OCI when asked or when Docker's cannot say it)."""
    if not oci and uses_docker_schema(image):
        body = {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": _descriptor(image.config, MT_DOCKER_CONFIG),
            "layers": [_descriptor(layer, _AS_DOCKER[layer.media_type]) for layer in image.layers],
        }
        return _dump(body), MT_DOCKER_MANIFEST
    body = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": _descriptor(image.config, MT_OCI_CONFIG),
        "layers": [_descriptor(layer, _AS_OCI.get(layer.media_type, layer.media_type)) for layer in image.layers],
    }
    return _dump(body), MT_OCI_MANIFEST


def platform_dict(platform: Platform) -> dict[str, str]:
    """The platform object of an index entry."""
    d = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        d["variant"] = platform.variant
    return d


def index_manifest(entries: list[tuple[bytes, str, Platform]], oci: bool = False) -> tuple[bytes, str]:
    """An index (manifest list) over manifests given as (bytes, media type, platform)."""
    docker = not oci and all(mt == MT_DOCKER_MANIFEST for _, mt, _ in entries)
    media_type = MT_DOCKER_LIST if docker else MT_OCI_INDEX
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {"mediaType": mt, "digest": digest_of(data), "size": len(data), "platform": platform_dict(platform)}
            for data, mt, platform in entries
        ],
    }
    return _dump(body), media_type


def _dump(body: object) -> bytes:
    """The bytes a manifest or index is stored and pushed as; its digest is taken over exactly these."""
    return json.dumps(body, indent=3).encode()


def docker_save_layout(
    images: list[Image],
    elsewhere: Mapping[str, str] | None = None,
    decompressed: Mapping[str, tuple[str, int]] | None = None,
) -> tuple[list[tuple[str, str, int]], bytes]:
    """What ``docker load`` reads: (member name, blob digest, size) for every layer and config, each once,
    and the bytes of its ``manifest.json`` index, which goes last.  ``elsewhere`` maps layer digests to
    members the archive holds under other names (layers taken from the engine): no entry is made for them.
    ``decompressed`` maps the digests of compressed layers sent decompressed to (diff_id, size sent): such
    a layer is named after its diff_id, as ``docker save`` and skopeo name layers."""
    elsewhere = elsewhere or {}
    decompressed = decompressed or {}

    def member(layer: Descriptor) -> tuple[str, int]:
        if layer.digest in decompressed:
            diff_id, size = decompressed[layer.digest]
            return f"{diff_id.removeprefix('sha256:')}/layer.tar", size
        return f"{layer.digest.removeprefix('sha256:')}/layer.tar", layer.size

    entries: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for image in images:
        for layer in image.layers:
            name, size = member(layer)
            if name not in seen and layer.digest not in elsewhere:
                seen.add(name)
                entries.append((name, layer.digest, size))
    for image in images:
        config_name = f"{image.config.digest.removeprefix('sha256:')}.json"
        if config_name not in seen:
            seen.add(config_name)
            entries.append((config_name, image.config.digest, image.config.size))
    index = [
        {
            "Config": f"{image.config.digest.removeprefix('sha256:')}.json",
            "RepoTags": list(image.ref_names) or None,
            "Layers": [elsewhere.get(layer.digest) or member(layer)[0] for layer in image.layers],
        }
        for image in images
    ]
    return entries, json.dumps(index, separators=(",", ":")).encode()
