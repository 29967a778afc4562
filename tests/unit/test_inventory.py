"""The inventory's readers, one source of packages or models at a time, on layers the tests make: dpkg and apk
databases, Python distributions, npm packages, GGUF headers and Ollama stores, whiteouts across layers, and
hostile inputs (each a warning and bounded memory, never a failure)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import struct
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import gguf as gguf_package
import pytest
import zstandard
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from airgap._internal.inventory import cyclonedx, gguf, parsers
from airgap._internal.inventory.records import ImageInventory, LayerInventory, Package, merge
from airgap._internal.inventory.tap import InventoryTap
from airgap.errors import FormatError
from airgap.model.manifest import Descriptor, Image, Platform

BLOCK = 4 << 20
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
Files = dict[str, bytes | None]  # None: a whiteout entry of that name, or an opaque marker


def layer_tar(files: Files, links: dict[str, str] | None = None) -> bytes:
    """A layer tar holding ``files`` (path -> bytes), and hard links (path -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def feed(tap: InventoryTap, data: bytes | Iterator[bytes], size: int | None = None) -> str:
    """Pass a blob through the tap as the writer does (blocks of 4 MiB); its digest."""
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)] if isinstance(data, bytes) else data
    total = size if size is not None else len(data)  # type: ignore[arg-type]
    walk = tap.open("test", total)
    sha = hashlib.sha256()
    for block in blocks:
        sha.update(block)
        walk.feed(block)
    digest = "sha256:" + sha.hexdigest()
    walk.close(digest)
    return digest


def image_of(digests: list[str]) -> Image:
    config = Descriptor("sha256:" + "c" * 64, 10, "application/vnd.docker.container.image.v1+json")
    layers = tuple(Descriptor(d, 1, MT_LAYER) for d in digests)
    return Image(("airgap-test/inv:1.0",), config, layers, tuple(digests), Platform("linux", "amd64", None))


def inventory(*layers: bytes) -> tuple[ImageInventory, InventoryTap]:
    tap = InventoryTap()
    digests = [feed(tap, data) for data in layers]
    return tap.image(image_of(digests)), tap


def names(inv: ImageInventory, ecosystem: str) -> dict[str, str]:
    return {p.name: p.version for p in inv.packages if p.ecosystem == ecosystem}


DPKG = b"""Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9
Description: GNU C Library
 continuation line: Package: not-a-package

Package: nano
Status: deinstall ok config-files
Architecture: amd64
Version: 7.2-1

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1
"""
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def test_dpkg_status_lists_installed_packages_only() -> None:
    inv, _ = inventory(layer_tar({"etc/os-release": OS_RELEASE, "var/lib/dpkg/status": DPKG}))
    assert names(inv, "deb") == {"libc6": "2.36-9", "zlib1g": "1:1.2.13.dfsg-1"}
    libc = next(p for p in inv.packages if p.name == "libc6")
    assert cyclonedx.purl(libc, inv.os) == "pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12&upstream=glibc"
    assert inv.os is not None and inv.os.pretty_name == "Debian GNU/Linux 12 (bookworm)"


def test_distroless_status_d_and_dep5_copyright_licenses() -> None:
    copyright_text = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: Zlib\n"
    files: Files = {
        "var/lib/dpkg/status.d/zlib1g": DPKG.split(b"\n\n")[2],
        "var/lib/dpkg/status.d/zlib1g.md5sums": b"0123  usr/lib/libz.so\n",
        "usr/share/doc/zlib1g/copyright": copyright_text,
    }
    inv, _ = inventory(layer_tar(files))
    assert [(p.name, p.licenses) for p in inv.packages] == [("zlib1g", ("Zlib",))]


def test_apk_database() -> None:
    db = b"C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\n\nP:busybox\nV:1.36.1-r5\nA:x86_64\nL:GPL-2.0-only\n"
    inv, _ = inventory(layer_tar({"etc/os-release": b"ID=alpine\nVERSION_ID=3.19.1\n", "lib/apk/db/installed": db}))
    assert names(inv, "apk") == {"musl": "1.2.4-r2", "busybox": "1.36.1-r5"}
    busybox = next(p for p in inv.packages if p.name == "busybox")
    assert busybox.licenses == ("GPL-2.0-only",)
    assert cyclonedx.purl(busybox, inv.os) == "pkg:apk/alpine/busybox@1.36.1-r5?arch=x86_64&distro=alpine-3.19.1"


