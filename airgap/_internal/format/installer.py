"""The POSIX scripts that travel in every bundle: ``installer/audit.sh``, the auditor's check of the whole
bundle with openssl, sha256sum and zstd (installing nothing), and ``installer/install.sh`` with, per platform, a
load plan with the tar headers it needs, so plain ``sh``, ``zstd`` and ``dd`` can stream the same
docker-save archive that ``airgap install`` builds.  All of them are listed, with their sha256, in the
signed manifest's ``files``: install.sh uses only plans the manifest lists, checks a private copy of
the plan and blocks against it, and takes each part's size and sha256 from the manifest (the plan
names parts only by path).  The tail block, the archive's ``manifest.json``, is what makes the engine
load anything, so install.sh cuts the stream before it when a part fails.

Plan lines (``installer/docker-OS-ARCH[-VARIANT].plan``)::

    image <image-id> [<ref> ...]   an image the plan loads, and its names
    base <digest>                  a layer a delta bundle does not carry: the engine must hold it already
    block <index> <count>          copy 512-byte blocks of the .blocks file (tar headers, manifest.json)
    part <path>                    decompress one part (zstd -dc)
    zero <n>                       n zero bytes (tar padding)
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from airgap._internal.util import tarstream
from airgap.model.manifest import INSTALLER_DIR, Image, Part
from airgap.model.oci import docker_save_layout

SCRIPT_PATH = f"{INSTALLER_DIR}/install.sh"
AUDIT_PATH = f"{INSTALLER_DIR}/audit.sh"


def script(name: str = "install.sh") -> bytes:
    """The bytes of install.sh (or audit.sh), as shipped inside the package."""
    return resources.files("airgap._internal.format").joinpath(name).read_bytes()


def plan_name(image: Image) -> str:
    """The bundle path of the load plan for the image's platform, without its ``.plan`` or ``.blocks`` suffix."""
    p = image.platform
    return f"{INSTALLER_DIR}/docker-" + "-".join(x for x in (p.os, p.architecture, p.variant) if x)


def installer_files(images: list[Image], parts_of: Callable[[str], list[Part] | None]) -> dict[str, bytes]:
    """install.sh, audit.sh and one plan (+ blocks) per platform of the bundle's images."""
    by_platform: dict[str, list[Image]] = {}
    for image in images:
        by_platform.setdefault(plan_name(image), []).append(image)
    files = {SCRIPT_PATH: script(), AUDIT_PATH: script("audit.sh")}
    for name, group in sorted(by_platform.items()):
        entries, index = docker_save_layout(group)
        blocks = bytearray()
        lines = [f"# airgap docker-load plan v1 for {group[0].platform}"]
        lines += [f"image {image.image_id} {' '.join(image.ref_names)}".rstrip() for image in group]
        for member, digest, size in entries:
            carried = parts_of(digest)
            if carried is None:  # docker load skips a layer whose chain it has; without it, it fails
                lines.append(f"base {digest}")
                continue
            lines.append(f"block {len(blocks) // tarstream.BLOCK} 1")
            blocks += tarstream.header(member, size)
            lines += [f"part {part.path}" for part in carried]
            pad = len(tarstream.padding(size))
            if pad:
                lines.append(f"zero {pad}")
        tail = tarstream.header("manifest.json", len(index)) + index + tarstream.padding(len(index)) + tarstream.END_OF_ARCHIVE
        lines.append(f"block {len(blocks) // tarstream.BLOCK} {len(tail) // tarstream.BLOCK}")
        blocks += tail
        files[f"{name}.plan"] = ("\n".join(lines) + "\n").encode()
        files[f"{name}.blocks"] = bytes(blocks)
    return files
