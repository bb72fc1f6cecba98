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
are in. A cut or corrupt gzip/tar stream keeps every complete record before
the break (see `SalvagingReader`, `docre.data.tarstream`) and gives one
`DocumentError` naming the file, the member and where the data ends; broken
XML or JSON ends that file or member with one. In lenient mode (a
`quarantine` list) each becomes one quarantine record (``count`` = documents
it is known to stand for) and reading goes on with the next member or input.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Literal

import fsspec

from .atlop import read_atlop
from .bioc import iter_bioc_json, iter_bioc_xml, read_bioc
from .docred import array_elements, read_docred, read_rel_info
from .document import (Document, DocumentError, RelationInventory, cdr_inventory, drop_unknown_relations,
                       keep_entity_types)
from .pubmed import ConceptIndex, concept_index_for, read_pubmed
from .pubtator import read_pubtator
from .streams import SalvagingReader, iter_lines, open_binary
from .tarstream import is_data_member, iter_tar

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


def refuse(err: DocumentError, quarantine: list[Quarantined] | None) -> None:
    """Strict mode (no quarantine list) stops at the first bad document; lenient mode records it and goes on."""
    if quarantine is None:
        raise err
    quarantine.append(Quarantined.of(err))


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

    seen: dict[str, str] = {}  # id -> member it came from: ids are unique across an archive, as across a file

    def post(docs: Iterator[Document], source: str) -> Iterator[Document]:
        for doc in docs:
            if source != url:
                if doc.id in seen and seen[doc.id] != source:
                    refuse(DocumentError(source, f"document {doc.id!r}", f"duplicate document id {doc.id!r} "
                                                                         f"(already read from {seen[doc.id]})"),
                           quarantine)
                    continue
                seen[doc.id] = source
            if inventory is not None and options.unknown_relations == "ignore":
                doc = drop_unknown_relations(doc, inventory, counts)
            if types is not None:
                doc = keep_entity_types(doc, types, counts)
            yield doc

    sources = _archive_members(url, counts) if is_archive(url) else iter([(url, None)])
    while True:
        try:  # the archive itself may break between members: that ends this input, as one record
            source, member = next(sources)
        except StopIteration:
            return
        except DocumentError as err:
            refuse(err, quarantine)
            return
        try:  # _read_one turns a broken byte stream into a DocumentError naming the file
            yield from post(_read_one(source, member, format, check, quarantine, options, counts, deleted), source)
        except DocumentError as err:
            refuse(err, quarantine)


NOT_DATA_MEMBERS = "archive members skipped (not data: licence, read-me, checksum)"


def _archive_members(url: str, counts: dict | None) -> Iterator[tuple[str, IO[bytes]]]:
    """(url!member, its stream) for each data member of a tar archive, read once, front to back.

    Licences, read-mes and checksum files are skipped and counted under their
    own heading, so one foreign member never ends the archive.
    """
    salvage = SalvagingReader(open_binary(url) if not url.lower().endswith(".tgz") else
                              fsspec.open(url, "rb", compression="gzip").open(), url)
    try:
        for name, _, member in iter_tar(salvage, url):
            if not is_data_member(name):
                if counts is not None:
                    counts[NOT_DATA_MEMBERS] = counts.get(NOT_DATA_MEMBERS, 0) + 1
                continue
            yield f"{url}!{name}", member
    finally:
        salvage.f.close()


def _head(f: IO[bytes], n: int = 4096) -> tuple[bytes, IO[bytes]]:
    """The first bytes of a stream, and a stream that still starts at the beginning."""
    buffered = f if hasattr(f, "peek") else io.BufferedReader(f, 1 << 16)
    return buffered.peek(n)[:n], buffered


_XML_FORMATS = ("bioc_xml", "pubmed")
_COMPRESSED = re.compile(r"\.(gz|tgz|bz2|xz|zst)(!|$)", re.I)  # a compressed file, or a member of one


def _line(where: str) -> int:
    m = re.match(r"line (\d+)", where)
    return int(m.group(1)) if m else 0


