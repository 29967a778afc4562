"""A bounded reader of GGUF headers, fed from a layer as it streams.

The ``gguf`` package's reader maps a whole file into memory and builds a view of every tensor, so it needs
the file on disk, all of it: pack sees each file once, in a stream, and keeps no copy.  This reader parses
the header (version 2 and 3, either byte order) from the stream and stops there; the caller hashes the
file's bytes as they pass.  Everything it keeps is bounded: the ``general.*`` entries and context lengths
(short values only), and the tensors' element counts summed.  A header that claims more than it may have
(2^40 tensors, a 100 MB string, an array of 2^60 items) is read no further, with a reason; its metadata
up to there are kept.  The names of file types and tensor types are llama.cpp's (the tests check them
against the ``gguf`` package).
"""

from __future__ import annotations

import struct
from collections import Counter

from airgap._internal.inventory.records import GgufInfo
from airgap._internal.inventory.tarwalk import InventoryLimit, Member

MAGIC = b"GGUF"
MAX_KV = 1 << 16  # metadata entries
MAX_TENSORS = 1 << 20  # tensors whose infos are read for the parameter count
MAX_HEADER = 256 << 20  # bytes of header parsed at most (a large vocabulary takes about 10 MiB)
MAX_ITEMS = 1 << 24  # array items stepped over, in all
MAX_KEY = 1 << 16
MAX_KEPT = 1 << 10  # longest string value kept
MAX_KEPT_ENTRIES = 64
MAX_DIMS = 8

FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
# value types: their fixed sizes (STRING=8 and ARRAY=9 have none)
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class _Header:
    """The member's bytes read in chunks, so that the many small fields of a header cost little."""

    def __init__(self, member: Member, order: str) -> None:
        self._member = member
        self._buf = b""
        self._pos = 0
        self.order = order
        self.used = 0
        self.items = 0

    def _need(self, n: int) -> None:
        """At least ``n`` bytes in the buffer, or an InventoryLimit (the file ends, the header is too big)."""
        if len(self._buf) - self._pos >= n:
            return
        more = self._member.read(max(n - (len(self._buf) - self._pos), 1 << 16))
        self._buf = self._buf[self._pos :] + more
        self._pos = 0
        if len(self._buf) < n:
            raise InventoryLimit("the GGUF header ends early (the file is truncated)")

    def _take(self, n: int) -> None:
        self._pos += n
        self.used += n
        if self.used > MAX_HEADER:
            raise InventoryLimit(f"the GGUF header runs past {MAX_HEADER >> 20} MiB: read no further")

    def scalar(self, kind: int) -> int | float | bool:
        """One value of a fixed-size type."""
        size = _SIZES[kind]
        self._need(size)
        (value,) = struct.unpack_from(self.order + _FORMATS[kind], self._buf, self._pos)
        self._take(size)
        return value  # type: ignore[no-any-return]

    def u32(self) -> int:
        return int(self.scalar(4))

    def u64(self) -> int:
        return int(self.scalar(10))

    def string(self, keep: int) -> str | None:
        """A string: its text when at most ``keep`` bytes long, else None (stepped over, never held)."""
        n = self.u64()
        if n <= keep:
            self._need(n)
            text = self._buf[self._pos : self._pos + n].decode("utf-8", "replace")
            self._take(n)
            return text
        self.skip(n)
        return None

    def skip(self, n: int) -> None:
        """Step over ``n`` bytes of the header."""
        if self.used + n > MAX_HEADER:
            raise InventoryLimit(f"the GGUF header runs past {MAX_HEADER >> 20} MiB: read no further")
        have = len(self._buf) - self._pos
        if n <= have:
            self._take(n)
            return
        self._buf, self._pos = b"", 0
        self.used += n
        left = n - have
        while left > 0:
            got = len(self._member.view(min(left, 8 << 20)))
            if not got:
                raise InventoryLimit("the GGUF header ends early (the file is truncated)")
            left -= got

    def value(self, kind: int, keep: bool, depth: int = 0) -> object:
        """One metadata value of ``kind``: kept (short strings, numbers) when ``keep``, else stepped over."""
        if kind in _SIZES:
            return self.scalar(kind)
        if kind == STRING:
            return self.string(MAX_KEPT if keep else -1)
        if kind != ARRAY or depth > 1:
            raise InventoryLimit(f"the GGUF header holds a value of unknown type {kind}: read no further")
        item = self.u32()
        count = self.u64()
        if item in _SIZES:
            if count > MAX_HEADER:
                raise InventoryLimit(f"a GGUF array claims {count} items: read no further")
            self.skip(count * _SIZES[item])
            return None
        for _ in range(count):
            self.items += 1
            if self.items > MAX_ITEMS:
                raise InventoryLimit(f"the GGUF header's arrays hold more than {MAX_ITEMS} items: read no further")
            self.value(item, False, depth + 1)
        return None