def test_python_distributions_and_their_licenses() -> None:
    site = "usr/lib/python3/site-packages"
    files: Files = {
        f"{site}/Flask_Cors-4.0.0.dist-info/METADATA": b"Name: Flask-Cors\nVersion: 4.0.0\nLicense-Expression: MIT OR Apache-2.0\n\nbody\n",
        f"{site}/attrs-23.2.0.dist-info/METADATA": b"Name: attrs\nVersion: 23.2.0\nClassifier: License :: OSI Approved :: MIT License\n\n",
        f"{site}/attrs-23.2.0.dist-info/RECORD": b"attrs/__init__.py,,\n",
        f"{site}/broken-1.0.dist-info/METADATA": b"Summary: no name\n\n",
    }
    inv, _ = inventory(layer_tar(files))
    assert names(inv, "pypi") == {"Flask-Cors": "4.0.0", "attrs": "23.2.0"}
    cors = next(p for p in inv.packages if p.name == "Flask-Cors")
    assert cors.licenses == ("MIT OR Apache-2.0",) and cors.location == site
    assert cyclonedx.purl(cors, None) == "pkg:pypi/flask-cors@4.0.0"
    assert next(p for p in inv.packages if p.name == "attrs").licenses == ("MIT License",)
    assert any("broken-1.0.dist-info/METADATA names no distribution" in w for w in inv.warnings)


def test_npm_packages_scoped_nested_and_folder_package_json() -> None:
    files: Files = {
        "app/node_modules/express/package.json": json.dumps({"name": "express", "version": "4.18.2", "license": "MIT"}).encode(),
        "app/node_modules/@babel/core/package.json": json.dumps(
            {"name": "@babel/core", "version": "7.23.0", "license": {"type": "MIT"}}
        ).encode(),
        "app/node_modules/express/node_modules/debug/package.json": json.dumps({"name": "debug", "version": "2.6.9"}).encode(),
        "app/node_modules/express/lib/package.json": b'{"type": "commonjs"}',  # not under node_modules/NAME/: not read
        "app/node_modules/esm-only/package.json": b'{"type": "module"}',  # no name and version: not a package
    }
    inv, _ = inventory(layer_tar(files))
    assert names(inv, "npm") == {"express": "4.18.2", "@babel/core": "7.23.0", "debug": "2.6.9"}
    babel = next(p for p in inv.packages if p.name == "@babel/core")
    assert babel.licenses == ("MIT",) and babel.location == "app/node_modules"
    assert cyclonedx.purl(babel, None) == "pkg:npm/%40babel/core@7.23.0"
    assert next(p for p in inv.packages if p.name == "debug").location == "app/node_modules/express/node_modules"


def dist(name: str, version: str) -> bytes:
    return f"Name: {name}\nVersion: {version}\n\n".encode()


SITE = "usr/local/lib/python3.11/site-packages"


def test_package_deleted_in_an_upper_layer_is_not_listed() -> None:
    lower = layer_tar(
        {
            f"{SITE}/six-1.16.0.dist-info/METADATA": dist("six", "1.16.0"),
            f"{SITE}/idna-3.6.dist-info/METADATA": dist("idna", "3.6"),
        }
    )
    upper = layer_tar({f"{SITE}/.wh.six-1.16.0.dist-info": b""})
    inv, _ = inventory(lower, upper)
    assert names(inv, "pypi") == {"idna": "3.6"}


def test_whiteout_of_a_parent_folder_and_opaque_folder() -> None:
    lower = layer_tar(
        {
            "app/node_modules/left-pad/package.json": b'{"name": "left-pad", "version": "1.3.0"}',
            f"{SITE}/idna-3.6.dist-info/METADATA": dist("idna", "3.6"),
            "var/lib/dpkg/status": DPKG,
        }
    )
    upper = layer_tar(
        {
            "app/.wh.node_modules": b"",
            f"{SITE}/.wh..wh..opq": b"",
            f"{SITE}/idna-3.7.dist-info/METADATA": dist("idna", "3.7"),
        }
    )
    inv, _ = inventory(lower, upper)
    assert names(inv, "npm") == {}
    assert names(inv, "pypi") == {"idna": "3.7"}
    assert set(names(inv, "deb")) == {"libc6", "zlib1g"}


