from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airgap._internal.format.parts import (
    BlobWriter,
    FrameShape,
    NotOneFrame,
    StagedBlob,
    StagedPart,
    compress_bound,
    iter_part_data,
    make_compressor,
    raw_chunk_size,
)
from airgap.errors import ConflictError, IntegrityError, InternalError, UsageError
from airgap.model.manifest import Part, part_path
from airgap.pack import PackOptions
from airgap.progress import Transfer


def split(tmp: Path, data: bytes, part_size: int, level: int = 3, feed: int = 1 << 16) -> tuple[str, list[Part]]:
    writer = BlobWriter(tmp, "t", len(data), part_size, make_compressor(level, 2), Transfer())
    for i in range(0, len(data), feed):
        writer.write(data[i : i + feed])
    staged = writer.finish()
    parts = []
    for i, sp in enumerate(staged.parts):
        final = tmp / Path(part_path(staged.digest, i)).name
        os.replace(sp.tmp_path, final)
        parts.append(Part(part_path(staged.digest, i), sp.size, sp.sha256, staged.digest, i, sp.offset, sp.length))
    return staged.digest, parts


def join(tmp: Path, parts: list[Part]) -> bytes:
    out = b""
    for part in parts:
        with open(tmp / Path(part.path).name, "rb") as fh:
            out += b"".join(iter_part_data(fh, part, part.path))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 300_000), part_size=st.integers(4096, 70_000), compressible=st.booleans())
