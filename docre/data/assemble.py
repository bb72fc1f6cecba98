"""Raw text + character-offset annotations -> a `Document`: the one path every raw-text reader takes.

PubTator text, BioC XML/JSON and PubMed XML (+ concept mentions) all arrive as
passages of text, mentions with character offsets and knowledge-base ids, and
relations that name entities by id. This module turns them into sentences,
tokens and entities the same way for all of them, so the same abstract gives
the same `Document` whichever format it came in (the round-trip tests rely on
it).

Knowledge-base ids (see `split_ids` and `normalize_id`):

* A mention may carry several ids joined by ``|`` (CDR composites), ``;`` or
  ``,`` (PubTator3): it then belongs to each of those entities.
* ``-``, ``-1`` and the empty id mean "not linked"; such mentions are dropped
  by default (``unlinked="keep"`` makes each one an entity of its own).
* ``MESH:D003920`` and ``D003920`` are the same concept. MeSH is the only
  namespace the benchmark corpora leave implicit (CDR writes bare MeSH ids,
  PubTator3 writes ``MESH:``), so the ``MESH:`` prefix is dropped and every
  other id is kept verbatim. An id without a namespace that is not MeSH-shaped
  (NCBI Gene and Taxonomy numbers) is only unique within its entity type, so
  such entities are grouped by (type, id), never across types.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

from .document import Document, DocumentError, Entity, Fact, Mention, RelationInventory
from .segment import sentence_spans, sentence_tokens
from .validate import validate_document

UNLINKED = {"-1", "-", ""}
_MULTI_ID = re.compile(r"[|;,]")
_MESH = re.compile(r"^(?:MESH|MeSH|mesh):", re.ASCII)
_MESH_SHAPED = re.compile(r"^[CD]\d{6,9}$", re.ASCII)


def normalize_id(raw: str) -> str:
    """One knowledge-base id in canonical form: surrounding space removed, ``MESH:`` dropped."""
    return _MESH.sub("", raw.strip())


def split_ids(raw: str | None) -> list[str]:
    """Linked, normalised ids of one mention, in order, without duplicates ([] when unlinked)."""
    if raw is None:
        return []
    out = [normalize_id(i) for i in _MULTI_ID.split(raw)]
    return list(dict.fromkeys(i for i in out if i not in UNLINKED))


def entity_key(kb_id: str, etype: str) -> tuple[str, str]:
    """Grouping key: a namespaced or MeSH-shaped id is global, a bare number only unique per type."""
    if ":" in kb_id or _MESH_SHAPED.match(kb_id):
        return ("", kb_id)
    return (etype, kb_id)


@dataclass
class RawMention:
    start: int  # character offsets into the assembled text
    end: int
    text: str
    type: str
    ids: list[str]  # normalised linked ids ([] = unlinked)
    where: str  # e.g. "line 12" or "annotation 'T3'", for error messages


@dataclass
class RawRelation:
    relation: str
    head: tuple[str, str]  # (type or "", id); type "" matches any entity with that id
    tail: tuple[str, str]
    where: str


@dataclass
class RawDocument:
    """One document as a reader found it: passages of one text, annotations in its coordinates."""
    id: str
    text: str
    passages: list[tuple[int, int]]  # character spans; sentences never cross them
    title: str = ""
    mentions: list[RawMention] = field(default_factory=list)
    relations: list[RawRelation] = field(default_factory=list)
    labelled: bool = True
    where: str = ""
    # sentence spans given by the source (BioC <sentence>s, our own writer's); None: segment the passages
    sentences: list[tuple[int, int]] | None = None


@dataclass
class AssembleOptions:
    unlinked: Literal["drop", "keep"] = "drop"
    # relations whose head or tail has no mention in the text: "error" (PubTator files state their own
    # entities) or "drop" (BioC full text read as title + abstract names entities of other passages)
    missing_entity: Literal["error", "drop"] = "error"


def assemble(raw: RawDocument, source: str, inventory: RelationInventory | None = None,
             options: AssembleOptions = AssembleOptions(), counts: dict | None = None) -> Document:
    """Sentences, tokens, entities and facts of `raw`; DocumentError names the line or annotation at fault."""
    where = raw.where or f"document {raw.id!r}"
    text = raw.text
    if not text.strip():
        raise DocumentError(source, where, "empty document (no text)")
    for m in raw.mentions:
        if m.start == m.end:
            raise DocumentError(source, f"{m.where}, document {raw.id!r}",
                                f"zero-length mention {m.text!r} at offset {m.start}")
        if m.start > m.end:
            raise DocumentError(source, f"{m.where}, document {raw.id!r}",
                                f"mention {m.text!r} ends before it starts ([{m.start}, {m.end}))")
        if not 0 <= m.start < m.end <= len(text):
            raise DocumentError(source, f"{m.where}, document {raw.id!r}",
                                f"mention {m.text!r} offsets [{m.start}, {m.end}) outside the text "
                                f"({len(text)} characters)")
        if text[m.start:m.end] != m.text:
            raise DocumentError(source, f"{m.where}, document {raw.id!r}",
                                f"mention {m.text!r} does not match the text at [{m.start}, {m.end}): "
                                f"{text[m.start:m.end]!r}")
    protected = [(m.start, m.end) for m in raw.mentions]
    boundaries = {c for s, e in protected for c in (s, e)}
    if raw.sentences:
        sents = raw.sentences
    else:
        sents = [span for a, b in raw.passages for span in sentence_spans(text, a, b, protected)]
    token_chars = sentence_tokens(text, sents, boundaries)
    sentences = [[text[a:b] for a, b in toks] for toks in token_chars]
    start_at, end_at = {}, {}
    for si, toks in enumerate(token_chars):
        for ti, (a, b) in enumerate(toks):
            start_at[a] = (si, ti)
            end_at[b] = (si, ti + 1)
    entities: list[Entity] = []
    by_key: dict[tuple[str, str], int] = {}
    by_id: dict[str, list[int]] = {}
    for m in raw.mentions:
        s_tok, e_tok = start_at.get(m.start), end_at.get(m.end)
        if s_tok is None or e_tok is None or s_tok[0] != e_tok[0]:
            raise DocumentError(source, f"{m.where}, document {raw.id!r}",
                                f"mention {m.text!r} [{m.start}, {m.end}) does not map to a token span in one "
                                f"sentence (it crosses a sentence or passage boundary)")
        mention = Mention(s_tok[0], s_tok[1], e_tok[1], m.text, m.start, m.end)
        if not m.ids:
            if options.unlinked == "keep":
                entities.append(Entity([mention], m.type, None))
            elif counts is not None:
                counts["unlinked mentions dropped"] = counts.get("unlinked mentions dropped", 0) + 1
            continue
        for kb in m.ids:
            key = entity_key(kb, m.type)
            if key not in by_key:
                by_key[key] = len(entities)
                by_id.setdefault(kb, []).append(len(entities))
                entities.append(Entity([], m.type, kb))
            ent = entities[by_key[key]]
            if not ent.mentions or ent.mentions[-1] != mention:
                ent.mentions.append(mention)
    facts: list[Fact] | None = [] if raw.labelled else None
    for r in raw.relations:
        ends = []
        for etype, kb in (r.head, r.tail):
            kb = normalize_id(kb)
            found = [i for i in by_id.get(kb, []) if not etype or entities[i].type == etype]
            if not found and etype:  # a type spelled differently (Mutation / Variant): fall back to the id
                found = by_id.get(kb, [])
            ends.append(found[0] if len(found) == 1 else None)
            if len(found) > 1:
                raise DocumentError(source, f"{r.where}, document {raw.id!r}",
                                    f"relation {r.relation} names {kb!r}, which is ambiguous "
                                    f"(entities of types {[entities[i].type for i in found]})")
        if None in ends:
            missing = [kb for (_, kb), e in zip((r.head, r.tail), ends) if e is None]
            if options.missing_entity == "error":
                raise DocumentError(source, f"{r.where}, document {raw.id!r}",
                                    f"relation {r.relation} points at entity {missing[0]!r}, which has no "
                                    f"mention in the document")
            if counts is not None:
                counts["relations without a mention in the text"] = \
                    counts.get("relations without a mention in the text", 0) + 1
            continue
        if _reversed(entities[ends[0]].type, entities[ends[1]].type, r.relation, inventory):
            ends.reverse()
            if counts is not None:
                key = f"{r.relation} relations written tail->head, turned around"
                counts[key] = counts.get(key, 0) + 1
        facts.append(Fact(ends[0], ends[1], r.relation))
    doc = Document(raw.id, sentences, entities, facts, raw.title, text, token_chars)
    return validate_document(doc, source, inventory, where)


_CDR_DIRECTION = {"CID": ("Chemical", "Disease")}  # CDR writes chemical first; some exports do not


def _reversed(head_type: str, tail_type: str, relation: str, inventory: RelationInventory | None) -> bool:
    """A relation whose entity types fit only the other way round (Disease->Chemical for CID).

    Such a fact would never be scored (no candidate pair holds it), so it is
    turned around and counted rather than kept silently useless.
    """
    if inventory is not None and inventory.pair_types is not None:
        return not inventory.is_candidate(head_type, tail_type) and inventory.is_candidate(tail_type, head_type)
    want = _CDR_DIRECTION.get(relation)
    return want is not None and (tail_type, head_type) == want


def join_passages(texts: Sequence[str], sep: str = " ") -> tuple[str, list[tuple[int, int]], list[int]]:
    """One text from passages joined by `sep`; returns it, each passage's span, and each passage's start."""
    text, spans, starts = "", [], []
    for t in texts:
        if text:
            text += sep
        starts.append(len(text))
        spans.append((len(text), len(text) + len(t)))
        text += t
    return text, spans, starts


_NAMESPACE_BY_TYPE = {"Gene": "NCBIGene", "Species": "NCBITaxon"}


def namespaced_id(kb_id: str | None, etype: str = "") -> str | None:
    """A normalised id with its namespace spelled out, for output read outside this project.

    ``D003920`` -> ``MESH:D003920``; a bare number of a Gene or Species ->
    ``NCBIGene:5562`` / ``NCBITaxon:9606``; ids that carry a namespace, and ids of
    other types, are returned as they are.
    """
    if kb_id is None:
        return None
    if ":" in kb_id:
        return kb_id
    if _MESH_SHAPED.match(kb_id):
        return f"MESH:{kb_id}"
    if kb_id.isdigit() and etype in _NAMESPACE_BY_TYPE:
        return f"{_NAMESPACE_BY_TYPE[etype]}:{kb_id}"
    return kb_id
