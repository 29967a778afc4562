"""Human sizes: '4GiB', '700MB', '1.5G', '65536'."""

from __future__ import annotations

import re

from airgap.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """A size with an optional unit (decimal kB/MB/GB/TB or binary KiB/MiB/GiB/TiB, case-insensitive) in bytes,
    computed without floats; anything else is a UsageError."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise UsageError(f"cannot read size {text!r}", hint="use a number with a unit such as 4GiB, 700MB or 64KiB")
    whole, _, frac = m.group(1).partition(".")
    # exact integer arithmetic: no floats reach the manifest
    scale = 10 ** len(frac)
    return int((int(whole) * scale + int(frac or 0)) * _UNITS[unit] // scale)


# Media people carry.  A part must fit a file system's file size limit (FAT32: 4 GiB - 1); a volume
# (--media-dir-size) must fit a disc, with a little room left for the file system itself.
MEDIA = {
    "fat32": 4 * 1024**3 - 1,  # the largest file FAT32 holds
    "dvd": 4_700_000_000,  # DVD+-R: 4,707,319,808 bytes
    "dvd-dl": 8_500_000_000,  # DVD+-R DL: 8,543,666,176 bytes
    "bd25": 25_000_000_000,  # BD-R: 25,025,314,816 bytes
    "bd50": 50_000_000_000,  # BD-R DL: 50,050,629,632 bytes
}


def parse_media_size(text: str) -> int:
    """A size, or a medium's name: fat32, dvd, dvd-dl, bd25, bd50."""
    preset = MEDIA.get(text.strip().lower())
    if preset is not None:
        return preset
    try:
        return parse_size(text)
    except UsageError as e:
        raise UsageError(
            f"cannot read size {text!r}", hint=f"use a size such as 4GiB or 700MB, or a medium: {', '.join(MEDIA)}"
        ) from e
