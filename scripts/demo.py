#!/usr/bin/env python3
"""The main job, end to end, on a locally generated sample image: keygen, pack, verify, install.

Uses the Docker engine at DOCKER_HOST (or the default socket); when none answers and this runs as
root, starts a private engine under .demo/ and stops it afterwards.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
TAG = "airgap-demo/coding-agent:1.0"
AIRGAP = [sys.executable, "-m", "airgap"]
sys.path.insert(0, str(ROOT / "scripts"))

import sample_image  # noqa: E402

from airgap._internal.clients.docker import engine_answers  # noqa: E402


def run(*args: str) -> None:
    words = ["airgap", *args[len(AIRGAP) :]] if list(args[: len(AIRGAP)]) == AIRGAP else list(args)
    shown = " ".join(shlex.quote(w) for w in words)
    print(f"\n$ {shown}", flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    os.environ["AIRGAP_STATE"] = str(DEMO / "installed.json")  # the demo's rollback state, not the user's
    private = None
    if not engine_answers():
        private = DEMO / "dockerd"
        print(f"no Docker engine answers; starting a private one in {private}", flush=True)
        host = subprocess.run(
            [str(ROOT / "scripts/private-dockerd"), "start", str(private)], check=True, capture_output=True, text=True
        ).stdout.strip()
        os.environ["DOCKER_HOST"] = host
    try:
        client = docker.from_env(timeout=600)
        archive = DEMO / "sample.tar"
        print(f"generating a seed-shaped sample image {TAG} (app layer + incompressible model blob)", flush=True)
        sample = sample_image.build(archive, tag=TAG, model_size=64 << 20, app_size=16 << 20, seed="demo")
        sample_image.load_into_engine(archive)
        archive.unlink()
        print(f"loaded {TAG} = {sample.image_id}")

        keys = DEMO / "keys"
        keys.mkdir(exist_ok=True)
        for old in keys.glob("security-team.*"):
            old.unlink()
        os.environ["AIRGAP_DEMO_PASSPHRASE"] = "demo passphrase, use a real one"
        run(*AIRGAP, "keygen", "--out", str(keys / "security-team"), "--passphrase-env", "AIRGAP_DEMO_PASSPHRASE")
        bundle = DEMO / "bundle"
        run(
            *AIRGAP,
            "pack",
            TAG,
            "-o",
            str(bundle),
            "--key",
            str(keys / "security-team.key"),
            "--passphrase-env",
            "AIRGAP_DEMO_PASSPHRASE",
            "--part-size",
            "16MiB",
            "--overwrite",
        )
        run(*AIRGAP, "inspect", str(bundle))
        run(*AIRGAP, "verify", str(bundle), "--trust", str(keys / "security-team.pub"))

        print(f"\nremoving {TAG} from the engine, as on an offline host that never had it", flush=True)
        client.images.remove(TAG)
        run(*AIRGAP, "install", str(bundle), "--trust", str(keys / "security-team.pub"))

        installed = client.images.get(TAG).id
        same = installed == sample.image_id
        print(f"\nRESULT: {TAG} installed as {installed}: {'same image ID as packed' if same else 'IMAGE ID DIFFERS'}")
        return 0 if same else 1
    finally:
        if private is not None:
            subprocess.run([str(ROOT / "scripts/private-dockerd"), "stop", str(private)], check=False)


if __name__ == "__main__":
    sys.exit(main())
