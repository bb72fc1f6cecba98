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
    if not isinstance(info, dict) or not info or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in info.items()):
        raise ValueError("rel_info.json must map relation ids to names")
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


def _line_of(text: str, pos: int, skipped: int) -> int:
    return text.count("\n", 0, pos) + 1 + skipped


def _json_error(source: str, text: str, e: json.JSONDecodeError, skipped: int, what: str) -> DocumentError:
    # a string still open where the text ends runs to the end: JSON strings cannot hold a raw line break
    truncated = e.pos >= len(text.rstrip()) or (e.msg.startswith("Unterminated string") and "\n" not in text[e.pos:])
    rest = "" if truncated else "; the rest of the file is unreadable"
    err = DocumentError(source, f"line {e.lineno + skipped}{what}",
                        f"invalid JSON{' (truncated file)' if truncated else ''}: {e.msg}{rest}")
    err.syntax = True  # where the bytes broke, this is the cut's doing: the reader reports the cut instead
    return err


def array_elements(text: str, source: str, skipped: int = 0, start: int | None = None,
                   then: str = "") -> Iterator[tuple[str, object]]:
    """(where, element) of a JSON array, one element at a time.

    A truncated or broken array keeps every element before the break; the
    break itself raises one DocumentError for the element it is in. An element
    with bytes that are not UTF-8 comes back as a DocumentError in place of the
    element, so only that document is refused. `start` is the array's ``[``
    (default: the first in `text`); `then` is what may follow its ``]`` (the
    rest of an enclosing object), else only white space may.
    """
    decoder = json.JSONDecoder()
    i, n = (text.index("[") if start is None else start) + 1, 0
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i < len(text) and text[i] == "]":
            if text[i + 1:].strip() and not text[i + 1:].lstrip().startswith(then or "\0"):
                raise DocumentError(source, f"line {_line_of(text, i + 1, skipped)}",
                                    "invalid JSON: extra data after the array")
            return
        if n and i < len(text):
            if text[i] != ",":
                err = DocumentError(source, f"line {_line_of(text, i, skipped)}, document {n}",
                                    "invalid JSON: expected ',' or ']' between documents; the rest of the file "
                                    "is unreadable")
                err.syntax = True
                raise err
            i += 1
        start = i
        try:
            element, i = decoder.raw_decode(text, _skip_space(text, i))
        except json.JSONDecodeError as e:
            raise _json_error(source, text, e, skipped, f", document {n}") from None
        bad = next((k for k in range(start, i) if "\udc80" <= text[k] <= "\udcff"), None)
        if bad is not None:
            line_start = text.rfind("\n", 0, bad) + 1
            problem = bad_utf8(text[line_start:text.find("\n", bad) if "\n" in text[bad:] else len(text)])
            yield f"document {n}", DocumentError(source, f"line {_line_of(text, bad, skipped)}", problem)
        else:
            yield f"document {n}", element
        n += 1


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _whole(text: str, source: str, skipped: int):
    """Parse a whole-file JSON value (one pretty-printed object); reject it as a whole if broken."""
    for n, line in enumerate(text.splitlines(), skipped + 1):
        if (problem := bad_utf8(line)) is not None:
            raise DocumentError(source, f"line {n}", problem)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(source, text, e, skipped, "") from None


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
    if first.lstrip().startswith("["):  # one JSON array: element by element, so a cut keeps those before it
        parts, broken = [first], None
        try:
            parts.extend(it)
        except DocumentError as err:  # the byte stream broke: read what arrived, then say where it broke
            broken = err
        try:
            yield from array_elements("".join(parts), source, skipped)
        except DocumentError as err:
            if broken is None or not getattr(err, "syntax", False):
                raise
        if broken is not None:
            raise broken
        return
    # an object whose first line is not a whole JSON value (pretty-printed): parsed whole
    if first.lstrip().startswith("{") and not _is_json(first):
        yield "document 0", _whole(first + "".join(it), source, skipped)
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
                err = DocumentError(source, f"line {n}", f"invalid JSON: {e.msg}")
                err.syntax = not line.endswith("\n")  # the last line, cut short where the bytes broke
                raise err from None
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
        if isinstance(raw, DocumentError):  # an element refused while parsing (bytes that are not UTF-8)
            raise raw
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
