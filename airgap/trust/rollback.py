"""The installer's state: the newest bundle sequence installed per bundle name (rollback protection).

Whoever can replace this file can reset the rollback mark, so, as ssh does with its keys, the state file
must be ours, a regular file (not a link) and not writable by group or others, in a directory (not a
link) that is ours or root's and not writable by group or others, below directories nobody else can
rename entries in.  Directories airgap creates here are mode 0700 whatever the umask.

The state file's layout is frozen: installer/install.sh, which travels inside bundles already carried to
their hosts, reads and rewrites exactly ``{"bundles": {NAME: {installed, manifest_sha256, sequence}}}``.
What else an install is remembered by (who signed it, which images it delivered) lives beside it, in
``<state>.details.json`` (same rules), keyed by manifest sha256: ``airgap list`` joins the two, and a
bundle installed by install.sh, or before details were kept, is listed without them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from airgap._internal.util.fsutil import atomic_write, io_error
from airgap.errors import DiskSpaceError, EnvironmentProblem, Error, FormatError
from airgap.trust.policy import Installed, TrustResult

MAX_STATE_BYTES = 16 << 20


def default_path() -> Path:
    if os.environ.get("AIRGAP_STATE"):
        return Path(os.environ["AIRGAP_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airgap" / "installed.json"


def cache_path(state_path: Path) -> Path:
    """The verified-parts cache (see _internal/format/cache.py) lives beside the install state."""
    return state_path.with_name("verified.jsonl")


def details_path(state_path: Path) -> Path:
    """Who signed each installed bundle and which images it delivered: beside the state, named after it."""
    stem = state_path.name.removesuffix(".json")
    return state_path.with_name(f"{stem}.details.json")


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
            raise _cannot_make(e, d, what) from e
        try:
            os.chmod(d, 0o700)  # a umask such as 0277 would leave it unusable
        except OSError as e:
            raise _cannot_make(e, d, what) from e
    check_dir(directory, what)


def _cannot_make(e: OSError, directory: Path, what: str) -> EnvironmentProblem:
    """A directory for local state that cannot be made: named, with where else the state may live (never the
    Docker engine's hint: the file system is at fault)."""
    error = io_error(e, f"the {what} directory {directory}")
    if not isinstance(error, DiskSpaceError):
        error.hint = f"make {directory.parent} writable, or {_ELSEWHERE}"
    error.path = str(directory)
    return error


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

DETAILS_VERSION = 1


class StateNotRecorded(EnvironmentProblem):
    """The install finished, but its rollback mark (or its details) could not be written afterwards."""


@dataclass(frozen=True)
class RecordedImage:
    """An image an install delivered, as the details file remembers it."""

    image_id: str
    ref_names: tuple[str, ...]
    platform: str

    def to_dict(self) -> dict[str, object]:
        """The JSON form, in the details file and in ``airgap list --json``."""
        return {"image_id": self.image_id, "ref_names": list(self.ref_names), "platform": self.platform}


@dataclass(frozen=True)
class InstallDetails:
    """What an install is remembered by besides its rollback mark: the signature check it passed (every
    signature the bundle carried, and the trusted keys that counted) and the images it delivered."""

    signatures: Mapping[str, object]  # TrustResult.to_dict() at install time
    images: tuple[RecordedImage, ...]

    @property
    def signers(self) -> list[str]:
        """Every signature the bundle carried, trusted or not (the README's vocabulary)."""
        found: set[str] = set()
        for key in ("valid", "invalid", "unknown"):
            value = self.signatures.get(key)
            if isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
        return sorted(found)

    def to_dict(self) -> dict[str, object]:
        """The JSON form, in the details file."""
        return {"signatures": dict(self.signatures), "images": [i.to_dict() for i in self.images]}


@dataclass(frozen=True)
class InstalledBundle:
    """One bundle name in the state: its newest sequence installed (the rollback mark), that bundle's manifest
    sha256 and time, and its details when they were recorded (None: installed by install.sh, or by an older
    airgap)."""

    name: str
    sequence: int
    manifest_sha256: str
    installed: str
    details: InstallDetails | None = None

    def to_dict(self) -> dict[str, object]:
        """One entry of ``airgap list --json``; signers, signatures and images are null when not recorded."""
        d = self.details
        return {
            "name": self.name,
            "sequence": self.sequence,
            "manifest_sha256": self.manifest_sha256,
            "installed": self.installed,
            "signers": None if d is None else d.signers,
            "signatures": None if d is None else dict(d.signatures),
            "images": None if d is None else [i.to_dict() for i in d.images],
        }


_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_KEYS = {"valid", "invalid", "unknown", "threshold", "expires", "expired"}


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _signatures_ok(signatures: object) -> bool:
    """A trust check as TrustResult.to_dict() writes it."""
    if not isinstance(signatures, dict) or set(signatures) != _SIGNATURE_KEYS:
        return False
    fingerprints = [signatures[k] for k in ("valid", "invalid", "unknown")]
    if not all(isinstance(f, list) and all(isinstance(x, str) and _HEX64.fullmatch(x) for x in f) for f in fingerprints):
        return False
    threshold, expires, expired = signatures["threshold"], signatures["expires"], signatures["expired"]
    return (
        isinstance(threshold, int)
        and not isinstance(threshold, bool)
        and threshold >= 1
        and (expires is None or isinstance(expires, str))
        and isinstance(expired, bool)
    )


def _details_from(entry: object) -> InstallDetails | None:
    """One details entry, or None when it is not in the layout airgap writes."""
    if not isinstance(entry, dict) or set(entry) != {"signatures", "images"}:
        return None
    signatures, images = entry["signatures"], entry["images"]
    if not _signatures_ok(signatures):
        return None
    if not isinstance(images, list):
        return None
    recorded = []
    for image in images:
        if not isinstance(image, dict) or set(image) != {"image_id", "ref_names", "platform"}:
            return None
        image_id, refs, platform = image["image_id"], image["ref_names"], image["platform"]
        if not isinstance(image_id, str) or not _str_list(refs) or not isinstance(platform, str):
            return None
        recorded.append(RecordedImage(image_id, tuple(refs), platform))
    return InstallDetails(signatures, tuple(recorded))


class InstallState:
    WHAT = "install state"
    DETAILS = "install details"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.details_path = details_path(path)

    def _read(self, path: Path, what: str) -> dict[str, object] | None:
        """The JSON object in PATH (a private file, see above); None when it does not exist."""
        check_dir(path.parent, what)
        fd = open_private(path, what)
        if fd is None:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read {what} {path}: {e.strerror}") from e
        if len(raw) > MAX_STATE_BYTES:
            raise FormatError(f"{what} {path} is larger than any {what} file airgap writes")
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise FormatError(
                f"{what} {path} is not valid JSON", hint="restore it from a backup, or move it away to start afresh"
            ) from e
        if not isinstance(data, dict):
            raise FormatError(f"{what} {path} is not an airgap {what} file")
        return data

    def _load(self) -> dict[str, dict[str, object]]:
        data = self._read(self.path, self.WHAT)
        if data is None:
            return {}
        if not isinstance(data.get("bundles"), dict):
            raise FormatError(f"install state {self.path} is not an airgap state file")
        bundles: dict[str, dict[str, object]] = data["bundles"]  # type: ignore[assignment]
        return bundles

    def _load_details(self) -> dict[str, InstallDetails]:
        """The details file's entries by manifest sha256; entries it cannot read are left out, the file
        itself must be ours and readable (it is checked before an install starts)."""
        data = self._read(self.details_path, self.DETAILS)
        if data is None:
            return {}
        installs = data.get("installs")
        if data.get("schema_version") != DETAILS_VERSION or not isinstance(installs, dict):
            raise FormatError(
                f"{self.DETAILS} {self.details_path} is not in the layout this airgap writes",
                hint="move it away: only the signers and images of past installs are forgotten, not the rollback marks",
            )
        found = {}
        for sha, entry in installs.items():
            details = _details_from(entry)
            if details is not None:
                found[sha] = details
        return found

    def _entry(self, name: str, entry: object) -> tuple[int, str, str]:
        """An entry's sequence, manifest sha256 and time; FormatError when it is malformed."""
        if isinstance(entry, dict):
            seq, digest, when = entry.get("sequence"), entry.get("manifest_sha256"), entry.get("installed", "")
            if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(digest, str) and isinstance(when, str):
                return seq, digest, when
        raise FormatError(f"install state {self.path} has a malformed entry for {name}")

    def get(self, name: str) -> Installed | None:
        entry = self._load().get(name)
        if entry is None:
            return None
        seq, digest, _ = self._entry(name, entry)
        return Installed(seq, digest)

    def entries(self) -> list[InstalledBundle]:
        """Every bundle name this state remembers, sorted by name, with the details recorded for the bundle
        that set its mark.  Reads only: nothing is created."""
        bundles = self._load()
        details = self._load_details() if bundles else {}
        found = []
        for name in sorted(bundles):
            seq, digest, when = self._entry(name, bundles[name])
            found.append(InstalledBundle(name, seq, digest, when, details.get(digest)))
        return found

    def check_writable(self) -> None:
        """Before an install starts: the state's directory exists (made 0700 if missing) and is safe, the
        state and its details can be read, and a file can be created there.  So a state that cannot be
        written fails here, with nothing delivered, not after the images are loaded."""
        try:
            make_private_dir(self.path.parent, self.WHAT)
        except EnvironmentProblem as e:
            e.hint = f"nothing was installed; {e.hint or 'check the permissions of that directory'}"
            raise
        self._load()
        self._load_details()
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".probe", dir=self.path.parent)
        except OSError as e:
            raise EnvironmentProblem(
                f"cannot write the install state in {self.path.parent}: {e.strerror or e}",
                hint="nothing was installed; make that directory writable, or keep the state elsewhere "
                "(install --state DIR/installed.json, or $AIRGAP_STATE)",
                path=str(self.path),
            ) from e
        os.close(fd)
        os.unlink(probe)

    def record(
        self,
        name: str,
        sequence: int,
        manifest_sha256: str,
        when: str,
        *,
        signatures: TrustResult | None = None,
        images: Sequence[RecordedImage] = (),
    ) -> None:
        """Raise the rollback mark for NAME to SEQUENCE (never lower it), and remember the install's signers
        and images beside it.  Called after the images were delivered: a failure says so (StateNotRecorded)."""
        try:
            make_private_dir(self.path.parent, self.WHAT)
            bundles = self._load()
            current = bundles.get(name)
            if isinstance(current, dict) and isinstance(current.get("sequence"), int) and current["sequence"] > sequence:  # type: ignore[operator]
                return  # a forced downgrade does not lower the mark
            bundles[name] = {"sequence": sequence, "manifest_sha256": manifest_sha256, "installed": when}
            atomic_write(self.path, (json.dumps({"bundles": bundles}, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
        except (Error, OSError) as e:
            why = e.message if isinstance(e, Error) else (e.strerror or str(e))
            raise StateNotRecorded(
                f"the images are installed, but the install state {self.path} was not updated: {why}",
                hint=f"the rollback mark for {name} was not raised to sequence {sequence}; fix that, then run the same "
                "install again (it finds the images present and records the install)",
                path=str(self.path),
            ) from e
        if signatures is None:
            return
        self._record_details(bundles, manifest_sha256, InstallDetails(signatures.to_dict(), tuple(images)))

    def _record_details(self, bundles: dict[str, dict[str, object]], manifest_sha256: str, details: InstallDetails) -> None:
        """Remember DETAILS for the bundle with that manifest; drop the details no mark refers to any more."""
        try:
            kept = self._load_details()
        except Error:
            kept = {}  # unreadable details are rewritten: they never guard anything
        kept[manifest_sha256] = details
        current = {e.get("manifest_sha256") for e in bundles.values() if isinstance(e, dict)}
        installs = {sha: d.to_dict() for sha, d in sorted(kept.items()) if sha in current}
        body = {"schema_version": DETAILS_VERSION, "installs": installs}
        try:
            atomic_write(self.details_path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
        except (Error, OSError) as e:
            why = e.message if isinstance(e, Error) else (e.strerror or str(e))
            raise StateNotRecorded(
                f"the images are installed and the rollback mark recorded, but not their signers and images: {why}",
                hint=f"'airgap list' shows this install without them; check {self.details_path}",
                path=str(self.details_path),
            ) from e
