"""The --json contract against a real Docker engine: install's success and failures (a tag that would move),
pack from the engine, and Ctrl-C (130) or SIGTERM (143) in the middle of an install's upload: a JSON error
object, a line saying how to go on, nothing loaded, and the same install then finishing without hashing
again the parts it had checked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from airgap.errors import ExitCode
from tests.helpers.cli import Cli
from tests.helpers.engine import evict_images_sharing_layers, remove
from tests.helpers.json_contract import check_output, check_progress, failed, run_json
from tests.helpers.keys import KeyPair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Sample, sample_image

pytestmark = pytest.mark.docker

TAG = "airgap-test/json-contract:1"


def _pack(cli: Cli, sample: Sample, out: Path, key: Path, *extra: str) -> dict[str, Any]:
    r, obj = run_json(cli, "pack", f"docker-archive:{sample.path}", "-o", str(out), "--key", str(key), *extra)
    assert r.code == 0, r.err
    return obj


@pytest.fixture
def two_of_one_tag(tmp_path: Path) -> Iterator[tuple[Sample, Sample]]:
    """Two different images that carry the same tag."""
    a = sample_image.build(tmp_path / "a.tar", tag=TAG, model_size=1 << 20, app_size=1 << 16, seed="json-a")
    b = sample_image.build(tmp_path / "b.tar", tag=TAG, model_size=1 << 20, app_size=1 << 16, seed="json-b")
    assert a.image_id != b.image_id
    yield a, b


def test_install_success_and_a_tag_conflict_in_json(
    cli: Cli, docker_client: docker.DockerClient, two_of_one_tag: tuple[Sample, Sample], keypair: KeyPair, tmp_path: Path
) -> None:
    a, b = two_of_one_tag
    remove(docker_client, TAG, a.image_id, b.image_id)
    try:
        _pack(cli, a, tmp_path / "a", keypair[0], "--sequence", "1")
        _pack(cli, b, tmp_path / "b", keypair[0], "--sequence", "2")  # newer: rollback does not stop it first
        _, obj = run_json(cli, "install", str(tmp_path / "a"), "--trust", str(keypair[1]))
        assert [(i["action"], i["image_id"]) for i in obj["images"]] == [("loaded", a.image_id)]
        _, again = run_json(cli, "install", str(tmp_path / "a"), "--trust", str(keypair[1]))
        assert again["images"][0]["action"] == "already present"
        error = failed(cli, ExitCode.CONFLICT, "install", str(tmp_path / "b"), "--trust", str(keypair[1]))
        assert TAG in error["message"] and "--replace" in error["hint"]
        assert docker_client.images.get(TAG).id == a.image_id  # the tag did not move
        # and pack from the engine: the image it holds, and one it does not
        _, packed = run_json(cli, "pack", TAG, "-o", str(tmp_path / "from-engine"), "--key", str(keypair[0]))
        assert packed["images"][0]["image_id"] == a.image_id
        error = failed(
            cli, ExitCode.USAGE, "pack", "airgap-test/not-there:0", "-o", str(tmp_path / "x"), "--key", str(keypair[0])
        )
        assert "not-there" in error["message"]
    finally:
        remove(docker_client, TAG, a.image_id, b.image_id)


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory, keypair: KeyPair) -> tuple[Sample, Path]:
    """An image whose upload takes long enough to interrupt, packed in 16 MiB parts."""
    d = tmp_path_factory.mktemp("json-big")
    sample = sample_image.build(
        d / "big.tar", tag="airgap-test/json-big:1", model_size=256 << 20, app_size=1 << 20, seed="json-big"
    )
    out = d / "bundle"
    cmd = [sys.executable, "-m", "airgap", "-q", "pack", f"docker-archive:{sample.path}", "-o", str(out),
           "--key", str(keypair[0]), "--part-size", "16MiB"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return sample, out


@pytest.mark.parametrize(("sig", "code", "kind"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_signal_during_install_loads_nothing_and_the_same_install_finishes(
    docker_client: docker.DockerClient, big_bundle: tuple[Sample, Path], keypair: KeyPair, sig: str, code: int, kind: str
) -> None:
    import signal

    sample, out = big_bundle
    remove(docker_client, sample.tag, sample.image_id)
    evict_images_sharing_layers(docker_client, sample.layers)  # every layer travels: a long upload
    cmd = [sys.executable, "-m", "airgap", "install", str(out), "--trust", str(keypair[1]), "--json", "--progress", "json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "advance" and event["done"] >= 48 << 20:
                break
        else:
            pytest.fail("the install ended before it could be interrupted: " + "".join(lines))
        proc.send_signal(getattr(signal, sig))
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    check_progress(stderr)
    assert proc.returncode == code, stderr
    error = check_output(stdout)["error"]
    assert error["kind"] == kind and error["signal"] == sig and error["progress"]["phase"] == "install"
    assert f"error: {error['message']}\nhint: {error['hint']}" in stderr and "Traceback" not in stderr
    assert "run the same install again" in error["hint"]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(sample.tag)  # cut off before its manifest.json: the engine loaded nothing
    done = subprocess.run([*cmd[:-2], "--progress", "none"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    result = check_output(done.stdout)
    assert result["parts_cached"] >= 1 and result["images"][0]["action"] == "loaded"
    assert docker_client.images.get(sample.tag).id == sample.image_id
    remove(docker_client, sample.tag, sample.image_id)
