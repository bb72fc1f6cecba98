"""Opening documents from any fsspec URL, in any supported format.

Local paths, file://, s3:// and gzip files all go through `fsspec.open` with
compression inferred from the name, so the same code reads a laptop fixture and
a PubMed-scale dump in object storage.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import fsspec

from .docred import read_docred, read_rel_info
from .document import Document, DocumentError, RelationInventory, cdr_inventory
from .pubtator import read_pubtator

Format = Literal["docred", "pubtator", "atlop"]


@dataclass
class Quarantined:
    """A document a lenient reader refused, with where it was and why."""
    source: str
    where: str
    reason: str

    @staticmethod
    def of(err: DocumentError) -> "Quarantined":
        return Quarantined(err.source, err.where, err.problem)


def detect_format(url: str) -> Format:
    name = url.lower()
    for ext in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(ext)
    if name.endswith((".json", ".jsonl")):
        return "docred"
    if name.endswith(".data"):
        return "atlop"
    if name.endswith((".pubtator", ".pubtator.txt", ".txt")):
        return "pubtator"
    raise ValueError(f"{url}: cannot tell the format from the name; pass format='docred'|'pubtator'|'atlop'")


def open_text(url: str):
    return fsspec.open(url, "rt", compression="infer", encoding="utf-8")


def read_documents(url: str, format: Format | None = None, inventory: RelationInventory | None = None,
                   quarantine: list[Quarantined] | None = None) -> Iterator[Document]:
    """Stream validated documents from `url`.

    With `quarantine` given (lenient mode) bad documents are appended to it
    with their reason and reading goes on; otherwise the first bad document
    raises DocumentError naming the file, the line or document and the problem.
    """
    fmt = format or detect_format(url)
    on_error = None if quarantine is None else (lambda err: quarantine.append(Quarantined.of(err)))
    with open_text(url) as f:
        if fmt == "docred":
            yield from read_docred(f, url, inventory, on_error=on_error)
        elif fmt == "pubtator":
            yield from read_pubtator(f, url, inventory, on_error=on_error)
        elif fmt == "atlop":
            from .atlop import read_atlop
            relation = "CID" if inventory is None or len(inventory) < 2 else inventory.ids[1]
            yield from read_atlop(f, url, relation=relation, on_error=on_error)
        else:
            raise ValueError(f"unknown format {fmt!r}")


def load_inventory(spec: str | None, docs: Iterable[Document] = ()) -> RelationInventory:
    """'cdr' (Chemical->Disease CID), a rel_info.json URL (DocRED), an inventory JSON, or inferred from docs."""
    if spec == "cdr":
        return cdr_inventory()
    if spec:
        with open_text(spec) as f:
            text = f.read()
        return RelationInventory.from_json(text) if '"ids"' in text else read_rel_info(text)
    return RelationInventory.from_documents(docs)


def checksum(urls: Iterable[str]) -> str:
    """sha256 over the raw bytes of every input, in order: the cache key's view of "the same input"."""
    h = hashlib.sha256()
    for url in urls:
        h.update(url.rsplit("/", 1)[-1].encode())
        with fsspec.open(url, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
