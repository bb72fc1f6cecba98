"""Scoring document-level relation extraction output.

Everything here works on plain prediction tuples ``(doc_id, head, tail,
relation)`` so any model, baseline or hand-written file can be scored the same
way, and scores are comparable with published numbers:

* `docred_scores` follows the semantics of the official DocRED evaluation
  script (P/R/F1 and Ign F1) and adds the intra-/inter-sentence and Infer-F1
  breakdowns that papers report next to it.
* `cdr_scores` is the CDR/GDA convention: F1 on one positive relation at
  (document, head entity, tail entity) level.
* `write_docred_result` / `read_docred_result` produce and read the CodaLab
  ``result.json`` so test-set predictions can be submitted and re-scored.
* `format_table` renders scores as markdown for reports.

Conventions shared by all functions:

* Duplicate predictions count once (the official script de-duplicates too).
* A prediction whose relation is ``"Na"`` (the no-relation class) is counted
  exactly as the official DocRED script counts it: it is a submitted answer
  (it lowers precision) that can never be correct, since gold has no ``Na``.
  Our own writers never emit ``Na``; another system's ``result.json`` may.
* A prediction naming a document that is not in the gold set is an error
  (``ValueError`` naming the id) rather than being silently counted wrong,
  because it almost always means predictions and gold come from different
  splits.
"""
from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Mapping, NamedTuple, Sequence, Union

from ..data.document import Document, RelationInventory

__all__ = [
    "Prediction", "PRF", "DocREDScores", "as_prediction", "docred_scores", "docred_doc_counts", "cdr_scores",
    "inference_pairs", "write_docred_result", "read_docred_result", "format_table",
]


class Prediction(NamedTuple):
    """One predicted fact; entity indices point into ``Document.entities``."""

    doc_id: str
    head: int
    tail: int
    relation: str


def as_prediction(obj: Any) -> Prediction:
    """Accept a 4-tuple or any object with doc_id/head/tail/relation attributes.

    Duck typing lets model output objects be scored without converting them first.
    """
    if all(hasattr(obj, a) for a in ("doc_id", "head", "tail", "relation")):
        doc_id, head, tail, relation = obj.doc_id, obj.head, obj.tail, obj.relation
    else:
        try:
            doc_id, head, tail, relation = obj
        except (TypeError, ValueError):
            raise ValueError(f"a prediction must be (doc_id, head, tail, relation) or have those "
                             f"attributes, got {obj!r}") from None
    try:
        return Prediction(str(doc_id), operator.index(head), operator.index(tail), str(relation))
    except TypeError:
        raise ValueError(f"prediction {obj!r}: head and tail must be integer entity indices") from None


@dataclass(frozen=True)
class PRF:
    """Counts plus the precision/recall/F1 derived from them (0 where undefined)."""

    tp: int
    n_pred: int
    n_gold: int
    precision: float
    recall: float
    f1: float

    @staticmethod
    def from_counts(tp: int, n_pred: int, n_gold: int) -> "PRF":
        p = _div(tp, n_pred)
        r = _div(tp, n_gold)
        return PRF(tp, n_pred, n_gold, p, r, _f1(p, r))


@dataclass
class DocREDScores:
    """All DocRED-style numbers for one prediction set (fractions in [0, 1]).

    `counts` holds the raw numbers behind every ratio (keys such as ``pred``,
    ``gold``, ``correct``, ``correct_in_train``, ``intra_pred`` ...), so a
    report can show them and scores over several runs can be re-derived.
    """

    precision: float
    recall: float
    f1: float
    ign_precision: float
    ign_f1: float
    intra_precision: float
    intra_recall: float
    intra_f1: float
    inter_precision: float
    inter_recall: float
    inter_f1: float
    infer_precision: float
    infer_recall: float
    infer_f1: float
    per_relation: dict[str, PRF] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _gold_index(gold: Sequence[Document]) -> dict[str, Document]:
    index: dict[str, Document] = {}
    for doc in gold:
        if doc.id in index:
            raise ValueError(f"duplicate gold document id {doc.id!r}")
        if doc.facts is None:
            raise ValueError(f"gold document {doc.id!r} is unlabelled (facts is None) and cannot be scored")
        index[doc.id] = doc
    return index