def _wanted(key: str) -> bool:
    """The entries kept: ``general.*`` and every ``*.context_length``."""
    return key.startswith("general.") or key.endswith(".context_length")


def read_header(member: Member) -> tuple[GgufInfo, str | None]:
    """The facts of the GGUF header at the start of ``member``, and why it was not read to its end (None
    when it was).  The member must start with :data:`MAGIC`."""
    if member.read(4) != MAGIC:
        raise InventoryLimit("not a GGUF file")
    raw = member.read(4)
    if len(raw) < 4:
        raise InventoryLimit("the GGUF header ends early (the file is truncated)")
    order = "<"
    (version,) = struct.unpack("<I", raw)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack(">I", raw)
    if version not in (2, 3):
        raise InventoryLimit(f"GGUF version {version} is not read (versions 2 and 3 are)")
    h = _Header(member, order)
    tensor_count, kv_count = h.u64(), h.u64()
    kept: dict[str, object] = {}
    by_type: Counter[int] = Counter()
    params: int | None = None
    stopped: str | None = None
    try:
        _metadata(h, kv_count, kept)
        params = _tensors(h, tensor_count, by_type)
    except InventoryLimit as e:
        stopped = str(e)
    return _info(version, tensor_count, kept, params, by_type), stopped


def _metadata(h: _Header, kv_count: int, kept: dict[str, object]) -> None:
    """Read the metadata entries, keeping the wanted ones (:func:`_wanted`) in ``kept``."""
    if kv_count > MAX_KV:
        raise InventoryLimit(f"the GGUF header claims {kv_count} metadata entries: read no further")
    for _ in range(kv_count):
        key = h.string(MAX_KEY)
        if key is None:
            raise InventoryLimit("a GGUF metadata key is longer than 64 KiB: read no further")
        kind = h.u32()
        keep = _wanted(key) and len(kept) < MAX_KEPT_ENTRIES
        value = h.value(kind, keep)
        if keep and value is not None:
            kept[key] = value


def _tensors(h: _Header, tensor_count: int, by_type: Counter[int]) -> int:
    """Read the tensor infos: the elements of all tensors (the parameter count), counted by type in ``by_type``."""
    if tensor_count > MAX_TENSORS:
        raise InventoryLimit(f"the GGUF header claims {tensor_count} tensors: the parameter count is not read")
    total = 0
    for _ in range(tensor_count):
        h.string(-1)
        n_dims = h.u32()
        if n_dims > MAX_DIMS:
            raise InventoryLimit(f"a GGUF tensor claims {n_dims} dimensions: read no further")
        elements = 1
        for _ in range(n_dims):
            elements *= h.u64()
        kind = h.u32()
        h.u64()  # its offset in the data
        total += elements
        by_type[kind] += elements
    return total


def _info(version: int, tensors: int, kept: dict[str, object], params: int | None, by_type: Counter[int]) -> GgufInfo:
    """The header's facts from the entries kept."""

    def text(key: str) -> str | None:
        value = kept.get(key)
        return value if isinstance(value, str) else None

    def number(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    arch = text("general.architecture")
    file_type = number(kept.get("general.file_type"))
    quant = FILE_TYPES.get(file_type, f"type {file_type}") if file_type is not None else None
    if quant is None and by_type:
        dominant = by_type.most_common(1)[0][0]
        quant = TENSOR_TYPES.get(dominant, f"type {dominant}")
    context = number(kept.get(f"{arch}.context_length")) if arch else None
    if context is None:
        context = next((number(v) for k, v in sorted(kept.items()) if k.endswith(".context_length") and number(v)), None)
    shown = {"general.architecture", "general.name", "general.size_label", "general.license", "general.file_type"}
    metadata = tuple((k, str(v)[:MAX_KEPT]) for k, v in sorted(kept.items()) if k.startswith("general.") and k not in shown)
    return GgufInfo(
        version=version,
        tensor_count=tensors,
        architecture=arch,
        name=text("general.name"),
        size_label=text("general.size_label"),
        license=text("general.license"),
        file_type=quant,
        context_length=context,
        parameter_count=params,
        metadata=metadata,
    )
