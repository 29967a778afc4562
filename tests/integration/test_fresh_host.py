"""A fresh host, as the README's first commands meet it: the Quick start's install block run as written in a
fresh virtual environment (offline, from a wheelhouse), and 'make demo' / 'make test' on a host without
Docker: they install what is missing (as root, with apt) or print the one command that does, and never end
in a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.keys import KeyPair
from tests.helpers.paths import ROOT
from tests.helpers.samples import Samples

pytestmark = pytest.mark.tools

README = ROOT / "README.md"
SETUP_HOST = ROOT / "scripts" / "setup-host"
NO_ENGINE = "unix:///nonexistent/airgap-test/docker.sock"


def quick_start_install_block() -> str:
    """The first sh block of the README's Quick start: the install lines, run here as they stand."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None, "no sh block under 'Quick start'"
    return found.group(1)


def _tool_path(tmp_path: Path, *tools: str, extra: dict[str, str] | None = None) -> str:
    """A PATH holding exactly these tools (links to this host's), plus EXTRA scripts: a host that lacks the rest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
        if tool == "python3":  # the interpreter itself, not a launcher (pyenv's shims need more tools)
            found = subprocess.run(
                [found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=True
            ).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    for name, body in (extra or {}).items():
        script = bin_dir / name
        script.write_text(body)
        script.chmod(0o755)
    return str(bin_dir)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary directory another user can read (pytest's own are root's alone), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="airgap-fresh-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """ARGS run as uid 65534, as a user without root would."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.fail("this case drops to uid 65534 with setpriv (CI runs as root; util-linux has setpriv)")
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


BASICS = ("sh", "id", "python3", "cat", "sed", "grep", "awk", "head", "tail", "mkdir", "rm", "sleep", "setsid", "env")


