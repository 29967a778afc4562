"""inspect: what a bundle holds, read from its manifest (no signature check, no hashing)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.format.reader import LoadedBundle, load_bundle
from airgap._internal.util.fsutil import human_bytes
from airgap._internal.util.text import printable


@dataclass(frozen=True)
class Inspection:
    """What a bundle holds, from its manifest: ``render`` for people, ``to_dict`` for JSON."""

    bundle: LoadedBundle

    def to_dict(self) -> dict[str, object]:
        """The JSON report: the bundle's path, its manifest's sha256, the signers named (not verified), the manifest."""
        m = self.bundle.manifest
        return {
            "bundle": str(self.bundle.path),
            "manifest_sha256": hashlib.sha256(self.bundle.manifest_bytes).hexdigest(),
            "signers": sorted(self.bundle.signatures),
            "manifest": m.to_dict(),
        }

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
        for r in m.rebuilds:
            kinds[r.recipe] = f"recipe for layer {r.layer[7:19]} (from {r.source[7:19]} of the base)"
        for blob in m.blobs:
            parts = m.parts_of(blob.digest)
            stored = sum(p.size for p in parts)
            lines.append(
                f"{blob.digest[7:19]:<19} {human_bytes(blob.size):>10} {len(parts):>5} {human_bytes(stored):>10}  {kinds.get(blob.digest, '')}"
            )
        return "\n".join(lines)


def inspect(bundle: Path) -> Inspection:
    """Read a bundle's manifest and the names of its signers, without checking either (that is verify's job)."""
    return Inspection(load_bundle(bundle))
