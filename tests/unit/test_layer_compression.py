"""Compressed layers, images without layers, and multi-platform archives, against fake engines.

- A layer compression the engine cannot read (Docker before 23.0 and zstd) is decompressed on the way, each
  such layer measured and checked against its diff_id before anything is sent; one the engine reads goes as
  it is.  Which it reads is asked of the engine by a probe load, once per compression, never assumed.
- A docker-archive written by install holds zstd layers decompressed (named after their diff_id), gzip ones
  as they are.
- Images without layers (``FROM scratch`` and metadata only) pack from every archive kind and install.
- An oci-archive gives a name of several platforms one entry, pointing at an index; a docker-archive takes
  this host's platform and refuses to guess.

The archives here are built in memory (:func:`oci_archive`, :func:`docker_archive`); the integration tests
do the same with skopeo, podman, containerd and a real Docker 20.10.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from airgap._internal.format.origins import Decompressed, Stored, iter_origin, measure_decompressed
from airgap._internal.format.reader import load_bundle
from airgap._internal.sinks import archives
from airgap._internal.sinks.archives import oci_archive_stream
from airgap._internal.sinks.base import make_plan
from airgap._internal.util.tarstream import Readable, iter_entries
from airgap.errors import DockerError, FormatError, IntegrityError, UsageError
from airgap.install import InstallOptions, InstallResult, install
from airgap.model.manifest import Manifest, Platform
from airgap.model.mediatypes import MT_OCI_INDEX, MT_OCI_LAYER, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD, MT_OCI_MANIFEST
from airgap.model.oci import compression_of
from airgap.pack import PackOptions, parse_source
from airgap.pack import pack as pack_api
from airgap.progress import NullReporter, Transfer
from airgap.trust.keys import load_public
from tests.helpers.bundles import two_platform_pack
from tests.helpers.cli import Cli
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair

MEDIA_TYPES = {"zstd": MT_OCI_LAYER_ZSTD, "gzip": MT_OCI_LAYER_GZIP, None: MT_OCI_LAYER}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- archives built in memory --------------------------------------------------------------------------------
def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(seed: str, size: int) -> bytes:
    """A layer: one text file (compressible) and one random file (not), deterministic for ``seed``."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(("def", "class", "return", "model", "layer", seed)) for _ in range(size // 6)).encode()
    noise = rng.randbytes(size // 2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((f"app/{seed}.py", text), (f"app/{seed}.bin", noise)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, compression: str | None, pieces: int = 1) -> bytes:
    """``data`` compressed as ``pieces`` zstd frames or gzip members, one after another."""
    if compression is None:
        return data
    step = -(-len(data) // pieces)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    if compression == "zstd":
        return b"".join(zstandard.ZstdCompressor(level=3).compress(c) for c in chunks)
    return b"".join(gzip.compress(c, mtime=0) for c in chunks)


def config_of(diff_ids: list[str] | None, arch: str = "amd64", rootfs: bool = True) -> bytes:
    """An image config; ``diff_ids=None`` leaves them out, as Docker writes an image without layers."""
    config: dict[str, Any] = {"architecture": arch, "os": "linux", "config": {"Labels": {"built": "from scratch"}}}
    if rootfs:
        config["rootfs"] = {"type": "layers"} if diff_ids is None else {"type": "layers", "diff_ids": diff_ids}
    config["history"] = [{"created_by": "LABEL built=from scratch", "empty_layer": True}]
    return json.dumps(config, sort_keys=True).encode()


@dataclass(frozen=True)
class Built:
    path: Path
    image_id: str
    diff_ids: tuple[str, ...]
    blobs: tuple[str, ...]  # the layers as stored (compressed)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def oci_archive(
    out: Path,
    tag: str,
    compression: str | None = "zstd",
    *,
    layers: int = 2,
    size: int = 300_000,
    pieces: int = 1,
    seed: str = "z",
    diff_ids: list[str] | None = None,
    empty: str | None = None,
    label: str | None = None,
) -> Built:
    """An oci-archive of one image whose layers are compressed so.  ``diff_ids`` overrides the config's;
    ``empty`` ("absent", "[]", "no-rootfs") makes an image without layers; ``label`` is the layers' media
    type when it is not the compression's."""
    tars = [layer_tar(f"{seed}{i}", size) for i in range(layers)] if empty is None else []
    blobs = [compress(t, compression, pieces) for t in tars]
    real = [sha(t) for t in tars]
    if empty is None:
        config = config_of(diff_ids if diff_ids is not None else real)
    else:
        config = config_of(None if empty == "absent" else [], rootfs=empty != "no-rootfs")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": label or MEDIA_TYPES[compression], "digest": sha(b), "size": len(b)} for b in blobs],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MT_OCI_MANIFEST,
                    "digest": sha(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": tag, "org.opencontainers.image.ref.name": tag.rpartition(":")[2]},
                }
            ],
        }
    ).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for data in (*blobs, config, manifest):
            _add(tar, f"blobs/sha256/{sha(data)[7:]}", data)
        _add(tar, "index.json", index)
    return Built(out, sha(config), tuple(real), tuple(sha(b) for b in blobs))


