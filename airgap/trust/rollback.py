"""The installer's state: the newest bundle sequence installed per bundle name (rollback protection).

Whoever can replace this file can reset the rollback mark, so, as ssh does with its keys, the state file
must be ours, a regular file (not a link) and not writable by group or others, in a directory (not a
link) that is ours or root's and not writable by group or others, below directories nobody else can
rename entries in.  Directories airgap creates here are mode 0700 whatever the umask.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from airgap._internal.util.fsutil import atomic_write, io_error
from airgap.errors import EnvironmentProblem, FormatError
from airgap.trust.policy import Installed

MAX_STATE_BYTES = 16 << 20


def default_path() -> Path:
    if os.environ.get("AIRGAP_STATE"):
        return Path(os.environ["AIRGAP_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airgap" / "installed.json"


def cache_path(state_path: Path) -> Path:
    """The verified-parts cache (see _internal/format/cache.py) lives beside the install state."""
    return state_path.with_name("verified.jsonl")


# -- who may change a local file ----------------------------------------------------------------


class UnsafeLocalFile(EnvironmentProblem):
    """A local state or cache file (or a directory above it) that someone else could replace."""

    def __init__(self, what: str, path: Path, problem: str, hint: str, below: Path | None = None) -> None:
        message = f"{what} {path} {problem}" if below is None else f"{what} directory {below} is below {path}, which {problem}"
        super().__init__(message, hint=hint, path=str(path))
        self.problem = problem


def file_problem(st: os.stat_result, path: Path) -> tuple[str, str] | None:
    """Why a file (by its fstat) is unsafe to trust as ours, with a hint; None when it is fine."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link", f"replace the link {path} by the file itself (links here could be redirected)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file", f"move {path} away"
    uid = os.geteuid()
    if st.st_uid != uid:
        return (
            f"is owned by uid {st.st_uid}, not by you (uid {uid})",
            f"if you trust its content: chown {uid} {path}; otherwise move it away",
        )
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})", f"chmod go-w {path}"
    return None


_ELSEWHERE = "keep the state in a directory only you can write (install --state DIR/installed.json, or $AIRGAP_STATE)"


def _dir_problem(st: os.stat_result, path: Path, ancestor: bool) -> tuple[str, str] | None:
    if not ancestor and stat.S_ISLNK(st.st_mode):
        return "is a symbolic link", f"use the directory it points to, not the link {path}"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory", f"move {path} away"
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        return f"is owned by uid {st.st_uid}, not by you (uid {uid}) or root", f"chown {uid} {path}, or {_ELSEWHERE}"
    if st.st_mode & 0o022 and not (ancestor and st.st_mode & stat.S_ISVTX):
        mode = stat.S_IMODE(st.st_mode)
        fix = _ELSEWHERE if st.st_mode & stat.S_ISVTX else f"chmod go-w {path}, or {_ELSEWHERE}"
        return f"is writable by group or others (mode {mode:04o})", fix
    return None


def dir_problem(directory: Path) -> tuple[Path, str, str] | None:
    """Why files in DIRECTORY could be replaced by someone else: (the directory at fault, problem, hint).

    DIRECTORY itself (when it exists) must not be a link; the directories above it (as written and as
    resolved) may be links, or world-writable with the sticky bit (/tmp), but nobody else's.
    """
    directory = Path(os.path.abspath(directory))
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        pass
    except OSError as e:
        return directory, f"cannot be checked: {e.strerror}", "check its permissions"
    else:
        found = _dir_problem(st, directory, ancestor=False)
        if found:
            return directory, *found
    above = [*directory.parents, *Path(os.path.realpath(directory.parent)).parents, Path(os.path.realpath(directory.parent))]
    for ancestor in dict.fromkeys(above):
        try:
            st = os.stat(ancestor)
        except FileNotFoundError:
            continue
        except OSError as e:
            return ancestor, f"cannot be checked: {e.strerror}", "check its permissions"
        found = _dir_problem(st, ancestor, ancestor=True)
        if found:
            return ancestor, *found
    return None


def check_dir(directory: Path, what: str) -> None:
    """Raise UnsafeLocalFile when files in DIRECTORY could be replaced by someone else."""
    found = dir_problem(directory)
    if found is None:
        return
    at_fault, problem, hint = found
    directory = Path(os.path.abspath(directory))
    if at_fault == directory:
        raise UnsafeLocalFile(f"{what} directory", at_fault, problem, hint)
    raise UnsafeLocalFile(what, at_fault, problem, hint, below=directory)


def make_private_dir(directory: Path, what: str) -> None:
    """Create DIRECTORY (and missing parents) with mode 0700, whatever the umask; check it is safe."""
    missing: list[Path] = []
    for d in [directory, *directory.parents]:
        if os.path.lexists(d):
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile (another airgap): checked below like any existing directory
        except OSError as e:
            raise io_error(e, str(d)) from e
        try:
            os.chmod(d, 0o700)  # a umask such as 0277 would leave it unusable
        except OSError as e:
            raise io_error(e, str(d)) from e
    check_dir(directory, what)


def open_private(path: Path, what: str) -> int | None:
    """Open PATH for reading without following a link; None when it does not exist; refuse an unsafe one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeLocalFile(
                what, path, "is a symbolic link", f"replace the link {path} by the file itself (links here could be redirected)"
            ) from e
        raise EnvironmentProblem(f"cannot read {what} {path}: {e.strerror}") from e
    found = file_problem(os.fstat(fd), path)
    if found:
        os.close(fd)
        raise UnsafeLocalFile(what, path, *found)
    return fd


# -- the state --------------------------------------------------------------------------------------


class InstallState:
    WHAT = "install state"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, object]]:
        check_dir(self.path.parent, self.WHAT)
        fd = open_private(self.path, self.WHAT)
        if fd is None:
            return {}
        try:
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read {self.WHAT} {self.path}: {e.strerror}") from e
        if len(raw) > MAX_STATE_BYTES:
            raise FormatError(f"install state {self.path} is larger than any state file airgap writes")
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise FormatError(
                f"install state {self.path} is not valid JSON", hint="restore it from a backup, or move it away to start afresh"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("bundles"), dict):
            raise FormatError(f"install state {self.path} is not an airgap state file")
        bundles: dict[str, dict[str, object]] = data["bundles"]
        return bundles

    def get(self, name: str) -> Installed | None:
        entry = self._load().get(name)
        if entry is None:
            return None
        seq, digest = entry.get("sequence"), entry.get("manifest_sha256")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
            raise FormatError(f"install state {self.path} has a malformed entry for {name}")
        return Installed(seq, digest)

    def record(self, name: str, sequence: int, manifest_sha256: str, when: str) -> None:
        make_private_dir(self.path.parent, self.WHAT)
        bundles = self._load()
        current = bundles.get(name)
        if isinstance(current, dict) and isinstance(current.get("sequence"), int) and current["sequence"] > sequence:  # type: ignore[operator]
            return  # a forced downgrade does not lower the mark
        bundles[name] = {"sequence": sequence, "manifest_sha256": manifest_sha256, "installed": when}
        atomic_write(self.path, (json.dumps({"bundles": bundles}, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
