"""Names, platforms and tags taken from a source are checked before pack writes anything: a hostile image
config, index or tag list never reaches a path, the manifest or the signature."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.samples import sample_image

EVIL_ARCH = "amd64/../../../escaped"


def _everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.tools
def test_registry_image_with_path_traversal_platform_refused(cli, keypair, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sample = sample_image.build(tmp_path / "evil.tar", tag="evil/app:1", model_size=1 << 20, app_size=1 << 16, arch=EVIL_ARCH)
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is installed by .ci/run"
    subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"docker-archive:{sample.path}",
            f"docker://{registry.host}/evil/app:1",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "bundle"
    r = cli("pack", f"oci://{registry.host}/evil/app:1", "-o", str(out), "--key", str(keypair[0]), "--platform", "all")
    assert r.code == 3, r.err
    assert "platform architecture" in r.err
    assert not (out / "manifest.json").exists()
    assert not any("escaped" in p for p in _everything_under(tmp_path))
