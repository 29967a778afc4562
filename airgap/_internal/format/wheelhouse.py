"""A wheelhouse for the offline host: airgap and its dependencies as wheels for Linux x86_64 and
aarch64, CPython 3.10 to 3.13, built with pip on the packing side (which has an index), or taken
ready-made.

Beside the wheels goes ``requirements.txt``: one line per distribution, ``name==version`` with the
sha256 of each of its wheels shipped (and a marker where only some Pythons or architectures need it).
It is signed like every other file of the bundle, and the offline host installs with
``pip install --no-index --find-links installer/wheels --require-hashes -r installer/wheels/requirements.txt``,
so pip takes only the listed versions and refuses any wheel whose bytes differ: a wheel dropped into the
folder or swapped is never installed.  Which wheel each Python and architecture needs is decided by
pip itself, offline, against the wheelhouse (``pip install --dry-run --report``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from airgap._version import __version__
from airgap.errors import EnvironmentProblem, UsageError

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ARCHES = ("x86_64", "aarch64")
WHEELS_DIR = "installer/wheels"
REQUIREMENTS = "requirements.txt"
INSTALL_HINT = "pip install --no-index --find-links DIR --require-hashes -r DIR/requirements.txt"
_WHEEL_RE = re.compile(
    r"([A-Za-z0-9_.]+)-([A-Za-z0-9_.!+]+)(?:-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl"
)


def _requirements() -> list[str]:
    """airgap's own dependencies, as its installed metadata declares them (extras left out)."""
    requires = importlib.metadata.requires("airgap") or []
    return [r for r in requires if "extra ==" not in r]


def project_root() -> Path | None:
    """The source tree airgap runs from, when it has one (an editable or source install)."""
    root = Path(__file__).resolve().parents[3]  # airgap/_internal/format/wheelhouse.py -> the source tree
    return root if (root / "pyproject.toml").is_file() and (root / "airgap").is_dir() else None


def _pip(args: list[str], what: str, env: dict[str, str] | None = None, hint: str | None = None) -> None:
    """Run this Python's pip; a failure is an EnvironmentProblem quoting pip's last line of error output."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EnvironmentProblem(
            f"pip could not {what}: {last[:200]}",
            hint=hint or "build the wheelhouse where a package index is reachable, then pass it with --wheelhouse DIR",
        )


def _platforms(arch: str) -> list[str]:
    """pip's --platform options for the manylinux wheels ``arch`` can use."""
    args = []
    for p in (f"manylinux2014_{arch}", f"manylinux_2_17_{arch}", f"manylinux_2_28_{arch}"):
        args += ["--platform", p]
    return args


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
            args = ["download", "--quiet", "--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
            _pip(
                [*args, *_platforms(arch), "--dest", str(dest), *_requirements()],
                f"download wheels for CPython {python} on {arch}",
            )
    return wheels(dest)


def wheels(directory: Path) -> list[Path]:
    """The wheels in a wheelhouse directory; one without an airgap wheel is a UsageError."""
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(".whl"))
    if not any(p.name.startswith("airgap-") for p in found):
        raise UsageError(f"wheelhouse {directory} holds no airgap wheel", hint="build one with 'make wheelhouse'")
    return found


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 normalizes it, so wheel file names and pip's report compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _airgap_version(found: list[Path], directory: Path) -> str:
    """The airgap the offline host gets: this one's version if the wheelhouse has it, else its only one."""
    versions = sorted({m.group(2) for p in found if (m := _WHEEL_RE.fullmatch(p.name)) and _normalize(m.group(1)) == "airgap"})
    if __version__ in versions:
        return __version__
    if len(versions) == 1:
        return versions[0]
    raise UsageError(
        f"wheelhouse {directory} holds airgap {', '.join(versions)}, none of them this airgap ({__version__})",
        hint="keep one airgap wheel in the wheelhouse ('make wheelhouse' builds this version's)",
    )


