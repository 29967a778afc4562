"""Parsers for the files that list packages, each reading a bounded number of bytes and keeping a bounded
number of records; what they cannot read is an :class:`~.tarwalk.InventoryLimit` (a warning).

Which file is which is decided from its path alone (:func:`classify`); GGUF files, which may lie
anywhere, are recognized by their first bytes in :mod:`.layers`.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator

from airgap._internal.inventory.records import Copyright, OllamaBlob, OllamaManifest, OsRelease, Package, PackageDb
from airgap._internal.inventory.tarwalk import InventoryLimit, Member

DB_CAP = 64 << 20  # a dpkg or apk database: read this much at most (real ones are a few MiB)
FILE_CAP = 4 << 20  # a METADATA, package.json or Ollama manifest
SMALL_CAP = 64 << 10  # os-release
COPYRIGHT_CAP = 256 << 10  # the start of a copyright file is read for its License: lines
LINE_CAP = 64 << 10
MAX_PACKAGES = 100_000  # per database
MAX_FIELD = 512  # longest name, version or license kept
MAX_LICENSES = 16

_NPM_RE = re.compile(r"(?:^|/)node_modules/(?:@[^/]+/)?[^/@][^/]*/package\.json$")
_OLLAMA_MANIFEST_RE = re.compile(r"(?:^|/)models/manifests/([^/]+)/([^/]+)/([^/]+)/([^/]+)$")
_OLLAMA_BLOB_RE = re.compile(r"(?:^|/)models/blobs/sha256[-:]([0-9a-f]{64})$")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def classify(path: str) -> str | None:
    """The kind of package file at ``path``, or None: "dpkg", "dpkg-part", "apk", "python", "npm",
    "os-release", "copyright", "ollama-manifest", "ollama-blob"."""
    if path == "var/lib/dpkg/status":
        return "dpkg"
    if path.startswith("var/lib/dpkg/status.d/"):
        name = path[len("var/lib/dpkg/status.d/") :]
        return "dpkg-part" if "/" not in name and not name.endswith((".md5sums", ".list")) else None
    if path == "lib/apk/db/installed":
        return "apk"
    if path.endswith("/METADATA") and path[: -len("/METADATA")].endswith(".dist-info"):
        return "python"
    if path.endswith("/package.json") and _NPM_RE.search(path):
        return "npm"
    if path in ("etc/os-release", "usr/lib/os-release"):
        return "os-release"
    if path.startswith("usr/share/doc/") and path.endswith("/copyright") and path.count("/") == 4:
        return "copyright"
    if "/manifests/" in path and _OLLAMA_MANIFEST_RE.search(path):
        return "ollama-manifest"
    if "/blobs/sha256" in path and _OLLAMA_BLOB_RE.search(path):
        return "ollama-blob"
    return None


def ollama_blob_digest(path: str) -> str | None:
    """The sha256 (hex) an Ollama blob's name carries."""
    m = _OLLAMA_BLOB_RE.search(path)
    return m.group(1) if m else None


