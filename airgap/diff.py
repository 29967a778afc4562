"""diff: what differs between two bundles -- images, layers and bytes -- from their manifests alone.

For auditors (what changed between two releases) and for planning a transfer (what a delta of B
since A would carry: ``airgap pack ... --since A``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airgap._internal.format.reader import MAX_MANIFEST_BYTES, locate, read_manifest_bytes
from airgap._internal.util import fsutil
from airgap._internal.util.text import printable
from airgap.errors import FormatError, IntegrityError, UsageError
from airgap.model.manifest import Manifest


def read_manifest(path: Path) -> Manifest:
    """A bundle directory (split or not) or a manifest.json file; signatures are not checked here."""
    if path.is_dir():
        home = locate(path)[0]
        data = read_manifest_bytes(home)
        where = home / "manifest.json"
    else:
        try:
            data = fsutil.read_capped(path, str(path), MAX_MANIFEST_BYTES)
        except IntegrityError as e:
            raise UsageError(f"cannot read {path}: {e.message}", hint="name a bundle directory or its manifest.json") from e
        where = path
    try:
        return Manifest.from_bytes(data)
    except FormatError as e:
        raise FormatError(f"{where}: {e.message.removeprefix('manifest: ')}", e.hint) from e


@dataclass(frozen=True)
class ImageChange:
    """One image in bundle A, B or both: its IDs on each side and whether it was added, removed or changed."""

    name: str  # a tag, or an image ID for an untagged image
    platform: str
    old: str | None  # image IDs
    new: str | None

    @property
    def status(self) -> str:
        """How the image fares from A to B: "added", "removed", "same" or "changed" (another image ID)."""
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "same" if self.old == self.new else "changed"


@dataclass(frozen=True)
class BundleDiff:
    """What differs between bundles A and B: images, and the layers only in B, only in A, or in both."""

    a: Path
    b: Path
    images: tuple[ImageChange, ...]
    added_layers: tuple[tuple[str, int], ...]  # in B only: what a delta of B since A carries
    removed_layers: tuple[tuple[str, int], ...]  # in A only
    shared_layers: tuple[tuple[str, int], ...]
    delta_part_bytes: int | None  # compressed bytes of the added layers, when B carries them all

    def to_dict(self) -> dict[str, object]:
        """The JSON report: each image's status and IDs, the layer sets with counts, bytes and digests."""

        def layers(items: tuple[tuple[str, int], ...]) -> dict[str, object]:
            return {"count": len(items), "bytes": sum(s for _, s in items), "digests": [d for d, _ in items]}

        return {
            "a": str(self.a),
            "b": str(self.b),
            "images": [
                {"name": i.name, "platform": i.platform, "status": i.status, "old": i.old, "new": i.new} for i in self.images
            ],
            "layers": {
                "added": layers(self.added_layers),
                "removed": layers(self.removed_layers),
                "shared": layers(self.shared_layers),
            },
            "delta_part_bytes": self.delta_part_bytes,
        }

    def render(self) -> str:
        """The report for people: images, then the layers added and removed (each listed) and shared."""
        lines = [f"images ({printable(str(self.a))} -> {printable(str(self.b))}):"]
        for i in self.images:
            ids = {"added": f"{i.new}", "removed": f"{i.old}", "same": f"{i.new}", "changed": f"{i.old} -> {i.new}"}[i.status]
            lines.append(f"  {i.status:<8} {i.name}  {i.platform}  {ids}")
        for label, items in (("added", self.added_layers), ("removed", self.removed_layers), ("shared", self.shared_layers)):
            total = fsutil.human_bytes(sum(s for _, s in items))
            lines.append(f"layers {label + ':':<9}{len(items):>4}  {total}")
            if label != "shared":
                lines += [f"    {d}  {fsutil.human_bytes(s)}" for d, s in items]
        if self.delta_part_bytes is not None:
            lines.append(f"a delta of B since A carries about {fsutil.human_bytes(self.delta_part_bytes)} of parts")
        return "\n".join(lines)


def diff(a: Path, b: Path) -> BundleDiff:
    """Compare two bundles (directories or manifest.json files) from their manifests alone; signatures are not checked."""
    old, new = read_manifest(a), read_manifest(b)

    def named(m: Manifest) -> dict[tuple[str, str], str]:
        """Each (name, platform) of a manifest's images -> image ID; an untagged image goes by its ID."""
        out: dict[tuple[str, str], str] = {}
        for image in m.images:
            for name in image.ref_names or (image.image_id,):
                out[(name, str(image.platform))] = image.image_id
        return out

    before, after = named(old), named(new)
    images = tuple(ImageChange(k[0], k[1], before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()))

    def layers(m: Manifest) -> dict[str, int]:
        return {layer.digest: layer.size for image in m.images for layer in image.layers}

    la, lb = layers(old), layers(new)
    added = tuple(sorted((d, s) for d, s in lb.items() if d not in la))
    removed = tuple(sorted((d, s) for d, s in la.items() if d not in lb))
    shared = tuple(sorted((d, s) for d, s in lb.items() if d in la))
    carried = all(new.has_blob(d) for d, _ in added)
    part_bytes = sum(p.size for d, _ in added for p in new.parts_of(d)) if carried else None
    return BundleDiff(a, b, images, added, removed, shared, part_bytes)