def _check_format(source: str, fmt: Format, head: bytes, given: bool) -> Format:
    """A format given by the user must fit the bytes: PubMed XML read as BioC gives nothing, silently."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if fmt in _XML_FORMATS:
        if not text.startswith(b"<"):
            raise DocumentError(source, "line 1", f"format {fmt} given, but the file is not XML")
        try:
            found = sniff_xml(head, source)
        except ValueError:
            raise DocumentError(source, "line 1", "XML that is neither a BioC <collection> nor a "
                                                  "<PubmedArticleSet>") from None
        if found != fmt:
            what = "PubMed XML (<PubmedArticleSet>)" if found == "pubmed" else "BioC XML (<collection>)"
            raise DocumentError(source, "line 1", f"format {fmt} given, but the file is {what}; "
                                                  f"use --format {found}")
    elif given and text.startswith(b"<"):
        raise DocumentError(source, "line 1", f"format {fmt} given, but the file is XML")
    return fmt


def _read_one(source: str, member: IO[bytes] | None, format: Format | None, inventory: RelationInventory | None,
              quarantine: list[Quarantined] | None, options: ReadOptions, counts: dict | None,
              deleted: list[str] | None) -> Iterator[Document]:
    """Documents of one file or archive member, every complete one before a cut included.

    The bytes are read through a `SalvagingReader`: where they break, readers
    see an end of file, keep every record before it, and the parse error that
    the cut causes is replaced by one record naming the real position.
    """
    f = member if member is not None else open_binary(source)
    if member is not None and source.lower().endswith(".gz"):  # a compressed member: decompressed by its name
        f = gzip.GzipFile(fileobj=io.BufferedReader(member), mode="rb")
    salvage = SalvagingReader(f, source)
    cut_reported = False

    def the_cut(err: DocumentError) -> DocumentError:
        """A parse error caused by a broken stream is the cut; other errors are what they say."""
        nonlocal cut_reported
        if getattr(err, "syntax", False) and salvage.error is None and _COMPRESSED.search(source):
            salvage.drain(16 << 20)
        if salvage.error is not None and getattr(err, "syntax", False):
            cut_reported = True
            cut = salvage.cut()
            if salvage.lines + 1 > _line(err.where) + 1 and "corrupt" in cut.problem:
                cut.problem += f" (the text is unreadable from {err.where.split(',')[0]})"
            return cut
        return err

    def on_error(err: DocumentError) -> None:
        quarantine.append(Quarantined.of(the_cut(err)))

    lenient = None if quarantine is None else on_error
    try:
        head, stream = _head(salvage)
        if not head.strip(b"\xef\xbb\xbf \t\r\n"):
            if (cut := salvage.cut()) is not None:
                raise cut
            return  # an empty file holds no documents
        try:
            fmt = _check_format(source, format or detect_format(source, head), head, format is not None)
        except ValueError as e:
            xml = _strip(source.rsplit("!", 1)[-1]).endswith(".xml")
            if isinstance(e, DocumentError) or (member is None and not xml):
                raise  # a file whose name says nothing: a usage error, not a bad record
            raise DocumentError(source, "line 1" if xml else "member", str(e).removeprefix(f"{source}: ")) from None
        if fmt in ("pubtator", "docred", "atlop"):
            lines = (text for _, text in iter_lines(source, stream, salvage, keep_partial=fmt == "docred"))
            if fmt == "pubtator":
                yield from read_pubtator(lines, source, inventory, options.unlinked, lenient, counts)
            elif fmt == "docred":
                yield from read_docred(lines, source, inventory, on_error=lenient)
            else:
                relation = "CID" if inventory is None or len(inventory) < 2 else inventory.ids[1]
                yield from read_atlop(lines, source, relation=relation, on_error=lenient)
        elif fmt == "bioc_xml":
            yield from read_bioc(iter_bioc_xml(stream, source, counts), source, inventory, options.passages,
                                 options.unlinked, lenient, counts)
        elif fmt == "bioc_json":
            yield from read_bioc(_bioc_json_records(stream, source), source, inventory,
                                 options.passages, options.unlinked, lenient, counts)
        elif fmt == "pubmed":
            index = ConceptIndex(concept_index_for(options.concepts)) if options.concepts else None
            if index is not None and index.manifest.get("bad_lines") and counts is not None:
                m = index.manifest
                first = ", ".join(str(n) for n in m.get("first_bad_lines", [])[:5])
                counts[f"lines of the concepts file {m.get('source', options.concepts)} skipped (not PMID, type, "
                       f"concept id, mentions; first at line {first})"] = m["bad_lines"]
            yield from read_pubmed(stream, source, index, inventory, options.unlinked, lenient, counts, deleted)
        else:
            raise ValueError(f"unknown format {fmt!r}")
    except DocumentError as err:
        raise the_cut(err) from None
    finally:
        if member is None:
            f.close()
    if salvage.error is not None and not cut_reported:
        # a reader that reached the cut without a parse error (a cut between records): still one record
        cut = salvage.cut()
        cut.count = 0
        raise cut


def _json_text(f: IO[bytes], source: str) -> str:
    data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DocumentError(source, f"line {line}, byte {e.start}", f"not valid UTF-8 (0x{data[e.start]:02x})") \
            from None


def _json_syntax(source: str, text: str, e: json.JSONDecodeError) -> DocumentError:
    cut = " (the file is truncated)" if e.pos >= len(text.rstrip()) else ""
    err = DocumentError(source, f"line {e.lineno}, column {e.colno}", f"invalid JSON{cut}: {e.msg}")
    err.syntax = True  # where the bytes broke, this is the cut's doing
    return err


_BIOC_DOCUMENTS = re.compile(r'"(?:documents|PubTator3)"\s*:\s*\[')


def _bioc_json_records(f: IO[bytes], source: str) -> Iterator[dict]:
    """BioC JSON documents (a collection, the PubTator3 API object, a list). A truncated or broken file keeps
    the documents before the break, read one element at a time; the break is one error, raised last."""
    text = _json_text(f, source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        found = _BIOC_DOCUMENTS.search(text)
        bare = text.lstrip().startswith("[")
        if found is None and not bare:
            raise _json_syntax(source, text, e) from None
        start = found.end() - 1 if found else len(text) - len(text.lstrip())
        for _, element in array_elements(text, source, 0, start, then="}" if found else ""):
            if isinstance(element, DocumentError):
                raise element
            yield element
        raise _json_syntax(source, text, e) from None  # the break lies after the documents
    yield from iter_bioc_json(data, source)


def load_inventory(spec: str | None, docs: Iterable[Document] = ()) -> RelationInventory:
    """'cdr' (Chemical->Disease CID), a rel_info.json URL (DocRED), an inventory JSON, or inferred from docs."""
    if spec == "cdr":
        return cdr_inventory()
    if spec:
        with open_binary(spec) as f:
            data = f.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DocumentError(spec, f"byte {e.start}", f"relations file is not valid UTF-8 "
                                                         f"(0x{data[e.start]:02x})") from None
        try:
            return RelationInventory.from_json(text) if '"ids"' in text else read_rel_info(text)
        except json.JSONDecodeError as e:
            raise DocumentError(spec, f"line {e.lineno}, column {e.colno}",
                                f"relations file is not valid JSON: {e.msg}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DocumentError(spec, "relations file", "expected a rel_info.json object ({\"P17\": \"country\", "
                                                        f"...}}) or an inventory with \"ids\" ({e})") from None
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

