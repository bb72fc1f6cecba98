"""DocRED / Re-DocRED JSON: a list of {title, sents, vertexSet, labels?}.

JSON-lines files (one such object per line) are read the same way, which is
what bulk extraction inputs usually look like.
"""
from __future__ import annotations

import itertools
import json
from typing import Callable, Iterable, Iterator

from .document import Document, DocumentError, Entity, Fact, Mention, RelationInventory
from .validate import bad_utf8, each_document, validate_document


def read_rel_info(text: str) -> RelationInventory:
    """DocRED's rel_info.json maps Wikidata property ids to names."""
    info = json.loads(text)
    return RelationInventory(sorted(info, key=lambda p: int(p[1:]) if p[1:].isdigit() else p), dict(info))


def _document(raw: dict, source: str, where: str, inventory: RelationInventory | None) -> Document:
    def fail(problem: str):
        raise DocumentError(source, where, problem)

    if not isinstance(raw, dict):
        fail(f"expected a JSON object, got {type(raw).__name__}")
    for key in ("title", "sents", "vertexSet"):
        if key not in raw:
            fail(f"missing key {key!r}")
    sents = raw["sents"]
    if not isinstance(sents, list) or not all(isinstance(s, list) for s in sents):
        fail("'sents' must be a list of token lists")
    if not isinstance(raw["vertexSet"], list) or not all(isinstance(v, list) for v in raw["vertexSet"]):
        fail("'vertexSet' must be a list of mention lists")
    if "labels" in raw and not isinstance(raw["labels"], list):
        fail("'labels' must be a list")
    entities = []
    for ei, vertex in enumerate(raw["vertexSet"]):
        mentions = []
        for m in vertex:
            try:
                start, end = m["pos"]
                mentions.append(Mention(int(m["sent_id"]), int(start), int(end), str(m["name"])))
            except (KeyError, TypeError, ValueError) as e:
                fail(f"entity {ei}: malformed mention {m!r} ({e})")
        etype = vertex[0].get("type", "") if vertex else ""
        kb_id = vertex[0].get("kb_id") if vertex else None  # written by to_docred_dict (a MeSH id, say)
        entities.append(Entity(mentions, etype, None if kb_id is None else str(kb_id)))
    facts = None
    if "labels" in raw:
        facts = []
        for lab in raw["labels"]:
            try:
                facts.append(Fact(int(lab["h"]), int(lab["t"]), str(lab["r"]), [int(e) for e in lab.get("evidence", [])]))
            except (KeyError, TypeError, ValueError) as e:
                fail(f"malformed label {lab!r} ({e})")
    doc_id = raw.get("id") or raw["title"]  # written by to_docred_dict when the id is not the title (a PMID)
    doc = Document(id=str(doc_id), sentences=[[str(t) for t in s] for s in sents], entities=entities,
                   facts=facts, title=str(raw["title"]))
    return validate_document(doc, source, inventory, where)


def _complete_elements(text: str) -> int:
    """How many elements of a JSON array parse before the point where it breaks."""
    decoder, n, i = json.JSONDecoder(), 0, text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            _, i = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, ValueError):
            return n
        n += 1


def _whole(text: str, source: str, skipped: int):
    """Parse a whole-file JSON value (an array, or one pretty-printed object); reject it as a whole if broken."""
    for n, line in enumerate(text.splitlines(), skipped + 1):
        if (problem := bad_utf8(line)) is not None:
            raise DocumentError(source, f"line {n}", problem)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip())
        err = DocumentError(source, f"line {e.lineno + skipped}", f"invalid JSON{' (truncated file)' if truncated else ''}"
                                                                   f": {e.msg}; the file is rejected as a whole")
        if text.lstrip().startswith("["):  # what it stands for: the documents that parsed, plus the broken one
            err.count = _complete_elements(text) + 1
            err.problem += f" ({err.count} documents)"
        raise err from None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def _records(lines: Iterable[str], source: str, on_error) -> Iterator[tuple[str, object]]:
    """(where, raw object) for a JSON array or one object, or streamed line by line for JSON lines."""
    it = iter(lines.splitlines(keepends=True) if isinstance(lines, str) else lines)
    first, skipped = "", 0  # leading blank lines, so reported line numbers count from the file's start
    for first in it:
        if first.strip():
            break
        skipped += 1
    first = first.removeprefix("\ufeff")
    # one JSON array, or an object whose first line is not a whole JSON value (pretty-printed): parsed whole
    if first.lstrip().startswith("[") or (first.lstrip().startswith("{") and not _is_json(first)):
        data = _whole(first + "".join(it), source, skipped)
        for i, raw in enumerate(data if isinstance(data, list) else [data]):
            yield f"document {i}", raw
        return
    for n, line in enumerate(itertools.chain([first], it), skipped + 1):
        if not line.strip():
            continue
        try:
            if (problem := bad_utf8(line)) is not None:
                raise DocumentError(source, f"line {n}", problem)
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DocumentError(source, f"line {n}", f"invalid JSON: {e.msg}") from None
        except DocumentError as err:
            if on_error is None:
                raise err from None
            on_error(err)


def read_docred(lines: Iterable[str] | str, source: str, inventory: RelationInventory | None = None,
                on_error: Callable[[DocumentError], None] | None = None) -> Iterator[Document]:
    """Parse a DocRED JSON array or stream a JSON-lines file (a file object or a string).

    Documents are identified by title (DocRED has no other id) unless an
    object carries an "id" (as `to_docred_dict` writes for PubTator PMIDs), so
    duplicate ids are an error. With `on_error`, bad documents are handed to it and
    skipped; otherwise the first one raises.
    """
    def build(record: tuple[str, object]) -> tuple[Document, str]:
        where, raw = record
        title = raw.get("title") if isinstance(raw, dict) else None
        where = f"{where} ({title!r})" if title is not None else where
        return _document(raw, source, where, inventory), where
    yield from each_document(_records(lines, source, on_error), build, source, on_error)


def to_docred_dict(doc: Document) -> dict:
    def mention(m: Mention, e: Entity) -> dict:
        out = {"name": m.text, "pos": [m.start, m.end], "sent_id": m.sent_id, "type": e.type}
        if e.kb_id is not None:
            out["kb_id"] = e.kb_id  # not in DocRED; readers of the original format ignore it
        return out

    vertex_set = [[mention(m, e) for m in e.mentions] for e in doc.entities]
    out = {"title": doc.title or doc.id, "sents": doc.sentences, "vertexSet": vertex_set}
    if doc.id != out["title"]:
        out["id"] = doc.id  # DocRED has no id key; readers of the original format ignore the extra one
    if doc.facts is not None:
        out["labels"] = [{"h": f.head, "t": f.tail, "r": f.relation, "evidence": f.evidence} for f in doc.facts]
    return out


def write_docred(docs: Iterable[Document], jsonl: bool = False) -> str:
    """DocRED JSON array (or JSON lines); readers of the original format read it back."""
    dicts = [to_docred_dict(d) for d in docs]
    if jsonl:
        return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dicts)
    return json.dumps(dicts, ensure_ascii=False)