def _collect(predictions: Iterable[Any], docs: Mapping[str, Document]) -> set[Prediction]:
    """Normalise, validate and de-duplicate predictions ("Na" ones stay: the official scorer counts them)."""
    out: set[Prediction] = set()
    for obj in predictions:
        p = as_prediction(obj)
        doc = docs.get(p.doc_id)
        if doc is None:
            raise ValueError(f"prediction for unknown document id {p.doc_id!r}")
        n = len(doc.entities)
        if not (0 <= p.head < n and 0 <= p.tail < n):
            raise ValueError(f"prediction {tuple(p)!r}: entity index out of range for document "
                             f"{p.doc_id!r} with {n} entities")
        out.add(p)
    return out


def _gold_facts(docs: Mapping[str, Document]) -> set[Prediction]:
    return {Prediction(d.id, f.head, f.tail, f.relation) for d in docs.values() for f in d.facts or []}


def _entity_sentences(doc: Document) -> list[frozenset[int]]:
    return [frozenset(m.sent_id for m in e.mentions) for e in doc.entities]


def inference_pairs(doc: Document) -> set[tuple[int, int]]:
    """Ordered (head, tail) pairs of `doc` whose gold facts take part in relational inference.

    A pair qualifies when it is one side of a gold triangle: (h, r1, o), (o, r2, t)
    and (h, r3, t) are all gold facts with h, o, t distinct (the GAIN criterion).
    Whether a fact is an inference fact depends only on its entity pair, since any
    other relation on the same pair closes the same triangle.
    """
    pairs = {(f.head, f.tail) for f in doc.facts or [] if f.head != f.tail}
    succ: dict[int, set[int]] = {}
    for h, t in pairs:
        succ.setdefault(h, set()).add(t)
    found: set[tuple[int, int]] = set()
    for h, o in pairs:
        for t in succ.get(o, ()):
            if t != h and (h, t) in pairs:
                found.update({(h, o), (o, t), (h, t)})
    return found


def _train_name_facts(train: Sequence[Document]) -> set[tuple[str, str, str]]:
    """(head mention name, tail mention name, relation) for every training fact, as in DocRED."""
    names: set[tuple[str, str, str]] = set()
    for doc in train:
        if doc.facts is None:
            raise ValueError(f"training document {doc.id!r} is unlabelled (facts is None)")
        for f in doc.facts:
            for m1 in doc.entities[f.head].mentions:
                for m2 in doc.entities[f.tail].mentions:
                    names.add((m1.text, m2.text, f.relation))
    return names


