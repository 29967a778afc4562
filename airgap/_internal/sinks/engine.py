"""The Docker engine as install target: a streamed image upload (``--via load``) or a pull from a
short-lived loopback registry (``--via registry``).

The load stream is a docker-save archive built on the fly, ``manifest.json`` last: every part is hashed
while it streams, and if one fails the upload is cut off before ``manifest.json`` is sent, so the engine,
which unpacks the whole upload before registering anything, loads nothing.  Layers the engine holds are
left out; a delta's base layers the engine holds under another chain come from its own export.

Which layer compressions an engine reads is asked of the engine itself, not assumed from a version
number (Docker reads zstd from 23.0 on, Podman always; distributions patch, and other engines speak the
same API): a tiny untagged image with one layer so compressed is loaded and removed again
(:func:`engine_reads`), once per compression and connection, and only when a layer the engine lacks is
compressed so.  A compression it cannot read is decompressed on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from types import TracebackType

import zstandard

from airgap._internal.clients.docker import EngineClient
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.origins import Origin, Rebuilt, Stored, decompress_layers, to_decompress
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.archives import one_image_per_name, save_stream
from airgap._internal.sinks.base import InstalledImage, Plan, make_plan, plan_total, select_images
from airgap._internal.sinks.engine_layers import ExportPlan, exported_layers, held_layers, plan_exports
from airgap._internal.sinks.engine_pull import pull_from_loopback
from airgap._internal.util import fsutil, tarstream
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, DockerError, UsageError
from airgap.model.manifest import Image, Platform
from airgap.model.oci import compression_of
from airgap.progress import Transfer

_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


UPLOAD_COMPLETE = "upload complete: the engine is unpacking and registering the layers; large layers take a while"


def _then(chunks: Iterator[bytes], done: Callable[[], None]) -> Iterator[bytes]:
    """The chunks, then ``done()`` once the last one has been handed over (the engine has asked for more): the engine
    unpacks and registers the layers only after the whole upload, minutes for a large layer, with the bar at its end.
    A stream that fails, or an engine that stops reading, never gets there."""
    yield from chunks
    done()


def engine_reads(engine: EngineClient, compression: str) -> bool:
    """Whether the engine's image load reads layers compressed with ``compression`` ("gzip" or "zstd").

    A tiny untagged image whose one layer is so compressed is loaded, looked for and removed again (a few
    hundred bytes).  Its layer holds a random token, so it is one no engine holds: a load that skipped the
    layer would prove nothing.  A load the engine refuses means it cannot read the compression, once the
    engine is seen to answer still (an engine that went away is reported as such)."""
    token = secrets.token_hex(16).encode()
    layer_tar = tarstream.header("airgap-probe", len(token)) + token + tarstream.padding(len(token)) + tarstream.END_OF_ARCHIVE
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer = _COMPRESS[compression](layer_tar)
    platform = engine.platform()
    config = json.dumps(
        {
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"airgap: does the engine read {compression} layers?"}],
        },
        sort_keys=True,
    ).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    layer_name = hashlib.sha256(layer).hexdigest() + "/layer.tar"
    index = json.dumps([{"Config": f"{image_id[7:]}.json", "RepoTags": None, "Layers": [layer_name]}]).encode()
    upload = b"".join(
        tarstream.header(name, len(data)) + data + tarstream.padding(len(data))
        for name, data in ((layer_name, layer), (f"{image_id[7:]}.json", config), ("manifest.json", index))
    )
    try:
        engine.load(iter([upload + tarstream.END_OF_ARCHIVE]))
    except DockerError:
        engine.platform()  # raises DockerError itself if the engine no longer answers
        return False
    try:
        return engine.inspect(image_id) is not None
    finally:
        engine.untag(image_id)  # the probe image goes again


def refuse_unnamable(engine: EngineClient, images: list[Image], via: str) -> None:
    """Refuse, before any upload or pull, a name the engine's own reference grammar refuses (asked of the engine:
    Docker before its newer reference grammar, and Podman 4, refuse an IPv6 registry host such as
    ``[::1]:5000/team/app:1``).  Loading the image without the name would leave it reachable by its ID only, and
    the engine's load would report the refusal only after the whole upload, with the image loaded untagged."""
    for image in images:
        for ref in image.ref_names:
            if engine.accepts_name(ref):
                continue
            why = "an IPv6 registry host" if ref.startswith("[") else "this name"
            raise UsageError(
                f"{engine.product()} refuses the name {ref} (image {image.image_id[:19]}): its reference grammar "
                f"lacks {why}; nothing was {'pulled' if via == 'registry' else 'loaded'}",
                hint="push it to a registry with --to registry://HOST/PREFIX (the name loses its host there), pack it "
                "under a name without that host, or install into a newer engine whose reference grammar takes it",
            )


