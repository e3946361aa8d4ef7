"""Archives in data bundles: normal ones unpack exactly; escapes, links, devices, bombs and floods leave no trace."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import stat
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from trainyard import archives, config
from trainyard.archives import ARCHIVE_SUFFIXES, ArchiveError, ArchiveLimits, is_archive, safe_extract, unpack_archives
from trainyard.errors import ConfigError

MiB = 1 << 20
GiB = 1 << 30
LIMITS = ArchiveLimits(max_bytes=64 * MiB, max_members=100, max_ratio=200)


# -- helpers ------------------------------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, object]:
    """Everything under root (links not followed): path -> file bytes, link target or 'dir', plus the mode."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[rel] = ("dir", stat.S_IMODE(mode))
            else:
                found[rel] = (path.read_bytes(), stat.S_IMODE(mode))
    return found


def disk_usage(root: Path) -> int:
    return sum((Path(d) / f).lstat().st_blocks * 512 for d, _, files in os.walk(root) for f in files)


@pytest.fixture
def sentinel(tmp_path):
    """A parent directory holding dest (with one existing file); the archive under test is written next to dest."""
    parent = tmp_path / "sentinel"
    (parent / "dest").mkdir(parents=True)
    (parent / "dest" / "keep.txt").write_bytes(b"keep me\n")
    (parent / "neighbour.txt").write_bytes(b"outside dest\n")
    return parent


