"""Bytes and lines with positions: opening any fsspec URL decompressed by its name, and errors that say
how far a broken stream was readable.

Every reader sits on these, so a truncated gzip or tar names the file, the line and the byte in one
`DocumentError`, whatever the format.
"""
from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zlib
from typing import IO, Iterator

import fsspec

from .document import DocumentError

# a broken byte stream: the file's fault, so quarantined in lenient mode. Other OSErrors (missing object,
# network, credentials) propagate: they are the environment's fault and a retry may cure them.
STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError, lzma.LZMAError)


class MemberCut(EOFError):
    """A tar member whose data ends before its stated size: the archive was cut inside it."""

    def __init__(self, got: int, size: int, cause: BaseException | None):
        self.got, self.size, self.cause = got, size, cause
        super().__init__("the archive ends inside this member")


class CountingReader(io.RawIOBase):
    """Counts the (decompressed) bytes read, so a stream error can say how far the file was readable."""

    def __init__(self, f: IO[bytes]):
        self.f, self.pos = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        # read1: at most one read underneath, so data decompressed before a truncation point is not thrown away
        data = self.f.read1(len(b)) if hasattr(self.f, "read1") else self.f.read(len(b))
        n = len(data)
        b[:n] = data
        self.pos += n
        return n


class SalvagingReader(CountingReader):
    """A byte stream that ends cleanly where the bytes underneath broke, and remembers where and why.

    Buffers and parsers above a raising stream throw away what they had read
    in the failing call (a read buffer, a tar block, lxml's chunk), so
    documents complete before a cut were lost. Turning the break into an
    end-of-file lets every reader use all the bytes before it; `cut` then
    gives the one record that says where the file really ends.
    """

    def __init__(self, f: IO[bytes], source: str):
        super().__init__(f)
        self.source = source
        self.lines = 0  # newlines delivered: the cut is on line lines + 1
        self.error: BaseException | None = None

    def readinto(self, b) -> int:
        if self.error is not None:
            return 0
        try:
            n = super().readinto(b)
        except STREAM_ERRORS as e:
            self.error = e
            return 0
        self.lines += bytes(b[:n]).count(b"\n") if n else 0
        return n

    def drain(self, limit: int) -> None:
        """Read on (at most `limit` bytes) to see whether the bytes underneath are broken further on.

        Corrupt deflate data often decompresses to garbage for a while before
        zlib notices; a parse error in that garbage is the corruption's doing.
        """
        buf, left = bytearray(1 << 16), limit
        while left > 0 and self.error is None:
            n = self.readinto(buf)
            if n == 0:
                return
            left -= n

    def cut(self) -> "DocumentError | None":
        """The record for the break (None while the stream is whole)."""
        if self.error is None:
            return None
        return stream_error(self.source, self.error, self.pos, self.lines + 1)


def stream_error(source: str, err: BaseException, pos: int | None = None, line: int | None = None) -> DocumentError:
    """One DocumentError for a broken byte stream: which file, how far it was readable, what broke."""
    if isinstance(err, DocumentError):
        return err
    size = f" of {err.size}" if isinstance(err, MemberCut) else ""
    where = ", ".join(x for x in (f"line {line}" if line and pos else "",
                                  f"byte {pos}{size}" if pos is not None else "") if x) or "file"
    cause = err.cause if isinstance(err, MemberCut) and err.cause is not None else err
    kind = next((k for t, k in ((EOFError, "truncated compressed file"), (zlib.error, "corrupt compressed data"),
                                (gzip.BadGzipFile, "not a valid gzip file"),
                                (lzma.LZMAError, "corrupt compressed data"))
                 if type(cause) is t), None)
    if isinstance(cause, gzip.BadGzipFile) and ("CRC" in str(cause) or "length" in str(cause)):
        kind = "corrupt compressed data"  # a whole gzip stream whose check sum says its bytes were damaged
    if isinstance(cause, tarfile.TarError):
        kind = "corrupt or truncated tar archive"
    if isinstance(err, MemberCut) and (err.cause is None or isinstance(err.cause, EOFError)):
        problem = f"{kind or 'truncated tar archive'}: {err}"
    elif isinstance(err, MemberCut):
        problem = f"{kind}: {cause}; the archive is unreadable from inside this member"
    else:
        problem = f"{kind}: {err}" if kind else f"{type(err).__name__}: {err}"
    out = DocumentError(source, where, problem)
    out.stream = True  # the byte stream itself broke: nothing after this point can be read
    return out


def open_binary(url: str) -> IO[bytes]:
    """A binary stream of `url`, decompressed by its name (.gz, .bz2, .xz, .zst)."""
    return fsspec.open(url, "rb", compression="infer").open()


def iter_lines(url: str, f: IO[bytes] | None = None, salvage: SalvagingReader | None = None,
               keep_partial: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file; a BOM is dropped, bytes that are not UTF-8 survive as surrogates.

    Readers find those surrogates with `docre.data.validate.bad_utf8` and
    quarantine just the document they are in. A broken compressed stream
    yields every complete line before the break, never the half line at it,
    then raises DocumentError with the line and byte where the data ends.
    `salvage` is the reader under `f` when the caller made one. `keep_partial`
    hands on the half line too, for formats whose records span lines (a JSON
    array on one line) and whose parser finds the cut itself.
    """
    own = f is None
    if salvage is None:
        salvage = SalvagingReader(open_binary(url) if own else f, url)
        f = io.BufferedReader(salvage, 1 << 20)
    n = 0
    try:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n") and salvage.error is not None and not keep_partial:
                break  # the half line at a cut: the document it belongs to is the one the cut record stands for
            text = line.decode("utf-8", "surrogateescape")
            if n == 1:
                text = text.removeprefix("\ufeff")
            yield n, text
        if (cut := salvage.cut()) is not None:
            raise cut
    finally:
        if own:
            salvage.f.close()


def open_text(url: str):
    """A text stream of `url` (UTF-8, decompressed by name), for small files such as inventories."""
    return fsspec.open(url, "rt", compression="infer", encoding="utf-8")
