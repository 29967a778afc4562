from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from airgap._internal.format.parts import BlobWriter, make_compressor
from airgap._internal.util.pipeline import PrefetchReader, threaded
from airgap._internal.util.tarstream import read_exact
from airgap.progress import Transfer


def test_prefetch_reader_returns_the_stream_exactly() -> None:
    data = os.urandom(5_000_000)
    got = bytearray()
    with PrefetchReader(io.BytesIO(data), block=65_536, depth=3) as r:
        for n in (1, 511, 512, 70_000, 1 << 20, 3):
            got += read_exact(r, n)
        while chunk := r.read(123_457):
            got += chunk
    assert bytes(got) == data


class _Broken:
    def __init__(self) -> None:
        self.calls = 0

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise OSError("the medium went away")
        return b"x" * n


def test_prefetch_reader_raises_the_sources_error_in_the_reader() -> None:
    with PrefetchReader(_Broken(), block=10, depth=2) as r, pytest.raises(OSError, match="medium went away"):
        while r.read(10):
            pass


def test_threaded_generator_propagates_errors_and_stops() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad part")

    out: list[int] = []
    with pytest.raises(ValueError, match="bad part"):
        for item in threaded(gen()):
            out.append(item)
    assert out == [1, 2]


def test_long_distance_parts_decompress_within_the_window_limit(tmp_path: Path) -> None:
    data = os.urandom(1 << 20) * 6  # repeats 1 MiB apart: what --long is for
    writer = BlobWriter(tmp_path, "t", len(data), 64 << 20, make_compressor(3, 2, long_distance=True), Transfer())
    writer.write(data)
    staged = writer.finish()
    frame = staged.parts[0].tmp_path.read_bytes()
    assert len(frame) < len(data) // 3
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    assert dctx.decompress(frame) == data
