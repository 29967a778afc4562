from __future__ import annotations

import io
import tarfile

import pytest

from airgap._internal.util import tarstream
from airgap.errors import FormatError


def make_tar(entries: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ln")
        link.type = tarfile.SYMTYPE
        link.linkname = entries[0][0]
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_reads_long_names_sizes_and_links(fmt: int) -> None:
    long = "d/" + "x" * 200 + "/layer.tar"
    raw = make_tar([(long, b"a" * 1000), ("./manifest.json", b"[]")], fmt)
    seen = {}
    for entry, reader in tarstream.iter_entries(io.BytesIO(raw), "t"):
        seen[entry.name] = (entry.kind, reader.read(), entry.linkname)
    assert seen[long] == ("file", b"a" * 1000, "")
    assert seen["manifest.json"][1] == b"[]"
    assert seen["ln"][0] == "symlink" and seen["ln"][2] == long


def test_unread_data_is_skipped() -> None:
    raw = make_tar([("a", b"1" * 3000), ("b", b"2" * 10)])
    names = [e.name for e, _ in tarstream.iter_entries(io.BytesIO(raw), "t")]
    assert names == ["a", "b", "ln"]


def test_truncated_archive_named() -> None:
    raw = make_tar([("a", b"1" * 3000)])[:1500]
    with pytest.raises(FormatError, match=r"t: a: archive ends inside entry data|truncated"):
        for _, reader in tarstream.iter_entries(io.BytesIO(raw), "t"):
            reader.read()


def test_not_a_tar_named() -> None:
    with pytest.raises(FormatError, match="not a tar archive"):
        list(tarstream.iter_entries(io.BytesIO(b"PK\x03\x04" + b"z" * 600), "x.zip"))


def test_written_stream_is_a_valid_tar() -> None:
    big = 9 * 1024**3  # beyond ustar's 8 GiB size field: needs PAX
    blob = tarstream.header("l/layer.tar", big)
    info = tarfile.TarInfo.frombuf(blob[-512:], "utf-8", "strict")
    assert info.name == "l/layer.tar"
    first, _ = next(tarstream.iter_entries(io.BytesIO(blob), "w"))
    assert first.size == big
    body = tarstream.header("m.json", 2) + b"{}" + tarstream.padding(2) + tarstream.END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        fh = tar.extractfile("m.json")
        assert fh is not None and fh.read() == b"{}"
