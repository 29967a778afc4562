"""The inventories a bundle carries: each image's SBOM, read through the bundle reader and checked against
the size and sha256 the manifest lists (so a signed manifest vouches for them), then parsed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from airgap._internal.format.reader import LoadedBundle, open_part
from airgap._internal.inventory import cyclonedx
from airgap._internal.inventory.records import ImageInventory
from airgap.errors import FormatError, IntegrityError
from airgap.model.manifest import Image


@dataclass(frozen=True)
class ImageSbom:
    """One image of a bundle and its inventory (None: the bundle carries no SBOM for it)."""

    image: Image
    path: str | None
    inventory: ImageInventory | None


def read_inventories(bundle: LoadedBundle) -> list[ImageSbom]:
    """Every image of the bundle with its SBOM, in the manifest's order.  A listed SBOM that is missing,
    of another size or hash, or unreadable is an error naming it."""
    listed = {f.path: f for f in bundle.manifest.files}
    out = []
    for image in bundle.manifest.images:
        path = cyclonedx.sbom_path(image.image_id)
        entry = listed.get(path)
        if entry is None:
            out.append(ImageSbom(image, None, None))
            continue
        if entry.size > cyclonedx.MAX_SBOM_BYTES:
            raise FormatError(f"file {path} is {entry.size} bytes, larger than an SBOM airgap reads")
        with open_part(bundle, entry) as fh:
            data = fh.read(entry.size + 1)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError(
                f"file {path} does not match the sha256 the manifest lists",
                hint="the SBOM was changed after the bundle was signed: copy the bundle again from the original medium",
                path=path,
            )
        sbom = cyclonedx.read(data, f"file {path}")
        if sbom.image_id != image.image_id:
            raise IntegrityError(f"file {path} describes image {sbom.image_id[:19]}, not {image.image_id[:19]}", path=path)
        out.append(ImageSbom(image, path, sbom.inventory))
    return out