def docker_archive_without_layers(out: Path, tag: str) -> Built:
    """What ``docker save`` would write of ``FROM scratch`` + LABEL, had dockerd not refused it."""
    config = config_of(None)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{sha(config)[7:]}.json", config)
        _add(tar, "manifest.json", json.dumps([{"Config": f"{sha(config)[7:]}.json", "RepoTags": [tag], "Layers": []}]).encode())
    return Built(out, sha(config), (), ())


# -- engines that read some compressions --------------------------------------------------------------------
def members(data: bytes) -> dict[str, bytes]:
    return {entry.name: reader.read() for entry, reader in iter_entries(io.BytesIO(data), "upload")}


class LoadingEngine(FakeEngine):
    """Loads as dockerd does: every layer an image names is read from the upload, decompressed when its first
    bytes say so and the engine reads that compression (else "invalid tar header", as Docker 20.10 says of
    zstd), and checked against the config's diff_id; only a complete upload registers anything."""

    def __init__(self, root: Path, reads: frozenset[str]) -> None:
        super().__init__(root)
        self.reads = reads
        self.loads: list[dict[str, bytes]] = []  # every upload, probes too
        self.removed: list[str] = []

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        self.load_calls += 1
        files = members(b"".join(chunks))
        self.loads.append(files)
        index = json.loads(files["manifest.json"])
        for item in index:
            config = json.loads(files[item["Config"]])
            diff_ids = config["rootfs"].get("diff_ids") or []
            assert len(diff_ids) == len(item["Layers"])
            for path, diff_id in zip(item["Layers"], diff_ids, strict=True):
                if sha(self.inflate(files[path])) != diff_id:
                    raise DockerError(f"Docker engine refused the image: invalid diffID for layer {path}")
        for item in index:
            image_id = "sha256:" + item["Config"].removesuffix(".json")
            self.ids.add(image_id)
            for tag in item["RepoTags"] or []:
                self.tags[tag] = image_id
        self.uploaded = sorted(files)
        return []

    def inflate(self, blob: bytes) -> bytes:
        if blob.startswith(b"\x1f\x8b") and "gzip" in self.reads:
            return gzip.decompress(blob)
        if blob.startswith(ZSTD_MAGIC) and "zstd" in self.reads:
            return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
                tar.getmembers()
        except tarfile.TarError as e:
            raise DockerError("Docker engine refused the image: archive/tar: invalid tar header") from e
        return blob

    def untag(self, ref: str) -> None:
        super().untag(ref)
        if ref in self.ids:
            self.ids.discard(ref)
            self.removed.append(ref)

    def probes(self) -> int:
        return sum(
            1
            for files in self.loads
            if any(name.endswith(".json") and b"airgap: does the engine read" in data for name, data in files.items())
        )


DOCKER_20_10 = frozenset({"gzip"})
DOCKER_23 = frozenset({"gzip", "zstd"})


def pack(cli: Cli, keypair: KeyPair, source: str, out: Path, *extra: str) -> Path:
    r = cli("pack", source, "-o", str(out), "--key", str(keypair[0]), "--part-size", "64KiB", *extra)
    assert r.code == 0, r.err
    return out