@pytest.fixture
def peak_bytes(monkeypatch):
    """Record how many bytes were on disk in each directory shutil.rmtree removes: the unpacker's temp dir at abort."""
    real, seen = shutil.rmtree, []

    def spy(path, *args, **kwargs):
        if Path(path).name.startswith(archives.TEMP_PREFIX) and Path(path).exists():
            seen.append(disk_usage(Path(path)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    return seen


def refused(archive: Path, parent: Path, limits: ArchiveLimits, member: str, reason: str) -> str:
    """safe_extract must raise one clear line naming archive and member, and leave parent exactly as it was."""
    before = tree(parent)
    with pytest.raises(ArchiveError) as caught:
        safe_extract(archive, parent / "dest", limits)
    message = str(caught.value)
    assert "\n" not in message
    assert str(archive) in message and repr(member) in message, message
    assert re.search(reason, message), message
    assert tree(parent) == before
    assert caught.value.exit_code == 2
    return message


def make_zip(path: Path, members: list[tuple[str, bytes, int]], compression=zipfile.ZIP_DEFLATED) -> Path:
    """members: (name, data, unix mode incl. type bits)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return path


def tar_info(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, linkname, len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tar(path: Path, members: list, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, data)
    return path


# -- normal archives ------------------------------------------------------------------------------------------------
def test_suffixes():
    assert ARCHIVE_SUFFIXES == (".zip", ".tar.gz", ".tgz", ".tar")
    assert all(is_archive(n) for n in ("a.zip", "b.tar.gz", "c.tgz", "d.tar", "E.ZIP", Path("x/f.Tar.Gz")))
    assert not any(is_archive(n) for n in ("a.gz", "b.csv", "zip", "c.tar.bz2", "d.npy"))


def test_zip_extracts_content_and_modes(sentinel):
    archive = make_zip(sentinel / "bundle.zip", [
        ("data/", b"", stat.S_IFDIR | 0o777),
        ("data/train.csv", b"x,y\n1,2\n", stat.S_IFREG | 0o600),
        ("bin/run.sh", b"#!/bin/sh\necho hi\n", stat.S_IFREG | 0o755),
        ("bin/suid", b"boom", stat.S_IFREG | 0o4755),
        ("windows.txt", b"no unix mode", 0),
    ])
    members = safe_extract(archive, sentinel / "dest", LIMITS)
    assert members == ["bin/run.sh", "bin/suid", "data/train.csv", "windows.txt"]
    files = tree(sentinel / "dest")
    assert files["data/train.csv"] == (b"x,y\n1,2\n", 0o644)
    assert files["bin/run.sh"] == (b"#!/bin/sh\necho hi\n", 0o755)
    assert files["bin/suid"] == (b"boom", 0o755)  # executable kept, setuid dropped
    assert files["windows.txt"] == (b"no unix mode", 0o644)
    assert files["data"] == files["bin"] == ("dir", 0o755)
    assert files["keep.txt"][0] == b"keep me\n"
    assert not any(name.startswith(archives.TEMP_PREFIX) for name in files)


def test_tar_gz_extracts_content_and_modes(sentinel):
    payload = os.urandom(3 * MiB + 17)  # more than one copy chunk
    archive = make_tar(sentinel / "bundle.tar.gz", [
        tar_info("./", kind=tarfile.DIRTYPE, mode=0o777),
        tar_info("./model", kind=tarfile.DIRTYPE, mode=0o700),
        tar_info("./model/weights.bin", payload, mode=0o600),
        tar_info("./model/train.py", b"print('hi')\n", mode=0o6775),
        tar_info("notes//readme.md", b"# notes\n"),
    ])
    members = safe_extract(archive, sentinel / "dest", LIMITS)
    assert members == ["model/train.py", "model/weights.bin", "notes/readme.md"]
    files = tree(sentinel / "dest")
    assert files["model/weights.bin"] == (payload, 0o644)
    assert files["model/train.py"] == (b"print('hi')\n", 0o755)  # setuid and setgid dropped, exec kept
    assert files["notes/readme.md"] == (b"# notes\n", 0o644)
    assert files["model"] == ("dir", 0o755)


def test_streamed_zip64_with_data_descriptors_and_utf8_names(tmp_path):
    class Unseekable(io.RawIOBase):  # zipfile then writes sizes after the data (flag bit 3), like zip writing to a pipe
        def writable(self):
            return True

        def write(self, data):
            return buffer.write(data)

    buffer, payload = io.BytesIO(), os.urandom(300_000) + bytes(1000)
    with zipfile.ZipFile(Unseekable(), "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("dd.bin", "w", force_zip64=True) as out:
            out.write(payload)
        zf.writestr("ütf8/名前.txt", "hi")
    archive = tmp_path / "streamed.zip"
    archive.write_bytes(buffer.getvalue())
    assert zipfile.ZipFile(archive).getinfo("dd.bin").flag_bits & 0x8
    assert safe_extract(archive, tmp_path / "out", LIMITS) == ["dd.bin", "ütf8/名前.txt"]
    assert (tmp_path / "out" / "dd.bin").read_bytes() == payload
    assert (tmp_path / "out" / "ütf8" / "名前.txt").read_text() == "hi"


def test_plain_tar_and_tgz_and_missing_dest(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [tar_info("a.txt", b"A")], mode="w")
    assert safe_extract(archive, tmp_path / "new" / "dir", LIMITS) == ["a.txt"]
    assert (tmp_path / "new" / "dir" / "a.txt").read_bytes() == b"A"
    tgz = make_tar(tmp_path / "b.tgz", [tar_info("b.txt", b"B")])
    assert safe_extract(tgz, tmp_path / "new" / "dir", LIMITS) == ["b.txt"]


def test_failed_unpack_into_a_missing_dest_removes_what_it_created(tmp_path):
    archive = make_tar(tmp_path / "bad.tar", [tar_info("../evil", b"x")], mode="w")
    with pytest.raises(ArchiveError):
        safe_extract(archive, tmp_path / "new" / "dir", LIMITS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


# -- escapes ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "ok/../../evil", "..\\evil", "a/b/../../../evil"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_path_traversal_is_refused(sentinel, name, kind):
    archive = sentinel / f"evil.{kind}"
    if kind == "zip":
        make_zip(archive, [("fine.txt", b"fine", stat.S_IFREG | 0o644), (name, b"evil", stat.S_IFREG | 0o644)])
        assert zipfile.ZipFile(archive).namelist()[1] == name
    else:
        make_tar(archive, [tar_info("fine.txt", b"fine"), tar_info(name, b"evil")])
    refused(archive, sentinel, LIMITS, name, r"'\.\.'.*outside the destination.*relative paths")


@pytest.mark.parametrize("name", ["/etc/evil", "\\evil", "C:\\evil", "c:/evil", "C:evil"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_absolute_paths_are_refused(sentinel, name, kind):
    archive = sentinel / f"abs.{kind}"
    if kind == "zip":
        make_zip(archive, [(name, b"evil", stat.S_IFREG | 0o644)])
        assert zipfile.ZipFile(archive).namelist() == [name]
    else:
        make_tar(archive, [tar_info(name, b"evil")], mode="w")
    refused(archive, sentinel, LIMITS, name, "absolute path.*relative to its root")


def test_empty_member_name_is_refused(sentinel):
    archive = make_tar(sentinel / "dot.tar", [tar_info(".", b"what file is this")], mode="w")
    refused(archive, sentinel, LIMITS, ".", "empty file name")


# -- links and special files -----------------------------------------------------------------------------------------
def test_symlink_in_tar_is_refused(sentinel):
    archive = make_tar(sentinel / "link.tar.gz", [
        tar_info("a.txt", b"A"),
        tar_info("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        tar_info("link/evil", b"through the link"),
    ])
    refused(archive, sentinel, LIMITS, "link", "symbolic link to '/etc/passwd'.*replace it with the file")


def test_symlink_in_zip_is_refused(sentinel):
    archive = make_zip(sentinel / "link.zip", [("a.txt", b"A", stat.S_IFREG | 0o644),
                                               ("link", b"/etc/passwd", stat.S_IFLNK | 0o777)])
    refused(archive, sentinel, LIMITS, "link", "symbolic link")


def test_hardlink_in_tar_is_refused(sentinel):
    archive = make_tar(sentinel / "hard.tar", [tar_info("a.txt", b"A"),
                                               tar_info("passwd", kind=tarfile.LNKTYPE, linkname="/etc/passwd")],
                       mode="w")
    refused(archive, sentinel, LIMITS, "passwd", "hard link to '/etc/passwd'")


@pytest.mark.parametrize(("kind", "word"), [(tarfile.FIFOTYPE, "FIFO"), (tarfile.CHRTYPE, "character device"),
                                            (tarfile.BLKTYPE, "block device")])
def test_devices_and_fifos_in_tar_are_refused(sentinel, kind, word):
    archive = make_tar(sentinel / "dev.tar.gz", [tar_info("a.txt", b"A"), tar_info("dev/thing", kind=kind)])
    refused(archive, sentinel, LIMITS, "dev/thing", f"is a {word}.*never unpacked")


def test_fifo_in_zip_is_refused(sentinel):
    archive = make_zip(sentinel / "fifo.zip", [("pipe", b"", stat.S_IFIFO | 0o644)])
    refused(archive, sentinel, LIMITS, "pipe", "is a FIFO")


# -- collisions ------------------------------------------------------------------------------------------------------
def test_overwriting_an_existing_file_is_refused(sentinel):
    archive = make_zip(sentinel / "over.zip", [("new.txt", b"new", stat.S_IFREG | 0o644),
                                               ("keep.txt", b"overwritten!", stat.S_IFREG | 0o644)])
    refused(archive, sentinel, LIMITS, "keep.txt", "would overwrite the existing keep.txt")
    assert (sentinel / "dest" / "keep.txt").read_bytes() == b"keep me\n"


def test_file_where_dest_has_a_file_on_the_path_is_refused(sentinel):
    archive = make_tar(sentinel / "under.tar", [tar_info("keep.txt/inner", b"x")], mode="w")
    refused(archive, sentinel, LIMITS, "keep.txt/inner", "needs keep.txt to be a directory")


def test_writing_through_a_symlinked_directory_in_dest_is_refused(sentinel):
    outside = sentinel / "outside"
    outside.mkdir()
    (sentinel / "dest" / "out").symlink_to(outside)
    archive = make_tar(sentinel / "via.tar", [tar_info("out/evil", b"x")], mode="w")
    refused(archive, sentinel, LIMITS, "out/evil", "through the symbolic link out")


@pytest.mark.parametrize("members", [[("a", b"file"), ("a/b", b"under a file")],
                                     [("a/b", b"x"), ("a", b"file over a directory")],
                                     [("twice.txt", b"1"), ("twice.txt", b"2")]])
def test_members_colliding_with_each_other_are_refused(sentinel, members):
    archive = make_tar(sentinel / "clash.tar.gz", [tar_info(n, d) for n, d in members])
    refused(archive, sentinel, LIMITS, members[1][0], "collides with member")
    zipped = sentinel / "clash.zip"
    with pytest.warns(UserWarning) if members[0][0] == members[1][0] else contextlib.nullcontext():
        make_zip(zipped, [(n, d, stat.S_IFREG | 0o644) for n, d in members])
    refused(zipped, sentinel, LIMITS, members[1][0], "collides with member")


# -- floods and bombs ------------------------------------------------------------------------------------------------
def test_too_many_members_are_refused(sentinel):
    limits = ArchiveLimits(max_bytes=MiB, max_members=5, max_ratio=200)
    zipped = make_zip(sentinel / "many.zip", [(f"f{i}", b"x", stat.S_IFREG | 0o644) for i in range(6)])
    refused(zipped, sentinel, limits, "f5", "past max_archive_members \\(5 members.*raise \\[trainyard\\]")
    tarred = make_tar(sentinel / "many.tar.gz", [tar_info(f"f{i}", b"x") for i in range(6)])
    refused(tarred, sentinel, limits, "f5", "past max_archive_members")
    assert safe_extract(make_zip(sentinel / "five.zip", [(f"g{i}", b"x", 0) for i in range(5)]),
                        sentinel / "dest", limits) == [f"g{i}" for i in range(5)]


def test_declared_size_above_max_bytes_is_refused_before_unpacking(sentinel):
    limits = ArchiveLimits(max_bytes=1000, max_members=100, max_ratio=1e9)
    archive = make_zip(sentinel / "big.zip", [("a", os.urandom(600), 0), ("b", os.urandom(600), 0)],
                       compression=zipfile.ZIP_STORED)
    refused(archive, sentinel, limits, "b", "declared size to 1,200 bytes, past max_unpacked_size \\(1,000 bytes")
    tarred = make_tar(sentinel / "big.tar", [tar_info("a", os.urandom(600)), tar_info("b", os.urandom(600))],
                      mode="w")
    refused(tarred, sentinel, limits, "b", "past max_unpacked_size")


def test_zip_bomb_is_stopped_by_the_ratio_cap_after_a_few_megabytes(sentinel, peak_bytes):
    archive = sentinel / "bomb.zip"
    zeros = bytes(8 * MiB)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as out:
        for _ in range(GiB // len(zeros)):
            out.write(zeros)
    assert zipfile.ZipFile(archive).getinfo("zeros.bin").file_size == GiB
    assert archive.stat().st_size < 2 * MiB
    limits = ArchiveLimits(max_bytes=8 * GiB, max_members=100, max_ratio=200)
    start = time.monotonic()
    message = refused(archive, sentinel, limits, "zeros.bin", "beyond max_compression_ratio 200:1.*zip bomb")
    elapsed = time.monotonic() - start
    assert elapsed < 2, f"took {elapsed:.2f}s: the bomb was not stopped early"
    assert peak_bytes and max(peak_bytes) <= 4 * MiB, peak_bytes  # bytes on disk when it was aborted
    produced = int(re.search(r"\(([\d,]+) bytes from [\d,]+ compressed bytes\)", message).group(1).replace(",", ""))
    assert produced <= 4 * MiB
    assert disk_usage(sentinel / "dest") < 64 * 1024


def test_tar_gz_bomb_is_stopped_by_the_stream_ratio(sentinel, peak_bytes):
    archive = make_tar(sentinel / "bomb.tar.gz", [tar_info("zeros.bin", bytes(256 * MiB))])
    limits = ArchiveLimits(max_bytes=8 * GiB, max_members=100, max_ratio=200)
    refused(archive, sentinel, limits, "zeros.bin",
            r"beyond max_compression_ratio 200:1 \(.* bytes streamed from a [\d,]+-byte archive\)")
    # For tar the ratio is the whole stream's against the archive's size, so at most max_ratio times that is written.
    assert max(peak_bytes) <= 200 * archive.stat().st_size + 2 * MiB < 256 * MiB


def test_tar_header_bomb_is_stopped_before_it_fills_memory(sentinel):
    # A 20 MiB GNU long name: tarfile would read it into memory whole before yielding the member.
    archive = make_tar(sentinel / "longname.tar", [tar_info("ok.txt", b"ok"), tar_info("n" * (20 * MiB), b"x")],
                       mode="w")
    refused(archive, sentinel, LIMITS, "ok.txt", "bytes of tar headers")


def _lie_about_size(archive: Path, declared: int) -> None:
    """Rewrite the uncompressed size of a one-member zip in its local header and its central directory entry."""
    data = bytearray(archive.read_bytes())
    struct.pack_into("<L", data, 22, declared)  # local file header at offset 0: uncompressed size
    struct.pack_into("<L", data, data.rindex(b"PK\x01\x02") + 24, declared)  # central directory entry
    archive.write_bytes(bytes(data))


def test_zip_lying_about_its_size_still_stops_at_max_bytes(sentinel, peak_bytes):
    limits = ArchiveLimits(max_bytes=256 * 1024, max_members=100, max_ratio=200)
    archive = make_zip(sentinel / "liar.zip", [("small.txt", random.Random(1).randbytes(4 * MiB), 0)])
    _lie_about_size(archive, 1000)
    assert zipfile.ZipFile(archive).getinfo("small.txt").file_size == 1000
    refused(archive, sentinel, limits, "small.txt", "unpacks past max_unpacked_size \\(262,144 bytes\\) although")
    assert max(peak_bytes) <= limits.max_bytes


def test_zip_lying_about_its_size_within_the_caps_is_corrupt(sentinel):
    archive = make_zip(sentinel / "liar.zip", [("small.txt", b"x" * 5000, 0)])
    _lie_about_size(archive, 1000)
    refused(archive, sentinel, LIMITS, "small.txt", "cannot be read .*holds 5,000 bytes but its header declares 1,000")


def test_small_compressible_members_are_not_bombs(sentinel):
    # 512 KiB of blank lines compresses far beyond 200:1 but stays under RATIO_GRACE_BYTES.
    archive = make_zip(sentinel / "blank.zip", [("blank.txt", b"\n" * (512 * 1024), stat.S_IFREG | 0o644)])
    assert safe_extract(archive, sentinel / "dest", LIMITS) == ["blank.txt"]


# -- damaged and unsupported archives --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz", "broken.tar"])
def test_corrupt_archives_name_the_archive(sentinel, name):
    archive = sentinel / name
    archive.write_bytes(b"\x1f\x8b this is not an archive" if name.endswith("gz") else b"junk" * 300)
    before = tree(sentinel)
    with pytest.raises(ArchiveError, match=f"archive {re.escape(str(archive))}: .*cannot be read.*valid"):
        safe_extract(archive, sentinel / "dest", LIMITS)
    assert tree(sentinel) == before


def test_truncated_tar_gz_leaves_nothing(sentinel):
    archive = make_tar(sentinel / "cut.tar.gz", [tar_info("a.txt", b"A" * 1000),
                                                 tar_info("b.bin", os.urandom(200_000))])
    archive.write_bytes(archive.read_bytes()[:-5000])
    refused(archive, sentinel, LIMITS, "b.bin", "cannot be read")


def test_encrypted_and_bzip2_zip_members_are_refused(sentinel):
    archive = make_zip(sentinel / "bz.zip", [("a.txt", b"A" * 100, 0)], compression=zipfile.ZIP_BZIP2)
    refused(archive, sentinel, LIMITS, "a.txt", "compression method 12.*deflate")
    locked = make_zip(sentinel / "locked.zip", [("a.txt", b"A", 0)])
    data = bytearray(locked.read_bytes())
    info = zipfile.ZipFile(locked).getinfo("a.txt")
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, info.flag_bits | 1)
    locked.write_bytes(bytes(data))
    refused(locked, sentinel, LIMITS, "a.txt", "encrypted")


# -- unpack_archives -------------------------------------------------------------------------------------------------
def test_unpack_archives_on_a_nested_layout(tmp_path):
    root = tmp_path / "data"
    (root / "timeseries").mkdir(parents=True)
    (root / "images" / "2024").mkdir(parents=True)
    (root / "labels.csv").write_text("id,label\n")
    npy = os.urandom(1_234_567)
    inner = make_zip(tmp_path / "inner.zip", [("deep.txt", b"stays packed", 0)]).read_bytes()
    make_zip(root / "timeseries" / "training_dataset.zip", [("training_dataset.npy", npy, stat.S_IFREG | 0o644)])
    make_tar(root / "images" / "2024" / "batch.tar.gz", [tar_info("imgs/a.png", b"A"), tar_info("imgs/b.png", b"BB"),
                                                         tar_info("imgs/more.zip", inner)])
    make_tar(root / "top.tgz", [tar_info("top.txt", b"top")])
    lines = []
    results = unpack_archives(root, LIMITS, log=lines.append)
    assert results == [
        {"archive": "images/2024/batch.tar.gz", "bytes": 3 + len(inner),
         "members": ["images/2024/imgs/a.png", "images/2024/imgs/b.png", "images/2024/imgs/more.zip"]},
        {"archive": "timeseries/training_dataset.zip", "bytes": 1_234_567,
         "members": ["timeseries/training_dataset.npy"]},
        {"archive": "top.tgz", "bytes": 3, "members": ["top.txt"]},
    ]
    assert lines[1] == "unpacked timeseries/training_dataset.zip: 1 file(s), 1,234,567 bytes"
    assert lines[0].startswith("unpacked images/2024/batch.tar.gz: 3 file(s), ")
    assert (root / "timeseries" / "training_dataset.npy").read_bytes() == npy
    assert (root / "images" / "2024" / "imgs" / "b.png").read_bytes() == b"BB"
    # An archive that came out of an archive is left packed.
    assert (root / "images" / "2024" / "imgs" / "more.zip").read_bytes() == inner
    assert not (root / "images" / "2024" / "imgs" / "deep.txt").exists()
    assert (root / "timeseries" / "training_dataset.zip").exists()  # archives are kept
    assert not any(p.name.startswith(archives.TEMP_PREFIX) for p in root.rglob("*"))


def test_unpack_archives_counts_every_archive_against_max_bytes(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    make_zip(root / "a" / "one.zip", [("one.bin", os.urandom(600), 0)])
    make_zip(root / "b" / "two.zip", [("two.bin", os.urandom(600), 0)])
    limits = ArchiveLimits(max_bytes=1000, max_members=10, max_ratio=200)
    with pytest.raises(ArchiveError, match="archive b/two.zip: member 'two.bin' .*max_unpacked_size "
                                           "\\(1,000 bytes, 600 of them used by earlier archives"):
        unpack_archives(root, limits, log=lambda line: None)
    assert (root / "a" / "one.bin").exists()  # each archive is all or nothing on its own
    assert sorted(p.name for p in (root / "b").iterdir()) == ["two.zip"]


def test_unpack_archives_with_nothing_to_do(tmp_path):
    (tmp_path / "plain.csv").write_text("a\n")
    assert unpack_archives(tmp_path, LIMITS, log=pytest.fail) == []


# -- settings --------------------------------------------------------------------------------------------------------
@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "airflow.cfg"
    path.write_text("[trainyard]\nmax_archive_members = 5000\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(path))
    for name in ("MAX_UNPACKED_SIZE", "MAX_ARCHIVE_MEMBERS", "MAX_COMPRESSION_RATIO"):
        monkeypatch.delenv(f"TRAINYARD_{name}", raising=False)
        monkeypatch.delenv(f"AIRFLOW__TRAINYARD__{name}", raising=False)
    return path


def test_limits_from_settings(cfg, monkeypatch):
    assert ArchiveLimits.from_settings(config.load()) == ArchiveLimits(max_bytes=8 * GiB, max_members=5000,
                                                                       max_ratio=200.0)
    monkeypatch.setenv("TRAINYARD_MAX_UNPACKED_SIZE", "500M")
    monkeypatch.setenv("TRAINYARD_MAX_COMPRESSION_RATIO", "1000.5")
    limits = ArchiveLimits.from_settings(config.load())
    assert (limits.max_bytes, limits.max_ratio) == (500 * 10**6, 1000.5)


@pytest.mark.parametrize(("setting", "value"), [("max_unpacked_size", "8GB"), ("max_unpacked_size", "0"),
                                                ("max_archive_members", "lots"), ("max_archive_members", "0"),
                                                ("max_compression_ratio", "nan"), ("max_compression_ratio", "0.5")])
def test_bad_limit_settings_name_the_setting(cfg, setting, value):
    with pytest.raises(ConfigError, match=rf"\[trainyard\] {setting} = '{value}'"):
        ArchiveLimits.from_settings(config.load(**{setting: value}))
