"""The signed inventory with real tools: the auditor's openssl and sha256sum path covers the SBOMs, install.sh
refuses a changed one, and an image packed from the Docker engine has the same inventory as its archive."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from airgap._internal.inventory.cyclonedx import sbom_path
from tests.helpers.engine import remove
from tests.helpers.tools import run_sh

SIGNATURE = (
    "openssl pkeyutl -verify -pubin -inkey security-team.pub -rawin -in manifest.json "
    "-sigfile signatures/$(openssl pkey -pubin -in security-team.pub -outform DER | sha256sum | cut -d' ' -f1).sig"
)
FILES = """jq -r '(.parts + (.files // []))[] | "\\(.sha256)  \\(.path)"' manifest.json | sha256sum -c --quiet"""


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.tools
def test_auditor_tools_cover_the_sbom(bundle: Path, keypair, samples) -> None:  # type: ignore[no-untyped-def]
    for tool in ("openssl", "sha256sum", "jq"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
    shutil.copy(keypair[1], bundle / "security-team.pub")
    path = sbom_path(samples["docker"].image_id)
    listed = sh("jq -r '.files[].path' manifest.json", bundle).stdout.split()
    assert path in listed
    assert sh(SIGNATURE, bundle).returncode == 0
    assert sh(FILES, bundle).returncode == 0
    names = sh(f"jq -r '.components[].name' {path}", bundle).stdout.split()
    assert {"libc6", "requests", "marked"} <= set(names)
    sbom = bundle / path
    sbom.write_text(sbom.read_text().replace('"libc6"', '"libc7"'))
    result = sh(FILES, bundle)
    assert result.returncode != 0 and path in result.stdout + result.stderr
    assert sh(SIGNATURE, bundle).returncode == 0  # the manifest is intact: it is the SBOM that no longer matches it


@pytest.mark.docker
@pytest.mark.tools
def test_install_sh_refuses_a_changed_sbom(bundle: Path, keypair, samples, docker_client) -> None:  # type: ignore[no-untyped-def]
    remove(docker_client, samples["docker"].tag, samples["docker"].image_id)
    sbom = bundle / sbom_path(samples["docker"].image_id)
    sbom.write_bytes(sbom.read_bytes().replace(b'"zlib1g"', b'"zlib1h"'))
    done = run_sh(bundle, "--trust", str(keypair[1]))
    assert done.returncode == 4, done.stderr
    assert sbom_path(samples["docker"].image_id) in done.stderr
    assert samples["docker"].image_id not in [i.id for i in docker_client.images.list(all=True)]


@pytest.mark.docker
def test_engine_export_has_the_archive_s_inventory(cli, samples, keypair, docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sample = samples["docker"]
    with open(sample.path, "rb") as fh:
        docker_client.images.load(fh.read())
    try:
        for source, out in ((sample.tag, "engine"), (f"docker-archive:{sample.path}", "archive")):
            r = cli("pack", source, "-o", str(tmp_path / out), "--key", str(keypair[0]), "--json")
            assert r.code == 0, r.err
            assert json.loads(r.out)["sbom"]["warnings"] == []
    finally:
        remove(docker_client, sample.tag, sample.image_id)
    path = sbom_path(sample.image_id)
    engine, archive = (tmp_path / "engine" / path).read_bytes(), (tmp_path / "archive" / path).read_bytes()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(engine.decode()) is None
    strip = lambda doc: {k: v for k, v in json.loads(doc).items() if k not in ("serialNumber", "metadata")}  # noqa: E731
    assert strip(engine) == strip(archive)
