#!/usr/bin/env python3
"""Generate a seed-shaped sample image locally, with no pulls.

The image is shaped like the "coding agent" our users ship: a small base layer (with a dpkg database), an
"app" layer of many small compressible source files (like Open WebUI's Python tree, with Python
distributions and node_modules packages), a "model" layer holding an Ollama model store (a manifest, a
config and a license blob, and the model: a GGUF file, header written with the gguf package, whose tensor
data are incompressible), and a small config layer that deletes one Python distribution (a whiteout).
Everything is deterministic for a given seed, so the same arguments always give the same image ID.

    scripts/sample_image.py OUT.tar --model-size 64MiB --app-size 16MiB [--format oci] [--load [--direct]]

--load loads the archive into the Docker engine at DOCKER_HOST (the Engine API, no docker CLI); with
--direct no archive is written: the layers stream straight into the engine (for images of tens of GB).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import queue
import random
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

COPY = 4 << 20


def parse_size(text: str) -> int:
    units = {
        "": 1,
        "k": 1 << 10,
        "kib": 1 << 10,
        "m": 1 << 20,
        "mib": 1 << 20,
        "g": 1 << 30,
        "gib": 1 << 30,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
    }
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * units[t[len(num) :]])


class RandomStream:
    """Deterministic incompressible bytes (AES-CTR keystream), fast enough for tens of GB."""

    def __init__(self, seed: str, size: int) -> None:
        key = hashlib.sha256(seed.encode()).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        self._left = size
        self._zeros = bytes(COPY)

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        out = b""
        while n > 0:
            take = min(n, COPY)
            out += self._enc.update(self._zeros[:take])
            n -= take
        return out


_VOCABULARY = """def class return import from self if else elif for while in not and or None True False try except
raise with as yield lambda async await request response model config user chat message token stream session json
dict list str int settings router database query result value item key data"""
_WORDS = tuple(_VOCABULARY.split())


# Random bytes mapped onto source-like characters: text that zstd -3 shrinks about 2x and never repeats.
_ALPHABET = (
    "e" * 12 + "t" * 9 + "a" * 8 + "o" * 8 + "i" * 7 + "n" * 7 + "s" * 6 + "r" * 6 + "h" * 5 + "l" * 4 + "d" * 4
    + "c" * 3 + "u" * 3 + "m" * 3 + "f" * 2 + "p" * 2 + "g" * 2 + "w" * 2 + "y" * 2 + "bvk" + "_" * 4 + "()" * 2
    + ".." + ":" + "==" + ",," + "\n" * 5 + "    "
)  # fmt: skip
_TEXT_TABLE = (_ALPHABET + " " * 256)[:256].encode("ascii")


def _module_text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        indent = "    " * rng.randint(0, 3)
        line = indent + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 12)))
        line += rng.choice(["(", ":", " = ", ".", ")"]) + rng.choice(_WORDS) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


class _HashWriter(io.RawIOBase):
    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        if self.fh is not None:
            self.fh.write(b)
        return len(b)


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _write_layer(fh: Any, fill: Callable[[tarfile.TarFile], None]) -> tuple[str, int]:
    """Write one layer tar to ``fh`` (anything with write(); None: only hash it); return digest and size."""
    hw = _HashWriter(fh)
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT, bufsize=COPY) as tar:  # type: ignore[call-overload]
        tar.copybufsize = COPY
        fill(tar)
    return "sha256:" + hw.sha.hexdigest(), hw.size


OLLAMA_MODEL = ("registry.ollama.ai", "library", "airgap-coder", "tiny-q5_K_M")  # models/manifests/HOST/NS/MODEL/TAG
Q5_K_BLOCK = (256, 176)  # a Q5_K block: 256 weights in 176 bytes

DPKG_STATUS = b"""Package: base-files
Status: install ok installed
Priority: required
Architecture: {arch}
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: libc6
Status: install ok installed
Architecture: {arch}
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u7
Description: GNU C Library: Shared libraries