class EngineSink:
    """The Docker engine at DOCKER_HOST (or the one ``connect`` returns)."""

    label = "install"

    def __init__(
        self,
        connect: Callable[[], EngineClient],
        note: Callable[[str], None],
        platform: str | None = None,
        replace: bool = False,
        via: str = "load",
    ) -> None:
        self._connect = connect
        self._note = note
        self._platform = platform
        self._replace = replace
        self._via = via
        self._engine: EngineClient | None = None
        self._exports = ExportPlan()
        self._stack = ExitStack()
        self._reads: dict[str, bool] = {}  # compression -> whether this engine reads it (asked once per connection)

    @property
    def engine(self) -> EngineClient:
        """The connected engine; only inside the with-block."""
        if self._engine is None:
            raise RuntimeError("EngineSink used outside its with-block")
        return self._engine

    def __enter__(self) -> EngineSink:
        self._engine = self._stack.enter_context(self._connect())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._engine = None
        self._stack.close()

    def choose(self, images: tuple[Image, ...]) -> list[Image]:
        """The images for the engine's platform, or for --platform; no name may be left on two of them (two
        variants of one architecture)."""
        wanted = Platform.parse(self._platform) if self._platform else self.engine.platform()
        chosen = select_images(images, wanted, self._platform is not None, self._note)
        one_image_per_name(chosen, "the engine")
        return chosen

    def unreadable(self, images: list[Image], origins: Mapping[str, Origin]) -> set[str]:
        """The compressions of layers the engine will read from the bundle that it cannot read (asked of the
        engine, once per compression and connection)."""
        needed = {
            c
            for image in images
            for layer in image.layers
            if (c := compression_of(layer.media_type)) is not None and isinstance(origins[layer.digest], (Stored, Rebuilt))
        }
        for compression in sorted(needed - set(self._reads)):
            self._reads[compression] = engine_reads(self.engine, compression)
        return {c for c in needed if not self._reads[c]}

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Refuse a name the engine's grammar lacks, before anything is read; never move a tag silently: a tag
        naming another image is refused unless --replace."""
        engine = self.engine
        refuse_unnamable(engine, images, self._via)
        present = True
        for image in images:
            if engine.inspect(image.image_id) is None:
                present = False
            for ref in image.ref_names:
                current = engine.image_id(ref)
                if current != image.image_id:
                    present = False
                if current is not None and current != image.image_id and not self._replace:
                    raise ConflictError(
                        f"tag {ref} already names image {current[:19]}, the bundle has {image.image_id[:19]}",
                        hint="pass --replace to move the tag to the bundle's image",
                    )
        if not present:
            return None
        return tuple(InstalledImage(i.image_id, i.ref_names, str(i.platform), "already present") for i in images)

    def plan(self, bundle: LoadedBundle, images: list[Image], allow_unexpected: bool) -> Plan:
        """When loading, leave out layers the engine holds, chain and all, and take a delta's missing layers and
        recipe sources from the engine's export; refuse unless the engine's data root (when on this host) has room
        for twice the upload."""
        engine = self.engine
        loading = self._via == "load"
        if not loading and engine.is_podman():
            raise UsageError(
                "--via registry needs dockerd: Podman pulls from a loopback registry over HTTPS only",
                hint="use the default, --via load",
            )
        # Podman's load reads every layer of an image from the upload, those it holds too: none is left out
        held = held_layers(engine, images) if loading and not engine.is_podman() else frozenset()
        exports = plan_exports(engine, bundle, images, held) if loading else ExportPlan()
        self._exports = exports
        first = exports.images[0] if exports.images else ""
        origins: dict[str, Origin] = make_plan(
            bundle, images, allow_unexpected, held, dict.fromkeys(exports.layers, first), exports.rebuild_from
        )
        unreadable = self.unreadable(images, origins)
        if unreadable and not loading:
            raise UsageError(
                f"the engine cannot read {'/'.join(sorted(unreadable))}-compressed layers, and with --via registry it "
                "would pull them as they are",
                hint="use the default, --via load: such layers are decompressed on the way",
            )
        if unreadable:
            count = len(to_decompress(images, origins, unreadable))
            self._note(
                f"{count} {'/'.join(sorted(unreadable))} layer(s) will be decompressed on the way: the engine cannot read "
                "them; each is read once first, to learn its size and check it against its diff_id"
            )
            origins = decompress_layers(images, origins, unreadable)
        if held:
            self._note(f"{len(held)} layer(s) already in the engine: not read from the bundle")
        if exports.rebuild_from:
            self._note(
                f"{len(exports.rebuild_from)} layer(s) rebuilt from their recipe and the engine's own copy of the old layer "
                "(exported; the result is checked against the layer digest)"
            )
        if exports.layers:
            self._note(
                f"{len(exports.layers)} layer(s) of the delta's base taken from the engine's own copy "
                f"(exported from {len(exports.images)} image(s), each checked against its digest)"
            )
        total = plan_total(origins)
        root = engine.root_dir()
        if root is not None:
            # the engine unpacks the whole upload into its data root, then registers the layers there
            fsutil.require_space(root, 2 * total + (64 << 20), "loading into Docker")
        else:
            self._note("note: the engine's data root is not on this host; its free space was not checked")
        return Plan(origins, total, layers_present=len(held), layers_from_engine=len(exports.layers))

    def deliver(
        self, bundle: LoadedBundle, images: list[Image], plan: Plan, transfer: Transfer, cache: VerifiedCache
    ) -> tuple[InstalledImage, ...]:
        """Load the upload (or let the engine pull from a loopback registry with --via registry), then check that the
        engine holds every image under every name."""
        engine = self.engine
        if self._via == "registry":
            pull_from_loopback(engine, plan.origins, images, cache, transfer)
        else:
            exports = self._exports
            elsewhere: dict[str, str] = {}
            rebuilt: set[str] = set()
            before = (
                exported_layers(engine, bundle, exports, elsewhere, rebuilt, transfer, cache)
                if exports.layers or exports.rebuild_from
                else None
            )
            upload = threaded(save_stream(images, plan.origins, transfer, cache, before, elsewhere, rebuilt))
            engine.load(_then(upload, lambda: self._note(UPLOAD_COMPLETE)))
        loaded = []
        for image in images:
            if engine.inspect(image.image_id) is None:
                raise DockerError(f"the engine did not keep image {image.image_id[:19]} after loading it")
            for ref in image.ref_names:
                if engine.image_id(ref) != image.image_id:
                    raise DockerError(f"after loading, tag {ref} does not name image {image.image_id[:19]}")
            loaded.append(InstalledImage(image.image_id, image.ref_names, str(image.platform), "loaded"))
        return tuple(loaded)
