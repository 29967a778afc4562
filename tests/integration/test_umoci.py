"""umoci (Debian's, 0.4) on both sides of a bundle.

- **Consumer**: ``install --to oci-archive:`` of an image whose layers hold a whiteout, an opaque directory, a
  hard link and extended attributes (PAX ``SCHILY.xattr``) is unpacked by ``umoci unpack``: the root file
  system has the deletions applied, the link shares its inode, the attributes are set.
- **Producer**: an image umoci built and changed (``umoci new``, ``unpack``, ``repack`` after adding, linking,
  setting attributes and deleting, ``umoci config``) packs from its layout as ``oci-archive:PATH:REPO``
  with umoci's own config digests as image IDs; Docker loads it with those IDs and applies its whiteout, and
  umoci unpacks airgap's own archive of it to the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.helpers.cli import Cli
from tests.helpers.engine import remove
from tests.helpers.keys import KeyPair

pytestmark = [pytest.mark.docker, pytest.mark.tools]

TRICKY = "airgap-test/tricky:1"
XATTR = "user.airgap.origin"


def umoci(*args: str | Path) -> str:
    if not shutil.which("umoci"):
        pytest.fail("umoci is not installed (.ci/run installs it: Debian's umoci)")
    done = subprocess.run(["umoci", *map(str, args)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, f"umoci {' '.join(map(str, args))}: {done.stderr.strip()}"
    return done.stdout


def layer_tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            info.mtime, info.uid, info.gid = 1_700_000_000, 0, 0
            body = data.get(info.name)
            info.size = len(body) if body is not None else 0
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "", xattrs: dict[str, str] | None = None
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
    return info


def tricky_archive(path: Path) -> str:
    """A docker-archive of TRICKY: layer 1 has files, a hard link, an attribute and a directory; layer 2 deletes one
    file (whiteout), makes the directory opaque and adds to it.  Returns the image ID."""
    base = layer_tar(
        [
            entry("etc", tarfile.DIRTYPE, 0o755),
            entry("etc/kept", xattrs={XATTR: "layer-one"}),
            entry("etc/linked"),
            entry("etc/linked-too", tarfile.LNKTYPE, link="etc/linked"),
            entry("etc/gone"),
            entry("opt", tarfile.DIRTYPE, 0o755),
            entry("opt/old", tarfile.DIRTYPE, 0o755),
            entry("opt/old/before"),
        ],
        {"etc/kept": b"kept\n", "etc/linked": b"one inode\n", "etc/gone": b"deleted above\n", "opt/old/before": b"x\n"},
    )
    top = layer_tar(
        [entry("etc/.wh.gone"), entry("opt/old", tarfile.DIRTYPE, 0o755), entry("opt/old/.wh..wh..opq"), entry("opt/old/after")],
        {"opt/old/after": b"after\n"},
    )
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in (base, top)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "files, a link, an attribute"}, {"created_by": "a whiteout, an opaque directory"}],
        },
        sort_keys=True,
    ).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    members = {f"{d[7:]}/layer.tar": layer for d, layer in zip(diff_ids, (base, top), strict=True)}
    members[f"{image_id[7:]}.json"] = config
    members["manifest.json"] = json.dumps(
        [{"Config": f"{image_id[7:]}.json", "RepoTags": [TRICKY], "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return image_id


def unpack_layout(archive: Path, directory: Path) -> Path:
    """An oci-archive's OCI layout, as a directory umoci reads."""
    directory.mkdir()
    done = subprocess.run(["tar", "-xf", str(archive), "-C", str(directory)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return directory


def refs_of(layout: Path) -> dict[str, dict[str, Any]]:
    """ref.name -> the index entry, as umoci lists the tags."""
    index = json.loads((layout / "index.json").read_text())
    listed = set(umoci("ls", "--layout", layout).split())
    refs = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}
    assert listed == set(refs)
    return refs


def config_digest(layout: Path, manifest_digest: str) -> str:
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_text())
    return str(manifest["config"]["digest"])


