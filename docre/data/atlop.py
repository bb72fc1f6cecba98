"""The tab-separated ``.data`` files of the ATLOP family (EoG preprocessing of CDR / GDA).

One line per document::

    pmid <TAB> text [<TAB> record]*

``text`` holds the tokenised sentences: sentences separated by ``|``, tokens by
single spaces. Each record describes one entity pair in 17 fields:

====  =====================================================================
 0    label: ``1:<REL>:2`` (``1:CID:2``, ``1:GDA:2``), ``1:NR:2`` (no relation)
      or ``not_include`` (a negative pair removed by EoG's hypernym filter;
      its entities are kept, the pair is not a training candidate)
 1    ``L2R`` / ``R2L``: whether arg1's first mention comes before arg2's
 2    ``CROSS`` / ``NON-CROSS``: ``NON-CROSS`` when some mention of arg1 and
      some mention of arg2 share a sentence
 3,4  the closest mention pair, as ``start-end`` token spans of arg1's and
      arg2's mention (EoG keeps it for sentence-level baselines)
 5    arg1 id (a database id; EoG joins merged ids with ``|``)
 6    arg1 mention names joined by ``|`` (informational)
 7    arg1 type
 8    arg1 mention start tokens joined by ``:``
 9    arg1 mention end tokens (exclusive) joined by ``:``
 10   arg1 mention sentence ids joined by ``:``
 11+  fields 5-10 again for arg2
====  =====================================================================

Token offsets are document-global (over the concatenated sentences).

Head and tail: EoG writes every pair with the relation's first argument as
arg1 (for CDR always the Chemical, for GDA the Gene, whatever the text order);
the direction field only records text order. This module therefore reads
``1:<REL>:2`` as ``Fact(arg1, arg2)`` and never swaps on ``R2L``. ATLOP's
``read_cdr``/``read_gda`` do swap head and tail on ``R2L``; that is harmless
there (a binary label over whichever orientation it picks) but would turn half
of the CID facts into Disease -> Chemical, which `cdr_inventory` never scores.

Fields 1-4 and 6 are derived data: the reader checks that 1 and 2 hold a known
value and otherwise ignores them; the writer recomputes all of them from the
mentions.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, NoReturn, Sequence

from .document import Document, DocumentError, Entity, Fact, Mention
from .validate import validate_document

RECORD_FIELDS = 17
NO_RELATION_LABEL = "1:NR:2"
NOT_INCLUDE = "not_include"
DIRECTIONS = ("L2R", "R2L")
CROSS_VALUES = ("CROSS", "NON-CROSS")


def relation_label(relation: str) -> str:
    """The record label the format uses for `relation` (``CID`` -> ``1:CID:2``)."""
    return f"1:{relation}:2"


@dataclass
class _Arg:
    """One side of a record: the entity it names and its mentions (global token spans)."""

    id: str
    type: str
    spans: list[tuple[int, int]]
    sent_ids: list[int]


def _read_line(line: str, n: int, source: str, relation: str) -> Document:
    fields = line.split("\t")
    pmid = fields[0]
    where = f"line {n}, document {pmid!r}"

    def fail(problem: str) -> NoReturn:
        raise DocumentError(source, where, problem)

    if len(fields) < 2:
        fail(f"wrong field count: expected the pmid, the text and 17-field pair records, "
             f"got {len(fields)} tab-separated field(s)")
    rest = fields[2:]
    if len(rest) % RECORD_FIELDS:
        fail(f"wrong field count: {len(rest)} fields after the text is not a multiple of "
             f"{RECORD_FIELDS} (each pair record has {RECORD_FIELDS} fields; "
             f"{len(rest) % RECORD_FIELDS} left over)")

    sentences = [s.split(" ") for s in fields[1].split("|")]
    sent_starts, total = [], 0
    for s in sentences:
        sent_starts.append(total)
        total += len(s)

    def ints(value: str, what: str, k: int, arg_id: str) -> list[int]:
        try:
            return [int(x) for x in value.split(":")]
        except ValueError:
            fail(f"record {k} ({arg_id!r}): non-integer {what} {value!r}")

    def parse_arg(rec: list[str], off: int, k: int) -> _Arg:
        arg_id, typ = rec[off], rec[off + 2]
        if not arg_id:
            fail(f"record {k}: empty entity id in field {off}")
        if not typ:
            fail(f"record {k} ({arg_id!r}): empty entity type")
        starts = ints(rec[off + 3], "start offset", k, arg_id)
        ends = ints(rec[off + 4], "end offset", k, arg_id)
        sids = ints(rec[off + 5], "sentence id", k, arg_id)
        if not len(starts) == len(ends) == len(sids):
            fail(f"record {k} ({arg_id!r}): {len(starts)} start offsets, {len(ends)} end offsets and "
                 f"{len(sids)} sentence ids; they must pair up")
        for s, e, sid in zip(starts, ends, sids):
            if not 0 <= s < e <= total:
                fail(f"record {k} ({arg_id!r}): mention span [{s}, {e}) is outside the text ({total} tokens)")
            si = bisect_right(sent_starts, s) - 1
            if e > sent_starts[si] + len(sentences[si]):
                fail(f"record {k} ({arg_id!r}): mention span [{s}, {e}) crosses the end of sentence {si}")
            if sid != si:
                fail(f"record {k} ({arg_id!r}): mention span [{s}, {e}) lies in sentence {si} "
                     f"but the record says sentence {sid}")
        return _Arg(arg_id, typ, list(zip(starts, ends)), sids)

    positive = relation_label(relation)
    entities: list[Entity] = []
    seen: dict[str, tuple[int, _Arg]] = {}
    facts: set[tuple[int, int]] = set()
    for k in range(len(rest) // RECORD_FIELDS):
        rec = rest[k * RECORD_FIELDS:(k + 1) * RECORD_FIELDS]
        label, direction, cross = rec[0], rec[1], rec[2]
        if label not in (positive, NO_RELATION_LABEL, NOT_INCLUDE):
            fail(f"record {k}: unknown label {label!r} (expected {positive!r}, "
                 f"{NO_RELATION_LABEL!r} or {NOT_INCLUDE!r})")
        if direction not in DIRECTIONS:
            fail(f"record {k}: bad direction {direction!r} (expected L2R or R2L)")
        if cross not in CROSS_VALUES:
            fail(f"record {k}: bad cross-sentence flag {cross!r} (expected CROSS or NON-CROSS)")
        idx = []
        for off in (5, 11):
            arg = parse_arg(rec, off, k)
            if arg.id in seen:
                i, first = seen[arg.id]
                if (first.type, first.spans) != (arg.type, arg.spans):
                    fail(f"record {k}: entity {arg.id!r} is listed with other type or mentions than in an "
                         f"earlier record (here {arg.type} {arg.spans}, before {first.type} {first.spans})")
            else:
                i = len(entities)
                seen[arg.id] = (i, arg)
                mentions = []
                for (s, e), sid in zip(arg.spans, arg.sent_ids):
                    local = s - sent_starts[sid]
                    mentions.append(Mention(sid, local, local + e - s, " ".join(sentences[sid][local:local + e - s])))
                entities.append(Entity(mentions, arg.type, arg.id))
            idx.append(i)
        if idx[0] == idx[1]:
            fail(f"record {k}: pairs entity {rec[5]!r} with itself")
        if label == positive:
            facts.add((idx[0], idx[1]))
    doc = Document(pmid, sentences, entities, [Fact(h, t, relation) for h, t in sorted(facts)])
    return validate_document(doc, source, where=where)


def read_atlop(lines: Iterable[str], source: str, relation: str = "CID",
               on_error: Callable[[DocumentError], None] | None = None) -> Iterator[Document]:
    """Stream documents from ``.data`` lines.

    Entities are numbered in order of first appearance: records in file order,
    arg1 before arg2 within a record, ``not_include`` and ``1:NR:2`` records
    included (EoG keeps the entities of filtered pairs). ATLOP numbers only
    the entities of non-``not_include`` records, head first, so its indices
    can differ from these. Mentions keep the record's order. Facts are the
    ``1:<relation>:2`` records as ``Fact(arg1, arg2, relation)`` (see the
    module docstring on ``R2L``), deduplicated and sorted by (head, tail) so a
    document does not depend on record order. ``1:NR:2`` and ``not_include``
    pairs are not stored: every labelled document's unlisted candidate pairs
    are no-relation anyway. Any other label is an error, so reading a GDA file
    with the default ``relation="CID"`` fails loudly instead of losing labels.

    A pmid seen before is skipped when its line is identical to the first one
    (ATLOP files repeat documents); a repeat with different content is
    reported as an error, as the first version was already yielded.

    A malformed line raises `DocumentError`; with `on_error`, the error is
    handed to it and that line's document is skipped.
    """
    first_seen: dict[str, tuple[int, str]] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        pmid = line.split("\t", 1)[0]
        try:
            if pmid in first_seen:
                first_line, first_text = first_seen[pmid]
                if line != first_text:
                    raise DocumentError(source, f"line {n}, document {pmid!r}",
                                        f"document id repeated with different content (first on line "
                                        f"{first_line}, which is kept); this line is skipped")
                continue
            first_seen[pmid] = (n, line)
            doc = _read_line(line, n, source, relation)
        except DocumentError as err:
            if on_error is None:
                raise
            on_error(err)
            continue
        yield doc


def _closest(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The mention pair with the fewest tokens between them (first such pair on ties)."""
    best, best_gap = (a[0], b[0]), None
    for sa in a:
        for sb in b:
            gap = max(0, sb[0] - sa[1]) if sa[0] <= sb[0] else max(0, sa[0] - sb[1])
            if best_gap is None or gap < best_gap:
                best, best_gap = (sa, sb), gap
    return best


