"""Streaming large XML files (BioC collections, PubMed article sets) one record element at a time.

lxml's ``iterparse`` builds the tree as it reads; clearing each record after
use (and dropping the siblings before it) keeps memory flat however large the
file. A syntax error ends the stream: the rest of the file cannot be read, and
the error says where.
"""
from __future__ import annotations

import html.entities
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
        err = DocumentError(source, f"line {line}", f"invalid XML: {e.msg}; the rest of the file is unreadable")
        err.syntax = True  # where the bytes broke, this is the cut's doing: the reader reports the cut instead
        raise err from None


RESOLVED = "XML entities resolved by their HTML/ISO name (e.g. &beta;)"
UNRESOLVED = "XML entities not resolved (kept as written)"


def element_text(el, counts: dict | None = None) -> str:
    """All text of an element, with named entities the file's DTD declares resolved.

    BioC files name a DTD that lxml does not load (no network, no surprises),
    so ``&beta;`` arrives as an entity node and ``.text`` stops before it: the
    passage was cut there. The HTML/ISO names are resolved here; any other is
    kept as written, and both are counted.
    """
    from lxml import etree

    parts = [el.text or ""]
    for child in el:
        if child.tag is etree.Entity:
            char = html.entities.html5.get(f"{child.name};")
            key = RESOLVED if char is not None else UNRESOLVED
            if counts is not None:
                counts[key] = counts.get(key, 0) + 1
            parts.append(char if char is not None else f"&{child.name};")
        elif isinstance(child.tag, str):
            parts.append(element_text(child, counts))
        parts.append(child.tail or "")
    return "".join(parts)


def child_text(el, tag: str, counts: dict | None = None) -> str | None:
    """`element_text` of the first child `tag` (None when there is none), like lxml's findtext."""
    child = el.find(tag)
    return None if child is None else element_text(child, counts)