class Notes(NullReporter):
    """What install tells the user (the CLI runs --quiet in these tests)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, message: str) -> None:
        self.lines.append(message)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def run(bundle: Path, engine: FakeEngine, keypair: KeyPair, notes: Notes | None = None, **kw: Any) -> InstallResult:
    return install(InstallOptions(bundle, (load_public(keypair[1]),), **kw), notes, connect=connect_to(engine))


def short(ref: str) -> str:
    """A name without the registry Docker assumes."""
    return ref.removeprefix("docker.io/")


# -- compressions -----------------------------------------------------------------------------------------------
def test_layer_compression_is_named_by_media_type() -> None:
    assert compression_of("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.zstd") == "zstd"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.v1.tar") is None
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar") is None


def test_zstd_layers_reach_an_engine_that_cannot_read_them_decompressed(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    assert {layer.media_type for layer in load_bundle(bundle).manifest.images[0].layers} == {MT_OCI_LAYER_ZSTD}
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    result = run(bundle, engine, keypair)
    assert engine.tags["team/zstd:1"] == built.image_id and result.images[0].action == "loaded"
    assert engine.probes() == 1 and engine.ids == {built.image_id}  # asked once for two zstd layers; the probe loaded nothing
    upload = engine.loads[-1]
    for diff_id in built.diff_ids:  # the layers went as their tars, named after their diff_id, as docker save names them
        assert sha(upload[f"{diff_id[7:]}/layer.tar"]) == diff_id
    assert not any(data.startswith(ZSTD_MAGIC) for data in upload.values())
    assert result.bytes_streamed == sum(len(upload[f"{d[7:]}/layer.tar"]) for d in built.diff_ids) + len(
        upload[f"{built.image_id[7:]}.json"]
    )


def test_zstd_layers_go_as_they_are_to_an_engine_that_reads_them(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, DOCKER_23)
    run(bundle, engine, keypair)
    assert engine.tags["team/zstd:1"] == built.image_id and engine.probes() == 1
    assert len(engine.removed) == 1 and engine.ids == {built.image_id}  # the probe image loaded, and went again
    upload = engine.loads[-1]
    assert all(upload[f"{blob[7:]}/layer.tar"].startswith(ZSTD_MAGIC) for blob in built.blobs)


def test_gzip_layers_go_as_they_are_to_docker_20_10_which_reads_them(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "g.tar", "team/gzip:1", "gzip")
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    run(bundle, engine, keypair)
    assert engine.tags["team/gzip:1"] == built.image_id and engine.probes() == 1
    assert all(engine.loads[-1][f"{blob[7:]}/layer.tar"].startswith(b"\x1f\x8b") for blob in built.blobs)


def test_uncompressed_layers_need_no_probe(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "u.tar", "team/plain:1", None)
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, frozenset())
    run(bundle, engine, keypair)
    assert engine.load_calls == 1 and engine.probes() == 0


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_layers_of_many_frames_or_members_are_decompressed_whole(
    compression: str, cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    built = oci_archive(tmp_path / "m.tar", "team/frames:1", compression, pieces=7)
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, frozenset())
    run(bundle, engine, keypair)
    assert engine.tags["team/frames:1"] == built.image_id


def test_damaged_part_of_a_zstd_layer_is_found_before_anything_is_sent(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1", size=600_000)
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    part = load_bundle(bundle).manifest.parts_of(built.blobs[0])[1]
    data = bytearray((bundle / part.path).read_bytes())
    data[40] ^= 0x01
    (bundle / part.path).write_bytes(bytes(data))
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    with pytest.raises(IntegrityError, match=part.path.replace(".", r"\.")):
        run(bundle, engine, keypair)
    assert engine.load_calls == engine.probes() == 1 and "team/zstd:1" not in engine.tags


def test_zstd_layer_that_contradicts_its_diff_id_is_refused_before_the_upload(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    wrong = oci_archive(tmp_path / "w.tar", "team/wrong:1", diff_ids=[sha(b"other"), sha(b"layers")])
    bundle = pack(cli, keypair, f"oci-archive:{wrong.path}", tmp_path / "b")  # pack does not decompress layers
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    with pytest.raises(IntegrityError, match="does not match diff_id") as caught:
        run(bundle, engine, keypair)
    assert caught.value.digest == wrong.blobs[0]
    assert engine.load_calls == engine.probes() == 1 and engine.tags == {}


def test_layer_that_is_not_what_its_media_type_says_is_a_format_error(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    liar = oci_archive(tmp_path / "liar.tar", "team/liar:1", None, label=MT_OCI_LAYER_ZSTD)  # plain tars labelled zstd
    bundle = pack(cli, keypair, f"oci-archive:{liar.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    with pytest.raises(FormatError, match="is not valid zstd data") as caught:
        run(bundle, engine, keypair)
    assert caught.value.digest == liar.blobs[0]
    assert engine.load_calls == engine.probes() == 1


def test_via_registry_is_refused_before_any_upload_when_the_engine_cannot_read_zstd(
    cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    with pytest.raises(UsageError, match="cannot read zstd-compressed layers") as caught:
        run(bundle, engine, keypair, via="registry")
    assert "--via load" in (caught.value.hint or "")
    assert engine.load_calls == engine.probes() == 1 and engine.tags == {}


class GoneEngine(LoadingEngine):
    """An engine that stops answering during the probe."""

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        self.arch = ""
        raise DockerError("Docker engine: image load failed: connection reset")

    def platform(self) -> Platform:
        if not self.arch:
            raise DockerError("Docker engine: info failed: connection refused")
        return super().platform()


def test_an_engine_gone_during_the_probe_is_reported_as_gone(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    with pytest.raises(DockerError, match="connection refused"):
        run(bundle, GoneEngine(tmp_path, DOCKER_20_10), keypair)


def test_decompressed_layer_longer_than_measured_is_cut_at_the_measured_size(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "z.tar", "team/zstd:1", layers=1)
    bundle = load_bundle(pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b"))
    digest = built.blobs[0]
    stored = Stored(bundle, digest, bundle.manifest.blob(digest).size)
    measured = measure_decompressed(stored, built.diff_ids[0], "zstd")
    short = Decompressed(digest, built.diff_ids[0], "zstd", stored, measured.size - 1000)
    sent = 0
    with pytest.raises(IntegrityError, match="decompresses past"):
        for block in iter_origin(short):
            sent += len(block)
    assert sent <= short.size
    assert b"".join(iter_origin(measured)) == layer_tar("z0", 300_000)


# -- docker-archive and oci-archive targets ---------------------------------------------------------------------
def test_docker_archive_target_holds_zstd_layers_decompressed_and_gzip_ones_as_they_are(
    cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    z = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    g = oci_archive(tmp_path / "g.tar", "team/gzip:1", "gzip", seed="g")
    bundle = tmp_path / "b"
    r = cli("pack", f"oci-archive:{z.path}", f"oci-archive:{g.path}", "-o", str(bundle), "--key", str(keypair[0]))
    assert r.code == 0, r.err
    out = tmp_path / "out.tar"
    notes = Notes()
    run(bundle, LoadingEngine(tmp_path, frozenset()), keypair, notes, target=f"docker-archive:{out}")
    assert "2 zstd layer(s) will be written decompressed" in str(notes)
    files = members(out.read_bytes())
    assert all(sha(files[f"{d[7:]}/layer.tar"]) == d for d in z.diff_ids)
    assert all(files[f"{b[7:]}/layer.tar"].startswith(b"\x1f\x8b") for b in g.blobs)
    engine = LoadingEngine(tmp_path, DOCKER_20_10)  # Docker 20.10 loads it
    engine.load(iter([out.read_bytes()]))
    assert engine.tags == {"team/zstd:1": z.image_id, "team/gzip:1": g.image_id}


def test_oci_archive_target_keeps_zstd_layers(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    z = oci_archive(tmp_path / "z.tar", "team/zstd:1")
    bundle = pack(cli, keypair, f"oci-archive:{z.path}", tmp_path / "b")
    out = tmp_path / "out.tar"
    assert cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{out}").code == 0
    files = members(out.read_bytes())
    assert all(files[f"blobs/sha256/{b[7:]}"].startswith(ZSTD_MAGIC) for b in z.blobs)


# -- images without layers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["absent", "[]"])
def test_image_without_layers_packs_from_an_oci_archive_and_installs(
    empty: str, cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    built = oci_archive(tmp_path / "e.tar", "team/scratch:1", empty=empty)
    bundle = pack(cli, keypair, f"oci-archive:{built.path}", tmp_path / "b")
    manifest = load_bundle(bundle).manifest
    assert manifest.images[0].layers == () and manifest.images[0].image_id == built.image_id
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    engine = LoadingEngine(tmp_path, DOCKER_20_10)
    result = run(bundle, engine, keypair)
    assert engine.tags["team/scratch:1"] == built.image_id and result.images[0].action == "loaded"
    assert json.loads(engine.loads[-1]["manifest.json"])[0]["Layers"] == []
    assert run(bundle, engine, keypair).images[0].action == "already present"


def test_image_without_layers_packs_from_a_docker_archive_and_writes_both_archives(
    cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    built = docker_archive_without_layers(tmp_path / "e.tar", "team/scratch:1")
    bundle = pack(cli, keypair, f"docker-archive:{built.path}", tmp_path / "b")
    for kind in ("docker-archive", "oci-archive"):
        out = tmp_path / f"out-{kind}.tar"
        r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"{kind}:{out}")
        assert r.code == 0, r.err
        again = pack(cli, keypair, f"{kind}:{out}", tmp_path / f"again-{kind}")
        image = load_bundle(again).manifest.images[0]
        assert (
            image.image_id == built.image_id and image.layers == () and tuple(map(short, image.ref_names)) == ("team/scratch:1",)
        )


def test_image_config_without_rootfs_is_refused_by_name(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    built = oci_archive(tmp_path / "e.tar", "team/scratch:1", empty="no-rootfs")
    r = cli("pack", f"oci-archive:{built.path}", "-o", str(tmp_path / "b"), "--key", str(keypair[0]))
    assert r.code == 3
    assert "image config has no rootfs" in r.err and str(built.path) in r.err


# -- multi-platform archives ---------------------------------------------------------------------------------------
def test_oci_archive_gives_a_multi_platform_name_one_entry_pointing_at_an_index(
    cli: Cli, keypair: KeyPair, tmp_path: Path
) -> None:
    bundle, amd, arm = two_platform_pack(cli, keypair, tmp_path, "team/multi:1")
    out = tmp_path / "multi.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"oci-archive:{out}")
    assert r.code == 0, r.err
    files = members(out.read_bytes())
    top = json.loads(files["index.json"])["manifests"]
    assert len(top) == 1 and top[0]["mediaType"] == MT_OCI_INDEX
    assert short(top[0]["annotations"]["io.containerd.image.name"]) == "team/multi:1"
    nested = json.loads(files[f"blobs/sha256/{top[0]['digest'][7:]}"])
    assert {(m["platform"]["architecture"], m["mediaType"]) for m in nested["manifests"]} == {
        ("amd64", MT_OCI_MANIFEST),
        ("arm64", MT_OCI_MANIFEST),
    }
    configs = {json.loads(files[f"blobs/sha256/{m['digest'][7:]}"])["config"]["digest"] for m in nested["manifests"]}
    assert configs == {amd.image_id, arm.image_id}
    again = load_bundle(pack(cli, keypair, f"oci-archive:{out}", tmp_path / "again", "--platform", "all")).manifest
    assert {(i.image_id, tuple(map(short, i.ref_names))) for i in again.images} == {
        (amd.image_id, ("team/multi:1",)),
        (arm.image_id, ("team/multi:1",)),
    }


def test_oci_archive_of_one_platform_names_the_manifest_itself(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    bundle, amd, _ = two_platform_pack(cli, keypair, tmp_path, "team/multi:1")
    loaded = load_bundle(bundle)
    images = [i for i in loaded.manifest.images if i.platform.architecture == "amd64"]
    files = members(b"".join(oci_archive_stream(images, make_plan(loaded, images, False), Transfer())))
    top = json.loads(files["index.json"])["manifests"]
    assert len(top) == 1 and top[0]["mediaType"] == MT_OCI_MANIFEST and top[0]["platform"]["architecture"] == "amd64"
    assert json.loads(files[f"blobs/sha256/{top[0]['digest'][7:]}"])["config"]["digest"] == amd.image_id


def test_docker_archive_of_a_multi_platform_bundle_takes_this_hosts_platform(
    cli: Cli, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "host_default", lambda: Platform("linux", "arm64"))
    bundle, _, arm = two_platform_pack(cli, keypair, tmp_path, "team/multi:1")
    out = tmp_path / "host.tar"
    notes = Notes()
    run(bundle, LoadingEngine(tmp_path, frozenset()), keypair, notes, target=f"docker-archive:{out}")
    assert "writing linux/arm64 (this host's platform)" in str(notes) and "also has linux/amd64" in str(notes)
    index = json.loads(members(out.read_bytes())["manifest.json"])
    assert [(item["Config"], item["RepoTags"]) for item in index] == [(f"{arm.image_id[7:]}.json", ["team/multi:1"])]


def test_docker_archive_refuses_to_guess_a_platform_the_host_does_not_have(
    cli: Cli, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "host_default", lambda: Platform("linux", "s390x"))
    bundle, amd, _ = two_platform_pack(cli, keypair, tmp_path, "team/multi:1")
    out = tmp_path / "none.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{out}")
    assert r.code == 2 and "linux/amd64, linux/arm64, none for this host's linux/s390x" in r.err
    assert "--platform" in r.err and not out.exists()
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{out}", "--platform", "linux/amd64")
    assert r.code == 0, r.err
    assert [item["Config"] for item in json.loads(members(out.read_bytes())["manifest.json"])] == [f"{amd.image_id[7:]}.json"]


def test_docker_archive_refuses_one_name_on_two_variants(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    from tests.helpers.samples import sample_image

    paths = []
    for variant in ("v6", "v7"):
        sample = sample_image.build(
            tmp_path / f"{variant}.tar", tag="team/arm:1", model_size=1 << 16, app_size=1 << 14, seed=variant, arch="arm"
        )
        config_variant = _with_variant(sample.path, variant, tmp_path / f"{variant}-v.tar")
        paths.append(f"docker-archive:{config_variant}")
    bundle = tmp_path / "b"
    assert cli("pack", *paths, "-o", str(bundle), "--key", str(keypair[0])).code == 0
    out = tmp_path / "arm.tar"
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{out}", "--platform", "linux/arm")
    assert r.code == 2 and "team/arm:1 names images of linux/arm/v6 and linux/arm/v7" in r.err
    r = cli("install", str(bundle), "--trust", str(keypair[1]), "--to", f"docker-archive:{out}", "--platform", "linux/arm/v7")
    assert r.code == 0, r.err


def _with_variant(archive: Path, variant: str, out: Path) -> Path:
    """The docker-archive with ``variant`` added to its image config (a new image ID)."""
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(files.pop("manifest.json"))
    old = index[0]["Config"]
    config = json.loads(files.pop(old))
    config["variant"] = variant
    data = json.dumps(config, sort_keys=True).encode()
    index[0]["Config"] = f"{sha(data)[7:]}.json"
    files[index[0]["Config"]] = data
    files["manifest.json"] = json.dumps(index).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in files.items():
            _add(tar, name, body)
    return out


class DockerdWithScratchImage(FakeEngine):
    """dockerd holding an image without layers, which its export refuses ("empty export")."""

    IMAGE = "sha256:" + "5" * 64

    def inspect(self, ref: str) -> dict[str, Any] | None:
        if ref in ("team/scratch:1", self.IMAGE):
            return {"Id": self.IMAGE, "Size": 0, "RootFS": {"Type": "layers"}}
        return None

    def export(self, refs: list[str]) -> AbstractContextManager[Readable]:
        raise DockerError("Docker engine: image export failed: empty export - not implemented", hint="is dockerd running?")


def test_engine_that_refuses_to_export_an_image_without_layers_is_reported_so(cli: Cli, keypair: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(DockerError, match=r"does not export team/scratch:1: an image without layers") as caught:
        pack_api(
            PackOptions((parse_source("team/scratch:1"),), tmp_path / "b", keypair[0]),
            connect=connect_to(DockerdWithScratchImage(tmp_path)),
        )
    assert "oci://" in (caught.value.hint or "") and "dockerd running" not in (caught.value.hint or "")
    assert not (tmp_path / "b" / "manifest.json").exists()