def _offline_env() -> dict[str, str]:
    """pip reading no configuration and no index: the result depends on the wheelhouse alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _resolve(directory: Path, version: str, python: str, arch: str) -> list[tuple[str, str, str]]:
    """What pip on CPython ``python``/``arch`` installs from the wheelhouse: (name, version, wheel file name)."""
    with tempfile.TemporaryDirectory(prefix="airgap-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        args = [
            "install", "--dry-run", "--ignore-installed", "--quiet", "--no-index", "--find-links", str(directory),
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp", *_platforms(arch),
            "--target", str(Path(tmp) / "target"), "--report", str(report), f"airgap=={version}",
        ]  # fmt: skip
        _pip(
            args,
            f"install airgap {version} on CPython {python} {arch} from wheelhouse {directory}",
            env=_offline_env(),
            hint="the wheelhouse must hold airgap and all its dependencies for CPython 3.10-3.13 on x86_64 and "
            "aarch64: build it with 'make wheelhouse' (pip 22.2 or later)",
        )
        try:
            installs = json.loads(report.read_text(encoding="utf-8"))["install"]
            picks = []
            for item in installs:
                name = unquote(urlsplit(item["download_info"]["url"]).path).rsplit("/", 1)[-1]
                picks.append((_normalize(item["metadata"]["name"]), str(item["metadata"]["version"]), name))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EnvironmentProblem(f"pip wrote an installation report airgap cannot read ({e})") from e
    return picks


def _marker(where: set[tuple[str, str]]) -> str:
    """A PEP 508 marker true exactly on the (Python, architecture) pairs in ``where``."""
    if where == {(p, a) for p in PYTHONS for a in ARCHES}:
        return ""
    terms = []
    for python in PYTHONS:
        arches = [a for a in ARCHES if (python, a) in where]
        if len(arches) == len(ARCHES):
            terms.append(f'python_version == "{python}"')
        else:
            terms += [f'python_version == "{python}" and platform_machine == "{a}"' for a in arches]
    return " ; " + " or ".join(terms)


def _sha256(path: Path) -> str:
    """The sha256 of a wheel file, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def bundle_files(directory: Path) -> dict[str, bytes | Path]:
    """The bundle's ``installer/wheels``: every wheel pip installs from ``directory`` on a supported Python
    and architecture (and no other), and the hash-pinned ``requirements.txt`` naming exactly those."""
    found = wheels(directory)
    version = _airgap_version(found, directory)
    pairs = [(p, a) for p in PYTHONS for a in ARCHES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        resolved = list(pool.map(lambda pa: _resolve(directory, version, *pa), pairs))
    where: dict[tuple[str, str], set[tuple[str, str]]] = {}
    files: dict[tuple[str, str], set[str]] = {}
    for pair, picks in zip(pairs, resolved, strict=True):
        for name, ver, filename in picks:
            where.setdefault((name, ver), set()).add(pair)
            files.setdefault((name, ver), set()).add(filename)
    shipped: dict[str, bytes | Path] = {}
    lines = [
        f"# airgap {version} and its dependencies for CPython {PYTHONS[0]}-{PYTHONS[-1]} on Linux {' and '.join(ARCHES)},",
        "# pinned to the sha256 of each wheel beside this file.  Check this file against the signed manifest, then:",
        f"#   {INSTALL_HINT}",
    ]
    for name, ver in sorted(where):
        hashes = []
        for filename in sorted(files[(name, ver)]):
            path = directory / filename
            if not _WHEEL_RE.fullmatch(filename) or not path.is_file():
                raise EnvironmentProblem(f"pip chose {filename!r}, which is not a wheel in {directory}")
            shipped[f"{WHEELS_DIR}/{filename}"] = path
            hashes.append(f"--hash=sha256:{_sha256(path)}")
        lines.append(f"{name}=={ver}{_marker(where[(name, ver)])} {' '.join(hashes)}")
    shipped[f"{WHEELS_DIR}/{REQUIREMENTS}"] = ("\n".join(lines) + "\n").encode()
    return shipped
