"""Checks every reader runs on each document before handing it on.

Each failure raises DocumentError naming the source, the document and the
problem, so a user can fix the record; lenient readers catch it and quarantine
the document instead (see `docre.data.io.read_documents`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

from .document import Document, DocumentError, RelationInventory

T = TypeVar("T")


def bad_utf8(line: str) -> str | None:
    """Where a line decoded with ``surrogateescape`` holds bytes that are not UTF-8, as a message.

    Text readers decode that way (`docre.data.io.iter_lines`) so one bad byte
    quarantines the document it is in, not the whole file.
    """
    for i, ch in enumerate(line):
        if "\udc80" <= ch <= "\udcff":
            col = len(line[:i].encode("utf-8", "surrogateescape"))
            return f"byte {col + 1} of the line is not valid UTF-8 (0x{ord(ch) - 0xdc00:02x})"
    return None


def each_document(items: Iterable[T], build: Callable[[T], tuple[Document, str]], source: str,
                  on_error: Callable[[DocumentError], None] | None) -> Iterator[Document]:
    """Every reader's loop: build each record (document, where), refuse a second document with the same id.

    A bad record raises DocumentError, or, with `on_error` (lenient mode), is
    handed to it and skipped; reading goes on with the next record.
    """
    seen: set[str] = set()
    for item in items:
        try:
            doc, where = build(item)
            if doc.id in seen:
                raise DocumentError(source, where, f"duplicate document id {doc.id!r}")
            seen.add(doc.id)
            yield doc
        except DocumentError as err:
            if on_error is None:
                raise
            on_error(err)


def validate_document(doc: Document, source: str, inventory: RelationInventory | None = None,
                      where: str | None = None) -> Document:
    where = where or f"document {doc.id!r}"

    def fail(problem: str) -> None:
        raise DocumentError(source, where, problem)

    if not doc.id:
        fail("document has no id")
    if not doc.sentences or all(len(s) == 0 for s in doc.sentences):
        fail("empty document (no tokens)")
    for ei, ent in enumerate(doc.entities):
        if not ent.mentions:
            fail(f"entity {ei} has no mentions")
        for m in ent.mentions:
            if not 0 <= m.sent_id < len(doc.sentences):
                fail(f"entity {ei} mention {m.text!r}: sentence {m.sent_id} outside the document "
                     f"({len(doc.sentences)} sentences)")
            sent = doc.sentences[m.sent_id]
            if not 0 <= m.start < m.end <= len(sent):
                fail(f"entity {ei} mention {m.text!r}: token span [{m.start}, {m.end}) outside "
                     f"sentence {m.sent_id} ({len(sent)} tokens)")
            if doc.text is not None and m.char_start is not None:
                if not 0 <= m.char_start < m.char_end <= len(doc.text):
                    fail(f"entity {ei} mention {m.text!r}: character offsets [{m.char_start}, "
                         f"{m.char_end}) outside the text ({len(doc.text)} characters)")
                if doc.text[m.char_start:m.char_end] != m.text:
                    fail(f"entity {ei} mention {m.text!r} does not match the text at its offsets "
                         f"[{m.char_start}, {m.char_end}): {doc.text[m.char_start:m.char_end]!r}")
    for f in doc.facts or []:
        for role, idx in (("head", f.head), ("tail", f.tail)):
            if not 0 <= idx < len(doc.entities):
                fail(f"label {f.head}->{f.tail} {f.relation}: {role} points at missing entity {idx} "
                     f"(document has {len(doc.entities)} entities)")
        if inventory is not None and f.relation not in inventory:
            fail(f"label {f.head}->{f.tail}: unknown relation id {f.relation!r}")
        for e in f.evidence:
            if not 0 <= e < len(doc.sentences):
                fail(f"label {f.head}->{f.tail} {f.relation}: evidence sentence {e} outside the document")
    return doc
