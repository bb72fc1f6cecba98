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

from .document import Document, DocumentError, Entity, Fact, Mention, RelationInventory
from .segment import sentence_spans, token_spans
from .validate import validate_document

UNLINKED = {"-1", ""}


class _Raw:
    """One document's lines as read, before any checking; `error` holds the first malformed line."""

    def __init__(self, pmid: str, line: int):
        self.pmid, self.line = pmid, line
        self.title: str | None = None
        self.abstract: str | None = None
        self.mentions: list[tuple[int, int, str, str, list[str], int]] = []  # start, end, text, type, ids, line
        self.relations: list[tuple[str, str, str, int]] = []
        self.error: DocumentError | None = None


def _parse(lines: Iterable[str], source: str) -> Iterator[_Raw]:
    doc: _Raw | None = None
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
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
            continue
        fields = line.split("\t")
        pmid = fields[0]
        if doc is None or pmid != doc.pmid:
            if doc is not None:
                yield doc
            doc = _Raw(pmid, n)
            doc.error = DocumentError(source, f"line {n}, document {pmid!r}",
                                      "annotation line outside a document (no title line before it)")
            continue
        if doc.error is not None:
            continue
        if len(fields) >= 6:
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                doc.error = DocumentError(source, f"line {n}, document {pmid!r}",
                                          f"malformed mention line: offsets {fields[1]!r}, {fields[2]!r} "
                                          f"are not integers")
                continue
            doc.mentions.append((start, end, fields[3], fields[4], [i.strip() for i in fields[5].split("|")], n))
        elif len(fields) in (4, 5) and not fields[1].lstrip("-").isdigit():
            doc.relations.append((fields[1], fields[2], fields[3], n))
        else:
            doc.error = DocumentError(source, f"line {n}, document {pmid!r}",
                                      f"malformed line: expected a mention line (6 tab-separated fields) or a "
                                      f"relation line (4 fields), got {len(fields)} fields")
    if doc is not None:
        yield doc


def _build(raw: _Raw, source: str, unlinked: str, inventory: RelationInventory | None) -> Document:
    where = f"line {raw.line}, document {raw.pmid!r}"
    if raw.error is not None:
        raise raw.error
    if raw.title is None and raw.abstract is None:
        raise DocumentError(source, where, "document has no title or abstract line")
    title, abstract = raw.title or "", raw.abstract or ""
    text = title + " " + abstract if abstract else title
    if not text.strip():
        raise DocumentError(source, where, "empty document (title and abstract are empty)")
    for start, end, mtext, _, _, n in raw.mentions:
        mwhere = f"line {n}, document {raw.pmid!r}"
        if not 0 <= start < end <= len(text):
            raise DocumentError(source, mwhere, f"mention {mtext!r} offsets [{start}, {end}) outside the text "
                                                f"({len(text)} characters)")
        if text[start:end] != mtext:
            raise DocumentError(source, mwhere, f"mention {mtext!r} does not match the text at [{start}, {end}): "
                                                f"{text[start:end]!r}")
    protected = [(s, e) for s, e, *_ in raw.mentions]
    boundaries = {c for s, e in protected for c in (s, e)}
    sents = sentence_spans(text, 0, len(title), protected) + sentence_spans(text, len(title), len(text), protected)
    token_chars = [token_spans(text, a, b, boundaries) for a, b in sents]
    sentences = [[text[a:b] for a, b in toks] for toks in token_chars]
    # character offset -> (sentence, token) lookup for mention spans
    start_at, end_at = {}, {}
    for si, toks in enumerate(token_chars):
        for ti, (a, b) in enumerate(toks):
            start_at[a] = (si, ti)
            end_at[b] = (si, ti + 1)
    entities: list[Entity] = []
    by_id: dict[str, int] = {}
    for start, end, mtext, mtype, ids, n in raw.mentions:
        s_tok, e_tok = start_at.get(start), end_at.get(end)
        if s_tok is None or e_tok is None or s_tok[0] != e_tok[0]:
            raise DocumentError(source, f"line {n}, document {raw.pmid!r}",
                                f"mention {mtext!r} [{start}, {end}) does not map to a token span in one sentence")
        mention = Mention(s_tok[0], s_tok[1], e_tok[1], mtext, start, end)
        linked = [i for i in ids if i not in UNLINKED]
        if not linked:
            if unlinked == "keep":
                entities.append(Entity([mention], mtype, None))
            continue
        for kb in dict.fromkeys(linked):
            if kb not in by_id:
                by_id[kb] = len(entities)
                entities.append(Entity([], mtype, kb))
            entities[by_id[kb]].mentions.append(mention)
    facts = []
    for rel, id1, id2, n in raw.relations:
        for kb in (id1, id2):
            if kb not in by_id:
                raise DocumentError(source, f"line {n}, document {raw.pmid!r}",
                                    f"relation {rel} points at entity {kb!r}, which has no mention in the document")
        facts.append(Fact(by_id[id1], by_id[id2], rel))
    doc = Document(raw.pmid, sentences, entities, facts, title, text, token_chars)
    return validate_document(doc, source, inventory, where)


def read_pubtator(lines: Iterable[str], source: str, inventory: RelationInventory | None = None,
                  unlinked: Literal["drop", "keep"] = "drop",
                  on_error: Callable[[DocumentError], None] | None = None) -> Iterator[Document]:
    """Stream documents from PubTator lines; bad documents raise, or go to `on_error` and are skipped."""
    seen: set[str] = set()
    for item in _parse(lines, source):
        try:
            if item.pmid in seen:
                raise DocumentError(source, f"line {item.line}, document {item.pmid!r}",
                                    f"duplicate document id {item.pmid!r}")
            seen.add(item.pmid)
            yield _build(item, source, unlinked, inventory)
        except DocumentError as err:
            if on_error is None:
                raise
            on_error(err)


def write_pubtator(docs: Iterable[Document]) -> Iterator[str]:
    """PubTator lines for each document; raw text is rebuilt from tokens if the source had none."""
    for doc in docs:
        if doc.text is not None and doc.token_chars is not None:
            text, token_chars = doc.text, doc.token_chars
        else:
            text, token_chars = "", []
            for sent in doc.sentences:
                spans = []
                for tok in sent:
                    if text:
                        text += " "
                    spans.append((len(text), len(text) + len(tok)))
                    text += tok
                token_chars.append(spans)
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
