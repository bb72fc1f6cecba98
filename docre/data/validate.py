"""Checks every reader runs on each document before handing it on.

Each failure raises DocumentError naming the source, the document and the
problem, so a user can fix the record; lenient readers catch it and quarantine
the document instead (see `docre.data.io.read_documents`).
"""
from __future__ import annotations

from .document import Document, DocumentError, RelationInventory


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