Package: zlib1g
Status: install ok installed
Architecture: {arch}
Source: zlib
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: nano
Status: deinstall ok config-files
Architecture: {arch}
Version: 7.2-1
Description: removed, its configuration files kept: not installed
"""
ZLIB_COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zlib

Files: *
Copyright: 1995-2022 Jean-loup Gailly and Mark Adler
License: Zlib
"""
SITE_PACKAGES = "usr/local/lib/python3.11/site-packages"
PY_DISTS = {
    "requests-2.31.0.dist-info": b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nPython HTTP for Humans.\n",
    "six-1.16.0.dist-info": b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: MIT\n\nPython 2 and 3 compatibility.\n",
}
NPM_PACKAGES = {
    "app/frontend/node_modules/marked/package.json": {"name": "marked", "version": "12.0.0", "license": "MIT"},
    "app/frontend/node_modules/@types/node/package.json": {"name": "@types/node", "version": "20.11.5", "license": "MIT"},
}


def _gguf_header(name: str, blocks: int) -> bytes:
    """A GGUF header (written with the gguf package) for a Q5_K_M model of one tensor of ``blocks`` Q5_K
    blocks, padded to the data's alignment: the tensor's bytes follow it."""
    import gguf  # numpy comes with it: loaded only when an image is made

    with tempfile.TemporaryDirectory(prefix="sample-gguf-") as tmp:
        path = Path(tmp) / "model.gguf"
        writer = gguf.GGUFWriter(path, "qwen2")
        writer.add_name(name)
        writer.add_size_label("tiny")
        writer.add_license("apache-2.0")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q5_K_M)
        writer.add_context_length(32768)
        writer.add_block_count(1)
        weights, nbytes = blocks * Q5_K_BLOCK[0], blocks * Q5_K_BLOCK[1]
        writer.add_tensor_info("token_embd.weight", (weights,), gguf.np.dtype("float32"), nbytes, gguf.GGMLQuantizationType.Q5_K)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        header = path.read_bytes()
    return header + b"\0" * ((-len(header)) % 32)


@dataclass(frozen=True)
class _Model:
    """The sample's GGUF model: its header, the size of the random bytes after it, and its sha256."""

    header: bytes
    data_size: int
    sha256: str

    def stream(self, mseed: str) -> Any:
        """The file's bytes: the header, then the tensor data (deterministic random bytes)."""
        return _Concat(self.header, RandomStream(f"{mseed}-model", self.data_size))