def docred_scores(gold: Sequence[Document], predictions: Iterable[Any],
                  train: Sequence[Document] | None = None,
                  inventory: RelationInventory | None = None) -> DocREDScores:
    """Score predictions the way the official DocRED script does, plus common breakdowns.

    * precision = correct / submitted, recall = correct / gold facts.
    * Ign: a correct prediction is "in train" when some (head mention name, tail
      mention name, relation) of it also occurs among the training facts;
      ign_precision = (correct - in_train) / (submitted - in_train), recall is
      unchanged. Without `train`, ign_precision/ign_f1 equal precision/f1.
      This discounts facts a model could have memorised from training data.
    * Intra/inter: a fact (gold or predicted) is intra-sentence when some head
      mention and some tail mention share a sentence, inter otherwise; each side
      is scored only against facts of its own kind.
    * Infer (GAIN, Zeng et al. 2020): restricted to entity pairs returned by
      `inference_pairs` (pairs of some gold triangle). Recall = correct
      predictions on those pairs / gold facts on those pairs; precision =
      correct predictions on those pairs / all predictions on those pairs.
      Predictions elsewhere are ignored, so the number isolates how well the
      facts that need multi-hop reasoning are found (GAIN's released code does
      not include this metric; this is our reading of its description).

    Gold documents must be labelled and have unique ids.
    """
    docs = _gold_index(gold)
    preds = _collect(predictions, docs)
    gold_facts = _gold_facts(docs)
    correct = preds & gold_facts

    in_train = 0
    if train is not None:
        train_names = _train_name_facts(train)
        for p in correct:
            ents = docs[p.doc_id].entities
            if any((m1.text, m2.text, p.relation) in train_names
                   for m1 in ents[p.head].mentions for m2 in ents[p.tail].mentions):
                in_train += 1

    sents = {doc_id: _entity_sentences(d) for doc_id, d in docs.items()}

    def is_intra(f: Prediction) -> bool:
        s = sents[f.doc_id]
        return bool(s[f.head] & s[f.tail])

    infer = {doc_id: inference_pairs(d) for doc_id, d in docs.items()}

    def is_infer(f: Prediction) -> bool:
        return (f.head, f.tail) in infer[f.doc_id]

    def split(selected) -> PRF:
        return PRF.from_counts(sum(1 for f in correct if selected(f)),
                               sum(1 for f in preds if selected(f)),
                               sum(1 for f in gold_facts if selected(f)))

    overall = PRF.from_counts(len(correct), len(preds), len(gold_facts))
    intra = split(is_intra)
    inter = split(lambda f: not is_intra(f))
    inf = split(is_infer)

    if train is None:
        ign_p = overall.precision
    else:
        ign_p = _div(len(correct) - in_train, len(preds) - in_train)

    relations = sorted({f.relation for f in gold_facts} | {f.relation for f in preds})
    per_relation = {r: split(lambda f, r=r: f.relation == r) for r in relations}

    counts = {"pred": len(preds), "gold": len(gold_facts), "correct": len(correct),
              "correct_in_train": in_train}
    if inventory is not None:
        # gold facts on pairs the inventory's type filter never proposes: no model can predict them, so they
        # stay in the recall denominator as misses (the official scorer's rule) and are counted apart
        counts["unscoreable_gold"] = sum(
            1 for f in gold_facts
            if not inventory.is_candidate(docs[f.doc_id].entities[f.head].type, docs[f.doc_id].entities[f.tail].type))
    for name, prf in (("intra", intra), ("inter", inter), ("infer", inf)):
        counts.update({f"{name}_pred": prf.n_pred, f"{name}_gold": prf.n_gold, f"{name}_correct": prf.tp})

    return DocREDScores(
        precision=overall.precision, recall=overall.recall, f1=overall.f1,
        ign_precision=ign_p, ign_f1=_f1(ign_p, overall.recall),
        intra_precision=intra.precision, intra_recall=intra.recall, intra_f1=intra.f1,
        inter_precision=inter.precision, inter_recall=inter.recall, inter_f1=inter.f1,
        infer_precision=inf.precision, infer_recall=inf.recall, infer_f1=inf.f1,
        per_relation=per_relation, counts=counts,
    )


def docred_doc_counts(gold: Sequence[Document], predictions: Iterable[Any]) -> dict[str, tuple[int, int, int]]:
    """Per gold document id: (correct, submitted, gold facts), the counts behind `docred_scores`' P/R/F1.

    DocRED's F1 is micro over facts, F1 = 2 * correct / (submitted + gold), so
    these three numbers per document are all that a resampling of documents
    needs: a bootstrap sums them per resample instead of re-scoring. The same
    conventions as `docred_scores` apply (duplicates once, "Na" submitted but
    never correct, unknown document ids are an error), so the sums over all
    documents equal its ``counts`` pred / gold / correct.
    """
    docs = _gold_index(gold)
    preds = _collect(predictions, docs)
    gold_facts = _gold_facts(docs)
    counts = {doc_id: [0, 0, 0] for doc_id in docs}
    for f in gold_facts:
        counts[f.doc_id][2] += 1
    for p in preds:
        c = counts[p.doc_id]
        c[1] += 1
        if p in gold_facts:
            c[0] += 1
    return {doc_id: (c[0], c[1], c[2]) for doc_id, c in counts.items()}


def cdr_scores(gold: Sequence[Document], predictions: Iterable[Any], relation: str = "CID") -> PRF:
    """P/R/F1 on one positive relation at (document, head, tail) level, as CDR/GDA papers report.

    Predictions of other relations are ignored; those benchmarks have a single
    positive class, so anything else is "no relation".
    """
    docs = _gold_index(gold)
    preds = {(p.doc_id, p.head, p.tail) for p in _collect(predictions, docs) if p.relation == relation}
    golds = {(f.doc_id, f.head, f.tail) for f in _gold_facts(docs) if f.relation == relation}
    return PRF.from_counts(len(preds & golds), len(preds), len(golds))


def _result_title(doc: Document) -> str:
    # Same fallback as the DocRED writer: documents read from DocRED have id == title.
    return doc.title or doc.id


