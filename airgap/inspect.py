"""inspect: what a bundle holds, read from its manifest (no signature check, no hashing); with ``sbom``,
also each image's inventory (packages and models), from its SBOM file, checked against the manifest's
sha256, after the signature check when trusted keys are given."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.format.reader import LoadedBundle, load_bundle, load_trusted_bundle
from airgap._internal.inventory import report
from airgap._internal.inventory.bundle import ImageSbom, read_inventories
from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import printable
from airgap.trust.keys import PublicKey
from airgap.trust.policy import TrustResult


@dataclass(frozen=True)
class Inspection:
    """What a bundle holds, from its manifest: ``render`` for people, ``to_dict`` for JSON."""

    bundle: LoadedBundle
    inventories: tuple[ImageSbom, ...] | None = None  # with --sbom
    trust: TrustResult | None = None  # with --trust: the signature check passed

    def to_dict(self) -> dict[str, object]:
        """The JSON report: the bundle's path, its manifest's sha256, the signers named (not verified), the manifest;
        with --sbom each image's inventory, and whether the signature was checked."""
        m = self.bundle.manifest
        out: dict[str, object] = {
            "bundle": str(self.bundle.path),
            "manifest_sha256": hashlib.sha256(self.bundle.manifest_bytes).hexdigest(),
            "signers": sorted(self.bundle.signatures),
            "manifest": m.to_dict(),
        }
        if self.inventories is not None:
            out["inventory"] = {
                "verified": self.trust is not None,
                "verified_signers": sorted(self.trust.valid) if self.trust is not None else [],
                "images": [
                    {
                        "image_id": s.image.image_id,
                        "ref_names": list(s.image.ref_names),
                        "platform": str(s.image.platform),
                        "sbom": s.path,
                        **(report.inventory_dict(s.inventory) if s.inventory is not None else {}),
                    }
                    for s in self.inventories
                ],
            }
        return out

    def render(self) -> str:
        """The report for people: name, sequence, dates, signers named (not verified), parts, then one line per image."""
        m = self.bundle.manifest
        lines = [
            f"bundle    {printable(str(self.bundle.path))}",
            f"name      {m.name}  (sequence {m.sequence})",
            f"created   {m.created}  by airgap {m.tool_version}" + (f"  expires {m.expires}" if m.expires else ""),
            f"manifest  sha256:{hashlib.sha256(self.bundle.manifest_bytes).hexdigest()}",
            f"signers   {', '.join(sorted(self.bundle.signatures)) or '(none)'}  (not verified here: use 'airgap verify')",
            f"parts     {len(m.parts)} parts, {human_bytes(m.total_part_bytes)} ({m.total_part_bytes} bytes); "
            f"part size {human_bytes(m.part_size)}; zstd level {m.compression.level}",
        ]
        if m.files:
            lines.append(
                f"files     {len(m.files)} ({human_bytes(sum(f.size for f in m.files))}): installer/install.sh and its plans"
            )
        if m.base:
            lines.append(
                f"delta     of the bundle whose manifest is {m.base}: {len(m.external_layers())} layer(s) left out, "
                f"{len(m.rebuilds)} rebuilt from a recipe"
            )
        if m.volumes:
            lines.append(f"volumes   {', '.join(f'{v.name} ({len(v.paths)} files)' for v in m.volumes)}")
        lines += [
            "",
            f"{'IMAGE':<40} {'PLATFORM':<14} {'IMAGE ID':<19} {'LAYERS':>6} {'SIZE':>10}",
        ]
        for image in m.images:
            size = image.config.size + sum(layer.size for layer in image.layers)
            names = ", ".join(image.ref_names) or "(untagged)"
            lines.append(
                f"{names:<40} {image.platform!s:<14} {image.image_id[7:19]:<19} {len(image.layers):>6} {human_bytes(size):>10}"
            )
        lines += ["", f"{'BLOB':<19} {'SIZE':>10} {'PARTS':>5} {'STORED':>10}  KIND"]
        kinds = {}
        for image in m.images:
            kinds[image.config.digest] = "config"
            for layer in image.layers:
                kinds[layer.digest] = "layer " + layer.media_type.rsplit(".", 1)[-1]
            if image.manifest is not None:
                kinds[image.manifest.digest] = "manifest as its registry served it (a registry target keeps its digest)"
        for index in m.indexes:
            for extra in index.extras:
                kinds.setdefault(extra.digest, f"listed by index {index.index.digest[7:19]} ({extra.media_type})")
            kinds[index.index.digest] = f"index of {', '.join(index.ref_names) or '(by digest)'} as its registry served it"
        for r in m.rebuilds:
            kinds[r.recipe] = f"recipe for layer {r.layer[7:19]} (from {r.source[7:19]} of the base)"
        for blob in m.blobs:
            parts = m.parts_of(blob.digest)
            stored = sum(p.size for p in parts)
            lines.append(
                f"{blob.digest[7:19]:<19} {human_bytes(blob.size):>10} {len(parts):>5} {human_bytes(stored):>10}  {kinds.get(blob.digest, '')}"
            )
        if self.inventories is not None:
            lines += ["", *self._inventory_lines()]
        return "\n".join(lines)

    def _inventory_lines(self) -> list[str]:
        """The inventory: per image its distribution, packages, models and warnings."""
        if self.trust is not None:
            expired = ", expired" if self.trust.expired else ""
            lines = [f"INVENTORY  (signature checked: signed by {', '.join(fp[:16] for fp in self.trust.valid)}{expired})"]
        else:
            lines = ["INVENTORY  (signature not checked: pass --trust KEY to check it first)"]
        for s in self.inventories or ():
            names = ", ".join(s.image.ref_names) or s.image.image_id
            lines.append(f"{names}  {s.image.platform}  {s.path or ''}")
            inv = s.inventory
            if inv is None:
                lines.append("  no SBOM: packed with --sbom=off or by an older airgap")
                continue
            if inv.os is not None:
                lines.append(f"  os        {inv.os.pretty_name or inv.os.id} ({inv.os.id} {inv.os.version_id})")
            by_kind = Counter(p.ecosystem for p in inv.packages)
            summary = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or "none found"
            lines.append(f"  packages  {len(inv.packages)}: {summary}")
            lines += [f"    {report.describe_package(p)}" for p in inv.packages]
            models = {m.path: m for m in inv.models}
            if inv.ollama or inv.models:
                lines.append(
                    f"  models    {len(inv.ollama)} Ollama model(s), {sum(1 for m in inv.models if m.gguf)} GGUF file(s)"
                )
                lines += [f"    {report.describe_ollama(o, models)}" for o in inv.ollama]
                lines += [f"    {report.describe_model(m)}" for m in inv.models]
            if inv.warnings:
                lines.append(f"  warnings  {len(inv.warnings)} (this image may hold more than is listed)")
                lines += [f"    {w}" for w in inv.warnings]
        return lines


def inspect(bundle: Path, sbom: bool = False, trusted: Sequence[PublicKey] = ()) -> Inspection:
    """Read a bundle's manifest and the names of its signers, without checking either (that is verify's job).
    ``sbom``: also read each image's inventory; ``trusted``: check the signature first (one trusted key must
    have signed; an expired bundle is still shown)."""
    if trusted:
        loaded, result = load_trusted_bundle(bundle, trusted, 1, allow_expired=True)
    else:
        loaded, result = load_bundle(bundle), None
    inventories = tuple(read_inventories(loaded)) if sbom else None
    return Inspection(loaded, inventories, result)
