"""Where image sources are chosen: every kind pack reads images from, and how a named source finds its kind.

A new kind of source is one module beside this one (a :class:`~airgap._internal.sources.base.Source`
subclass, an opener, an image source, and its ``KIND``) and one line in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airgap._internal.sources import archive, engine, registry
from airgap._internal.sources.base import ImageSource, OpenContext, Opener, Source, SourceKind

# Every kind of image source, in the order their images stream: the engine's one export, then registry
# images, then archive files (each kind's in the order named).  The order shapes the manifest's image list.
KINDS: tuple[SourceKind, ...] = (
    engine.KIND,
    registry.KIND,
    archive.KIND,
)


def parse_source(text: str) -> Source:
    """An image source as named on the command line: of the kind whose prefix it starts with (the longest
    such prefix: ``docker-archive:`` before the engine's bare names), parsed and checked by that kind."""
    source, prefix = max(
        ((kind.source, prefix) for kind in KINDS for prefix in kind.source.prefixes if text.startswith(prefix)),
        key=lambda found: len(found[1]),
    )
    return source.parse(prefix, text[len(prefix) :])


def open_sources(named: Sequence[Source], ctx: OpenContext) -> list[ImageSource]:
    """Open the named sources for one pack.

    The openers are made kind by kind (the engine is connected first, so "Docker is down" comes before
    anything else), then each source is checked in the order named, so the first bad source named is the
    one reported; nothing is asked of a registry yet.  The image sources come back in the order they
    stream (:data:`KINDS`)."""
    openers: dict[SourceKind, Opener[Any]] = {}
    for kind in KINDS:
        if any(isinstance(source, kind.source) for source in named):
            openers[kind] = kind.opener(ctx)
    for source in named:
        openers[next(kind for kind in openers if isinstance(source, kind.source))].add(source)
    return [image_source for opener in openers.values() for image_source in opener.sources()]