def _text(value: bytes | str, cap: int = MAX_FIELD) -> str:
    """A field as text, cut at ``cap`` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text.strip()[:cap]


def _lines(member: Member, cap: int, label: str) -> Iterator[bytes]:
    """The member's lines (without their ends), reading at most ``cap`` bytes; an overlong line is cut at
    :data:`LINE_CAP`.  A member larger than ``cap`` is an InventoryLimit once the cap is read."""
    rest = b""
    read = 0
    while member.remaining and read < cap:
        chunk = bytes(member.view(min(1 << 20, cap - read)))
        read += len(chunk)
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) > LINE_CAP:
            rest = rest[:LINE_CAP]
        yield from lines
    if rest:
        yield rest
    if member.remaining:
        raise InventoryLimit(f"{label} is {member.size} bytes: only its first {cap >> 20} MiB were read")


def _stanzas(member: Member, cap: int, label: str) -> Iterator[dict[str, str]]:
    """The blank-line separated stanzas of a Debian control file (or an apk database), fields of one line."""
    fields: dict[str, str] = {}
    for line in _lines(member, cap, label):
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif line[:1] not in (b" ", b"\t"):
            key, sep, value = line.partition(b":")
            if sep and len(fields) < 64:
                fields[key.decode("ascii", "replace")] = _text(value)
    if fields:
        yield fields


def dpkg(member: Member, path: str) -> PackageDb:
    """A dpkg database (``var/lib/dpkg/status``, or one file of ``status.d/``): the packages installed."""
    found: list[Package] = []
    for f in _stanzas(member, DB_CAP, path):
        status = f.get("Status", "install ok installed").split()
        if "Package" not in f or "Version" not in f or status[-1:] != ["installed"]:
            continue
        if len(found) >= MAX_PACKAGES:
            raise InventoryLimit(f"{path} lists more than {MAX_PACKAGES} packages: the rest are not listed")
        source = f.get("Source", "").split(" ")[0] or None
        found.append(Package("deb", f["Package"], f["Version"], path, path, (), f.get("Architecture"), source))
    return PackageDb(tuple(found))


def apk(member: Member, path: str) -> PackageDb:
    """An apk database (``lib/apk/db/installed``)."""
    found: list[Package] = []
    for f in _stanzas(member, DB_CAP, path):
        if "P" not in f or "V" not in f:
            continue
        if len(found) >= MAX_PACKAGES:
            raise InventoryLimit(f"{path} lists more than {MAX_PACKAGES} packages: the rest are not listed")
        licenses = (f["L"],) if f.get("L") else ()
        found.append(Package("apk", f["P"], f["V"], path, path, licenses, f.get("A"), f.get("o")))
    return PackageDb(tuple(found))


def _capped(member: Member, cap: int, label: str) -> bytes:
    """A small file whole; larger than ``cap``: an InventoryLimit."""
    if member.size > cap:
        raise InventoryLimit(f"{label} is {member.size} bytes, more than the {cap >> 10} KiB read: not listed")
    return member.read(member.size)


def python_dist(member: Member, path: str) -> PackageDb:
    """A Python distribution's ``*.dist-info/METADATA``: its name, version and license (only the header
    is read, up to the blank line before the description)."""
    fields: dict[str, list[str]] = {}
    for line in _lines(member, FILE_CAP, path):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t"):
            continue
        key, sep, value = line.partition(b":")
        if sep and key in (b"Name", b"Version", b"License", b"License-Expression", b"Classifier"):
            fields.setdefault(key.decode(), []).append(_text(value))
    else:
        if member.remaining:
            raise InventoryLimit(f"{path} has no end to its header in {FILE_CAP >> 20} MiB")
    name, version = fields.get("Name", [""])[0], fields.get("Version", [""])[0]
    if not name or not version:
        raise InventoryLimit(f"{path} names no distribution or version")
    licenses: list[str] = []
    if fields.get("License-Expression"):
        licenses = fields["License-Expression"][:1]
    elif fields.get("License") and fields["License"][0] and fields["License"][0].upper() not in ("UNKNOWN", "NONE"):
        licenses = [fields["License"][0].splitlines()[0][:200]]
    else:
        licenses = [c.rsplit("::", 1)[-1].strip() for c in fields.get("Classifier", []) if c.startswith("License ::")]
        licenses = [lic for lic in licenses if lic and lic != "OSI Approved"]
    site = posixpath.dirname(posixpath.dirname(path))
    return PackageDb((Package("pypi", name, version, path, site, tuple(licenses[:MAX_LICENSES])),))


def _npm_licenses(doc: dict[str, object]) -> tuple[str, ...]:
    """package.json's ``license`` (a string or, in old packages, ``{"type": ...}``) or ``licenses`` list."""
    value = doc.get("license")
    if isinstance(value, str) and value:
        return (_text(value),)
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return (_text(value["type"]),)
    many = doc.get("licenses")
    if isinstance(many, list):
        return tuple(_text(x["type"]) for x in many[:MAX_LICENSES] if isinstance(x, dict) and isinstance(x.get("type"), str))
    return ()


def npm(member: Member, path: str) -> PackageDb | None:
    """An npm package's ``package.json`` under ``node_modules``; None for one without a name and version
    (packages put such files in their own folders)."""
    data = _capped(member, FILE_CAP, path)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InventoryLimit(f"{path} is not valid JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("version"), str):
        return None
    where = path[: -len("/package.json")]
    location = where[: -len(doc["name"]) - 1] if where.endswith("/" + doc["name"]) else posixpath.dirname(where)
    return PackageDb((Package("npm", _text(doc["name"]), _text(doc["version"]), path, location, _npm_licenses(doc)),))


def os_release(member: Member, path: str) -> OsRelease:
    """/etc/os-release's ID, VERSION_ID and PRETTY_NAME."""
    fields = {}
    for line in _capped(member, SMALL_CAP, path).splitlines():
        key, sep, value = line.partition(b"=")
        if sep:
            fields[key.strip().decode("ascii", "replace")] = _text(value.strip().strip(b"\"'"), 200)
    return OsRelease(fields.get("ID", ""), fields.get("VERSION_ID", ""), fields.get("PRETTY_NAME", ""))


def copyright_file(member: Member, path: str) -> Copyright | None:
    """The licenses a Debian machine-readable copyright file names (its ``License:`` lines); None for a
    copyright file in free form."""
    head = member.read(min(member.size, COPYRIGHT_CAP))
    if not head.startswith(b"Format:") or b"copyright-format" not in head[:200]:
        return None
    licenses: list[str] = []
    for line in head.splitlines():
        if line.startswith(b"License:"):
            name = _text(line[len(b"License:") :], 200)
            if name and name not in licenses and len(licenses) < MAX_LICENSES:
                licenses.append(name)
    return Copyright(path.split("/")[3], tuple(licenses))


def ollama_manifest(member: Member, path: str) -> OllamaManifest:
    """An Ollama model manifest: ``models/manifests/HOST/NAMESPACE/MODEL/TAG`` and the blobs it names."""
    m = _OLLAMA_MANIFEST_RE.search(path)
    if m is None:
        raise InventoryLimit(f"{path} is not an Ollama manifest path")
    data = _capped(member, FILE_CAP, path)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InventoryLimit(f"{path} is not valid JSON") from e
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise InventoryLimit(f"{path} is not an Ollama model manifest (no layers)")
    blobs = []
    for item in [doc.get("config"), *layers][:256]:
        if not isinstance(item, dict):
            continue
        digest, media_type, size = item.get("digest"), item.get("mediaType"), item.get("size")
        if isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) and isinstance(media_type, str):
            blobs.append(OllamaBlob(_text(media_type, 200), digest, size if isinstance(size, int) and size >= 0 else 0))
    host, namespace, model, tag = (_text(g, 200) for g in m.groups())
    return OllamaManifest(path, f"{host}/{namespace}/{model}", tag, tuple(blobs))
