"""install's decisions, against a fake engine: platform choice, tag protection, disk space, abort."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.format.reader import load_bundle
from airgap._internal.sinks.base import select_images
from airgap._internal.util import fsutil
from airgap._internal.util.tarstream import iter_entries
from airgap.errors import ConflictError, DiskSpaceError, IntegrityError, UsageError
from airgap.install import InstallOptions, install
from airgap.model.manifest import Platform
from airgap.trust.keys import load_public
from tests.test_models import make_manifest


class FakeEngine:
    def __init__(self, root: Path, tags: dict[str, str] | None = None, arch: str = "amd64") -> None:
        self.root = root
        self.tags = dict(tags or {})
        self.ids: set[str] = set(self.tags.values())
        self.arch = arch
        self.uploaded: list[str] = []
        self.load_calls = 0

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def platform(self) -> Platform:
        return Platform("linux", self.arch)

    def root_dir(self) -> Path:
        return self.root

    def inspect(self, ref: str) -> dict[str, Any] | None:
        if ref in self.ids:
            return {"Id": ref}
        if ref in self.tags:
            return {"Id": self.tags[ref]}
        return None

    def image_id(self, ref: str) -> str | None:
        found = self.inspect(ref)
        return found["Id"] if found else None

    def layer_chains(self) -> set[str]:
        return set()  # holds no layers: every layer is read from the bundle

    def images_holding(self, diff_ids: set[str]) -> tuple[list[str], set[str]]:
        return [], set(diff_ids)

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        """Behave like the engine: unpack the whole upload first, register only if it is complete."""
        self.load_calls += 1
        data = b"".join(chunks)  # raises if the stream is cut off: nothing registered
        names = {}
        for entry, reader in iter_entries(io.BytesIO(data), "upload"):
            names[entry.name] = reader.read()
        index = json.loads(names["manifest.json"])
        for item in index:
            image_id = "sha256:" + item["Config"].removesuffix(".json")
            self.ids.add(image_id)
            for tag in item["RepoTags"] or []:
                self.tags[tag] = image_id
        self.uploaded = sorted(names)
        return []


def run(bundle: Path, engine: FakeEngine, pub: Path, **kw: Any) -> Any:
    return install(InstallOptions(bundle, (load_public(pub),), **kw), connect=lambda: engine)  # type: ignore[arg-type,return-value]


def test_install_streams_manifest_last_and_tags(bundle: Path, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = FakeEngine(tmp_path)
    result = run(bundle, engine, keypair[1])
    assert engine.tags["airgap-test/agent:1.0"] == samples["docker"].image_id
    assert result.images[0].action == "loaded"
    assert "manifest.json" in engine.uploaded


def test_tag_pointing_elsewhere_is_a_conflict(bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = "sha256:" + "9" * 64
    engine = FakeEngine(tmp_path, {"airgap-test/agent:1.0": other})
    with pytest.raises(ConflictError, match=r"tag airgap-test/agent:1\.0 already names image") as caught:
        run(bundle, engine, keypair[1])
    assert "--replace" in (caught.value.hint or "")
    assert engine.load_calls == 0 and engine.tags["airgap-test/agent:1.0"] == other


def test_not_enough_space_for_engine_unpack_refused(bundle: Path, keypair, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    image_bytes = sum(b.size for b in load_bundle(bundle).manifest.blobs)
    # room for the image once, but the engine needs it twice (unpack + layers)
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: int(image_bytes * 1.5))
    engine = FakeEngine(tmp_path)
    with pytest.raises(DiskSpaceError, match="loading into Docker needs"):
        run(bundle, engine, keypair[1])
    assert engine.load_calls == 0


def test_part_replaced_mid_install_loads_nothing(bundle: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parts = load_bundle(bundle).manifest.parts
    victim = bundle / parts[-2].path
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x80
    victim.write_bytes(data)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=re.escape(parts[-2].path)):
        run(bundle, engine, keypair[1])
    assert engine.tags == {} and engine.ids == set()


def test_foreign_platform_single_image_loads_with_note() -> None:
    m = make_manifest()
    notes: list[str] = []
    chosen = select_images(m.images, Platform("linux", "amd64"), explicit=False, note=notes.append)
    assert chosen == list(m.images) and "differs" in notes[0]


def test_explicit_platform_missing_is_usage_error() -> None:
    m = make_manifest()
    with pytest.raises(UsageError, match="no image for linux/amd64"):
        select_images(m.images, Platform("linux", "amd64"), explicit=True, note=lambda s: None)


class FakeExportEngine(FakeEngine):
    def inspect(self, ref: str) -> dict[str, Any] | None:
        return {"Id": "sha256:" + "1" * 64, "Size": 10 << 30} if ref == "big/image:1" else None

    def close(self) -> None:
        pass


def test_pack_from_engine_counts_the_engines_temporary_export(keypair, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airgap.pack import PackOptions, pack, parse_source

    engine_root = tmp_path / "engine-root"
    engine_root.mkdir()
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1 << 30 if Path(path) == engine_root else 1 << 40)
    with pytest.raises(DiskSpaceError, match="Docker engine's export") as caught:
        pack(
            PackOptions((parse_source("big/image:1"),), tmp_path / "b", keypair[0]), connect=lambda: FakeExportEngine(engine_root)
        )  # type: ignore[arg-type,return-value]
    assert str(engine_root) in caught.value.message
    assert not (tmp_path / "b").exists()