def _record_order(order: list[int], pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Order the records so that reading them back meets the entities in `order`.

    A record introduces arg1 then arg2. For each entity not yet met, take a
    pair that joins it to an entity already met; failing that, a pair (it,
    next entity); failing that, any pair with it (the order then cannot be
    reproduced). After each step, every pair among met entities is emitted.
    """
    pending = sorted(pairs)
    seen: set[int] = set()
    out: list[tuple[int, int]] = []

    def take(p: tuple[int, int]) -> None:
        out.append(p)
        pending.remove(p)
        seen.update(p)

    for pos, k in enumerate(order):
        if k in seen:
            continue
        nxt = order[pos + 1] if pos + 1 < len(order) else None
        pick = next((p for p in pending if k in p and (p[1] if p[0] == k else p[0]) in seen), None)
        if pick is None:
            pick = next((p for p in pending if p == (k, nxt)), None)
        if pick is None:
            pick = next(p for p in pending if k in p)
        take(pick)
        for p in [p for p in pending if p[0] in seen and p[1] in seen]:
            take(p)
    return out


def _write_doc(doc: Document, relation: str, pair_types: Sequence[tuple[str, str]] | None,
               unpaired: str) -> str:
    def fail(problem: str) -> NoReturn:
        raise DocumentError("write_atlop", f"document {doc.id!r}", problem)

    if not doc.id or any(c in doc.id for c in "\t\r\n"):
        fail("the document id must be non-empty and free of tabs and line breaks")
    validate_document(doc, "write_atlop")
    for si, sent in enumerate(doc.sentences):
        if not sent:
            fail(f"sentence {si} has no tokens (an empty sentence cannot be written)")
        for tok in sent:
            if any(c in tok for c in " |\t\r\n"):
                fail(f"token {tok!r} in sentence {si} contains a space, '|', tab or line break, "
                     f"which the format uses as separators")
    sent_starts, total = [], 0
    for s in doc.sentences:
        sent_starts.append(total)
        total += len(s)

    ids: list[str] = []
    for ei, ent in enumerate(doc.entities):
        eid = ent.kb_id if ent.kb_id else f"UNK:{ei}"
        if any(c in eid + ent.type for c in "\t\r\n") or not ent.type:
            fail(f"entity {ei}: id {eid!r} / type {ent.type!r} must be non-empty and free of tabs and line breaks")
        if eid in ids:
            fail(f"entity {ei}: id {eid!r} is shared with entity {ids.index(eid)}; the format names entities by id")
        if not ent.mentions:
            fail(f"entity {ei} has no mentions")
        ids.append(eid)

    ents = doc.entities
    allowed = None if pair_types is None else {tuple(p) for p in pair_types}
    pairs = [(h, t) for h in range(len(ents)) for t in range(len(ents))
             if h != t and (allowed is None or (ents[h].type, ents[t].type) in allowed)]
    pair_set = set(pairs)
    positives = set()
    for f in doc.facts or []:
        if f.relation != relation:
            fail(f"fact {f.head}->{f.tail} has relation {f.relation!r}; this file holds only {relation!r}")
        if (f.head, f.tail) not in pair_set:
            fail(f"fact {f.head}->{f.tail} {f.relation} joins types ({ents[f.head].type}, {ents[f.tail].type}), "
                 f"which are not among the pair types {sorted(allowed) if allowed else None}")
        positives.add((f.head, f.tail))
    paired = {i for p in pairs for i in p}
    lonely = [i for i in range(len(ents)) if i not in paired]
    if lonely and unpaired == "error":
        fail(f"entities {lonely} ({', '.join(repr(ids[i]) for i in lonely)}) are in no candidate pair, so the "
             f"format cannot hold them; pass unpaired='drop' to leave them out")

    spans = [[(sent_starts[m.sent_id] + m.start, sent_starts[m.sent_id] + m.end) for m in e.mentions] for e in ents]

    def arg_fields(i: int) -> list[str]:
        e = ents[i]
        return [ids[i],
                "|".join(" ".join(doc.sentences[m.sent_id][m.start:m.end]) for m in e.mentions),
                e.type,
                ":".join(str(s) for s, _ in spans[i]),
                ":".join(str(t) for _, t in spans[i]),
                ":".join(str(m.sent_id) for m in e.mentions)]

    fields = [doc.id, "|".join(" ".join(s) for s in doc.sentences)]
    for h, t in _record_order(sorted(paired), pairs):
        label = relation_label(relation) if (h, t) in positives else NO_RELATION_LABEL
        direction = "L2R" if min(spans[h]) <= min(spans[t]) else "R2L"
        shared = {m.sent_id for m in ents[h].mentions} & {m.sent_id for m in ents[t].mentions}
        (a, b) = _closest(spans[h], spans[t])
        fields += [label, direction, "NON-CROSS" if shared else "CROSS", f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}"]
        fields += arg_fields(h) + arg_fields(t)
    return "\t".join(fields) + "\n"


def write_atlop(docs: Iterable[Document], relation: str = "CID",
                pair_types: Sequence[tuple[str, str]] | None = (("Chemical", "Disease"),),
                unpaired: Literal["error", "drop"] = "error",
                on_error: Callable[[DocumentError], None] | None = None) -> Iterator[str]:
    """``.data`` lines (newline-terminated) for `docs`, one record per candidate pair.

    Candidates are the ordered (head, tail) pairs whose types are in
    `pair_types` (None: every ordered pair of distinct entities); the head is
    written as arg1, labelled ``1:<relation>:2`` when it is a fact and
    ``1:NR:2`` otherwise. Direction, cross flag and closest mentions are
    recomputed. Records are ordered so that `read_atlop` numbers the entities
    as the document does, which holds for every document `read_atlop`
    produced, so ``read(write(docs)) == docs`` for them (``not_include``
    marks are lost: a Document has no place for them). Other entity orders
    are kept where the record layout allows.

    What the format cannot hold is an error, never dropped silently: a fact
    with another relation or on a non-candidate pair, tokens containing
    separators, and entities in no candidate pair (a Chemical in an abstract
    without Diseases) unless ``unpaired="drop"``. Entities without a kb_id
    are written as ``UNK:<index>``. An unlabelled document (facts None) is
    written with every pair ``1:NR:2`` and reads back with ``facts == []``,
    as the format has no unlabelled marker. With `on_error`, a document that
    cannot be written is handed over as a `DocumentError` and skipped.
    """
    if unpaired not in ("error", "drop"):
        raise ValueError(f"unpaired must be 'error' or 'drop', got {unpaired!r}")
    for doc in docs:
        try:
            line = _write_doc(doc, relation, pair_types, unpaired)
        except DocumentError as err:
            if on_error is None:
                raise
            on_error(err)
            continue
        yield line
