"""Seed-shaped sample images, built locally with no pulls (``scripts/sample_image.py``).

Tests import the builder from here: ``from tests.helpers.samples import sample_image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers.paths import load_script

if TYPE_CHECKING:
    import sample_image  # mypy finds it through mypy_path; at run time it is loaded from its file below
else:
    sample_image = load_script("sample_image")

__all__ = ["MiB", "Sample", "Samples", "build_samples", "delta_releases", "rebuilt_releases", "sample_image"]

MiB = 1 << 20
Sample = sample_image.Sample
Samples = dict[str, Sample]  # the ``samples`` fixture: "docker", "docker2", "oci"


def build_samples(directory: Path) -> Samples:
    """Two docker-archives sharing base layers, and an oci-archive."""
    return {
        "docker": sample_image.build(
            directory / "agent.tar", tag="airgap-test/agent:1.0", model_size=3 << 20, app_size=1 << 20, seed="one"
        ),
        "docker2": sample_image.build(
            directory / "agent2.tar", tag="airgap-test/agent:2.0", model_size=3 << 20, app_size=1 << 20, seed="two"
        ),
        "oci": sample_image.build(
            directory / "agent-oci.tar",
            tag="airgap-test/agent-oci:1.0",
            model_size=2 << 20,
            app_size=1 << 20,
            seed="oci",
            fmt="oci",
        ),
    }


def delta_releases(directory: Path) -> tuple[Sample, Sample]:
    """Release 1.0 and an app update 1.1 that keeps the 4 MiB model layer (and the base layer)."""
    v1 = sample_image.build(
        directory / "v1.tar", tag="airgap-test/delta:1.0", model_size=4 * MiB, app_size=MiB // 2, seed="rel-1"
    )
    v2 = sample_image.build(
        directory / "v2.tar", tag="airgap-test/delta:1.1", model_size=4 * MiB, app_size=MiB // 2, seed="rel-2", model_seed="rel-1"
    )
    assert v1.layers[2] == v2.layers[2] and v1.layers[1] != v2.layers[1]
    return v1, v2


def rebuilt_releases(directory: Path) -> tuple[Sample, Sample]:
    """Release 2.0 and a rebuild 2.1 whose 16 MiB model file has a new mtime: a new model layer digest,
    the same model bytes."""
    a = sample_image.build(directory / "a.tar", tag="airgap-test/cdc:2.0", model_size=16 * MiB, app_size=MiB // 2, seed="cdc")
    b = sample_image.build(
        directory / "b.tar",
        tag="airgap-test/cdc:2.1",
        model_size=16 * MiB,
        app_size=MiB // 2,
        seed="cdc",
        model_mtime=1_700_000_000,
    )
    assert a.layers[2] != b.layers[2] and a.layers[:2] == b.layers[:2]
    return a, b
