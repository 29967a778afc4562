"""Content-defined deltas: a new layer described as chunks of an older layer plus literal bytes.

When an image is rebuilt, a layer whose files did not change usually gets a new digest anyway (new
timestamps in its tar headers).  Both layers are cut into content-defined chunks (FastCDC, average
256 KiB); a chunk of the new layer found in the old one becomes a reference to its offset there, the
rest is carried literally.  The *recipe* is stored as an ordinary blob of the bundle (so it is split,
compressed, hashed and signed like any other); on install the new layer is rebuilt by streaming the old
layer (from the base bundle, or the engine's own copy) alongside the recipe, and its sha256 must equal
the layer digest before anything is loaded.

Recipe format (big-endian)::

    b"AIRGAP-RECIPE-1\\n"
    b"R" offset:u64 length:u32      copy bytes [offset, offset+length) of the old layer (offsets never go back)
    b"L" length:u32 <bytes>         literal bytes
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyfastcdc import FastCDC

from airgap.errors import FormatError, IntegrityError

MAGIC = b"AIRGAP-RECIPE-1\n"
AVG_CHUNK = 256 << 10
_REF = struct.Struct(">cQI")
_LIT = struct.Struct(">cI")
WORTH_IT = 0.5  # a recipe is used only when at most this share of the layer must be carried literally


def _chunker() -> FastCDC:
    """The one FastCDC setting both layers are cut with, so a chunk present in both is cut the same way in each."""
    return FastCDC(avg_size=AVG_CHUNK)


class BlockReader:
    """A readable over an iterator of byte blocks (what pyfastcdc's cut_stream reads)."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._it = iter(blocks)
        self._buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when negative); fewer only at the end of the blocks."""
        while n < 0 or len(self._buf) < n:
            block = next(self._it, None)
            if block is None:
                break
            self._buf += block
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
            return data
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        """Fill ``b`` as far as the blocks go; the number of bytes put in it."""
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def index_chunks(blocks: Iterable[bytes]) -> dict[bytes, tuple[int, int]]:
    """sha256 of each chunk of the old layer -> (offset, length) of its first occurrence."""
    index: dict[bytes, tuple[int, int]] = {}
    for chunk in _chunker().cut_stream(BlockReader(blocks)):
        index.setdefault(hashlib.sha256(chunk.data).digest(), (chunk.offset, chunk.length))
    return index


@dataclass(frozen=True)
class Plan:
    """How to write the new layer: ("R", old offset, length) or ("L", new offset, length) steps."""

    steps: tuple[tuple[str, int, int], ...]
    literal_bytes: int
    size: int  # of the new layer

    @property
    def recipe_size(self) -> int:
        """The bytes of the recipe :func:`encode` writes for this plan."""
        return len(MAGIC) + sum(_REF.size if kind == "R" else _LIT.size + n for kind, _, n in self.steps)

    @property
    def worth_it(self) -> bool:
        """Whether the recipe carries few enough literal bytes (:data:`WORTH_IT` of the layer at most) to be used."""
        return self.literal_bytes <= self.size * WORTH_IT


def plan(new_blocks: Iterable[bytes], index: dict[bytes, tuple[int, int]]) -> Plan:
    """Match the new layer's chunks against the old layer's, never going back in the old layer."""
    steps: list[tuple[str, int, int]] = []
    cursor = 0  # in the old layer
    literal = size = 0
    for chunk in _chunker().cut_stream(BlockReader(new_blocks)):
        found = index.get(hashlib.sha256(chunk.data).digest())
        size += chunk.length
        if found is not None and found[0] >= cursor:
            offset, length = found
            if steps and steps[-1][0] == "R" and steps[-1][1] + steps[-1][2] == offset:
                steps[-1] = ("R", steps[-1][1], steps[-1][2] + length)  # adjacent copies merge
            else:
                steps.append(("R", offset, length))
            cursor = offset + length
        else:
            if steps and steps[-1][0] == "L" and steps[-1][1] + steps[-1][2] == chunk.offset:
                steps[-1] = ("L", steps[-1][1], steps[-1][2] + chunk.length)
            else:
                steps.append(("L", chunk.offset, chunk.length))
            literal += chunk.length
    return Plan(tuple(_split_long(steps)), literal, size)


def _split_long(steps: list[tuple[str, int, int]]) -> Iterator[tuple[str, int, int]]:
    """Cut steps longer than a recipe record holds (2^32 - 1 bytes) into several."""
    limit = (1 << 32) - 1
    for kind, offset, length in steps:
        while length > limit:
            yield kind, offset, limit
            offset += limit
            length -= limit
        yield kind, offset, length


def encode(p: Plan, new_blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The recipe bytes, reading the literal spans from a second pass over the new layer."""
    yield MAGIC
    reader = BlockReader(new_blocks)
    pos = 0
    for kind, offset, length in p.steps:
        if kind == "R":
            yield _REF.pack(b"R", offset, length)
            continue
        skip = offset - pos
        while skip > 0:
            skip -= len(reader.read(min(skip, 1 << 20)))
        yield _LIT.pack(b"L", length)
        left = length
        while left:
            data = reader.read(min(left, 1 << 20))
            if not data:
                raise IntegrityError("the new layer ended while its recipe was written")
            left -= len(data)
            yield data
        pos = offset + length


def decode(recipe_blocks: Iterable[bytes], old_blocks: Iterable[bytes], digest: str, size: int, label: str) -> Iterator[bytes]:
    """Rebuild the new layer from its recipe and the old layer; its sha256 must equal ``digest``."""
    recipe = BlockReader(recipe_blocks)
    old = BlockReader(old_blocks)
    if recipe.read(len(MAGIC)) != MAGIC:
        raise FormatError(f"{label}: the recipe does not start with {MAGIC!r}")
    sha = hashlib.sha256()
    cursor = written = 0
    while tag := recipe.read(1):
        if tag == b"R":
            head = recipe.read(_REF.size - 1)
            if len(head) != _REF.size - 1:
                raise FormatError(f"{label}: the recipe ends inside a record")
            _, offset, length = _REF.unpack(tag + head)
            if offset < cursor:
                raise FormatError(f"{label}: the recipe goes back in the old layer")
            while cursor < offset:
                skipped = len(old.read(min(offset - cursor, 1 << 20)))
                if not skipped:
                    raise IntegrityError(f"{label}: the old layer is shorter than the recipe says")
                cursor += skipped
            source, left = old, length
            cursor += length
        elif tag == b"L":
            head = recipe.read(_LIT.size - 1)
            if len(head) != _LIT.size - 1:
                raise FormatError(f"{label}: the recipe ends inside a record")
            _, left = _LIT.unpack(tag + head)
            source = recipe
        else:
            raise FormatError(f"{label}: unknown recipe record {tag!r}")
        while left:
            data = source.read(min(left, 1 << 20))
            if not data:
                raise IntegrityError(f"{label}: the {'old layer' if source is old else 'recipe'} ended early")
            left -= len(data)
            written += len(data)
            if written > size:
                raise IntegrityError(f"{label}: the rebuilt layer is larger than {size} bytes")
            sha.update(data)
            if written == size and "sha256:" + sha.hexdigest() != digest:
                raise IntegrityError(f"{label}: the rebuilt layer does not match its digest", hint="do not use this bundle")
            yield data
    if written != size or "sha256:" + sha.hexdigest() != digest:
        raise IntegrityError(f"{label}: the rebuilt layer does not match its digest", hint="do not use this bundle")
