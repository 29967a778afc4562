"""An inventory as ``inspect --sbom`` and ``diff`` show it: JSON fields and one-line descriptions."""

from __future__ import annotations

from airgap._internal.inventory.cyclonedx import purl
from airgap._internal.inventory.records import ImageInventory, ModelFile, OllamaManifest, OsRelease, Package
from airgap._internal.util.fsutil import human_bytes


def package_key(p: Package) -> tuple[str, str, str, str]:
    """What names a package across two inventories: its ecosystem, name, architecture and where it is installed."""
    return (p.ecosystem, p.name, p.arch or "", p.location)


def package_dict(p: Package, os: OsRelease | None) -> dict[str, object]:
    """A package's JSON fields."""
    return {
        "ecosystem": p.ecosystem,
        "name": p.name,
        "version": p.version,
        "arch": p.arch,
        "purl": purl(p, os),
        "licenses": list(p.licenses),
        "path": p.path,
        "location": p.location,
        "layer": p.layer or None,
    }


def model_dict(m: ModelFile) -> dict[str, object]:
    """A model file's JSON fields."""
    g = m.gguf
    return {
        "path": m.path,
        "size": m.size,
        "sha256": m.sha256,
        "name_matches": m.name_matches,
        "layer": m.layer or None,
        "gguf": None
        if g is None
        else {
            "version": g.version,
            "architecture": g.architecture,
            "name": g.name,
            "size_label": g.size_label,
            "license": g.license,
            "file_type": g.file_type,
            "context_length": g.context_length,
            "parameter_count": g.parameter_count,
            "tensor_count": g.tensor_count,
        },
    }


def ollama_dict(o: OllamaManifest) -> dict[str, object]:
    """An Ollama model's JSON fields."""
    return {
        "name": o.short_name,
        "path": o.path,
        "blobs": [{"media_type": b.media_type, "digest": b.digest, "size": b.size} for b in o.blobs],
    }


def inventory_dict(inv: ImageInventory) -> dict[str, object]:
    """An image's inventory as JSON."""
    os = inv.os
    return {
        "os": None if os is None else {"id": os.id, "version_id": os.version_id, "pretty_name": os.pretty_name},
        "packages": [package_dict(p, os) for p in inv.packages],
        "models": [model_dict(m) for m in inv.models],
        "ollama": [ollama_dict(o) for o in inv.ollama],
        "warnings": list(inv.warnings),
    }


def count(n: int) -> str:
    """A parameter count as people say it: 32.8B, 7.2M."""
    for scale, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def describe_model(m: ModelFile) -> str:
    """One line: a model file's header facts, size and hash check."""
    g = m.gguf
    facts = []
    if g is not None:
        facts.append(f"GGUF v{g.version}")
        facts += [x for x in (g.architecture, f'"{g.name}"' if g.name else None, g.size_label) if x]
        if g.parameter_count is not None:
            facts.append(f"{count(g.parameter_count)} parameters")
        facts += [x for x in (g.file_type, f"context {g.context_length}" if g.context_length else None) if x]
    check = {True: "sha256 matches its name", False: "SHA256 DOES NOT MATCH ITS NAME", None: ""}[m.name_matches]
    facts += [human_bytes(m.size), f"sha256:{m.sha256[:12]}"] + ([check] if check else [])
    return f"{m.path}: {', '.join(facts)}"


def describe_package(p: Package) -> str:
    """One line: ecosystem, name, version, architecture, licenses."""
    arch = f" ({p.arch})" if p.arch else ""
    licenses = f"  [{', '.join(p.licenses)}]" if p.licenses else ""
    return f"{p.ecosystem:<5} {p.name} {p.version}{arch}{licenses}"


def describe_ollama(o: OllamaManifest, models: dict[str, ModelFile]) -> str:
    """One line: an Ollama model name and the GGUF file it resolves to."""
    model = next((b for b in o.blobs if b.media_type.endswith(".model")), None)
    if model is None:
        return f"{o.short_name} -> (no model blob)"
    found = models.get(f"{o.store}/blobs/sha256-{model.digest.removeprefix('sha256:')}")
    if found is None:
        return f"{o.short_name} -> {model.digest[:19]} (NOT IN THE IMAGE)"
    g = found.gguf
    what = ""
    if g is not None:
        parts = [
            x
            for x in (
                g.architecture,
                g.size_label,
                count(g.parameter_count) + " parameters" if g.parameter_count else None,
                g.file_type,
            )
            if x
        ]
        what = f" ({', '.join(parts)})"
    return f"{o.short_name} -> {model.digest[:19]}{what}"
