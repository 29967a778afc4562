"""One layer's walk: which members are read, and how (everything else is skipped unread).

- whiteouts (``.wh.NAME``) and opaque folders (``.wh..wh..opq``) are noted for the merge;
- package files named by their path (:func:`.parsers.classify`) are parsed;
- a regular file of at least 32 bytes whose first bytes are ``GGUF``, and every blob of an Ollama model
  store, is hashed (sha256) as it passes; a GGUF file's header is read (:mod:`.gguf`);
- a hard link to a file read in the same layer gets that file's record.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable
from dataclasses import replace

from airgap._internal.inventory import gguf, parsers
from airgap._internal.inventory.records import LayerInventory, ModelFile, Record
from airgap._internal.inventory.tarwalk import InventoryLimit, Member, Stream, Truncated, layer_stream, walk

MAX_RECORDS = 200_000  # per layer
MAX_WHITEOUTS = 200_000  # per layer
GGUF_MIN = 32

_PARSERS: dict[str, Callable[[Member, str], Record]] = {
    "dpkg": parsers.dpkg,
    "dpkg-part": parsers.dpkg,
    "apk": parsers.apk,
    "python": parsers.python_dist,
    "npm": parsers.npm,
    "os-release": parsers.os_release,
    "copyright": parsers.copyright_file,
    "ollama-manifest": parsers.ollama_manifest,
}


def _model(member: Member, path: str, head: bytes, layer: LayerInventory) -> ModelFile:
    """Hash a GGUF file or Ollama blob whole as it passes, reading a GGUF file's header on the way."""
    sha = hashlib.sha256(head)
    member.sha = sha
    info = None
    if head == gguf.MAGIC:
        header = Member(_Prefixed(head, member), member.size)
        try:
            info, stopped = gguf.read_header(header)
        except InventoryLimit as e:
            info, stopped = None, str(e)
        if stopped:
            layer.warn(f"{path}: {stopped}")
    member.skip_rest()
    return ModelFile(path, member.size, sha.hexdigest(), parsers.ollama_blob_digest(path), info)


class _Prefixed:
    """The bytes already read from a member, then the member's: a Stream for the GGUF reader."""

    def __init__(self, head: bytes, rest: Member) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def view(self, n: int) -> memoryview:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._rest.view(n)


def walk_layer(raw: Stream, kind: str) -> LayerInventory:
    """The inventory of one layer of ``kind`` ("tar", "gzip", "zstd"); what could not be read is a warning."""
    layer = LayerInventory()
    try:
        _walk(layer_stream(raw, kind), layer)
    except InventoryLimit as e:
        layer.warn(f"{e}: the rest of the layer is not inventoried")
    return layer


def _walk(stream: Stream, layer: LayerInventory) -> None:
    """Read what the inventory needs of each member."""
    records = layer.records
    for entry, member in walk(stream):
        path = entry.path
        base = posixpath.basename(path)
        if base.startswith(".wh."):
            if len(layer.whiteouts) + len(layer.opaque) >= MAX_WHITEOUTS:
                raise InventoryLimit(f"the layer deletes more than {MAX_WHITEOUTS} files: what it deletes is not all known")
            parent = posixpath.dirname(path)
            if base == ".wh..wh..opq":
                layer.opaque.add(parent)
            else:
                layer.whiteouts.add(posixpath.join(parent, base[4:]))
            continue
        if entry.kind == "hardlink":
            target = records.get(entry.linkname)
            if target is not None:
                records[path] = replace(target, path=path) if isinstance(target, ModelFile) else target
            continue
        if entry.kind != "file":
            continue
        kind = parsers.classify(path)
        if kind is None and entry.size < GGUF_MIN:
            continue
        if len(records) >= MAX_RECORDS:
            raise InventoryLimit(f"the layer holds more than {MAX_RECORDS} package files")
        try:
            if kind in _PARSERS:
                records[path] = _PARSERS[kind](member, path)
                continue
            head = member.read(4)
            if kind == "ollama-blob" or head == gguf.MAGIC:
                records[path] = _model(member, path, head, layer)
        except Truncated:
            raise
        except InventoryLimit as e:
            layer.warn(str(e))
            records[path] = None  # unreadable: it still hides the file beneath
