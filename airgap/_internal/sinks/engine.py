"""The Docker engine as install target: a streamed image upload (``--via load``) or a pull from a
short-lived loopback registry (``--via registry``).

The load stream is a docker-save archive built on the fly, ``manifest.json`` last: every part is hashed
while it streams, and if one fails the upload is cut off before ``manifest.json`` is sent, so the engine,
which unpacks the whole upload before registering anything, loads nothing.  Layers the engine holds are
left out; a delta's base layers the engine holds under another chain come from its own export.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType

from airgap._internal.clients.docker import EngineClient
from airgap._internal.format.cache import VerifiedCache
from airgap._internal.format.reader import LoadedBundle
from airgap._internal.sinks.archives import save_stream
from airgap._internal.sinks.base import InstalledImage, Plan, make_plan, plan_total, select_images
from airgap._internal.sinks.engine_layers import ExportPlan, exported_layers, held_layers, plan_exports
from airgap._internal.sinks.engine_pull import pull_from_loopback
from airgap._internal.util import fsutil
from airgap._internal.util.pipeline import threaded
from airgap.errors import ConflictError, DockerError, UsageError
from airgap.model.manifest import Image, Platform
from airgap.progress import Transfer


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
        """The images for the engine's platform, or for --platform."""
        wanted = Platform.parse(self._platform) if self._platform else self.engine.platform()
        return select_images(images, wanted, self._platform is not None, self._note)

    def prepare(self, images: list[Image]) -> tuple[InstalledImage, ...] | None:
        """Never move a tag silently: a tag naming another image is refused unless --replace."""
        engine = self.engine
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
        origins = make_plan(bundle, images, allow_unexpected, held, dict.fromkeys(exports.layers, first), exports.rebuild_from)
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
            engine.load(threaded(save_stream(images, plan.origins, transfer, cache, before, elsewhere, rebuilt)))
        loaded = []
        for image in images:
            if engine.inspect(image.image_id) is None:
                raise DockerError(f"the engine did not keep image {image.image_id[:19]} after loading it")
            for ref in image.ref_names:
                if engine.image_id(ref) != image.image_id:
                    raise DockerError(f"after loading, tag {ref} does not name image {image.image_id[:19]}")
            loaded.append(InstalledImage(image.image_id, image.ref_names, str(image.platform), "loaded"))
        return tuple(loaded)