def test_upper_dpkg_status_replaces_the_lower_one_even_when_unreadable() -> None:
    lower = layer_tar({"var/lib/dpkg/status": DPKG})
    upgraded = layer_tar({"var/lib/dpkg/status": DPKG.replace(b"2.36-9", b"2.36-9+deb12u7")})
    inv, _ = inventory(lower, upgraded)
    assert names(inv, "deb")["libc6"] == "2.36-9+deb12u7"
    inv, _ = inventory(layer_tar({"app/node_modules/a/package.json": b'{"name": "a", "version": "1"}'}),
                       layer_tar({"app/node_modules/a/package.json": b"{not json"}))  # fmt: skip
    assert names(inv, "npm") == {} and any("is not valid JSON" in w for w in inv.warnings)


def gguf_file(tmp_path: Path, arch: str = "llama", tensor_elements: int = 4096) -> bytes:
    """A small GGUF file written with the gguf package (one F32 tensor)."""
    import numpy as np

    path = tmp_path / f"{arch}.gguf"
    w = gguf_package.GGUFWriter(path, arch)
    w.add_name("Test Coder 1B")
    w.add_size_label("1B")
    w.add_file_type(gguf_package.LlamaFileType.MOSTLY_Q5_K_M)
    w.add_context_length(8192)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    w.add_string("general.description", "x" * 5000)
    w.add_tensor("token_embd.weight", np.zeros(tensor_elements, dtype=np.float32))
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_gguf_header_facts_and_ollama_manifest(tmp_path: Path) -> None:
    model = gguf_file(tmp_path)
    sha = hashlib.sha256(model).hexdigest()
    store = "root/.ollama/models"
    manifest = {
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}", "size": len(model)}],
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
    }
    files: Files = {
        f"{store}/blobs/sha256-{sha}": model,
        f"{store}/manifests/registry.ollama.ai/library/qwen2.5-coder/32b-instruct-q5_K_M": json.dumps(manifest).encode(),
        "opt/elsewhere/named.bin": model,
    }
    inv, _ = inventory(layer_tar(files))
    by_path = {m.path: m for m in inv.models}
    blob = by_path[f"{store}/blobs/sha256-{sha}"]
    assert blob.sha256 == sha and blob.name_matches is True and blob.size == len(model)
    assert blob.gguf is not None
    g = blob.gguf
    assert (g.architecture, g.name, g.size_label, g.file_type, g.context_length) == (
        "llama",
        "Test Coder 1B",
        "1B",
        "Q5_K_M",
        8192,
    )
    assert g.parameter_count == 4096 and g.tensor_count == 1 and g.version == 3
    assert by_path["opt/elsewhere/named.bin"].name_matches is None  # any GGUF file is found, whatever its name
    (ollama,) = inv.ollama
    assert ollama.short_name == "qwen2.5-coder:32b-instruct-q5_K_M"
    assert any("names blob sha256:0000000000" in w for w in inv.warnings)  # its config blob is not in the image


def test_ollama_blob_not_matching_its_name_is_a_warning(tmp_path: Path) -> None:
    model = gguf_file(tmp_path)
    inv, _ = inventory(layer_tar({"root/.ollama/models/blobs/sha256-" + "ab" * 32: model}))
    assert inv.models[0].name_matches is False
    assert any("does not hash to the sha256 in its name" in w for w in inv.warnings)


def test_hard_link_to_a_model_in_the_same_layer(tmp_path: Path) -> None:
    model = gguf_file(tmp_path)
    inv, _ = inventory(layer_tar({"models/a.gguf": model}, links={"models/b.gguf": "models/a.gguf"}))
    assert sorted(m.path for m in inv.models) == ["models/a.gguf", "models/b.gguf"]


def test_gzip_and_zstd_layers_are_walked_and_other_blobs_ignored() -> None:
    tar = layer_tar({"var/lib/dpkg/status": DPKG})
    for blob in (gzip.compress(tar), zstandard.ZstdCompressor().compress(tar)):
        inv, _ = inventory(blob)
        assert set(names(inv, "deb")) == {"libc6", "zlib1g"}, inv.warnings
    tap = InventoryTap()
    feed(tap, b'{"architecture": "amd64", "rootfs": {}}')
    assert tap.layers == {}