# -- the Quick start's install block ------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """airgap's dependencies and its build backend as wheels, fetched once with this host's pip settings for the
    python3 the README's block runs; the block itself then installs with no index at all."""
    work = tmp_path_factory.mktemp("fresh-wheelhouse")
    python3 = shutil.which("python3")
    assert python3 is not None
    subprocess.run([python3, "-m", "venv", str(work / "fetch")], check=True, capture_output=True)
    requirements = re.search(r"dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S)
    backend = re.search(r"requires = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S)
    assert requirements is not None and backend is not None
    wanted = re.findall(r'"([^"]+)"', requirements.group(1)) + re.findall(r'"([^"]+)"', backend.group(1)) + ["wheel"]
    done = subprocess.run(
        [str(work / "fetch" / "bin" / "pip"), "wheel", "--quiet", "--wheel-dir", str(work / "wheels"), *wanted],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"could not fetch the wheels (the packing side needs an index): {done.stderr[-2000:]}"
    return work / "wheels"


def _checkout_copy(dest: Path) -> Path:
    """What 'pip install .' reads from a clone: the project file, the README it names, the package."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "airgap", dest / "airgap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_quick_start_install_block_runs_as_written_in_a_fresh_venv(
    wheelhouse: Path, samples: Samples, keypair: KeyPair, tmp_path: Path
) -> None:
    block = quick_start_install_block()
    assert "pip install ." in block and "venv" in block
    src = _checkout_copy(tmp_path / "airgap-src")
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "install.sh"
    script.write_text(block)
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "PIP_CONFIG_FILE": os.devnull,  # nothing from this host's pip settings: no index, no mirror
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    done = subprocess.run(["sh", "-eu", str(script)], cwd=src, env=env, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert re.search(r"airgap, version \S+", done.stdout), done.stdout
    # what it installed is a complete airgap: pack writes the POSIX scripts, which come as package data
    airgap = home / ".local" / "share" / "airgap" / "venv" / "bin" / "airgap"
    out = tmp_path / "bundle"
    packed = subprocess.run(
        [str(airgap), "-q", "pack", f"docker-archive:{samples['docker'].path}", "-o", str(out), "--key", str(keypair[0])],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert packed.returncode == 0, packed.stderr
    assert (out / "installer" / "install.sh").is_file() and (out / "installer" / "audit.sh").is_file()
    verified = subprocess.run(
        [str(airgap), "verify", str(out), "--trust", str(keypair[1])], env=env, capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0 and verified.stdout.startswith("OK: signature by"), verified.stderr


# -- make demo, make test: the set-up, shared with .ci/run --------------------------------------------


def test_ci_and_the_makefile_share_one_package_list() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "setup-host test" in ci and "apt-get" not in ci
    assert "$(SETUP_HOST) demo" in makefile and "$(SETUP_HOST) test" in makefile and "$(SETUP_HOST) venv" in makefile
    listed = SETUP_HOST.read_text()
    for package in ("docker.io", "containerd", "podman", "skopeo", "docker-registry", "softhsm2", "zstd", "dash", "jq"):
        assert f"need {package} " in listed, package


def test_setup_host_as_root_installs_what_is_missing_with_apt(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this case runs setup-host as root (CI runs as root)")
    log = tmp_path / "apt.log"
    fake_apt = f'#!/bin/sh\necho "$*" >>{log}\n'
    path = _tool_path(tmp_path, *BASICS, extra={"apt-get": fake_apt})
    env = {"PATH": path, "DOCKER_HOST": NO_ENGINE, "HOME": str(tmp_path)}
    done = subprocess.run(["sh", str(SETUP_HOST), "demo"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "needs a Docker engine (dockerd); installing: docker.io" in done.stderr
    assert log.read_text().splitlines() == ["update -q", "install -y -q --no-install-recommends docker.io"]


def test_setup_host_as_another_user_prints_the_one_command(public_tmp: Path) -> None:
    """A really fresh host: not even python3; not root, so nothing is installed, the one command is named."""
    basics = [t for t in BASICS if t != "python3"]
    path = _tool_path(public_tmp, *basics, extra={"apt-get": "#!/bin/sh\nexit 99\n"})
    script = public_tmp / "setup-host"
    shutil.copy(SETUP_HOST, script)
    script.chmod(0o755)
    done = _as_nobody("sh", str(script), "demo", env={"PATH": path, "DOCKER_HOST": NO_ENGINE, "HOME": "/nonexistent"})
    assert done.returncode == 6, done.stderr
    assert done.stderr.splitlines() == [
        "error: make demo needs python3, python3's venv, a Docker engine (dockerd), which this host lacks",
        "hint: run: sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends python3 python3-venv docker.io'",
    ]


def test_make_demo_without_docker_says_what_to_install_and_shows_no_traceback(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.fail("run through 'make test', which makes .venv")
    path = _tool_path(tmp_path, "make", *BASICS)
    env = dict(os.environ, PATH=path, DOCKER_HOST=NO_ENGINE)
    done = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "demo", "SETUP_HOST=sh scripts/setup-host --check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    assert "error: make demo needs a Docker engine (dockerd), which this host lacks" in done.stderr
    assert "apt-get install -y --no-install-recommends docker.io" in done.stderr


def _demo_copy(tmp_path: Path) -> Path:
    """scripts/ as the demo needs it, in a directory of its own: its .demo/ lands there, not in the checkout."""
    root = tmp_path / "demo-root"
    (root / "scripts").mkdir(parents=True)
    for name in ("demo.py", "sample_image.py", "private-dockerd"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    return root


def test_demo_without_dockerd_ends_with_the_helpful_line_not_a_traceback(tmp_path: Path) -> None:
    root = _demo_copy(tmp_path)
    path = _tool_path(tmp_path, *BASICS)  # no dockerd here
    env = dict(os.environ, PATH=path, DOCKER_HOST=NO_ENGINE)
    env.pop("AIRGAP_DEBUG", None)
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "demo.py")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 6, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "error: no Docker engine answers, and dockerd is not installed to start a private one" in done.stderr
    assert "hint: as root: sh scripts/setup-host demo" in done.stderr
    assert done.stderr.rstrip().endswith("demo: starting a private Docker engine failed (exit code 6); see the error above")


def test_private_dockerd_as_another_user_says_it_needs_root(public_tmp: Path) -> None:
    script = public_tmp / "private-dockerd"
    shutil.copy(ROOT / "scripts" / "private-dockerd", script)
    path = _tool_path(public_tmp, *BASICS, extra={"dockerd": "#!/bin/sh\nexit 0\n"})  # installed; only root may start it
    (public_tmp / "engine").mkdir(mode=0o777)
    (public_tmp / "engine").chmod(0o777)
    done = _as_nobody("sh", str(script), "start", str(public_tmp / "engine"), env={"PATH": path, "HOME": "/nonexistent"})
    assert done.returncode == 6
    assert done.stderr.splitlines() == [
        "error: no Docker engine answers, and starting a private dockerd needs root",
        "hint: run it as root, or point DOCKER_HOST at a running engine",
    ]


def test_make_man_pages_render_without_warnings(tmp_path: Path) -> None:
    """What 'make man' runs, then groff over every page it wrote, as man would."""
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is not installed (scripts/setup-host test installs groff-base)")
    made = subprocess.run(
        [sys.executable, "-m", "airgap._cli.manpage", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0 and "man pages in" in made.stdout, made.stderr
    pages = sorted(tmp_path.glob("*.1"))
    assert len(pages) >= 12
    for page in pages:
        shown = subprocess.run([groff, "-man", "-Tutf8", "-ww", page], capture_output=True, text=True, check=False)
        assert shown.returncode == 0 and not shown.stderr, (page.name, shown.stderr)
        text = re.sub(".\x08", "", shown.stdout)  # bold and underline as the terminal would show them
        assert "EXAMPLES" in text and "SEE ALSO" in text, page.name
