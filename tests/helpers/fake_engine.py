"""An in-memory Docker engine for install and pack tests that need no real one.

:class:`FakeEngine` declares the product's :class:`~airgap._internal.clients.docker.EngineClient`
protocol, so mypy reports any drift between it and the real :class:`~airgap._internal.clients.docker.Engine`.
It holds no layers: every layer is read from the bundle, and nothing is ever exported or pulled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from airgap._internal.clients.docker import EngineClient
from airgap._internal.util.tarstream import Readable, iter_entries
from airgap.model.manifest import Platform


class FakeEngine(EngineClient):
    """Images and tags in two dicts; ``load`` unpacks the whole upload before it registers anything."""

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

    def close(self) -> None:
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
        return str(found["Id"]) if found else None

    def tag(self, image_id: str, ref: str) -> None:
        self.tags[ref] = image_id

    def untag(self, ref: str) -> None:
        self.tags.pop(ref, None)

    def layer_chains(self) -> set[str]:
        return set()  # holds no layers: every layer is read from the bundle

    def images_holding(self, diff_ids: set[str]) -> tuple[list[str], set[str]]:
        return [], set(diff_ids)

    def export(self, refs: list[str]) -> AbstractContextManager[Readable]:
        raise AssertionError(f"FakeEngine holds no layers, yet {refs} were asked to be exported")

    def pull(self, ref: str) -> None:
        raise AssertionError(f"FakeEngine reaches no registry, yet {ref} was asked to be pulled")

    def is_podman(self) -> bool:
        return False

    def is_local(self) -> bool:
        return True

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


def connect_to(engine: EngineClient) -> Callable[[], EngineClient]:
    """The ``connect`` argument of ``pack`` and ``install`` that hands them ``engine``."""
    return lambda: engine
