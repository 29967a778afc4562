"""A wheelhouse for the offline host: airgap and its dependencies as wheels for Linux x86_64 and
aarch64, CPython 3.10 to 3.13, so ``pip install --no-index --find-links installer/wheels airgap``
works with no network.  Built with pip on the packing side (which has an index), or taken ready-made.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from airgap.errors import EnvironmentProblem, UsageError

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ARCHES = ("x86_64", "aarch64")
WHEELS_DIR = "installer/wheels"


def _requirements() -> list[str]:
    requires = importlib.metadata.requires("airgap") or []
    return [r for r in requires if "extra ==" not in r]


def project_root() -> Path | None:
    """The source tree airgap runs from, when it has one (an editable or source install)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "airgap").is_dir() else None


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EnvironmentProblem(
            f"pip could not {what}: {last[:200]}",
            hint="build the wheelhouse where a package index is reachable, then pass it with --wheelhouse DIR",
        )


def build(dest: Path) -> list[Path]:
    """Download the dependency wheels for every supported Python and architecture, and build airgap's."""
    root = project_root()
    if root is None:
        raise UsageError(
            "airgap was not installed from a source tree, so it cannot build its own wheel",
            hint="pass a ready wheelhouse with --wheelhouse DIR (make wheelhouse in the source tree builds one)",
        )
    dest.mkdir(parents=True, exist_ok=True)
    _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(root)], "build the airgap wheel")
    for python in PYTHONS:
        for arch in ARCHES:
            platforms = [f"manylinux2014_{arch}", f"manylinux_2_17_{arch}", f"manylinux_2_28_{arch}"]
            args = ["download", "--quiet", "--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
            for p in platforms:
                args += ["--platform", p]
            _pip([*args, "--dest", str(dest), *_requirements()], f"download wheels for CPython {python} on {arch}")
    return wheels(dest)


def wheels(directory: Path) -> list[Path]:
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(".whl"))
    if not any(p.name.startswith("airgap-") for p in found):
        raise UsageError(f"wheelhouse {directory} holds no airgap wheel", hint="build one with 'make wheelhouse'")
    return found
