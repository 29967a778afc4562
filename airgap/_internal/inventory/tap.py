"""The tap on the bundle writer: every blob's bytes, as they are staged, go past the inventory too.

The writer calls :meth:`InventoryTap.open` for each blob, feeds the tap the same blocks it compresses, and
closes it with the blob's digest.  A blob whose first bytes are no tar, gzip or zstd is let through at
once (configs, manifests).  A small layer is kept and walked when it closes; a larger one is walked in a
thread of its own, fed through a queue of :data:`QUEUE_BLOCKS` blocks: the pack waits for the walk only
when the queue is full, and at the layer's end.  A walk that fails leaves a warning, never an error: the
pack decides (``--sbom=require``) what warnings mean.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Sequence

from airgap._internal.inventory.layers import walk_layer
from airgap._internal.inventory.records import ImageInventory, LayerInventory, merge
from airgap._internal.inventory.tarwalk import BLOCK, Aborted, BytesStream, QueueStream, layer_kind
from airgap.model.manifest import Image

QUEUE_BLOCKS = 3  # blocks of up to 4 MiB waiting for the walk
INLINE = 1 << 20  # layers up to this size are walked when they close, in the caller's thread


class InventoryTap:
    """Collects the inventory of every layer staged, by digest."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerInventory] = {}
        self._lock = threading.Lock()

    def open(self, name: str, size: int) -> BlobWalk:
        """A walk for the next blob of ``size`` bytes (``name``: the member it came from, for messages)."""
        return BlobWalk(self, name, size)

    def _done(self, digest: str, layer: LayerInventory) -> None:
        with self._lock:
            self.layers.setdefault(digest, layer)

    def image(self, image: Image) -> ImageInventory:
        """The merged inventory of one image (its layers bottom first)."""
        found: list[tuple[str, LayerInventory | None]] = []
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            found.append((diff_id, self.layers.get(layer.digest)))
        return merge(found)


class BlobWalk:
    """The walk of one blob: sniffed from its first bytes, then walked inline or in a thread."""

    def __init__(self, tap: InventoryTap, name: str, size: int) -> None:
        self._tap = tap
        self._name = name
        self._size = size
        self._head = b""
        self._kind: str | None = None
        self._decided = False
        self._small: list[bytes] = []
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._aborted = threading.Event()
        self._result: LayerInventory | None = None

    def feed(self, data: bytes) -> None:
        """The blob's next bytes (the caller's own buffer: it is only referenced, never changed)."""
        if self._decided and self._kind is None:
            return
        if not self._decided:
            self._head += data[: BLOCK - len(self._head)]
            if len(self._head) < BLOCK and len(self._head) < self._size:
                self._small.append(data)
                return
            self._decide()
            if self._kind is None:
                return
        if self._queue is not None:
            self._queue.put(data)
        else:
            self._small.append(data)

    def _decide(self) -> None:
        """Tar, gzip, zstd, or not a layer; a large layer's walk starts now, with what was fed so far."""
        self._decided = True
        self._kind = layer_kind(self._head)
        if self._kind is None:
            self._small = []
            return
        if self._size > INLINE:
            self._queue = queue.Queue(maxsize=QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._run, name="airgap-inventory", daemon=True)
            self._thread.start()
            for block in self._small:
                self._queue.put(block)
            self._small = []

    def _run(self) -> None:
        """The walk thread: walk, then take whatever is left, so that the writer never waits on it."""
        if self._queue is None or self._kind is None:
            return
        stream = QueueStream(self._queue, self._aborted)
        try:
            self._result = walk_layer(stream, self._kind)
            stream.drain()
        except Aborted:
            return
        except Exception as e:  # noqa: BLE001 - a walk that fails is a warning, and must keep draining the queue
            self._result = LayerInventory()
            self._result.warn(f"the layer could not be walked ({type(e).__name__}: {e})")
            try:
                stream.drain()
            except Aborted:
                return

    def close(self, digest: str | None) -> None:
        """The blob is staged as ``digest`` (None: it was not, the pack is failing): finish the walk."""
        if digest is None:
            self._abort()
            return
        if not self._decided:
            self._decide()
        if self._kind is None:
            return
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            result = self._result
        else:
            result = walk_layer(BytesStream(b"".join(self._small)), self._kind)
            self._small = []
        if result is not None:
            self._tap._done(digest, result)

    def _abort(self) -> None:
        """Stop the walk without waiting for it."""
        self._aborted.set()
        if self._queue is not None:
            with contextlib.suppress(queue.Full):  # full: the walk takes the next block, sees the flag and ends
                self._queue.put_nowait(None)


def image_inventories(tap: InventoryTap, images: Sequence[Image]) -> list[ImageInventory]:
    """Each image's inventory, in order."""
    return [tap.image(image) for image in images]
