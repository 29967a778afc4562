"""diff: what differs between two bundles -- images, layers and bytes, and the packages and models their
images hold -- from their manifests and SBOMs alone.

For auditors (what changed between two releases) and for planning a transfer (what a delta of B
since A would carry: ``airgap pack ... --since A``).  The SBOMs are checked against the sha256 their
manifest lists; signatures are not checked here (``airgap verify`` or ``inspect --sbom --trust``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airgap._internal.format.reader import MAX_MANIFEST_BYTES, LoadedBundle, locate, read_manifest_bytes
from airgap._internal.inventory import report
from airgap._internal.inventory.bundle import read_inventories
from airgap._internal.inventory.records import ImageInventory, Package
from airgap._internal.util import fsutil
from airgap._internal.util.text import printable
from airgap.errors import FormatError, IntegrityError, UsageError
from airgap.model.manifest import Manifest


def read_manifest(path: Path) -> Manifest:
    """A bundle directory (split or not) or a manifest.json file; signatures are not checked here."""
    return _load(path).manifest


def _load(path: Path) -> LoadedBundle:
    """A bundle directory (split or not) or a manifest.json file (its SBOMs beside it), unauthenticated."""
    search: tuple[Path, ...] = ()
    root = None
    if path.is_dir():
        home, search, root = locate(path)
        data = read_manifest_bytes(home)
        where = home / "manifest.json"
    else:
        try:
            data = fsutil.read_capped(path, str(path), MAX_MANIFEST_BYTES)
        except IntegrityError as e:
            raise UsageError(f"cannot read {path}: {e.message}", hint="name a bundle directory or its manifest.json") from e
        home, where = path.parent, path
    try:
        manifest = Manifest.from_bytes(data)
    except FormatError as e:
        raise FormatError(f"{where}: {e.message.removeprefix('manifest: ')}", e.hint) from e
    return LoadedBundle(home, data, manifest, {}, search, root=root)


@dataclass(frozen=True)
class Changes:
    """What was added, removed and changed in one kind of thing (packages, models) of one image."""

    added: tuple[dict[str, object], ...] = ()
    removed: tuple[dict[str, object], ...] = ()
    changed: tuple[dict[str, object], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """``{"added": [...], "removed": [...], "changed": [...]}``."""
        return {"added": list(self.added), "removed": list(self.removed), "changed": list(self.changed)}


@dataclass(frozen=True)
class InventoryChange:
    """How one image's inventory changed from A to B.  ``a``/``b``: "recorded", "no sbom" (packed without
    one), or "no image" (the image is not in that bundle, so everything counts as added or removed)."""

    name: str
    platform: str
    a: str
    b: str
    packages: Changes = field(default_factory=Changes)
    models: Changes = field(default_factory=Changes)

    def to_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {"name": self.name, "platform": self.platform, "a": self.a, "b": self.b,
                "packages": self.packages.to_dict(), "models": self.models.to_dict()}  # fmt: skip


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
    inventory: tuple[InventoryChange, ...] = ()  # images whose ID changed (or that were added or removed)

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
            "inventory": [c.to_dict() for c in self.inventory],
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
        if self.inventory:
            lines.append("inventory (from the SBOMs the manifests list; signatures not checked here):")
        for c in self.inventory:
            lines.append(f"  {c.name}  {c.platform}")
            if "no sbom" in (c.a, c.b):
                lines.append(
                    f"    not compared: {'A' if c.a == 'no sbom' else 'B'} carries no SBOM for it (packed with --sbom=off?)"
                )
                continue
            for label, changes, show in (("packages", c.packages, _show_package), ("models", c.models, _show_model)):
                lines.append(
                    f"    {label}: {len(changes.added)} added, {len(changes.removed)} removed, {len(changes.changed)} changed"
                )
                lines += [f"      + {show(x)}" for x in changes.added]
                lines += [f"      - {show(x)}" for x in changes.removed]
                lines += [f"      ~ {show(x)}" for x in changes.changed]
        return "\n".join(lines)


def diff(a: Path, b: Path) -> BundleDiff:
    """Compare two bundles (directories or manifest.json files) from their manifests alone; signatures are not checked."""
    loaded_a, loaded_b = _load(a), _load(b)
    old, new = loaded_a.manifest, loaded_b.manifest

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
    inventory = _inventory_changes(images, loaded_a, loaded_b)
    return BundleDiff(a, b, images, added, removed, shared, part_bytes, inventory)


def _show_package(x: dict[str, object]) -> str:
    arch = f" ({x['arch']})" if x.get("arch") else ""
    version = f"{x['old']} -> {x['new']}" if "old" in x else str(x["version"])
    return f"{x['ecosystem']} {x['name']} {version}{arch}  {x['location']}"


def _show_model(x: dict[str, object]) -> str:
    if "old" in x:
        return f"{x['name']}: {str(x['old'])[:19]} -> {str(x['new'])[:19]}"
    return f"{x['name']}: {str(x['digest'])[:19]}"


def _inventory_changes(images: tuple[ImageChange, ...], a: LoadedBundle, b: LoadedBundle) -> tuple[InventoryChange, ...]:
    """For each image whose ID differs between A and B: the packages and models added, removed and changed."""
    if not any(i.status != "same" for i in images):
        return ()
    found_a = {s.image.image_id: s for s in read_inventories(a)}
    found_b = {s.image.image_id: s for s in read_inventories(b)}
    out = []
    for i in images:
        if i.status == "same":
            continue
        old = found_a[i.old] if i.old else None
        new = found_b[i.new] if i.new else None
        state_a = "no image" if old is None else ("recorded" if old.inventory else "no sbom")
        state_b = "no image" if new is None else ("recorded" if new.inventory else "no sbom")
        if "no sbom" in (state_a, state_b) or (old is None and new is None):
            out.append(InventoryChange(i.name, i.platform, state_a, state_b))
            continue
        inv_a = old.inventory if old is not None else None
        inv_b = new.inventory if new is not None else None
        out.append(InventoryChange(i.name, i.platform, state_a, state_b, _packages(inv_a, inv_b), _models(inv_a, inv_b)))
    return tuple(out)


def _package_row(p: Package) -> dict[str, object]:
    return {"ecosystem": p.ecosystem, "name": p.name, "version": p.version, "arch": p.arch, "location": p.location,
            "licenses": list(p.licenses)}  # fmt: skip


def _packages(a: ImageInventory | None, b: ImageInventory | None) -> Changes:
    """Packages by ecosystem, name, architecture and location: added, removed, and of another version or license."""
    old = {report.package_key(p): p for p in (a.packages if a else ())}
    new = {report.package_key(p): p for p in (b.packages if b else ())}
    changed = []
    for k in sorted(old.keys() & new.keys()):
        p, q = old[k], new[k]
        if (p.version, p.licenses) != (q.version, q.licenses):
            row = _package_row(q)
            del row["version"]
            changed.append({**row, "old": p.version, "new": q.version, "old_licenses": list(p.licenses)})
    return Changes(
        tuple(_package_row(new[k]) for k in sorted(new.keys() - old.keys())),
        tuple(_package_row(old[k]) for k in sorted(old.keys() - new.keys())),
        tuple(changed),
    )


def _models(a: ImageInventory | None, b: ImageInventory | None) -> Changes:
    """Ollama models by name and model files by path: added, removed, and with other content (sha256)."""

    def items(inv: ImageInventory | None) -> dict[str, str]:
        if inv is None:
            return {}
        named = {
            f"ollama {o.short_name}": next((x.digest for x in o.blobs if x.media_type.endswith(".model")), "") for o in inv.ollama
        }
        return named | {m.path: f"sha256:{m.sha256}" for m in inv.models}

    old, new = items(a), items(b)
    return Changes(
        tuple({"name": k, "digest": new[k]} for k in sorted(new.keys() - old.keys())),
        tuple({"name": k, "digest": old[k]} for k in sorted(old.keys() - new.keys())),
        tuple({"name": k, "old": old[k], "new": new[k]} for k in sorted(old.keys() & new.keys()) if old[k] != new[k]),
    )
