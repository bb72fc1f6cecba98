"""Streaming large XML files (BioC collections, PubMed article sets) one record element at a time.

lxml's ``iterparse`` builds the tree as it reads; clearing each record after
use (and dropping the siblings before it) keeps memory flat however large the
file. A syntax error ends the stream: the rest of the file cannot be read, and
the error says where.
"""
from __future__ import annotations

from typing import IO, Iterator

from .document import DocumentError


def iter_records(f: IO[bytes], source: str, tags: str | tuple[str, ...]) -> Iterator:
    """Each complete element with one of `tags`, cleared once the caller moves on; DocumentError on bad XML."""
    from lxml import etree

    parser = etree.iterparse(f, events=("end",), tag=tags, huge_tree=True, resolve_entities=False,
                             no_network=True, load_dtd=False)
    try:
        for _, el in parser:
            yield el
            el.clear()
            parent = el.getparent()
            if parent is not None:
                while el.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as e:
        line = e.position[0] if e.position else e.lineno
        raise DocumentError(source, f"line {line}", f"invalid XML: {e.msg}; the rest of the file is unreadable") \
            from None
