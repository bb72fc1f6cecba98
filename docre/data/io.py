"""Opening documents from any fsspec URL, in any supported format, with errors that say where.

Local paths, file://, s3:// and compressed files all go through `fsspec.open`
with compression inferred from the name, so the same code reads a laptop
fixture and a PubMed-scale dump in object storage. ``.tar``/``.tar.gz``/``.tgz``
archives (PubTator3's ``BioCXML.N.tar.gz``) are streamed member by member,
never unpacked to disk; each member is read by its own name and content.

Formats: ``docred`` (DocRED JSON array, JSON lines, or one pretty-printed
object), ``pubtator`` (CDR / PubTator3 text), ``atlop`` (ATLOP ``.data``),
``bioc_xml``, ``bioc_json`` (a BioC collection or the PubTator3 API object)
and ``pubmed`` (PubMed baseline/update XML). Where the name is ambiguous
(``.json``, ``.xml``) the first bytes decide; ``format=`` overrides.

Errors: bytes that are not UTF-8 quarantine the document (or JSON line) they
are in; a corrupt or truncated gzip/tar stream, broken XML or a JSON array
that does not parse stop that file with one `DocumentError` naming it and the
line or byte position. In lenient mode (a `quarantine` list) that becomes one
quarantine record for the file (``count`` = documents it stands for, when
known) and reading goes on with the next input.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Literal

import fsspec

from .atlop import read_atlop
from .bioc import iter_bioc_json, iter_bioc_xml, read_bioc
from .docred import read_docred, read_rel_info
from .document import (Document, DocumentError, RelationInventory, cdr_inventory, drop_unknown_relations,
                       keep_entity_types)
from .pubmed import ConceptIndex, concept_index_for, read_pubmed
from .pubtator import read_pubtator
from .streams import STREAM_ERRORS, CountingReader, iter_lines, open_binary, open_text, stream_error

Format = Literal["docred", "pubtator", "atlop", "bioc_xml", "bioc_json", "pubmed"]
FORMATS: tuple[str, ...] = ("docred", "pubtator", "atlop", "bioc_xml", "bioc_json", "pubmed")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_TAR = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class Quarantined:
    """A document (or a whole unreadable rest of a file) a lenient reader refused, with where and why."""
    source: str
    where: str
    reason: str
    count: int = 1  # documents this record stands for (a file rejected as a whole may hold several)

    @staticmethod
    def of(err: DocumentError, count: int = 1) -> "Quarantined":
        return Quarantined(err.source, err.where, err.problem, getattr(err, "count", count))


@dataclass
class ReadOptions:
    """How raw inputs become model input; flows and the CLI pass one of these through unchanged."""
    passages: Literal["title_abstract", "all"] = "title_abstract"  # BioC: which passages make the document
    unlinked: Literal["drop", "keep"] = "drop"  # mentions with id -, -1 or empty
    # PubMed XML: a bioconcepts2pubtator3-style file (indexed once, cached) or an index (`docre data concepts`)
    concepts: str | None = None
    # gold labels outside the inventory: "check" fails the document (training data), "ignore" drops the label
    unknown_relations: Literal["check", "ignore"] = "check"
    # entity types the model was not trained on: left out ("model") or kept ("all")
    entity_types: Literal["model", "all"] = "model"


def is_archive(url: str) -> bool:
    return url.lower().endswith(_TAR)


def _strip(name: str) -> str:
    name = name.lower()
    for ext in _COMPRESSION:
        name = name.removesuffix(ext)
    return name


def detect_format(url: str, head: bytes | None = None) -> Format:
    """The format of `url`, from its name, or from its first bytes where the name allows several."""
    name = _strip(url.rsplit("!", 1)[-1])
    if name.endswith(".data"):
        return "atlop"
    if name.endswith((".pubtator", ".pubtator.txt", ".txt")):
        return "pubtator"
    if name.endswith(".jsonl"):
        return "docred"
    if name.endswith((".json", ".bioc.json")):
        return sniff_json(head) if head is not None else "docred"
    if name.endswith(".xml"):
        if head is not None:
            return sniff_xml(head, url)
        base = name.rsplit("/", 1)[-1]
        return "pubmed" if base.startswith("pubmed") else "bioc_xml"
    raise ValueError(f"{url}: cannot tell the format from the name; pass format="
                     f"{'|'.join(repr(f) for f in FORMATS)}")


def sniff_json(head: bytes) -> Format:
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if text.startswith("{") and any(k in text[:65536] for k in ('"PubTator3"', '"passages"', '"documents"')):
        return "bioc_json"
    if text.startswith("[") and '"passages"' in text[:65536] and '"vertexSet"' not in text[:65536]:
        return "bioc_json"
    return "docred"


def sniff_xml(head: bytes, url: str = "") -> Format:
    text = head[:65536].decode("utf-8", "replace")
    if "<PubmedArticleSet" in text or "PubmedArticleSet" in text.split(">", 2)[-1][:400] or "<PubmedArticle>" in text:
        return "pubmed"
    if "<collection" in text:
        return "bioc_xml"
    raise ValueError(f"{url}: XML that is neither a BioC <collection> nor a <PubmedArticleSet>")


# ---------------------------------------------------------------- reading

def read_documents(url: str, format: Format | None = None, inventory: RelationInventory | None = None,
                   quarantine: list[Quarantined] | None = None, options: ReadOptions | None = None,
                   counts: dict | None = None, deleted: list[str] | None = None) -> Iterator[Document]:
    """Stream validated documents from `url` (a file or a tar archive of files).

    With `quarantine` given (lenient mode) bad documents are appended to it
    with their reason and reading goes on; otherwise the first bad document
    raises DocumentError naming the file, the line or document and the problem.
    `counts` collects what was left out on purpose (unlinked mentions, entity
    types, unknown gold relations, passages); `deleted` collects PubMed
    DeleteCitation PMIDs.
    """
    options = options or ReadOptions()
    check = inventory if options.unknown_relations == "check" else None
    types = set(inventory.entity_types) if inventory is not None and inventory.entity_types and \
        options.entity_types == "model" else None

    def post(docs: Iterator[Document]) -> Iterator[Document]:
        for doc in docs:
            if inventory is not None and options.unknown_relations == "ignore":
                doc = drop_unknown_relations(doc, inventory, counts)
            if types is not None:
                doc = keep_entity_types(doc, types, counts)
            yield doc

    sources = _archive_members(url) if is_archive(url) else iter([(url, None)])
    while True:
        try:  # the archive itself may break between members: that ends this input, as one record
            source, member = next(sources)
        except StopIteration:
            return
        except DocumentError as err:
            if quarantine is None:
                raise
            quarantine.append(Quarantined.of(err))
            return
        try:  # _read_one turns a broken byte stream into a DocumentError naming the file
            yield from post(_read_one(source, member, format, check, quarantine, options, counts, deleted))
        except DocumentError as err:
            if quarantine is None:
                raise
            quarantine.append(Quarantined.of(err))
            if member is not None and getattr(err, "stream", False):
                return  # a member's bytes broke: the archive around it is broken too, one record says so


def _archive_members(url: str) -> Iterator[tuple[str, IO[bytes] | None]]:
    """(url!member, its stream) for each regular file of a tar archive, read once, front to back."""
    raw = CountingReader(open_binary(url))
    try:
        with tarfile.open(fileobj=io.BufferedReader(raw, 1 << 20), mode="r|*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name.startswith((".", "_")):
                    continue
                yield f"{url}!{member.name}", tar.extractfile(member)
    except STREAM_ERRORS as e:
        raise stream_error(url, e, raw.pos) from None
    finally:
        raw.f.close()


def _head(f: IO[bytes], n: int = 4096) -> tuple[bytes, IO[bytes]]:
    """The first bytes of a stream, and a stream that still starts at the beginning."""
    buffered = f if hasattr(f, "peek") else io.BufferedReader(f, 1 << 16)
    return buffered.peek(n)[:n], buffered


def _read_one(source: str, member: IO[bytes] | None, format: Format | None, inventory: RelationInventory | None,
              quarantine: list[Quarantined] | None, options: ReadOptions, counts: dict | None,
              deleted: list[str] | None) -> Iterator[Document]:
    on_error = None if quarantine is None else (lambda err: quarantine.append(Quarantined.of(err)))
    f = counting = None
    try:
        f = member if member is not None else open_binary(source)
        counting = CountingReader(f)
        head, stream = _head(counting)
        if not head.strip(b"\xef\xbb\xbf \t\r\n"):
            return  # an empty file holds no documents
        fmt = format or detect_format(source, head)
        if fmt in ("pubtator", "docred", "atlop"):
            lines = (text for _, text in iter_lines(source, stream))
            if fmt == "pubtator":
                yield from read_pubtator(lines, source, inventory, options.unlinked, on_error, counts)
            elif fmt == "docred":
                yield from read_docred(lines, source, inventory, on_error=on_error)
            else:
                relation = "CID" if inventory is None or len(inventory) < 2 else inventory.ids[1]
                yield from read_atlop(lines, source, relation=relation, on_error=on_error)
        elif fmt == "bioc_xml":
            yield from read_bioc(iter_bioc_xml(stream, source), source, inventory, options.passages,
                                 options.unlinked, on_error, counts)
        elif fmt == "bioc_json":
            yield from read_bioc(iter_bioc_json(_load_json(stream, source), source), source, inventory,
                                 options.passages, options.unlinked, on_error, counts)
        elif fmt == "pubmed":
            index = ConceptIndex(concept_index_for(options.concepts)) if options.concepts else None
            yield from read_pubmed(stream, source, index, inventory, options.unlinked, on_error, counts, deleted)
        else:
            raise ValueError(f"unknown format {fmt!r}")
    except STREAM_ERRORS as e:
        raise stream_error(source, e, counting.pos if counting is not None else None) from None
    finally:
        if member is None and f is not None:
            f.close()


def _load_json(f: IO[bytes], source: str):
    """A whole JSON file; an error names the line and column, and a truncated file says so."""
    data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DocumentError(source, f"line {line}, byte {e.start}", f"not valid UTF-8 (0x{data[e.start]:02x})") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file is truncated)" if e.pos >= len(text.rstrip()) else ""
        raise DocumentError(source, f"line {e.lineno}, column {e.colno}", f"invalid JSON{cut}: {e.msg}") from None


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

