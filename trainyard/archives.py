"""Unpack zip and tar archives from data bundles: nothing escapes dest, no links, devices or bombs; all or nothing."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from trainyard.errors import TrainyardError
from trainyard.resources import memory_bytes

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Members are unpacked into this hidden directory inside dest and moved into place only once the whole archive passed.
TEMP_PREFIX = ".trainyard-unpack-"
_CHUNK = 1 << 20
# Compressed input is fed to the inflater in small pieces, so the bytes it has really consumed stay close to exact.
_IN_CHUNK = 16 << 10
# A few KB of blank lines can legitimately compress 1000:1 and cannot hurt anyone; like Apache POI's zip-bomb guard,
# the ratio cap only applies once a member (zip) or the stream (tar) has produced more than this.
RATIO_GRACE_BYTES = 1 << 20
# tarfile reads pax headers and GNU long names into memory whole; bytes read outside member data are capped at this
# plus a little per member, so a header bomb cannot exhaust memory before any member is seen.
_TAR_META_SLACK = 16 << 20
_TAR_META_PER_MEMBER = 2048
# Zip members are inflated here rather than by zipfile, which trusts the header's size and reads ahead; bzip2 and
# lzma members would need their own bounded decoders, and data bundles hardly ever use them.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra-field lengths at offset 26
_DRIVE = re.compile(r"^[A-Za-z]:")
_DEVICES = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO",
            stat.S_IFSOCK: "socket"}
# What the zip, tar and decompression modules raise on damaged input (OSError covers gzip.BadGzipFile).
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
                struct.error, NotImplementedError, ValueError, OSError)


class ArchiveError(TrainyardError):
    """An archive in a data bundle is unsafe, corrupt or above the unpacking limits."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what unpacking may produce: total bytes, members per archive, and expansion ratio."""

    max_bytes: int
    max_members: int
    max_ratio: float

    @classmethod
    def from_settings(cls, settings) -> ArchiveLimits:
        """From [trainyard] max_unpacked_size, max_archive_members and max_compression_ratio (validated there)."""
        return cls(max_bytes=memory_bytes(settings.max_unpacked_size), max_members=settings.max_archive_members,
                   max_ratio=settings.max_compression_ratio)


def is_archive(path: str | os.PathLike) -> bool:
    """True when the file name ends in one of ARCHIVE_SUFFIXES (any case)."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits) -> list[str]:
    """Unpack a zip or tar(.gz) archive into dest, all or nothing; return the unpacked files' relative paths, sorted."""
    members, _ = _extract(Path(archive), Path(dest), limits, label=str(archive), already=0)
    return members


def unpack_archives(root: Path, limits: ArchiveLimits, log: Callable[[str], object] = print) -> list[dict]:
    """Unpack every archive under root next to itself; archives that come out of archives are left packed."""
    root = Path(root)
    # Collected before anything is unpacked, so this call never descends into what it unpacked itself.
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(TEMP_PREFIX))
        found += [Path(dirpath) / name for name in sorted(filenames) if is_archive(name)]
    results, total = [], 0
    for path in sorted(found, key=lambda p: p.relative_to(root).parts):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        members, size = _extract(path, path.parent, limits, label=rel, already=total)
        total += size
        prefix = path.parent.relative_to(root).as_posix()
        members = [m if prefix == "." else f"{prefix}/{m}" for m in members]
        log(f"unpacked {rel}: {len(members)} file(s), {size:,} bytes")
        results.append({"archive": rel, "members": members, "bytes": size})
    return results


def _extract(archive: Path, dest: Path, limits: ArchiveLimits, *, label: str, already: int) -> tuple[list[str], int]:
    name = archive.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise ArchiveError(f"archive {label}: unsupported type; trainyard unpacks {', '.join(ARCHIVE_SUFFIXES)} only")
    if not archive.is_file():
        raise ArchiveError(f"archive {label}: not found or not a regular file")
    created = None
    try:
        created = _make_dir(dest)
        dest = dest.resolve()
        temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest))
    except OSError as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise ArchiveError(f"archive {label}: cannot unpack into {dest} ({exc.strerror or exc}); make it a writable "
                           "directory") from None
    job = _Unpacker(label, dest, temp, limits, already, archive.stat().st_size)
    try:
        try:
            if name.endswith(".zip"):
                _unpack_zip(archive, job)
            else:
                _unpack_tar(archive, job)
        except ArchiveError:
            raise
        except _READ_ERRORS as exc:
            where = f"member {job.current!r}" if job.current is not None else "it"
            kind = "zip" if name.endswith(".zip") else "tar"
            reason = " ".join(str(exc).split())  # one line, whatever the library put in its message
            raise ArchiveError(
                f"archive {label}: {where} cannot be read ({type(exc).__name__}: {reason}); check that it is a "
                f"complete, valid {kind} archive or remove it from the bundle"
            ) from None
        try:
            members = job.commit()
        except OSError as exc:
            raise ArchiveError(f"archive {label}: cannot move the unpacked files into {dest} ({exc.strerror or exc}); "
                               "check that it is writable and has free space") from None
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return members, job.total


