"""The document model every reader produces and every later stage consumes.

Positions are token positions inside one sentence (``start`` inclusive, ``end``
exclusive), as in DocRED. Character spans are kept when the source had raw text
(PubTator), so extracted triples can be traced back to the original abstract.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, asdict
from typing import Iterable

NO_RELATION = "Na"


class DocumentError(ValueError):
    """A bad input record; the message always names where it came from and why."""

    def __init__(self, source: str, where: str, problem: str, count: int = 1):
        self.source, self.where, self.problem = source, where, problem
        self.count = count  # documents the error stands for (a file rejected as a whole may hold several)
        super().__init__(f"{source}: {where}: {problem}")

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.problem}"


@dataclass
class Mention:
    sent_id: int
    start: int
    end: int
    text: str
    char_start: int | None = None
    char_end: int | None = None


@dataclass
class Entity:
    mentions: list[Mention]
    type: str
    kb_id: str | None = None  # e.g. a MeSH id; None when the source has no linking

    @property
    def name(self) -> str:
        return self.mentions[0].text if self.mentions else ""


@dataclass
class Fact:
    head: int  # index into Document.entities
    tail: int
    relation: str  # relation id, e.g. "P17" or "CID"
    evidence: list[int] = field(default_factory=list)


@dataclass
class Document:
    id: str
    sentences: list[list[str]]
    entities: list[Entity]
    facts: list[Fact] | None = None  # None: unlabelled (e.g. DocRED test)
    title: str = ""
    text: str | None = None  # raw text when the source had it (PubTator)
    token_chars: list[list[tuple[int, int]]] | None = None  # char span of each token in `text`

    @property
    def labelled(self) -> bool:
        return self.facts is not None

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sentences)

    def layout(self) -> tuple[str, list[list[tuple[int, int]]]]:
        """The text and each token's character span in it: the source's, or (DocRED, which has no raw text)
        rebuilt from the tokens joined by single spaces, so writers of raw-text formats can place mentions."""
        if self.text is not None and self.token_chars is not None:
            return self.text, self.token_chars
        text, token_chars = "", []
        for sent in self.sentences:
            spans = []
            for tok in sent:
                if text:
                    text += " "
                spans.append((len(text), len(text) + len(tok)))
                text += tok
            token_chars.append(spans)
        return text, token_chars

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Document":
        ents = [Entity([Mention(**m) for m in e["mentions"]], e["type"], e.get("kb_id")) for e in d["entities"]]
        facts = None if d.get("facts") is None else [Fact(**f) for f in d["facts"]]
        tc = d.get("token_chars")
        tc = None if tc is None else [[tuple(x) for x in s] for s in tc]
        return Document(d["id"], d["sentences"], ents, facts, d.get("title", ""), d.get("text"), tc)


@dataclass
class RelationInventory:
    """Relation ids in label order; index 0 is always the no-relation/threshold class.

    `pair_types` restricts which (head type, tail type) pairs are candidates
    (CDR: only Chemical -> Disease); None means every ordered pair of distinct
    entities. It is saved with every dataset and model so a model never scores
    pairs it was not trained on.
    """

    ids: list[str]
    names: dict[str, str] = field(default_factory=dict)
    pair_types: list[tuple[str, str]] | None = None
    # entity types of the training data (recorded by tokenization); None for inventories from before that
    entity_types: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.ids or self.ids[0] != NO_RELATION:
            self.ids = [NO_RELATION] + [r for r in self.ids if r != NO_RELATION]
        self.names.setdefault(NO_RELATION, "no relation")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"duplicate relation ids in inventory: {self.ids}")
        if self.pair_types is not None:
            self.pair_types = [tuple(p) for p in self.pair_types]
        self._index = {r: i for i, r in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, relation: str) -> int:
        return self._index[relation]

    def __contains__(self, relation: str) -> bool:
        return relation in self._index

    def name(self, relation: str) -> str:
        return self.names.get(relation, relation)

    def is_candidate(self, head_type: str, tail_type: str) -> bool:
        return self.pair_types is None or (head_type, tail_type) in self.pair_types

    def candidate_pairs(self, doc: Document) -> list[tuple[int, int]]:
        ents = doc.entities
        return [(h, t) for h in range(len(ents)) for t in range(len(ents))
                if h != t and self.is_candidate(ents[h].type, ents[t].type)]

    def to_json(self) -> str:
        d = {"ids": self.ids, "names": self.names, "pair_types": self.pair_types}
        if self.entity_types is not None:  # absent rather than null, so older cache keys stay the same
            d["entity_types"] = self.entity_types
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "RelationInventory":
        d = json.loads(text)
        return RelationInventory(d["ids"], d.get("names", {}), d.get("pair_types"), d.get("entity_types"))

    @staticmethod
    def from_documents(docs: Iterable[Document], pair_types=None) -> "RelationInventory":
        ids = sorted({f.relation for d in docs for f in (d.facts or [])})
        return RelationInventory(ids, {}, pair_types)


def keep_entity_types(doc: Document, types: set[str], counts: dict | None = None) -> Document:
    """`doc` without entities of other types (and without facts that involve them).

    A model only scores entity types it was trained on; the others are left out
    of its input and counted per type, so a curator sees what was skipped.
    """
    keep = [i for i, e in enumerate(doc.entities) if e.type in types]
    if len(keep) == len(doc.entities):
        return doc
    if counts is not None:
        for e in doc.entities:
            if e.type not in types:
                key = f"entities of type {e.type!r} left out"
                counts[key] = counts.get(key, 0) + 1
    new_index = {old: new for new, old in enumerate(keep)}
    facts = None if doc.facts is None else [
        Fact(new_index[f.head], new_index[f.tail], f.relation, f.evidence)
        for f in doc.facts if f.head in new_index and f.tail in new_index]
    return Document(doc.id, doc.sentences, [doc.entities[i] for i in keep], facts, doc.title, doc.text,
                    doc.token_chars)


def drop_unknown_relations(doc: Document, inventory: RelationInventory, counts: dict | None = None) -> Document:
    """`doc` without gold facts whose relation the inventory does not know (counted per relation).

    Prediction never needs gold labels, so labels from another schema
    (PubTator3's Association on a CDR model) must not stop it.
    """
    if not doc.facts or all(f.relation in inventory for f in doc.facts):
        return doc
    kept = []
    for f in doc.facts:
        if f.relation in inventory:
            kept.append(f)
        elif counts is not None:
            key = f"gold labels with relation {f.relation!r} ignored (not in the model's inventory)"
            counts[key] = counts.get(key, 0) + 1
    return Document(doc.id, doc.sentences, doc.entities, kept, doc.title, doc.text, doc.token_chars)


CDR_INVENTORY_ARGS = dict(ids=[NO_RELATION, "CID"], names={"CID": "chemical induces disease"},
                          pair_types=[("Chemical", "Disease")])


def cdr_inventory() -> RelationInventory:
    return RelationInventory(**{k: (list(v) if isinstance(v, list) else dict(v)) for k, v in CDR_INVENTORY_ARGS.items()})