class _Concat:
    def __init__(self, head: bytes, rest: RandomStream) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes (all that is left when negative), as tarfile wants them: never short before the end."""
        head, self._head = (self._head, b"") if n < 0 else (self._head[:n], self._head[n:])
        return head + self._rest.read(-1 if n < 0 else n - len(head))


_MODELS: dict[tuple[str, int], _Model] = {}


def _model_file(mseed: str, model_size: int) -> _Model:
    """The GGUF model of ``model_size`` bytes (at least one Q5_K block after the header), hashed once per
    process: Ollama names the file after its sha256."""
    key = (mseed, model_size)
    if key not in _MODELS:
        probe = _gguf_header(f"airgap sample coder {mseed}", 1)
        blocks = max(1, (model_size - len(probe)) // Q5_K_BLOCK[1])
        header = _gguf_header(f"airgap sample coder {mseed}", blocks)
        data_size = max(model_size - len(header), blocks * Q5_K_BLOCK[1])
        sha = hashlib.sha256(header)
        rest = RandomStream(f"{mseed}-model", data_size)
        while chunk := rest.read(COPY):
            sha.update(chunk)
        _MODELS[key] = _Model(header, data_size, sha.hexdigest())
    return _MODELS[key]


def _fillers(
    seed: str, model_size: int, app_size: int, model_seed: str | None = None, model_mtime: int = 0, arch: str = "amd64"
) -> list[tuple[str, Callable[[tarfile.TarFile], None]]]:
    """The four layers, as functions that write them into a tar: deterministic, so they can run twice.
    ``model_seed`` (default: ``seed``) lets two images share the model layer, as an app update does;
    ``model_mtime`` rebuilds the model layer with the same bytes but other tar metadata (a new digest)."""
    mseed = model_seed or seed
    rng = random.Random(seed)
    modules = [_module_text(rng, rng.randint(2_000, 40_000)) for _ in range(64)]

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        tar.addfile(_info(name, len(data)), io.BytesIO(data))

    def base(tar: tarfile.TarFile) -> None:
        for d in ("etc", "usr", "usr/bin", "root", "app", "var", "var/lib", "var/lib/dpkg"):
            tar.addfile(_info(d, kind=tarfile.DIRTYPE, mode=0o755))
        add(tar, "etc/os-release", b'PRETTY_NAME="airgap sample (Debian 12 layout)"\nID=debian\nVERSION_ID="12"\n')
        add(tar, "var/lib/dpkg/status", DPKG_STATUS.replace(b"{arch}", arch.encode()))
        add(tar, "usr/share/doc/zlib1g/copyright", ZLIB_COPYRIGHT)

    def app(tar: tarfile.TarFile) -> None:
        for dist, metadata in PY_DISTS.items():
            add(tar, f"{SITE_PACKAGES}/{dist}/METADATA", metadata)
        for path, package in NPM_PACKAGES.items():
            add(tar, path, json.dumps(package, sort_keys=True).encode())
        # each file: a shared module (repeats, like boilerplate) and as much text of its own (never repeats)
        unique = RandomStream(f"{seed}-app", app_size)
        total, i = 0, 0
        while total < app_size:
            module = modules[i % len(modules)]
            body = (
                f"# module {i} of the sample web app\n".encode()
                + module
                + unique.read(len(module) * 2 // 3).translate(_TEXT_TABLE)
            )
            body = body[: max(1, min(len(body), app_size - total))]
            tar.addfile(_info(f"app/backend/pkg{i // 100:03d}/mod{i:05d}.py", len(body)), io.BytesIO(body))
            total += len(body)
            i += 1

    def model(tar: tarfile.TarFile) -> None:
        store = "root/.ollama/models"
        for d in ("root/.ollama", store, f"{store}/blobs"):
            tar.addfile(_info(d, kind=tarfile.DIRTYPE, mode=0o755))
        gguf_model = _model_file(mseed, model_size)
        small = {
            "application/vnd.ollama.image.license": b"Apache License 2.0 (the sample model's)\n",
            "application/vnd.docker.container.image.v1+json": json.dumps(
                {"model_format": "gguf", "model_family": "qwen2", "file_type": "Q5_K_M", "seed": mseed}, sort_keys=True
            ).encode(),
        }
        for data in small.values():
            add(tar, f"{store}/blobs/sha256-{hashlib.sha256(data).hexdigest()}", data)
        size = len(gguf_model.header) + gguf_model.data_size
        info = _info(f"{store}/blobs/sha256-{gguf_model.sha256}", size)
        info.mtime = model_mtime
        tar.addfile(info, gguf_model.stream(mseed))
        config_type = "application/vnd.docker.container.image.v1+json"
        config = small[config_type]
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": config_type, "digest": f"sha256:{hashlib.sha256(config).hexdigest()}", "size": len(config)},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{gguf_model.sha256}", "size": size},
                *(
                    {"mediaType": t, "digest": f"sha256:{hashlib.sha256(d).hexdigest()}", "size": len(d)}
                    for t, d in small.items()
                    if t != config_type
                ),
            ],
        }
        add(tar, f"{store}/manifests/{'/'.join(OLLAMA_MODEL)}", json.dumps(manifest, sort_keys=True).encode())

    def settings(tar: tarfile.TarFile) -> None:
        text = json.dumps({"model": "qwen2.5-coder:32b-instruct-q5_K_M", "seed": seed}).encode()
        tar.addfile(_info("app/config.json", len(text)), io.BytesIO(text))
        tar.addfile(_info(f"{SITE_PACKAGES}/.wh.six-1.16.0.dist-info"), io.BytesIO(b""))  # pip uninstall six

    return [("base", base), ("app", app), ("model", model), ("settings", settings)]


def _config(diff_ids: list[str], arch: str) -> tuple[bytes, str]:
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["OLLAMA_MODELS=/root/.ollama/models"], "Cmd": ["/usr/bin/start"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2026-01-01T00:00:00Z", "created_by": f"sample layer {n}"} for n in ("base", "app", "model", "settings")
        ],
    }
    data = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _add_docker_index(tar: tarfile.TarFile, config_path: str, layer_paths: list[str], tag: str) -> None:
    """The manifest.json that 'docker load' reads, naming files inside the archive."""
    index = json.dumps([{"Config": config_path, "RepoTags": [tag], "Layers": layer_paths}]).encode()
    tar.addfile(_info("manifest.json", len(index)), io.BytesIO(index))


@dataclass(frozen=True)
class Sample:
    path: Path
    tag: str
    image_id: str
    layers: tuple[str, ...]
    size: int


def build(
    out: Path,
    *,
    tag: str = "airgap-sample/coding-agent:latest",
    model_size: int = 8 << 20,
    app_size: int = 4 << 20,
    seed: str = "airgap",
    arch: str = "amd64",
    fmt: str = "docker",
    model_seed: str | None = None,
    model_mtime: int = 0,
) -> Sample:
    """Write the sample image to ``out`` as a docker-archive in the layout of Docker <= 24 (fmt="docker") or of
    Docker >= 25 (fmt="docker-oci"), or as an oci-archive (fmt="oci")."""
    work = Path(tempfile.mkdtemp(prefix=".sample-", dir=out.parent))
    try:
        fillers = _fillers(seed, model_size, app_size, model_seed, model_mtime, arch)
        layers = []
        for name, fill in fillers:
            path = work / f"{name}.tar"
            with open(path, "wb") as fh:
                digest, size = _write_layer(fh, fill)
            layers.append((path, digest, size))
        config_bytes, config_digest = _config([d for _, d, _ in layers], arch)
        tmp_out = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = COPY
            if fmt == "docker":
                for path, digest, size in layers:
                    with open(path, "rb") as fh:
                        tar.addfile(_info(f"{digest[7:]}/layer.tar", size), fh)
                tar.addfile(_info(f"{config_digest[7:]}.json", len(config_bytes)), io.BytesIO(config_bytes))
                _add_docker_index(tar, f"{config_digest[7:]}.json", [f"{d[7:]}/layer.tar" for _, d, _ in layers], tag)
            else:
                tar.addfile(_info("blobs", kind=tarfile.DIRTYPE, mode=0o755))
                tar.addfile(_info("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755))
                for path, digest, size in layers:
                    with open(path, "rb") as fh:
                        tar.addfile(_info(f"blobs/sha256/{digest[7:]}", size), fh)
                tar.addfile(_info(f"blobs/sha256/{config_digest[7:]}", len(config_bytes)), io.BytesIO(config_bytes))
                manifest = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": config_digest,
                            "size": len(config_bytes),
                        },
                        "layers": [
                            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s} for _, d, s in layers
                        ],
                    },
                    separators=(",", ":"),
                ).encode()
                manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
                tar.addfile(_info(f"blobs/sha256/{manifest_digest[7:]}", len(manifest)), io.BytesIO(manifest))
                index = json.dumps(
                    {
                        "schemaVersion": 2,
                        "manifests": [
                            {
                                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": manifest_digest,
                                "size": len(manifest),
                                "annotations": {"org.opencontainers.image.ref.name": tag},
                            }
                        ],
                    }
                ).encode()
                layout = b'{"imageLayoutVersion":"1.0.0"}'
                tar.addfile(_info("oci-layout", len(layout)), io.BytesIO(layout))
                tar.addfile(_info("index.json", len(index)), io.BytesIO(index))
                if fmt == "docker-oci":  # Docker >= 25: an OCI layout plus a docker-compatible manifest.json
                    layer_paths = [f"blobs/sha256/{d[7:]}" for _, d, _ in layers]
                    _add_docker_index(tar, f"blobs/sha256/{config_digest[7:]}", layer_paths, tag)
        os.replace(tmp_out, out)
        return Sample(out, tag, config_digest, tuple(d for _, d, _ in layers), out.stat().st_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_into_engine(archive: Path) -> None:
    import docker

    client = docker.from_env(timeout=3600)
    try:
        with open(archive, "rb") as fh:
            _check_load(client.api.load_image(fh, quiet=True))
    finally:
        client.close()


def _check_load(messages: Any) -> None:
    for msg in messages:
        if msg.get("error"):
            raise SystemExit(f"docker load failed: {msg['error']}")


class _QueueWriter:
    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self.q = q

    def write(self, b: bytes) -> int:
        self.q.put(bytes(b))
        return len(b)


def _produce(fill: Callable[[tarfile.TarFile], None], q: queue.Queue[bytes | None], result: list[tuple[str, int]]) -> None:
    result.append(_write_layer(_QueueWriter(q), fill))
    q.put(None)


def stream_into_engine(
    *,
    tag: str,
    model_size: int,
    app_size: int,
    seed: str = "airgap",
    arch: str = "amd64",
    model_seed: str | None = None,
    model_mtime: int = 0,
) -> Sample:
    """Load the sample image into the engine at DOCKER_HOST with no archive on disk: the layers are made
    once to learn their digests, then made again straight into the engine's image load."""
    import docker

    fillers = _fillers(seed, model_size, app_size, model_seed, model_mtime, arch)
    facts = [_write_layer(None, fill) for _, fill in fillers]
    config_bytes, config_digest = _config([d for d, _ in facts], arch)
    index = json.dumps(
        [{"Config": f"{config_digest[7:]}.json", "RepoTags": [tag], "Layers": [f"{d[7:]}/layer.tar" for d, _ in facts]}]
    ).encode()

    def archive() -> Iterator[bytes]:
        for (_, fill), (digest, size) in zip(fillers, facts, strict=True):
            yield _info(f"{digest[7:]}/layer.tar", size).tobuf(tarfile.PAX_FORMAT)
            q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
            result: list[tuple[str, int]] = []
            worker = threading.Thread(target=_produce, args=(fill, q, result), daemon=True)
            worker.start()
            while (chunk := q.get()) is not None:
                yield chunk
            worker.join()
            if result != [(digest, size)]:
                raise SystemExit("sample layer came out different the second time")
            yield b"\0" * ((-size) % 512)
        for name, data in ((f"{config_digest[7:]}.json", config_bytes), ("manifest.json", index)):
            yield _info(name, len(data)).tobuf(tarfile.PAX_FORMAT) + data + b"\0" * ((-len(data)) % 512)
        yield b"\0" * 1024

    client = docker.from_env(timeout=6 * 3600)
    try:
        _check_load(client.api.load_image(archive(), quiet=True))
    finally:
        client.close()
    return Sample(Path(), tag, config_digest, tuple(d for d, _ in facts), sum(size for _, size in facts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--tag", default="airgap-sample/coding-agent:latest")
    p.add_argument("--model-size", default="8MiB")
    p.add_argument("--app-size", default="4MiB")
    p.add_argument("--seed", default="airgap")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--model-seed", help="seed of the model layer (default: --seed); equal model seeds share the layer")
    p.add_argument("--model-mtime", type=int, default=0, help="mtime of the model file: another value rebuilds the layer")
    p.add_argument("--format", choices=("docker", "docker-oci", "oci"), default="docker")
    p.add_argument("--load", action="store_true", help="load the archive into the Docker engine at DOCKER_HOST")
    p.add_argument("--direct", action="store_true", help="with --load: write no archive, stream straight into the engine")
    args = p.parse_args(argv)
    shape = {
        "tag": args.tag,
        "model_size": parse_size(args.model_size),
        "app_size": parse_size(args.app_size),
        "seed": args.seed,
        "arch": args.arch,
        "model_seed": args.model_seed,
        "model_mtime": args.model_mtime,
    }
    if args.direct:
        sample = stream_into_engine(**shape)
        print(f"loaded {sample.tag} ({sample.size} bytes of layers) into the Docker engine: {sample.image_id}", file=sys.stderr)
        return 0
    sample = build(args.out, fmt=args.format, **shape)
    print(f"wrote {sample.path} ({sample.size} bytes): {sample.tag} {sample.image_id}", file=sys.stderr)
    if args.load:
        load_into_engine(sample.path)
        print(f"loaded {sample.tag} into the Docker engine", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