def _make_dir(dest: Path) -> Path | None:
    """Create dest if needed; return the top-most directory created, so a failed unpack can remove it again."""
    if dest.exists() and not dest.is_dir():
        raise ArchiveError(f"cannot unpack into {dest}: it is not a directory")
    missing = None
    for path in [dest, *dest.parents]:
        if path.exists() or path.is_symlink():
            break
        missing = path
    dest.mkdir(parents=True, exist_ok=True)
    return missing


class _Unpacker:
    """State of one archive's unpacking: claimed paths, counts and the caps, checked as bytes stream."""

    def __init__(self, label: str, dest: Path, temp: Path, limits: ArchiveLimits, already: int, archive_size: int):
        self.label, self.dest, self.temp, self.limits = label, dest, temp, limits
        self.already, self.archive_size = already, archive_size
        self.kinds: dict[tuple[str, ...], tuple[str, str]] = {}  # path parts -> (file|dir, member that claimed it)
        self.files: list[tuple[str, ...]] = []
        self.count = 0
        self.total = 0
        self.current: str | None = None

    def fail(self, name: str, problem: str) -> ArchiveError:
        return ArchiveError(f"archive {self.label}: member {name!r} {problem}")

    # -- checks before any byte is written ------------------------------------------------------------------------
    def begin(self, name: str) -> None:
        self.current = name
        self.count += 1
        if self.count > self.limits.max_members:
            raise self.fail(name, f"is past max_archive_members ({self.limits.max_members:,} members); split the "
                                  "archive or raise [trainyard] max_archive_members")

    def parts(self, name: str, *, is_dir: bool) -> tuple[str, ...]:
        text = name.replace("\\", "/")  # archives made on Windows use backslashes as separators
        if "\0" in text:
            raise self.fail(name, "has a NUL byte in its name; repack the archive with plain file names")
        if text.startswith("/") or _DRIVE.match(text):
            raise self.fail(name, "has an absolute path; repack the archive with paths relative to its root")
        parts = tuple(p for p in text.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self.fail(name, "contains '..' and would land outside the destination; repack the archive with "
                                  "plain relative paths")
        if not parts and not is_dir:
            raise self.fail(name, "has an empty file name; repack the archive without it")
        return parts

    def claim(self, name: str, parts: tuple[str, ...], kind: str) -> None:
        """Refuse a path that collides with another member or with what already exists in dest."""
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            mine = kind if i == len(parts) else "dir"
            other = self.kinds.get(sub)
            if other is not None and (other[0] == "file" or mine == "file"):
                raise self.fail(name, f"collides with member {other[1]!r} of the same archive (a path cannot be a "
                                      "file twice, or a file and a directory); repack with distinct paths")
            if other is not None:
                continue  # this directory was checked against dest when first claimed
            rel = "/".join(sub)
            target = self.dest.joinpath(*sub)
            if mine == "file" and os.path.lexists(target):
                raise self.fail(name, f"would overwrite the existing {rel} in {self.dest}; remove or rename one of "
                                      "them")
            if target.is_symlink():
                raise self.fail(name, f"would be written through the symbolic link {rel} in {self.dest}; replace "
                                      "the link with a real directory or remove it")
            if mine == "dir" and target.exists() and not target.is_dir():
                raise self.fail(name, f"needs {rel} to be a directory but {self.dest} has a file there; remove or "
                                      "rename one of them")
            self.kinds[sub] = (mine, name)
        if kind == "file":
            self.files.append(parts)

    def declared(self, name: str, size: int) -> None:
        """Refuse before streaming when the sizes the archive declares already exceed the cap."""
        if self.already + self.total + size > self.limits.max_bytes:
            raise self.fail(name, f"brings the archive's declared size to {self.total + size:,} bytes, past "
                                  f"max_unpacked_size ({self.limits.max_bytes:,} bytes{self._earlier()}); split the "
                                  "data or raise [trainyard] max_unpacked_size")

    def _earlier(self) -> str:
        return f", {self.already:,} of them used by earlier archives in this bundle" if self.already else ""

    # -- streaming -----------------------------------------------------------------------------------------------
    def write(self, name: str, parts: tuple[str, ...], chunks: Iterator[tuple[bytes, int | None]], *,
              executable: bool) -> None:
        """Copy one member chunk by chunk, counting the real bytes; abort as soon as a cap is crossed.

        chunks yields (data, compressed bytes consumed so far), or (data, None) where the stream checks the ratio.
        """
        path = self.temp.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise self.fail(name, "collides with another member of the same archive; repack with distinct "
                                  "paths") from None
        except OSError as exc:
            raise self.fail(name, f"cannot be written ({exc.strerror or exc}); check the name and free space in "
                                  f"{self.dest}") from None
        with os.fdopen(fd, "wb") as out:
            written = 0
            for chunk, compressed in chunks:
                written += len(chunk)
                self.total += len(chunk)
                if self.already + self.total > self.limits.max_bytes:
                    raise self.fail(name, f"unpacks past max_unpacked_size ({self.limits.max_bytes:,} bytes"
                                          f"{self._earlier()}) although the archive declared less; split the data or "
                                          "raise [trainyard] max_unpacked_size")
                if compressed is not None:
                    self.ratio(name, written, compressed)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise self.fail(name, f"cannot be written ({exc.strerror or exc}); free space in "
                                          f"{self.dest}") from None
            # Never setuid/setgid/sticky; only the executable bit survives from the archive.
            os.fchmod(out.fileno(), 0o755 if executable else 0o644)

    def ratio(self, name: str, produced: int, compressed: int, *, stream: bool = False) -> None:
        if produced > RATIO_GRACE_BYTES and produced > self.limits.max_ratio * max(compressed, 1):
            detail = (f"{produced:,} bytes streamed from a {compressed:,}-byte archive" if stream
                      else f"{produced:,} bytes from {compressed:,} compressed bytes")
            raise self.fail(name, f"expands beyond max_compression_ratio {self.limits.max_ratio:g}:1 ({detail}) and "
                                  "looks like a zip bomb; if the data is genuine raise [trainyard] "
                                  "max_compression_ratio")

    # -- all checks passed: move into place -----------------------------------------------------------------------
    def commit(self) -> list[str]:
        made: list[Path] = []
        placed: list[Path] = []
        try:
            # Sorted tuples put every directory before its children.
            for parts in sorted(p for p, (kind, _) in self.kinds.items() if kind == "dir"):
                target = self.dest.joinpath(*parts)
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    raise self.fail(self.kinds[parts][1], f"needs {'/'.join(parts)} to be a directory but "
                                                          f"{self.dest} changed while unpacking; unpack again")
                if not target.exists():
                    target.mkdir()
                    target.chmod(0o755)
                    made.append(target)
            for parts in self.files:
                target = self.dest.joinpath(*parts)
                self._place(self.kinds[parts][1], self.temp.joinpath(*parts), target)
                placed.append(target)
        except BaseException:
            for path in placed:
                path.unlink(missing_ok=True)
            for path in reversed(made):
                try:
                    path.rmdir()
                except OSError:
                    pass
            raise
        return sorted("/".join(parts) for parts in self.files)

    def _place(self, name: str, src: Path, target: Path) -> None:
        # A hard link never replaces an existing file, unlike rename; fall back to rename where links are unsupported.
        try:
            os.link(src, target, follow_symlinks=False)
            return
        except FileExistsError:
            pass
        except OSError:
            if not os.path.lexists(target):
                os.rename(src, target)
                return
        raise self.fail(name, f"would overwrite {target}, which appeared while unpacking; remove it and unpack again")


def _unpack_zip(archive: Path, job: _Unpacker) -> None:
    with zipfile.ZipFile(archive) as zf, open(archive, "rb") as raw:
        infos = zf.infolist()
        if len(infos) > job.limits.max_members:
            name = infos[job.limits.max_members].filename
            raise job.fail(name, f"is past max_archive_members ({job.limits.max_members:,} members; the archive has "
                                 f"{len(infos):,}); split the archive or raise [trainyard] max_archive_members")
        declared = 0
        plan = []
        for info in infos:
            # Everything that needs no decompression is checked first, so a bad member refuses the archive at once.
            mode = info.external_attr >> 16
            job.begin(info.filename)
            if stat.S_ISLNK(mode):
                raise job.fail(info.filename, "is a symbolic link; links are not unpacked, so replace it with the "
                                              "file it points to and repack")
            if stat.S_IFMT(mode) in _DEVICES:
                raise job.fail(info.filename, f"is a {_DEVICES[stat.S_IFMT(mode)]}; device files, FIFOs and sockets "
                                              "are never unpacked, so repack the archive without it")
            if info.flag_bits & 0x1:
                raise job.fail(info.filename, "is encrypted; trainyard cannot unpack encrypted archives, so repack "
                                              "it without a password")
            is_dir = info.is_dir() or stat.S_ISDIR(mode)
            if not is_dir and info.compress_type not in _ZIP_METHODS:
                raise job.fail(info.filename, f"uses zip compression method {info.compress_type}; repack the archive "
                                              "with deflate (the default of zip tools) or no compression")
            parts = job.parts(info.filename, is_dir=is_dir)
            if not parts:
                continue
            job.claim(info.filename, parts, "dir" if is_dir else "file")
            if not is_dir:
                job.declared(info.filename, declared + info.file_size)
                declared += info.file_size
                plan.append((info, parts, bool(mode & 0o111)))
        for info, parts, executable in plan:
            job.current = info.filename
            job.write(info.filename, parts, _zip_chunks(raw, info), executable=executable)


def _zip_chunks(raw: IO[bytes], info: zipfile.ZipInfo) -> Iterator[tuple[bytes, int]]:
    """Inflate one zip member: yield (data, compressed bytes consumed so far), then check its size and CRC.

    Done here rather than with ZipFile.open, which stops at the size the header declares and reads compressed data
    ahead: this way every byte the data really holds is counted, and the ratio uses what was really consumed.
    """
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[1:]
    local_name = raw.read(name_len).decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
    if local_name != info.orig_filename:
        raise zipfile.BadZipFile(f"the local header names it {local_name!r}")
    raw.seek(extra_len, os.SEEK_CUR)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
    left, pending, consumed, produced, crc = info.compress_size, b"", 0, 0, 0
    while True:
        if not pending and left > 0:
            pending = raw.read(min(_IN_CHUNK, left))
            if not pending:
                raise EOFError("the archive ends inside this member")
            left -= len(pending)
        if inflater is None:
            data, consumed, pending = pending, consumed + len(pending), b""
        else:
            fed = len(pending)
            data = inflater.decompress(pending, _CHUNK)
            pending = inflater.unconsumed_tail
            consumed += fed - len(pending)
        if data:
            produced += len(data)
            crc = zlib.crc32(data, crc)
            yield data, consumed
        if (inflater.eof if inflater is not None else not left):
            break
        if not data and not pending and not left:
            raise EOFError("the compressed data ends before its end marker")
    if produced != info.file_size:
        raise zipfile.BadZipFile(f"it holds {produced:,} bytes but its header declares {info.file_size:,}")
    if crc != info.CRC:
        raise zipfile.BadZipFile("bad CRC-32: the data does not match its header")


class _TarStream:
    """The decompressed tar stream, counted as tarfile reads it, so the caps hold for headers as well as data."""

    def __init__(self, raw: IO[bytes], job: _Unpacker):
        self.raw, self.job = raw, job
        self.total = 0
        self.meta = 0
        self.in_data = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(_CHUNK if size is None or size < 0 else min(size, _CHUNK))
        self.total += len(data)
        job = self.job
        name = job.current if job.current is not None else "(first header)"
        if not self.in_data:
            self.meta += len(data)
            if self.meta > _TAR_META_SLACK + _TAR_META_PER_MEMBER * job.count:
                raise job.fail(name, f"is followed by {self.meta:,} bytes of tar headers (pax headers or long "
                                     "names); that is not a normal tar archive, so re-create it")
        job.ratio(name, self.total, job.archive_size, stream=True)
        return data


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """Decompress by magic number, not by file name: a .tar may really be gzip, bzip2 or xz."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _tar_chunks(src: IO[bytes]) -> Iterator[tuple[bytes, None]]:
    # No per-member ratio for tar: the whole stream's ratio is checked by _TarStream as tarfile reads it.
    while chunk := src.read(_CHUNK):
        yield chunk, None


def _unpack_tar(archive: Path, job: _Unpacker) -> None:
    with open(archive, "rb") as raw, _decompressed(raw) as data:
        stream = _TarStream(data, job)
        # Stream mode ("r|"): one forward pass, every member checked and copied as it arrives.
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for member in tf:
                name = member.name
                job.begin(name)
                if member.issym():
                    raise job.fail(name, f"is a symbolic link to {member.linkname!r}; links are not unpacked, so "
                                         "replace it with the file it points to and repack")
                if member.islnk():
                    raise job.fail(name, f"is a hard link to {member.linkname!r}; links are not unpacked, so "
                                         "replace it with a copy of the file and repack")
                if member.ischr() or member.isblk() or member.isfifo():
                    kind = "character device" if member.ischr() else "block device" if member.isblk() else "FIFO"
                    raise job.fail(name, f"is a {kind}; device files and FIFOs are never unpacked, so repack the "
                                         "archive without it")
                if not (member.isreg() or member.isdir()):
                    raise job.fail(name, f"has unsupported tar member type {member.type!r}; repack the archive "
                                         "with regular files and directories only")
                parts = job.parts(name, is_dir=member.isdir())
                if not parts:
                    continue
                job.claim(name, parts, "dir" if member.isdir() else "file")
                if member.isdir():
                    continue
                job.declared(name, member.size)
                stream.in_data = True
                try:
                    job.write(name, parts, _tar_chunks(tf.extractfile(member)), executable=bool(member.mode & 0o111))
                finally:
                    stream.in_data = False