def test_split_join_round_trip_and_no_part_over_size(tmp_path: Path, size: int, part_size: int, compressible: bool) -> None:
    data = (b"layer data " * (size // 11 + 1))[:size] if compressible else os.urandom(size)
    d = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis may draw the same example twice
    digest, parts = split(d, data, part_size)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert all(p.size <= part_size for p in parts)
    assert sum(p.length for p in parts) == size
    assert join(d, parts) == data


def test_incompressible_worst_case_fits_part_size(tmp_path: Path) -> None:
    part_size = 1 << 20
    data = os.urandom(3 * part_size)
    _, parts = split(tmp_path, data, part_size, level=19)
    assert max(p.size for p in parts) <= part_size
    assert compress_bound(raw_chunk_size(part_size)) < part_size


def test_same_blob_gives_same_parts(tmp_path: Path) -> None:
    data = os.urandom(200_000) + b"x" * 100_000
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = split(tmp_path / "a", data, 50_000, feed=7_777)
    _, b = split(tmp_path / "b", data, 50_000, feed=65_536)
    assert a == b


def test_each_part_is_an_independent_frame(tmp_path: Path) -> None:
    data = os.urandom(150_000)
    _, parts = split(tmp_path, data, 40_000)
    middle = parts[len(parts) // 2]
    raw = zstandard.ZstdDecompressor().decompress((tmp_path / Path(middle.path).name).read_bytes())
    assert raw == data[middle.offset : middle.offset + middle.length]


def test_flipped_byte_in_part_rejected(tmp_path: Path) -> None:
    _, parts = split(tmp_path, os.urandom(100_000), 60_000)
    f = tmp_path / Path(parts[0].path).name
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 1
    f.write_bytes(blob)
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        join(tmp_path, parts)


def test_truncated_part_rejected(tmp_path: Path) -> None:
    _, parts = split(tmp_path, os.urandom(100_000), 60_000)
    f = tmp_path / Path(parts[1].path).name
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="manifest says"):
        join(tmp_path, parts)


def test_zstd_bomb_past_declared_length_stopped() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    part = Part(part_path("sha256:" + "c" * 64, 0), len(bomb), hashlib.sha256(bomb).hexdigest(), "sha256:" + "c" * 64, 0, 0, 1000)
    produced = 0
    with pytest.raises(IntegrityError, match="decompresses past its declared length"):
        for block in iter_part_data(io.BytesIO(bomb), part, "bomb"):
            produced += len(block)
    assert produced == 0  # nothing from the bad part reached the caller


def test_last_block_held_back_until_hash_checked() -> None:
    good = zstandard.ZstdCompressor().compress(b"y" * 5000)
    part = Part(part_path("sha256:" + "d" * 64, 0), len(good), "0" * 64, "sha256:" + "d" * 64, 0, 0, 5000)
    got = []
    with pytest.raises(IntegrityError):
        for block in iter_part_data(io.BytesIO(good), part, "p"):
            got.append(block)
    assert got == []


def test_tiny_part_size_refused_where_the_options_are_made(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too small"):
        PackOptions((), tmp_path / "b", tmp_path / "k", part_size=100)
    with pytest.raises(InternalError):  # below the options, a tiny part size is a bug, not a user error
        raw_chunk_size(100)


# -- resuming: a staged part is reused only if it is exactly the one frame pack writes ----------------

SKIPPABLE_FRAME = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"backdoor"


def shape_of(data: bytes, length: int, step: int) -> str:
    shape = FrameShape(length)
    try:
        for i in range(0, len(data), step):
            shape.feed(data[i : i + step])
        shape.finish()
    except NotOneFrame as e:
        return str(e)
    return "ok"


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 400_000), step=st.sampled_from([1, 3, 4096, 1 << 20]), long_distance=st.booleans())
def test_frame_shape_accepts_what_pack_writes_and_nothing_more(size: int, step: int, long_distance: bool) -> None:
    raw = (os.urandom(size // 3) + b"z" * size)[:size]
    out = io.BytesIO()
    with make_compressor(3, 1, long_distance).stream_writer(out, size=size, closefd=False) as zw:
        zw.write(raw)
    frame = out.getvalue()
    step = step if step > 1 or len(frame) < 20_000 else 4096  # byte by byte only for small frames
    assert shape_of(frame, size, step) == "ok"
    assert shape_of(frame + SKIPPABLE_FRAME, size, step) != "ok"
    assert shape_of(frame + frame, size, step) != "ok"
    assert shape_of(frame[:-1], size, step) != "ok"
    assert shape_of(frame, size + 1, step) != "ok"
    assert shape_of(SKIPPABLE_FRAME + frame, size, step) != "ok"


def stage(tmp: Path, data: bytes, part_size: int = 40_000) -> StagedBlob:
    writer = BlobWriter(tmp, "t", len(data), part_size, make_compressor(3, 1), Transfer())
    writer.write(data)
    return writer.finish()


def resume(tmp: Path, data: bytes, reuse: dict[int, StagedPart], part_size: int = 40_000) -> BlobWriter:
    writer = BlobWriter(tmp, "t", len(data), part_size, make_compressor(3, 1), Transfer(), reuse=reuse)
    writer.write(data)
    writer.finish()
    return writer


def test_intact_staged_parts_are_reused(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    staged = stage(tmp_path, data)
    assert resume(tmp_path, data, dict(enumerate(staged.parts))).reused == len(staged.parts) == 3


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (SKIPPABLE_FRAME, "bytes follow its zstd frame"),
        (zstandard.ZstdCompressor().compress(b"x"), "bytes follow its zstd frame"),
    ],
    ids=["skippable-frame", "second-frame"],
)
def test_staged_part_with_bytes_after_its_frame_refused_even_with_a_fixed_journal(tmp_path: Path, tail: bytes, why: str) -> None:
    """The attacker appends to a staged part and fixes its journal entry (size, sha256): the part's content
    still decompresses to the source, so only its frame structure gives it away."""
    data = os.urandom(100_000)
    staged = stage(tmp_path, data)
    victim = staged.parts[1]
    with open(victim.tmp_path, "ab") as fh:
        fh.write(tail)
    tampered = victim.tmp_path.read_bytes()
    forged = replace(victim, size=len(tampered), sha256=hashlib.sha256(tampered).hexdigest())
    with pytest.raises(ConflictError, match=f"{victim.tmp_path.name} .*changed after pack wrote it: {why}") as e:
        resume(tmp_path, data, {**dict(enumerate(staged.parts)), 1: forged})
    assert e.value.exit_code == 7 and "--overwrite" in (e.value.hint or "")


def test_staged_part_recompressed_without_checksum_refused(tmp_path: Path) -> None:
    """Same content, another frame (no checksum, as plain zstd writes it): not what pack writes."""
    data = os.urandom(100_000)
    staged = stage(tmp_path, data)
    victim = staged.parts[0]
    other = zstandard.ZstdCompressor(write_checksum=False).compress(data[: victim.length])
    victim.tmp_path.write_bytes(other)
    forged = replace(victim, size=len(other), sha256=hashlib.sha256(other).hexdigest())
    with pytest.raises(ConflictError, match="frame header is not one pack writes"):
        resume(tmp_path, data, {**dict(enumerate(staged.parts)), 0: forged})


def test_staged_part_replaced_by_a_symlink_refused(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    staged = stage(tmp_path, data)
    victim = staged.parts[2]
    elsewhere = tmp_path / "elsewhere.zst"
    os.replace(victim.tmp_path, elsewhere)
    victim.tmp_path.symlink_to(elsewhere)
    with pytest.raises(ConflictError, match="not a regular file"):
        resume(tmp_path, data, dict(enumerate(staged.parts)))
