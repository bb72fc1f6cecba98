"""Tar archives read front to back as a stream of members, each readable up to wherever the archive ends.

`tarfile`'s stream mode reads a member in whole blocks and raises on a short
one, so a member cut in the middle lost every document in its last read (or
all of them, in a small member). Here each member is a bounded stream over
one `SalvagingReader`: a cut member hands its readers every byte it has and
then raises `MemberCut` with how many of its bytes arrived, which the member's
own reader turns into the one record for the cut.

Headers are parsed by `tarfile.TarInfo.frombuf`; pax (``x``) and GNU long-name
(``L``) headers supply the next member's name and size, as in the PubTator3
archives written by GNU tar and Python alike.
"""
from __future__ import annotations

import io
import re
import tarfile
from typing import Iterator

from .document import DocumentError
from .streams import MemberCut, SalvagingReader, stream_error

_BLOCK = 512
# members that are not data: licences, read-mes, checksums, signatures (skipped and counted, never read)
_NOT_DATA = re.compile(r"^(licen[cs]e|readme|copying|notice|authors|changes|changelog|manifest|md5sums?|sha\d*sums?"
                       r"|checksums?)([._-].*)?$|\.(md5|sha1|sha256|sha512|asc|sig|md|rst|html?|pdf)$", re.I)


def is_data_member(name: str) -> bool:
    """Whether a member may hold documents: not hidden, not a licence, read-me or checksum file."""
    base = name.rsplit("/", 1)[-1]
    return bool(base) and not base.startswith((".", "_")) and not _NOT_DATA.search(base)


class _MemberReader(io.RawIOBase):
    """At most `size` bytes of the archive stream; fewer (the archive was cut) raises MemberCut."""

    def __init__(self, archive: SalvagingReader, size: int):
        self.archive, self.size, self.got = archive, size, 0
        self.cut = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = min(len(b), self.size - self.got)
        if want <= 0:
            return 0
        n = self.archive.readinto(memoryview(b)[:want])
        if n == 0:
            self.cut = True
            raise MemberCut(self.got, self.size, self.archive.error)
        self.got += n
        return n

    def drain(self) -> bool:
        """Skip what the member's reader left unread; True when the cut was found here, unseen by any reader."""
        buf = bytearray(1 << 16)
        while self.got < self.size and not self.cut:
            try:
                self.readinto(buf)
            except MemberCut:
                return True
        return False


def _read_exact(archive: SalvagingReader, n: int) -> bytes:
    out = bytearray()
    buf = bytearray(n)
    while len(out) < n:
        k = archive.readinto(memoryview(buf)[:n - len(out)])
        if k == 0:
            break
        out += buf[:k]
    return bytes(out)


def _pax_fields(data: bytes) -> dict[str, str]:
    """``"<length> key=value\\n"`` records of a pax header."""
    out, i = {}, 0
    while i < len(data):
        space = data.find(b" ", i)
        if space < 0:
            break
        try:
            length = int(data[i:space])
        except ValueError:
            break
        if length <= 0:
            break
        key, _, value = data[space + 1:i + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def iter_tar(archive: SalvagingReader, url: str) -> Iterator[tuple[str, int, _MemberReader]]:
    """(member name, size, data stream) of each regular file, in archive order.

    The caller reads each stream (or not) before asking for the next member.
    A cut inside a member ends the archive silently here: the member's stream
    has already raised MemberCut for it. A cut or corruption between members
    raises DocumentError for the archive (count 0: no document is known lost).
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    last = None
    while True:
        at = archive.pos
        header = _read_exact(archive, _BLOCK)
        if len(header) < _BLOCK:
            if not header and archive.error is None:
                if at == 0:
                    return  # an empty file holds no documents
                raise _archive_error(url, at, last, "truncated tar archive: the archive ends without its "
                                                    "end-of-archive marker (cut between members)")
            raise _archive_error(url, archive.pos, last, _cause(archive, "the archive ends inside a header"))
        if header == bytes(_BLOCK):
            return  # end-of-archive marker
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise _archive_error(url, at, last, f"corrupt or truncated tar archive: not a tar header ({e})") \
                from None
        size = int(pax.get("size", info.size))
        name = pax.get("path") or long_name or info.name
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                         tarfile.SOLARIS_XHDTYPE):
            data = _read_exact(archive, size)
            _read_exact(archive, -size % _BLOCK)
            if len(data) < size:
                raise _archive_error(url, archive.pos, last, _cause(archive, "the archive ends inside a header"))
            if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                pax = _pax_fields(data)
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue  # global pax headers and long link names say nothing about documents
        long_name, pax = None, {}
        member = _MemberReader(archive, size if info.type in tarfile.REGULAR_TYPES or size else 0)
        if info.type in tarfile.REGULAR_TYPES:
            yield name, size, member
        if member.drain():
            raise stream_error(f"{url}!{name}", MemberCut(member.got, size, archive.error), member.got)
        if member.cut:
            return  # the member's own reader has reported the cut
        if len(_read_exact(archive, -size % _BLOCK)) < -size % _BLOCK:
            raise _archive_error(url, archive.pos, name, _cause(archive, "the archive ends after the last member's "
                                                                         "data"))
        last = name


def _cause(archive: SalvagingReader, fallback: str) -> str:
    cut = archive.cut()
    return cut.problem if cut is not None else f"truncated tar archive: {fallback}"


def _archive_error(url: str, pos: int, last: str | None, problem: str) -> DocumentError:
    """A break between members: no document is known lost, unless nothing of the archive was readable."""
    after = f" (after member {last!r})" if last else ""
    err = DocumentError(url, f"byte {pos}{after}", problem, count=0 if last else 1)
    err.stream = True
    return err
