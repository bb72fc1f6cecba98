"""Aggregate: the run's triples as one knowledge graph a curator can use.

One row per (head id, relation, tail id): the number of documents stating it
(a document counts once, with its best score), mean and max score, the most
frequent names and the types, and up to five example documents with their
evidence sentences.

PubMed revises and deletes citations. Inputs are ranked in plan order (PubMed
update files are numbered after the baseline): for each document id only the
triples from its latest input count, and a ``DeleteCitation`` in an input
removes the document's triples from every earlier input.
"""
from __future__ import annotations

import io
import json
import time

import polars as pl
import pyarrow.parquet as pq

from ..registry.storage import fs_of, join, write_bytes_atomic
from .plan import Part
from .run import read_triples

GRAPH_FILE = "aggregate/graph.parquet"


def _doc_ranks(parts: list[Part]) -> pl.DataFrame:
    """(doc_id, rank): every document of every part, with its input's rank (one column read per part)."""
    frames = []
    for p in parts:
        fs, path = fs_of(p.data_url)
        with fs.open(path, "rb") as f:
            ids = pq.read_table(f, columns=["doc_id"]).column("doc_id").to_pylist()
        frames.append(pl.DataFrame({"doc_id": ids, "rank": [p.input_rank] * len(ids)},
                                   schema={"doc_id": pl.String, "rank": pl.Int32}))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"doc_id": pl.String, "rank": pl.Int32})


def aggregate(out_url: str, parts: list[Part], deletions: dict[int, list[str]] | None = None,
              examples: int = 5) -> dict:
    """Write ``out_url/aggregate/graph.parquet`` and return a summary (counts, top relations)."""
    t0 = time.time()
    triples = pl.from_arrow(read_triples(out_url))
    rank_of_source = {p.input_url: p.input_rank for p in parts}
    triples = triples.with_columns(pl.col("source").replace_strict(rank_of_source, default=-1,
                                                                   return_dtype=pl.Int32).alias("rank"))
    latest = _doc_ranks(parts).group_by("doc_id").agg(pl.col("rank").max().alias("latest"))
    deleted = pl.DataFrame(
        [(d, r) for r, ids in (deletions or {}).items() for d in ids],
        schema={"doc_id": pl.String, "deleted_at": pl.Int32}, orient="row",
    ).group_by("doc_id").agg(pl.col("deleted_at").max())
    alive = latest.join(deleted, on="doc_id", how="left").filter(
        pl.col("deleted_at").is_null() | (pl.col("deleted_at") < pl.col("latest")))
    n_in = triples.height
    kept = triples.join(alive.select("doc_id", "latest"), left_on=["doc_id", "rank"], right_on=["doc_id", "latest"],
                        how="inner")
    # one row per (document, fact): its best score and that row's evidence
    per_doc = (kept.sort("score", descending=True)
               .group_by(["doc_id", "head_id", "relation", "tail_id"], maintain_order=True).first())
    graph = (per_doc.sort(["score", "doc_id"], descending=[True, False])
             .group_by(["head_id", "relation", "tail_id"], maintain_order=True)
             .agg(pl.col("relation_name").first(),
                  pl.col("head_name").mode().first().alias("head_name"),
                  pl.col("tail_name").mode().first().alias("tail_name"),
                  pl.col("head_type").first(), pl.col("tail_type").first(),
                  pl.len().alias("documents"), pl.col("score").mean().alias("mean_score"),
                  pl.col("score").max().alias("max_score"),
                  pl.struct(pl.col("doc_id").alias("pmid"), pl.col("evidence_text").alias("evidence"),
                            pl.col("score")).head(examples).alias("examples"))
             .sort(["documents", "max_score", "head_id", "relation", "tail_id"],
                   descending=[True, True, False, False, False]))
    buf = io.BytesIO()
    graph.write_parquet(buf, compression="zstd")
    write_bytes_atomic(join(out_url, GRAPH_FILE), buf.getvalue())
    top = (graph.group_by("relation").agg(pl.col("documents").sum().alias("documents"), pl.len().alias("facts"))
           .sort("documents", descending=True))
    summary = {"graph_url": join(out_url, GRAPH_FILE), "triples_in": n_in, "triples_kept": kept.height,
               "triples_dropped_superseded_or_deleted": n_in - kept.height,
               "documents_deleted": int(latest.join(deleted, on="doc_id", how="inner")
                                        .filter(pl.col("deleted_at") >= pl.col("latest")).height),
               "facts": graph.height, "documents_with_facts": per_doc["doc_id"].n_unique() if per_doc.height else 0,
               "relations": top.to_dicts(), "seconds": round(time.time() - t0, 3)}
    write_bytes_atomic(join(out_url, "aggregate/summary.json"), json.dumps(summary, indent=1).encode())
    return summary


def read_graph(out_url: str) -> pl.DataFrame:
    fs, path = fs_of(join(out_url, GRAPH_FILE))
    with fs.open(path, "rb") as f:
        return pl.read_parquet(f)