def test_large_layer_walked_in_its_thread_and_blocks_cut_anywhere(tmp_path: Path) -> None:
    model = gguf_file(tmp_path, tensor_elements=1 << 20)  # 4 MiB of tensor data
    data = layer_tar({"filler/a": b"\0" * (3 << 20), "var/lib/dpkg/status": DPKG, "m/x.gguf": model})
    tap = InventoryTap()
    walk = tap.open("big", len(data))
    cuts = [0, 100, 513, 70_000, 3 << 20, (3 << 20) + 1, len(data)]
    for a, b in itertools.pairwise(cuts):
        walk.feed(data[a:b])
    walk.close("sha256:" + "1" * 64)
    layer = tap.layers["sha256:" + "1" * 64]
    assert layer.warnings == []
    assert set(layer.records) == {"var/lib/dpkg/status", "m/x.gguf"}


def test_damaged_and_truncated_layers_are_warnings() -> None:
    tar = layer_tar({"var/lib/dpkg/status": DPKG, "app/node_modules/a/package.json": b'{"name": "a", "version": "1"}'})
    damaged = bytearray(tar)
    damaged[1024 + 10] ^= 0xFF  # the second member's header
    cases = {
        bytes(damaged): "damaged tar header",
        tar[:700]: "ends inside",
        gzip.compress(tar)[:-20]: "",
        gzip.compress(tar)[:20] + b"garbage" * 100: "does not decompress",
    }
    for blob, warning in cases.items():
        inv, tap = inventory(blob)
        (layer,) = tap.layers.values()
        assert warning in " ".join(layer.warnings), layer.warnings
        if warning == "damaged tar header":
            assert set(names(inv, "deb")) == {"libc6", "zlib1g"}  # what came before the damage is kept


# -- hostile inputs: bounded memory, a warning, no failure ------------------------------------------------
def gguf_header_bytes(kv: list[tuple[str, int, bytes]], tensors: int, tensor_infos: bytes = b"") -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kv))
    for key, kind, value in kv:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value
    return out + tensor_infos


