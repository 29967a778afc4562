"""Splitting a bundle over media: which parts and files go on which volume (vol-NN folder).

Volumes fill in manifest order (installer files first, then parts, blob by blob), each up to the
medium's size less a reserve for its listing; the first also keeps room for manifest.json and the
signatures.  Every volume carries ``volume-NN.txt``, a listing that is itself a signed file: reading from one
drive (:mod:`airgap._internal.format.discs`), a disc is known by it.
"""

from __future__ import annotations

from airgap._internal.util.fsutil import human_bytes
from airgap.errors import UsageError

LISTING_RESERVE = 1 << 20  # per volume: its listing, and file system slack


def plan_volumes(items: list[tuple[str, int]], capacity: int, first_reserve: int) -> list[list[tuple[str, int]]]:
    """Group (path, size) items, in order, into volumes of at most ``capacity`` bytes."""
    volumes: list[list[tuple[str, int]]] = [[]]
    used = first_reserve + LISTING_RESERVE
    if used >= capacity:
        raise UsageError(
            f"--media-dir-size {human_bytes(capacity)} leaves no room beside the manifest",
            hint="use a larger medium size",
        )
    for path, size in items:
        if used + size > capacity:
            if size + LISTING_RESERVE > capacity:
                raise UsageError(
                    f"{path} ({human_bytes(size)}) does not fit on a medium of {human_bytes(capacity)}",
                    hint="choose a --part-size well below --media-dir-size",
                )
            volumes.append([])
            used = LISTING_RESERVE
        volumes[-1].append((path, size))
        used += size
    if len(volumes) > 999:
        raise UsageError(f"the bundle needs {len(volumes)} volumes; at most 999", hint="use a larger medium size")
    return volumes


def volume_name(index: int, count: int) -> str:
    """The folder name of volume ``index`` of ``count``: vol-NN, or vol-NNN past 99 volumes."""
    return f"vol-{index:0{3 if count > 99 else 2}d}"


def listing_name(index: int, count: int) -> str:
    """The file name of volume ``index``'s listing: volume-NN.txt, or volume-NNN.txt past 99 volumes."""
    return f"volume-{index:0{3 if count > 99 else 2}d}.txt"


def listing(bundle_name: str, sequence: int, index: int, count: int, entries: list[tuple[str, int]]) -> bytes:
    """The text of one volume's listing: which volume of which bundle it is, how to install from one drive or
    from every medium mounted, how to check it alone, and the paths and sizes it carries."""
    name = volume_name(index, count)
    command = " ".join(
        ["airgap install", f"/media/{volume_name(1, count)}"]
        + [f"--from /media/{volume_name(i, count)}" for i in range(2, count + 1)]
        + ["--trust SIGNER.pub"]
    )
    lines = [
        f"airgap bundle {bundle_name}, sequence {sequence}: volume {name} ({index} of {count})",
        "",
        f"Copy the folder {name} onto one medium and label it {name}. On the offline host, with one drive",
        "(insert the media as asked, in any order):",
        "  airgap install /media/cdrom --one-drive --trust SIGNER.pub",
        "or with every medium mounted:",
        f"  {command}",
        "Check one medium as it is burned or arrives: airgap verify /media/cdrom --volume --trust SIGNER.pub",
        "",
        f"On this volume ({human_bytes(sum(size for _, size in entries))}):",
    ]
    lines += [f"  {path}  {size} bytes" for path, size in entries]
    if index == 1:
        lines.append("  manifest.json and signatures/ (the signed list of everything on every volume)")
    return ("\n".join(lines) + "\n").encode()
