#!/usr/bin/env python3
"""The main job, end to end, on a locally generated sample image: keygen, pack, verify, install.

Uses the Docker engine at DOCKER_HOST (or the default socket); when none answers and this runs as
root, starts a private engine under .demo/ and stops it afterwards.  Whatever fails, it ends with one line
saying which step and the exit code of that step, never a traceback (AIRGAP_DEBUG=1 shows one).
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


class StepFailed(Exception):
    """A step of the demo failed; it has said why on stderr already."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(step)
        self.step = step
        self.code = code


def run(*args: str) -> None:
    words = ["airgap", *args[len(AIRGAP) :]] if list(args[: len(AIRGAP)]) == AIRGAP else list(args)
    shown = " ".join(shlex.quote(w) for w in words)
    print(f"\n$ {shown}", flush=True)
    done = subprocess.run(args, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise StepFailed(" ".join(words[:2]), done.returncode)


def start_private_engine(directory: Path) -> str:
    """DOCKER_HOST of a private engine (scripts/private-dockerd); its own error line goes straight to stderr."""
    print(f"no Docker engine answers; starting a private one in {directory}", flush=True)
    done = subprocess.run(
        [str(ROOT / "scripts/private-dockerd"), "start", str(directory)], check=False, stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise StepFailed("starting a private Docker engine", done.returncode)
    return done.stdout.strip()


def main() -> int:
    """The demo; its exit code is the failed step's (6 for the engine), 130 on Ctrl-C."""
    try:
        return demo()
    except StepFailed as e:
        print(f"demo: {e.step} failed (exit code {e.code}); see the error above", file=sys.stderr)
        return e.code
    except docker.errors.DockerException as e:
        print(f"demo: the Docker engine failed: {str(e).strip()[:300]}", file=sys.stderr)
        print("hint: check the engine at DOCKER_HOST (or the private one's log in .demo/dockerd/dockerd.log)", file=sys.stderr)
        return 6
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("AIRGAP_DEBUG"):
            raise
        print(f"demo: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("hint: this is a bug; rerun with AIRGAP_DEBUG=1 for a traceback and report it", file=sys.stderr)
        return 1


def demo() -> int:
    DEMO.mkdir(exist_ok=True)
    os.environ["AIRGAP_STATE"] = str(DEMO / "installed.json")  # the demo's rollback state, not the user's
    private = None
    if not engine_answers():
        private = DEMO / "dockerd"
        os.environ["DOCKER_HOST"] = start_private_engine(private)
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
        run(*AIRGAP, "inspect", str(bundle), "--sbom", "--trust", str(keys / "security-team.pub"))
        run(*AIRGAP, "verify", str(bundle), "--trust", str(keys / "security-team.pub"))

        print(f"\nremoving {TAG} from the engine, as on an offline host that never had it", flush=True)
        client.images.remove(TAG)
        run(*AIRGAP, "install", str(bundle), "--trust", str(keys / "security-team.pub"))

        run(*AIRGAP, "list")  # what this host installed: bundle, sequence, signers, images, when
        installed = client.images.get(TAG).id
        same = installed == sample.image_id
        print(f"\nRESULT: {TAG} installed as {installed}: {'same image ID as packed' if same else 'IMAGE ID DIFFERS'}")
        return 0 if same else 1
    finally:
        if private is not None:
            subprocess.run([str(ROOT / "scripts/private-dockerd"), "stop", str(private)], check=False)


if __name__ == "__main__":
    sys.exit(main())