def gstr(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def test_gguf_claiming_2_to_the_40_tensors_keeps_its_metadata() -> None:
    header = gguf_header_bytes([("general.architecture", 8, gstr("llama")), ("general.name", 8, gstr("evil"))], 1 << 40)
    inv, _ = inventory(layer_tar({"m.gguf": header + b"\0" * 100}))
    (model,) = inv.models
    assert model.gguf is not None and model.gguf.name == "evil" and model.gguf.parameter_count is None
    assert any("claims 1099511627776 tensors" in w for w in inv.warnings)


def streamed_member(name: str, head: bytes, size: int, filler: bytes) -> Iterator[bytes]:
    """A one-member layer tar of ``size`` bytes, made as it is read: ``head`` then ``filler`` repeated."""
    info = tarfile.TarInfo(name)
    info.size = size
    yield info.tobuf(format=tarfile.PAX_FORMAT) + head
    left = size - len(head)
    while left > 0:
        chunk = filler[: min(len(filler), left)]
        left -= len(chunk)
        yield chunk
    yield b"\0" * ((-size) % 512) + b"\0" * 1024


def walked_under(limit: int, blocks: Iterator[bytes], size: int) -> tuple[LayerInventory, int]:
    tap = InventoryTap()
    tracemalloc.start()
    try:
        digest = feed(tap, blocks, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak >> 20} MiB"
    return tap.layers[digest], peak


def test_gguf_with_a_100_mb_metadata_string_costs_no_memory() -> None:
    size = 100 << 20
    head = gguf_header_bytes([("general.architecture", 8, gstr("llama"))], 0) + struct.pack("<Q", 17) + b"general.huge_text"
    head += struct.pack("<IQ", 8, size)
    block = b"A" * BLOCK
    member = len(head) + size + 16
    layer, _ = walked_under(40 << 20, streamed_member("m.gguf", head, member, block), 1024 + member + 2048)
    (model,) = (r for r in layer.records.values() if r is not None)
    assert model.gguf.architecture == "llama"  # type: ignore[union-attr]


def test_dpkg_status_of_1_gb_is_read_in_part_with_a_warning() -> None:
    stanza = b"Package: p\nStatus: install ok installed\nVersion: 1\nArchitecture: all\nDescription: " + b"d" * 900 + b"\n\n"
    block = stanza * (BLOCK // len(stanza))
    size = 1 << 30
    layer, _ = walked_under(120 << 20, streamed_member("var/lib/dpkg/status", b"", size, block), size + 4096)
    assert any("var/lib/dpkg/status is 1073741824 bytes: only its first 64 MiB were read" in w for w in layer.warnings)


def test_zstd_bomb_stops_at_the_expansion_limit() -> None:
    zeros = b"\0" * BLOCK
    cctx = zstandard.ZstdCompressor()
    compressor = cctx.compressobj()
    info = tarfile.TarInfo("big")
    info.size = 512 << 20
    bomb = compressor.compress(info.tobuf(format=tarfile.PAX_FORMAT))
    for _ in range(128):
        bomb += compressor.compress(zeros)
    bomb += compressor.flush()
    assert len(bomb) < 1 << 20
    _, tap = inventory(bomb)
    assert any("expands more than 100x" in w for w in next(iter(tap.layers.values())).warnings)


def test_a_failing_pack_abandons_the_walk_at_once() -> None:
    tap = InventoryTap()
    walk = tap.open("x", 100 << 20)
    info = tarfile.TarInfo("big")
    info.size = 50 << 20
    walk.feed(info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 1000)  # the walk now waits for the rest of "big"
    walk.close(None)
    thread = walk._thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive() and tap.layers == {}


# -- the document --------------------------------------------------------------------------------------------
def test_sbom_is_valid_cyclonedx_and_reads_back(tmp_path: Path) -> None:
    model = gguf_file(tmp_path)
    sha = hashlib.sha256(model).hexdigest()
    layer = layer_tar(
        {
            "etc/os-release": OS_RELEASE,
            "var/lib/dpkg/status": DPKG,
            f"{SITE}/Flask_Cors-4.0.0.dist-info/METADATA": b"Name: Flask-Cors\nVersion: 4.0.0\nLicense-Expression: MIT OR Apache-2.0\n\n",
            "app/node_modules/x/package.json": b'{"name": "x", "version": "1.0.0", "license": "Weird License 1.0"}',
            f"root/.ollama/models/blobs/sha256-{sha}": model,
            "root/.ollama/models/manifests/registry.ollama.ai/library/m/latest": json.dumps(
                {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}", "size": len(model)}]}
            ).encode(),
        }
    )
    tap = InventoryTap()
    digest = feed(tap, layer)
    image = image_of([digest])
    inv = tap.image(image)
    data = cyclonedx.write(image, inv, "2026-01-01T00:00:00Z", "0.1.0")
    assert data == cyclonedx.write(image, inv, "2026-01-01T00:00:00Z", "0.1.0")  # deterministic
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    doc = json.loads(data)
    assert doc["specVersion"] == "1.6"
    models = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    assert {c["name"] for c in models} == {"Test Coder 1B", "m"}
    back = cyclonedx.read(data, "sbom")
    assert back.image_id == image.image_id
    assert back.inventory == inv


def test_sbom_that_is_not_ours_is_a_format_error() -> None:
    for data in (b"not json", b"[]", b'{"bomFormat": "CycloneDX", "components": [1]}', b'{"bomFormat": "SPDX"}'):
        with pytest.raises(FormatError):
            cyclonedx.read(data, "file sbom/x.cdx.json")


def test_spdx_ids_we_write_are_spdx_ids() -> None:
    schema = Path(cyclonedx_package_dir(), "schema", "_res", "spdx.SNAPSHOT.schema.json")
    known = set(json.loads(schema.read_text())["enum"])
    assert known >= cyclonedx.SPDX_IDS


def cyclonedx_package_dir() -> Path:
    import cyclonedx as cdx

    return Path(cdx.__file__).parent


def test_gguf_type_names_are_llama_cpp_s() -> None:
    for value, name in gguf.FILE_TYPES.items():
        assert gguf_package.LlamaFileType(value).name.removeprefix("MOSTLY_").replace("ALL_", "") == name
    for value, name in gguf.TENSOR_TYPES.items():
        assert gguf_package.GGMLQuantizationType(value).name == name


def test_merge_names_a_layer_that_was_not_read() -> None:
    inv = merge([("sha256:" + "a" * 64, None)])
    assert inv.packages == () and "was not read" in inv.warnings[0]


def test_classify_paths() -> None:
    assert parsers.classify("var/lib/dpkg/status") == "dpkg"
    assert parsers.classify("usr/lib/python3/dist-packages/x-1.dist-info/METADATA") == "python"
    assert parsers.classify("app/node_modules/@s/p/package.json") == "npm"
    assert parsers.classify("app/package.json") is None
    assert parsers.classify("root/.ollama/models/blobs/sha256-" + "a" * 64) == "ollama-blob"
    assert Package("deb", "a", "1", "p", "p").layer == ""
