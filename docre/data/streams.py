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


def stream_error(source: str, err: BaseException, pos: int | None = None, line: int | None = None) -> DocumentError:
    """One DocumentError for a broken byte stream: which file, how far it was readable, what broke."""
    if isinstance(err, DocumentError):
        return err
    where = ", ".join(x for x in (f"line {line}" if line else "", f"byte {pos}" if pos is not None else "") if x) \
        or "file"
    kind = {EOFError: "truncated compressed file", zlib.error: "corrupt compressed data",
            gzip.BadGzipFile: "not a valid gzip file"}.get(type(err))
    if isinstance(err, tarfile.TarError):
        kind = "corrupt or truncated tar archive"
    problem = f"{kind}: {err}" if kind else f"{type(err).__name__}: {err}"
    out = DocumentError(source, where, problem)
    out.stream = True  # the byte stream itself broke: nothing after this point can be read
    return out


def open_binary(url: str) -> IO[bytes]:
    """A binary stream of `url`, decompressed by its name (.gz, .bz2, .xz, .zst)."""
    return fsspec.open(url, "rb", compression="infer").open()


def iter_lines(url: str, f: IO[bytes] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file; a BOM is dropped, bytes that are not UTF-8 survive as surrogates.

    Readers find those surrogates with `docre.data.validate.bad_utf8` and
    quarantine just the document they are in; a broken compressed stream
    raises DocumentError with the line and byte reached.
    """
    own = f is None
    raw = CountingReader(open_binary(url) if own else f)
    n = 0
    try:
        for n, line in enumerate(io.BufferedReader(raw, 1 << 20), 1):
            text = line.decode("utf-8", "surrogateescape")
            if n == 1:
                text = text.removeprefix("\ufeff")
            yield n, text
    except STREAM_ERRORS as e:
        raise stream_error(url, e, raw.pos, n + 1) from None
    finally:
        if own:
            raw.f.close()


def open_text(url: str):
    """A text stream of `url` (UTF-8, decompressed by name), for small files such as inventories."""
    return fsspec.open(url, "rt", compression="infer", encoding="utf-8")
