"""install's decisions, against a fake engine: platform choice, tag protection, disk space, abort."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap._internal.format.reader import load_bundle
from airgap._internal.sinks.base import select_images
from airgap._internal.sinks.engine import UPLOAD_COMPLETE
from airgap._internal.util import fsutil
from airgap.errors import ConflictError, DiskSpaceError, IntegrityError, UsageError
from airgap.install import InstallOptions, InstallResult, install
from airgap.model.manifest import Platform
from airgap.progress import NullReporter
from airgap.trust.keys import load_public
from tests.helpers.fake_engine import FakeEngine, connect_to
from tests.helpers.keys import KeyPair
from tests.helpers.manifests import make_manifest
from tests.helpers.samples import Samples


def run(bundle: Path, engine: FakeEngine, pub: Path, **kw: Any) -> InstallResult:
    return install(InstallOptions(bundle, (load_public(pub),), **kw), connect=connect_to(engine))


def test_install_streams_manifest_last_and_tags(bundle: Path, samples: Samples, keypair: KeyPair, tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    result = run(bundle, engine, keypair[1])
    assert engine.tags["airgap-test/agent:1.0"] == samples["docker"].image_id
    assert result.images[0].action == "loaded"
    assert "manifest.json" in engine.uploaded


def test_tag_pointing_elsewhere_is_a_conflict(bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    other = "sha256:" + "9" * 64
    engine = FakeEngine(tmp_path, {"airgap-test/agent:1.0": other})
    with pytest.raises(ConflictError, match=r"tag airgap-test/agent:1\.0 already names image") as caught:
        run(bundle, engine, keypair[1])
    assert "--replace" in (caught.value.hint or "")
    assert engine.load_calls == 0 and engine.tags["airgap-test/agent:1.0"] == other


def test_not_enough_space_for_engine_unpack_refused(
    bundle: Path, keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_bytes = sum(b.size for b in load_bundle(bundle).manifest.blobs)
    # room for the image once, but the engine needs it twice (unpack + layers)
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: int(image_bytes * 1.5))
    engine = FakeEngine(tmp_path)
    with pytest.raises(DiskSpaceError, match="loading into Docker needs"):
        run(bundle, engine, keypair[1])
    assert engine.load_calls == 0


def test_part_replaced_mid_install_loads_nothing(bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    parts = load_bundle(bundle).manifest.parts
    victim = bundle / parts[-2].path
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x80
    victim.write_bytes(data)
    engine = FakeEngine(tmp_path)
    with pytest.raises(IntegrityError, match=re.escape(parts[-2].path)):
        run(bundle, engine, keypair[1])
    assert engine.tags == {} and engine.ids == set()


class Timeline(NullReporter):
    """Notes, and what the engine does, in the order they happen."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def note(self, message: str) -> None:
        self.events.append(f"note: {message}")


class TimedEngine(FakeEngine):
    """A FakeEngine that tells ``timeline`` of each chunk it takes, and when it has registered the upload."""

    def __init__(self, root: Path, timeline: Timeline) -> None:
        super().__init__(root)
        self.timeline = timeline

    def load(self, chunks: Iterator[bytes]) -> list[str]:
        def taken() -> Iterator[bytes]:
            for chunk in chunks:
                self.timeline.events.append("chunk")
                yield chunk

        messages = super().load(taken())
        self.timeline.events.append("registered")
        return messages


def test_silent_wait_while_the_engine_registers_layers_gets_a_note(bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    timeline = Timeline()
    result = install(InstallOptions(bundle, (load_public(keypair[1]),)), timeline, connect_to(TimedEngine(tmp_path, timeline)))
    assert result.images[0].action == "loaded"
    events = timeline.events
    said = f"note: {UPLOAD_COMPLETE}"
    assert events.count(said) == 1 and events.count("chunk") > 1
    # once the whole upload is handed over, before the engine has unpacked and registered it
    assert events[events.index(said) - 1] == "chunk" and events[events.index(said) + 1 :] == ["registered"]


def test_no_upload_complete_note_when_a_part_fails(bundle: Path, keypair: KeyPair, tmp_path: Path) -> None:
    victim = bundle / load_bundle(bundle).manifest.parts[-1].path
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x80
    victim.write_bytes(data)
    timeline = Timeline()
    with pytest.raises(IntegrityError):
        install(InstallOptions(bundle, (load_public(keypair[1]),)), timeline, connect_to(TimedEngine(tmp_path, timeline)))
    assert f"note: {UPLOAD_COMPLETE}" not in timeline.events and "registered" not in timeline.events


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
    """An engine holding one 10 GiB image, big/image:1."""

    def inspect(self, ref: str) -> dict[str, Any] | None:
        return {"Id": "sha256:" + "1" * 64, "Size": 10 << 30} if ref == "big/image:1" else None


def test_pack_from_engine_counts_the_engines_temporary_export(
    keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airgap.pack import PackOptions, pack, parse_source

    engine_root = tmp_path / "engine-root"
    engine_root.mkdir()
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1 << 30 if Path(path) == engine_root else 1 << 40)
    with pytest.raises(DiskSpaceError, match="Docker engine's export") as caught:
        pack(
            PackOptions((parse_source("big/image:1"),), tmp_path / "b", keypair[0]),
            connect=connect_to(FakeExportEngine(engine_root)),
        )
    assert str(engine_root) in caught.value.message
    assert not (tmp_path / "b").exists()
