"""The wheelhouse's requirements: a dependency pinned for some Pythons and architectures only applies exactly
there.  Building the wheelhouse and installing from it: ``integration/test_wheelhouse.py``."""

from __future__ import annotations

import pytest

from airgap._internal.format import wheelhouse


@pytest.mark.parametrize(
    "where",
    [
        {("3.10", "x86_64"), ("3.10", "aarch64")},
        {("3.12", "aarch64")},
        {("3.11", "x86_64"), ("3.13", "x86_64"), ("3.13", "aarch64")},
        {(p, a) for p in wheelhouse.PYTHONS for a in wheelhouse.ARCHES},
    ],
    ids=["one-python", "one-pair", "mixed", "everywhere"],
)
def test_pin_marker_holds_exactly_where_pip_chose_that_version(where: set[tuple[str, str]]) -> None:
    """Two Pythons may need two versions of one dependency: each pin applies only where pip chose it."""
    from packaging.markers import Marker  # pytest depends on packaging

    text = wheelhouse._marker(where).removeprefix(" ; ")
    marker = Marker(text) if text else None
    for python in wheelhouse.PYTHONS:
        for arch in wheelhouse.ARCHES:
            env = {"python_version": python, "platform_machine": arch}
            assert (marker is None or marker.evaluate(env)) == ((python, arch) in where), (text, env)