def test_umoci_unpacks_whiteouts_hard_links_and_xattrs_from_an_oci_archive(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    image_id = tricky_archive(tmp_path / "tricky.tar")
    bundle = tmp_path / "bundle"
    r = cli("pack", f"docker-archive:{tmp_path / 'tricky.tar'}", "-o", str(bundle), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    archive = tmp_path / "tricky-oci.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{archive}")
    assert r.code == 0, r.err
    layout = unpack_layout(archive, tmp_path / "layout")
    [(ref, found)] = refs_of(layout).items()
    assert config_digest(layout, found["digest"]) == image_id
    umoci("unpack", "--image", f"{layout}:{ref}", tmp_path / "rootfs-bundle")
    rootfs = tmp_path / "rootfs-bundle" / "rootfs"
    assert (rootfs / "etc" / "kept").read_bytes() == b"kept\n"
    assert os.getxattr(rootfs / "etc" / "kept", XATTR) == b"layer-one"
    assert not (rootfs / "etc" / "gone").exists()  # the whiteout applied
    assert (rootfs / "etc" / "linked").stat().st_ino == (rootfs / "etc" / "linked-too").stat().st_ino
    assert sorted(p.name for p in (rootfs / "opt" / "old").iterdir()) == ["after"]  # opaque: "before" hidden
    assert not list(rootfs.rglob(".wh.*"))


@pytest.fixture
def umoci_layout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An OCI layout umoci built: tag 1 (a file with an attribute, a hard link, a file to delete), tag 2 (the file
    deleted, another added, a label set by umoci config).  Returns the layout tarred, and tag -> config digest."""
    layout, work = tmp_path / "umoci-layout", tmp_path / "umoci-bundle"
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:base")
    umoci("unpack", "--image", f"{layout}:base", work)
    rootfs = work / "rootfs"
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "model.bin").write_bytes(os.urandom(1 << 16))
    os.setxattr(rootfs / "srv" / "model.bin", XATTR, b"umoci")
    os.link(rootfs / "srv" / "model.bin", rootfs / "srv" / "model.link")
    (rootfs / "srv" / "obsolete").write_text("removed in tag 2\n")
    umoci("repack", "--image", f"{layout}:1", work)
    (rootfs / "srv" / "obsolete").unlink()
    (rootfs / "srv" / "added").write_text("tag 2\n")
    umoci("repack", "--image", f"{layout}:2", work)
    umoci("config", "--image", f"{layout}:2", "--config.label", "org.example.built-by=umoci", "--config.cmd", "/srv/added")
    umoci("rm", "--image", f"{layout}:base")  # no layers: not what this test is about
    umoci("gc", "--layout", layout)
    refs = refs_of(layout)
    archive = tmp_path / "umoci.tar"
    done = subprocess.run(["tar", "-cf", str(archive), "-C", str(layout), "."], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return archive, {tag: config_digest(layout, e["digest"]) for tag, e in refs.items()}


def test_an_image_umoci_built_and_changed_packs_and_loads_with_umocis_ids(
    cli: Cli, keypair: KeyPair, umoci_layout: tuple[Path, dict[str, str]], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    archive, ids = umoci_layout
    assert set(ids) == {"1", "2"}
    bundle = tmp_path / "bundle"
    r = cli("pack", f"oci-archive:{archive}:airgap-test/umoci", "-o", str(bundle), "--key", str(keypair[0]), "--json")
    assert r.code == 0, r.err
    packed = {i["image_id"]: i["ref_names"] for i in json.loads(r.out)["images"]}
    assert packed == {ids["1"]: ["airgap-test/umoci:1"], ids["2"]: ["airgap-test/umoci:2"]}

    remove(docker_client, "airgap-test/umoci:1", "airgap-test/umoci:2", *ids.values())
    r = cli("install", str(bundle), "--trust", str(keypair[1]))
    assert r.code == 0, r.err
    assert docker_client.images.get("airgap-test/umoci:2").id == ids["2"]
    assert docker_client.images.get("airgap-test/umoci:2").labels == {"org.example.built-by": "umoci"}
    container = docker_client.containers.create("airgap-test/umoci:2")
    try:  # the engine applied umoci's whiteout: the file of tag 1 is gone in tag 2
        with pytest.raises(docker.errors.NotFound):
            container.get_archive("/srv/obsolete")
        stream, _ = container.get_archive("/srv/added")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("added")
            assert member is not None and member.read() == b"tag 2\n"
    finally:
        container.remove()
        remove(docker_client, "airgap-test/umoci:1", "airgap-test/umoci:2", *ids.values())

    out = tmp_path / "again.tar"  # and umoci reads airgap's own archive of it back to the same files
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{out}")
    assert r.code == 0, r.err
    layout = unpack_layout(out, tmp_path / "again")
    refs = refs_of(layout)
    assert {config_digest(layout, e["digest"]) for e in refs.values()} == set(ids.values())
    [tag2] = [ref for ref, e in refs.items() if config_digest(layout, e["digest"]) == ids["2"]]
    umoci("unpack", "--image", f"{layout}:{tag2}", tmp_path / "again-bundle")
    rootfs = tmp_path / "again-bundle" / "rootfs"
    assert sorted(p.name for p in (rootfs / "srv").iterdir()) == ["added", "model.bin", "model.link"]
    assert (rootfs / "srv" / "model.bin").stat().st_ino == (rootfs / "srv" / "model.link").stat().st_ino
    assert os.getxattr(rootfs / "srv" / "model.bin", XATTR) == b"umoci"
