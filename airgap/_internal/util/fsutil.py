"""Atomic writes, safe opens and disk space checks."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from airgap._internal.util.text import printable
from airgap.errors import DiskSpaceError, EnvironmentProblem, FormatError, IntegrityError


def io_error(e: OSError, what: str) -> EnvironmentProblem:
    """Convert an OSError met while writing into our error kinds."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"disk full while writing {what}", hint="free space or write somewhere else")
    return EnvironmentProblem(
        f"cannot write {what}: {e.strerror or e}",
        hint="check that the directory exists, that you may write there, and that its file system is not read-only",
    )


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk, so a file renamed into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the destination directory, fsync, rename over the target."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a missing or read-only directory: the user's problem, named, not a bug
        raise io_error(e, str(path)) from e
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _unlink_quietly(Path(tmp))
        raise io_error(e, str(path)) from e
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def _unlink_quietly(path: Path) -> None:
    """Remove a temp file that may already be gone; cleanup never hides the error being raised."""
    with contextlib.suppress(OSError):
        path.unlink()


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_failed(e: OSError, label: str) -> Exception:
    """Convert an OSError met while opening a bundle file: missing, linked and special files are the bundle's
    fault (IntegrityError), anything else the host's (EnvironmentProblem)."""
    if isinstance(e, FileNotFoundError):
        return IntegrityError(f"{label} is missing", hint="copy the whole bundle directory again")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return IntegrityError(
            f"{label} is a symbolic link, or lies under one",
            hint="bundles hold regular files and directories only; copy them, not links",
        )
    if e.errno == errno.ENXIO:  # a FIFO with no writer, a socket
        return IntegrityError(f"{label} is not a regular file", hint="bundles hold regular files only")
    return EnvironmentProblem(f"cannot read {label}: {e.strerror}")


def open_regular(path: Path, label: str, root: Path | None = None, root_is_ours: bool = False) -> BinaryIO:
    """Open a bundle file for reading: the one way every reader opens one.

    Refuses symbolic links (the file itself and, with ``root``, every directory between ``root`` and the
    file), FIFOs, devices and sockets, without ever blocking on them (``O_NONBLOCK``; the type is checked
    with ``fstat`` on the open descriptor, before a byte is read).  ``root`` itself may be a link (the
    directory the user named) unless ``root_is_ours`` (a vol-NN folder found inside it)."""
    dir_fd = None
    try:
        if root is not None:
            rel = os.path.relpath(path, root)
            names = rel.split(os.sep)
            if rel.startswith("..") or os.path.isabs(rel) or any(n in ("", ".", "..") for n in names):
                raise IntegrityError(f"{label} lies outside the bundle")
            dir_fd = os.open(root, _DIR_FLAGS if root_is_ours else os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            for name in names[:-1]:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            fd = os.open(names[-1], _READ_FLAGS, dir_fd=dir_fd)
        else:
            fd = os.open(path, _READ_FLAGS)
    except OSError as e:
        raise _open_failed(e, label) from e
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{label} is not a regular file", hint="bundles hold regular files only")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def read_capped(path: Path, label: str, cap: int, root: Path | None = None) -> bytes:
    """A whole small file (manifest, signature, listing), refused when larger than ``cap``: the size is
    checked on the open file before its bytes are read, so an oversized file costs no memory."""
    with open_regular(path, label, root) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > cap:
            raise FormatError(f"{label} is {size} bytes, larger than the {human_bytes(cap)} airgap accepts")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise FormatError(f"{label} grew while it was read")
    return data


MAX_TREE_DEPTH = 16  # airgap writes at most three levels (installer/wheels/x.whl); deeper is reported, not entered


@dataclass(frozen=True)
class TreeEntry:
    """A file found under a directory: its path relative to the top, what it is, and its size."""

    rel: str
    kind: str  # "file", "symlink", "other" (FIFO, device, socket), "deep" (a directory nested past MAX_TREE_DEPTH)
    size: int = 0


def walk_files(top: Path, skip: frozenset[str] = frozenset()) -> Iterator[TreeEntry]:
    """Every non-directory entry under ``top``, depth first, iteratively, never following a symbolic link: a
    linked directory is reported as a symlink, not entered, and a directory deeper than
    :data:`MAX_TREE_DEPTH` is reported as "deep", not entered (a hostile tree cannot make paths too long
    to open or lists too long to hold).  Directories directly under ``top`` named in ``skip`` are not entered
    (another scan covers them)."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(top / rel_dir if rel_dir else top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise EnvironmentProblem(f"cannot list {printable(str(top / rel_dir))[:300]}: {e.strerror}") from e
        depth = rel_dir.count("/") + 1 if rel_dir else 0
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                yield TreeEntry(rel, "symlink")
            elif entry.is_dir(follow_symlinks=False):
                if not rel_dir and entry.name in skip:
                    continue
                if depth >= MAX_TREE_DEPTH:
                    yield TreeEntry(rel, "deep")
                else:
                    stack.append(rel)
            elif entry.is_file(follow_symlinks=False):
                yield TreeEntry(rel, "file", entry.stat(follow_symlinks=False).st_size)
            else:
                yield TreeEntry(rel, "other")


def free_bytes(path: Path) -> int:
    """The bytes free to us on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def require_space(path: Path, needed: int, what: str) -> None:
    """Refuse with a DiskSpaceError before ``what`` starts when ``path`` has fewer than ``needed`` bytes free."""
    free = free_bytes(path)
    if free < needed:
        raise DiskSpaceError(
            f"{what} needs {human_bytes(needed)} free in {path}, only {human_bytes(free)} available",
            hint="free space there or choose another location",
        )


def human_bytes(n: float) -> str:
    """A byte count in binary units for messages: '512 B', '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
