"""Atomic writes, safe opens and disk space checks."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from airgap.errors import DiskSpaceError, EnvironmentProblem, IntegrityError


def io_error(e: OSError, what: str) -> EnvironmentProblem:
    """Convert an OSError met while writing into our error kinds."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"disk full while writing {what}", hint="free space or write somewhere else")
    return EnvironmentProblem(f"cannot write {what}: {e.strerror or e}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the destination directory, fsync, rename over the target."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    with contextlib.suppress(OSError):
        path.unlink()


def open_regular(path: Path, label: str) -> BinaryIO:
    """Open a bundle file for reading, refusing symlinks and anything that is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as e:
        raise IntegrityError(f"{label} is missing", hint="copy the whole bundle directory again") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IntegrityError(
                f"{label} is a symbolic link", hint="bundles hold regular files only; copy them, not links"
            ) from e
        raise EnvironmentProblem(f"cannot read {label}: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{label} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def require_space(path: Path, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise DiskSpaceError(
            f"{what} needs {human_bytes(needed)} free in {path}, only {human_bytes(free)} available",
            hint="free space there or choose another location",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
