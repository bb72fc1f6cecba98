"""Dataset statistics, computed with polars over one row per document."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import polars as pl

from .document import Document, RelationInventory
from .tokenize import encode_document


def document_table(docs: Iterable[Document], inventory: RelationInventory | None = None,
                   tokenizer=None, marker: str = "*") -> tuple[pl.DataFrame, Counter]:
    """Per-document counts, and the fact count per relation id over all documents."""
    rows, relations = [], Counter()
    for d in docs:
        facts = d.facts or []
        relations.update(f.relation for f in facts)
        n_subwords = None
        if tokenizer is not None:
            n_subwords = encode_document(d, tokenizer, inventory or RelationInventory.from_documents([d]),
                                         marker, with_document=False)["num_tokens"]
        rows.append({
            "doc_id": d.id,
            "labelled": d.labelled,
            "sentences": len(d.sentences),
            "words": d.num_tokens,
            "entities": len(d.entities),
            "mentions": sum(len(e.mentions) for e in d.entities),
            "candidate_pairs": len(inventory.candidate_pairs(d)) if inventory else len(d.entities) * (len(d.entities) - 1),
            "facts": len(facts),
            "positive_pairs": len({(f.head, f.tail) for f in facts}),
            "subwords": n_subwords,
        })
    # a full schema, so an empty input gives an empty table with the right columns (0 documents), not a crash
    schema = {"doc_id": pl.String, "labelled": pl.Boolean, "sentences": pl.Int64, "words": pl.Int64,
              "entities": pl.Int64, "mentions": pl.Int64, "candidate_pairs": pl.Int64, "facts": pl.Int64,
              "positive_pairs": pl.Int64, "subwords": pl.Int64}
    return pl.DataFrame(rows, schema=schema), relations


def summarize(table: pl.DataFrame, relations: Counter, limit: int = 512) -> dict:
    s = table.select(
        pl.len().alias("documents"),
        pl.col("labelled").sum().alias("labelled_documents"),
        pl.col("sentences").sum(), pl.col("words").sum(),
        pl.col("entities").sum(), pl.col("entities").max().fill_null(0).alias("max_entities_per_doc"),
        pl.col("mentions").sum(), pl.col("candidate_pairs").sum(),
        pl.col("positive_pairs").sum(), pl.col("facts").sum(),
    ).to_dicts()[0]
    if table["subwords"].null_count() < len(table):
        sub = table["subwords"]
        s.update(subwords_mean=round(sub.mean(), 1), subwords_p50=int(sub.median()),
                 subwords_p95=int(sub.quantile(0.95)), subwords_max=int(sub.max()),
                 docs_over_limit=int((sub > limit).sum()))
    s["relations"] = dict(sorted(relations.items(), key=lambda kv: -kv[1]))
    return s


def format_summary(summary: dict, source: str, limit: int = 512) -> str:
    lines = [f"# {source}"]
    for k, v in summary.items():
        if k == "relations":
            continue
        label = f"docs_over_{limit}_subwords" if k == "docs_over_limit" else k
        lines.append(f"{label:>24}: {v:,}" if isinstance(v, int) else f"{label:>24}: {v}")
    rels = summary["relations"]
    lines.append(f"{'relation ids used':>24}: {len(rels)}")
    for r, n in list(rels.items())[:15]:
        lines.append(f"{'':>24}  {r}: {n:,}")
    if len(rels) > 15:
        lines.append(f"{'':>24}  ... {len(rels) - 15} more")
    return "\n".join(lines)