def write_docred_result(docs: Sequence[Document], predictions: Iterable[Any],
                        path_or_file: Union[str, os.PathLike, IO[str]]) -> int:
    """Write the CodaLab ``result.json``: a JSON list of {title, h_idx, t_idx, r}.

    The leaderboard identifies documents by title, so each prediction's doc id is
    mapped to its document's title (or its id when the title is empty).
    Duplicates are dropped; "Na" predictions are written like any other, so the
    file scores exactly as the predictions do; order is otherwise kept.
    Returns the number of records written.
    """
    index = {d.id: d for d in docs}
    seen: set[Prediction] = set()
    records = []
    for obj in predictions:
        p = as_prediction(obj)
        if p.doc_id not in index:
            raise ValueError(f"prediction for unknown document id {p.doc_id!r}")
        if p in seen:
            continue
        seen.add(p)
        records.append({"title": _result_title(index[p.doc_id]), "h_idx": p.head, "t_idx": p.tail,
                        "r": p.relation})
    if hasattr(path_or_file, "write"):
        json.dump(records, path_or_file, ensure_ascii=False)
    else:
        with open(path_or_file, "w", encoding="utf-8") as fh:
            json.dump(records, fh, ensure_ascii=False)
    return len(records)


def read_docred_result(path: Union[str, os.PathLike, IO[str]], docs: Sequence[Document]) -> list[Prediction]:
    """Read a ``result.json`` back into predictions, matching titles to `docs`.

    Lets a submitted file (ours or another system's) be re-scored locally.
    Extra keys such as ``evidence`` are ignored.
    """
    by_title: dict[str, Document] = {}
    for d in docs:
        t = _result_title(d)
        if t in by_title:
            raise ValueError(f"duplicate document title {t!r}: result.json records cannot be matched")
        by_title[t] = d
    if hasattr(path, "read"):
        records = json.load(path)
        source = getattr(path, "name", "<result.json>")
    else:
        with open(path, encoding="utf-8") as fh:
            records = json.load(fh)
        source = os.fspath(path)
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of predictions")
    out = []
    for i, rec in enumerate(records):
        try:
            title, h, t, r = rec["title"], int(rec["h_idx"]), int(rec["t_idx"]), str(rec["r"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: record {i}: malformed prediction {rec!r} ({e})") from None
        doc = by_title.get(title)
        if doc is None:
            raise ValueError(f"{source}: record {i}: unknown document title {title!r}")
        out.append(Prediction(doc.id, h, t, r))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_table(scores: Union[DocREDScores, PRF], names: Mapping[str, str] | None = None,
                 per_relation: bool = True) -> str:
    """Markdown table of the headline numbers (percent), then one line per relation.

    Meant for experiment reports; `names` maps relation ids to readable names.
    Relations are listed by gold frequency, most frequent first.
    """
    if isinstance(scores, PRF):
        return "\n".join([
            "| TP | Pred | Gold | P | R | F1 |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {scores.tp} | {scores.n_pred} | {scores.n_gold} | {_pct(scores.precision)} "
            f"| {_pct(scores.recall)} | {_pct(scores.f1)} |",
        ]) + "\n"
    s = scores
    rows = [
        ("All", s.precision, s.recall, s.f1),
        ("Ign", s.ign_precision, s.recall, s.ign_f1),
        ("Intra", s.intra_precision, s.intra_recall, s.intra_f1),
        ("Inter", s.inter_precision, s.inter_recall, s.inter_f1),
        ("Infer", s.infer_precision, s.infer_recall, s.infer_f1),
    ]
    lines = ["| Metric | P | R | F1 |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {_pct(p)} | {_pct(r)} | {_pct(f)} |" for n, p, r, f in rows]
    if per_relation and s.per_relation:
        names = names or {}
        lines += ["", "| Relation | TP | Pred | Gold | P | R | F1 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for rel, prf in sorted(s.per_relation.items(), key=lambda kv: (-kv[1].n_gold, kv[0])):
            label = f"{rel} ({names[rel]})" if rel in names and names[rel] != rel else rel
            label = label.replace("|", "\\|")
            lines.append(f"| {label} | {prf.tp} | {prf.n_pred} | {prf.n_gold} | {_pct(prf.precision)} "
                         f"| {_pct(prf.recall)} | {_pct(prf.f1)} |")
    return "\n".join(lines) + "\n"
