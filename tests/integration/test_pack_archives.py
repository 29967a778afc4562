"""Archives and skopeo: an oci-archive skopeo wrote packs, and the install stream is an archive skopeo reads."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from airgap._internal.format.reader import load_bundle
from airgap._internal.sinks.archives import save_stream
from airgap._internal.sinks.base import make_plan
from airgap.progress import Transfer


def pack(cli, sources: list[str], out: Path, key: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("pack", *sources, "-o", str(out), "--key", str(key), *extra)


@pytest.mark.tools
def test_skopeo_written_oci_archive_packs_with_skopeos_config(cli, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    oci = tmp_path / "skopeo-oci.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"docker-archive:{samples['docker'].path}", f"oci-archive:{oci}:airgap-test/agent:1.0"],
        check=True,
        capture_output=True,
    )
    config = subprocess.run(
        ["skopeo", "inspect", "--raw", "--config", f"oci-archive:{oci}"], check=True, capture_output=True
    ).stdout
    r = pack(cli, [f"oci-archive:{oci}"], tmp_path / "b", keypair[0], "--json")
    assert r.code == 0, r.err
    image = json.loads(r.out)["images"][0]
    # skopeo rewrites the config as an OCI config: the image ID is that config's digest, the layers are unchanged
    assert image["image_id"] == "sha256:" + hashlib.sha256(config).hexdigest()
    assert image["ref_names"] == ["airgap-test/agent:1.0"]
    assert list(load_bundle(tmp_path / "b").manifest.images[0].diff_ids) == list(samples["docker"].layers)


@pytest.mark.tools
def test_install_stream_is_an_archive_skopeo_accepts(cli, samples, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not shutil.which("skopeo"):
        pytest.fail("skopeo is not installed (.ci/run installs it)")
    out = tmp_path / "b"
    assert pack(cli, [f"docker-archive:{samples['docker'].path}"], out, keypair[0], "--part-size", "1MiB").code == 0
    bundle = load_bundle(out)
    archive = tmp_path / "stream.tar"
    with open(archive, "wb") as fh:
        images = list(bundle.manifest.images)
        for chunk in save_stream(images, make_plan(bundle, images, allow_unexpected=False), Transfer()):
            fh.write(chunk)
    info = subprocess.run(
        ["skopeo", "inspect", "--raw", "--config", f"docker-archive:{archive}"], check=True, capture_output=True
    )
    assert "sha256:" + hashlib.sha256(info.stdout).hexdigest() == samples["docker"].image_id
