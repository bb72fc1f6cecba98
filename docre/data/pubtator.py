"""PubTator files (CDR, GDA, PubTator3 bulk exports).

    <pmid>|t|<title>
    <pmid>|a|<abstract>
    <pmid>\t<start>\t<end>\t<mention text>\t<type>\t<id>[\t<extra>]
    <pmid>\t<relation>\t<id 1>\t<id 2>
    (blank line between documents)

Offsets count characters in ``title + " " + abstract``. Mentions are grouped
into entities by id; a composite id ``D001|D002`` makes the mention belong to
both entities. Id ``-1`` (or empty) marks an unlinked mention: dropped by
default, as the CDR benchmark does, or kept as a singleton entity.
Relation lines name head and tail by id, so a CDR ``CID`` line is (chemical,
disease). Sentences and tokens come from `docre.data.segment`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Literal

from .assemble import AssembleOptions, RawDocument, RawMention, RawRelation, assemble, split_ids
from .document import Document, DocumentError, RelationInventory
from .validate import bad_utf8, each_document


class _Raw:
    """One document's lines as read, before any checking; `error` holds the first problem found."""

    def __init__(self, pmid: str, line: int):
        self.pmid, self.line = pmid, line
        self.title: str | None = None
        self.abstract: str | None = None
        self.mentions: list[tuple[int, int, str, str, str, int]] = []  # start, end, text, type, ids, line
        self.relations: list[tuple[str, str, str, int]] = []
        self.error: DocumentError | None = None

    def fail(self, source: str, n: int, problem: str) -> None:
        if self.error is None:
            self.error = DocumentError(source, f"line {n}, document {self.pmid!r}", problem)


def _parse(lines: Iterable[str], source: str) -> Iterator[_Raw]:
    doc: _Raw | None = None
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if n == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            if doc is not None:
                yield doc
            doc = None
            continue
        head = line.split("\t", 1)[0]
        parts = head.split("|", 2)
        if len(parts) == 3 and parts[1] in ("t", "a"):
            pmid, kind, _ = parts
            body = line[len(pmid) + 3:]
            # a new id, or a second title/abstract for the same id (a duplicate with no blank line between)
            if doc is not None and (pmid != doc.pmid or (doc.title if kind == "t" else doc.abstract) is not None):
                yield doc
                doc = None
            if doc is None:
                doc = _Raw(pmid, n)
            if kind == "t":
                doc.title = body
            else:
                doc.abstract = body
            if (problem := bad_utf8(line)) is not None:
                doc.fail(source, n, problem)
            continue
        fields = line.split("\t")
        pmid = fields[0]
        if doc is None:
            # annotation lines with no title line before them: one record for the whole run of them
            doc = _Raw(pmid, n)
            doc.fail(source, n, "annotation line outside a document (no title line before it)")
            continue
        if pmid != doc.pmid:
            # a line of another document inside this one: this document is suspect, its neighbours are not
            doc.fail(source, n, f"annotation line for document {pmid!r} inside document {doc.pmid!r}")
            continue
        if (problem := bad_utf8(line)) is not None:
            doc.fail(source, n, problem)
            continue
        if len(fields) >= 6:
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                doc.fail(source, n, f"malformed mention line: offsets {fields[1]!r}, {fields[2]!r} are not integers")
                continue
            doc.mentions.append((start, end, fields[3], fields[4], fields[5], n))
        elif len(fields) in (4, 5) and not fields[1].lstrip("-").isdigit():
            doc.relations.append((fields[1], fields[2], fields[3], n))
        else:
            doc.fail(source, n, f"malformed line: expected a mention line (6 tab-separated fields) or a "
                                f"relation line (4 fields), got {len(fields)} fields")
    if doc is not None:
        yield doc


def _build(raw: _Raw, source: str, unlinked: str, inventory: RelationInventory | None,
           counts: dict | None = None) -> Document:
    where = f"line {raw.line}, document {raw.pmid!r}"
    if raw.error is not None:
        raise raw.error
    if raw.title is None and raw.abstract is None:
        raise DocumentError(source, where, "document has no title or abstract line")
    title, abstract = raw.title or "", raw.abstract or ""
    text = title + " " + abstract if abstract else title
    if not text.strip():
        raise DocumentError(source, where, "empty document (title and abstract are empty)")
    mentions = [RawMention(s, e, t, typ, split_ids(ids), f"line {n}") for s, e, t, typ, ids, n in raw.mentions]
    relations = [RawRelation(rel, ("", a), ("", b), f"line {n}") for rel, a, b, n in raw.relations]
    doc = RawDocument(raw.pmid, text, [(0, len(title)), (len(title), len(text))], title, mentions, relations,
                      where=where)
    return assemble(doc, source, inventory, AssembleOptions(unlinked=unlinked), counts)


def read_pubtator(lines: Iterable[str], source: str, inventory: RelationInventory | None = None,
                  unlinked: Literal["drop", "keep"] = "drop",
                  on_error: Callable[[DocumentError], None] | None = None,
                  counts: dict | None = None) -> Iterator[Document]:
    """Stream documents from PubTator lines; bad documents raise, or go to `on_error` and are skipped.

    Reads CDR/GDA files and PubTator3 API exports alike: a UTF-8 BOM and CRLF
    line ends are accepted, ids may be ``MESH:``-prefixed and joined by ``|``,
    ``;`` or ``,``, and ``-``/``-1``/empty mark unlinked mentions.
    """
    def build(item: _Raw) -> tuple[Document, str]:
        return _build(item, source, unlinked, inventory, counts), f"line {item.line}, document {item.pmid!r}"
    yield from each_document(_parse(lines, source), build, source, on_error)


def write_pubtator(docs: Iterable[Document]) -> Iterator[str]:
    """PubTator lines for each document; raw text is rebuilt from tokens if the source had none."""
    for doc in docs:
        text, token_chars = doc.layout()
        title = doc.title if doc.title and (text == doc.title or text.startswith(doc.title + " ")) else ""
        # the reader counts offsets in title + " " + abstract: with no title, that space leads the text
        shift = 0 if title or text.startswith(" ") else 1
        abstract = text[len(title) + 1 - shift:]
        yield f"{doc.id}|t|{title}\n"
        yield f"{doc.id}|a|{abstract}\n"
        # one line per distinct mention span; composite mentions list every entity id
        spans: dict[tuple[int, int], tuple[str, str, list[str]]] = {}
        for ei, ent in enumerate(doc.entities):
            kb = ent.kb_id or "-1"
            for m in ent.mentions:
                a = token_chars[m.sent_id][m.start][0]
                b = token_chars[m.sent_id][m.end - 1][1]
                key = (a, b)
                if key in spans and kb not in spans[key][2]:
                    spans[key][2].append(kb)
                else:
                    spans.setdefault(key, (text[a:b], ent.type, [kb]))
        for (a, b), (mtext, mtype, ids) in sorted(spans.items()):
            yield f"{doc.id}\t{a + shift}\t{b + shift}\t{mtext}\t{mtype}\t{'|'.join(ids)}\n"
        for f in doc.facts or []:
            h, t = doc.entities[f.head], doc.entities[f.tail]
            yield f"{doc.id}\t{f.relation}\t{h.kb_id or f.head}\t{t.kb_id or f.tail}\n"
        yield "\n"
