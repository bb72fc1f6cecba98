"""Aggregate: the output's triples as one knowledge graph a curator can use, and which triples are live.

One row per (head, relation, tail): the number of documents stating it (a document counts once, with its
best score), mean and max score, the most frequent names and the types, and up to five example documents
with their evidence sentences. Entities are keyed by their knowledge-base id; an entity without one is
keyed within its document (``<doc_id>#<entity index>``), never merged across documents by name.

PubMed revises and deletes citations. Inputs are ranked in the output's plan order (PubMed update files
are numbered after the baseline): for each document id only the triples from its latest input are live,
and a ``DeleteCitation`` in an input removes the document from every earlier input.
``aggregate/documents.parquet`` says so for every (document, input): ``status`` is ``live``,
``superseded`` or ``deleted``; `read_live_triples` joins it with the triples.
"""
from __future__ import annotations

import io
import json
import time

import polars as pl
import pyarrow.parquet as pq

from ..registry.storage import exists, fs_of, join, read_json, write_bytes_atomic
from .plan import Part
from .run import read_triples

GRAPH_FILE = "aggregate/graph.parquet"
DOCUMENTS_FILE = "aggregate/documents.parquet"
SUMMARY_FILE = "aggregate/summary.json"


class GraphShrinkError(RuntimeError):
    """A run would remove more of the graph than it is allowed to (a wrong or partial input set)."""


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


def document_status(parts: list[Part], deletions: dict[int, list[str]] | None = None) -> pl.DataFrame:
    """(doc_id, source, rank, status) for every document of every input: live, superseded or deleted."""
    docs = _doc_ranks(parts).with_columns(
        pl.col("rank").replace_strict({p.input_rank: p.input_url for p in parts}, return_dtype=pl.String)
        .alias("source")).unique(["doc_id", "rank"])
    latest = docs.group_by("doc_id").agg(pl.col("rank").max().alias("latest"))
    deleted = pl.DataFrame(
        [(d, r) for r, ids in (deletions or {}).items() for d in ids],
        schema={"doc_id": pl.String, "deleted_at": pl.Int32}, orient="row",
    ).group_by("doc_id").agg(pl.col("deleted_at").max())
    return (docs.join(latest, on="doc_id").join(deleted, on="doc_id", how="left")
            .with_columns(pl.when(pl.col("deleted_at").is_not_null() & (pl.col("deleted_at") >= pl.col("rank")))
                          .then(pl.lit("deleted"))
                          .when(pl.col("rank") < pl.col("latest")).then(pl.lit("superseded"))
                          .otherwise(pl.lit("live")).alias("status"))
            .select("doc_id", "source", "rank", "status").sort(["rank", "doc_id"]))


def _entity_keys(triples: pl.DataFrame) -> pl.DataFrame:
    """head_key / tail_key: the knowledge-base id, else the entity within its document."""
    return triples.with_columns(
        pl.coalesce(pl.col("head_id"), pl.col("doc_id") + "#" + pl.col("head_entity").cast(pl.String))
        .alias("head_key"),
        pl.coalesce(pl.col("tail_id"), pl.col("doc_id") + "#" + pl.col("tail_entity").cast(pl.String))
        .alias("tail_key"))


def _stable_names(per_doc: pl.DataFrame, side: str) -> pl.DataFrame:
    """The most frequent name of each fact's head (or tail); ties go to the lexicographically first, so a
    rebuild from the same triples gives the same names."""
    keys = ["head_key", "relation", "tail_key"]
    return (per_doc.group_by(keys + [f"{side}_name"]).len()
            .sort(keys + ["len", f"{side}_name"], descending=[False, False, False, True, False])
            .group_by(keys, maintain_order=True).first().drop("len"))


def aggregate(out_url: str, parts: list[Part], deletions: dict[int, list[str]] | None = None,
              examples: int = 5, max_graph_loss: float = 0.2) -> dict:
    """Write ``aggregate/graph.parquet``, ``aggregate/documents.parquet`` and ``aggregate/summary.json``
    for every input of the output (`parts` are all of them); return the summary.

    A graph that would lose more than `max_graph_loss` of the facts of the graph already there is not
    written: `GraphShrinkError` (1.0 allows any loss)."""
    t0 = time.time()
    status = document_status(parts, deletions)
    triples = pl.from_arrow(read_triples(out_url))
    rank_of_source = {p.input_url: p.input_rank for p in parts}
    triples = triples.with_columns(pl.col("source").replace_strict(rank_of_source, default=-1,
                                                                   return_dtype=pl.Int32).alias("rank"))
    n_in = triples.height
    live = status.filter(pl.col("status") == "live").select("doc_id", "rank")
    kept = _entity_keys(triples.join(live, on=["doc_id", "rank"], how="inner"))
    keys = ["head_key", "relation", "tail_key"]
    # one row per (document, fact): its best score and that row's evidence
    per_doc = (kept.sort(["score", "part_id", "head_entity", "tail_entity"], descending=[True, False, False, False])
               .group_by(["doc_id"] + keys, maintain_order=True).first())
    graph = (per_doc.sort(["score", "doc_id"], descending=[True, False])
             .group_by(keys, maintain_order=True)
             .agg(pl.col("head_id").first(), pl.col("tail_id").first(), pl.col("relation_name").first(),
                  pl.col("head_type").first(), pl.col("tail_type").first(),
                  pl.len().alias("documents"), pl.col("score").mean().alias("mean_score"),
                  pl.col("score").max().alias("max_score"),
                  pl.struct(pl.col("doc_id").alias("pmid"), pl.col("evidence_text").alias("evidence"),
                            pl.col("score")).head(examples).alias("examples"))
             .join(_stable_names(per_doc, "head"), on=keys).join(_stable_names(per_doc, "tail"), on=keys)
             .select("head_key", "relation", "tail_key", "head_id", "tail_id", "relation_name", "head_name", "tail_name",
                     "head_type", "tail_type", "documents", "mean_score", "max_score", "examples")
             .sort(["documents", "max_score", "head_key", "relation", "tail_key"],
                   descending=[True, True, False, False, False]))
    before = read_json(join(out_url, SUMMARY_FILE)).get("facts", 0) if exists(join(out_url, SUMMARY_FILE)) else 0
    if before and graph.height < (1.0 - max_graph_loss) * before:
        raise GraphShrinkError(
            f"{out_url}: the graph would shrink from {before:,} to {graph.height:,} facts "
            f"({1 - graph.height / before:.0%} removed, more than the {max_graph_loss:.0%} allowed); nothing was "
            f"written. If the inputs are right, rerun with a higher max_graph_loss (1.0 allows any loss)")
    for name, frame in ((GRAPH_FILE, graph), (DOCUMENTS_FILE, status)):
        buf = io.BytesIO()
        frame.write_parquet(buf, compression="zstd")
        write_bytes_atomic(join(out_url, name), buf.getvalue())
    top = (per_doc.group_by("relation")
           .agg(pl.len().alias("document_facts"), pl.col("doc_id").n_unique().alias("documents"))
           .join(graph.group_by("relation").agg(pl.len().alias("facts")), on="relation")
           .sort(["document_facts", "relation"], descending=[True, False]))
    by_status = dict(status.group_by("status").len().iter_rows())
    summary = {"graph_url": join(out_url, GRAPH_FILE), "documents_url": join(out_url, DOCUMENTS_FILE),
               "inputs": len({p.input_url for p in parts}), "triples_in": n_in, "triples_kept": kept.height,
               "triples_dropped_superseded_or_deleted": n_in - kept.height,
               "documents_live": by_status.get("live", 0), "documents_superseded": by_status.get("superseded", 0),
               "documents_deleted": by_status.get("deleted", 0),
               "facts": graph.height, "facts_before": before,
               "documents_with_facts": per_doc["doc_id"].n_unique() if per_doc.height else 0,
               "relations": top.to_dicts(), "seconds": round(time.time() - t0, 3)}
    write_bytes_atomic(join(out_url, SUMMARY_FILE), json.dumps(summary, indent=1).encode())
    return summary


def read_live_triples(out_url: str) -> pl.DataFrame:
    """The current triples: those of each document's latest version, deleted citations left out."""
    fs, path = fs_of(join(out_url, DOCUMENTS_FILE))
    with fs.open(path, "rb") as f:
        live = pl.read_parquet(f).filter(pl.col("status") == "live").select("doc_id", "source")
    return pl.from_arrow(read_triples(out_url)).join(live, on=["doc_id", "source"], how="inner")


def read_graph(out_url: str) -> pl.DataFrame:
    fs, path = fs_of(join(out_url, GRAPH_FILE))
    with fs.open(path, "rb") as f:
        return pl.read_parquet(f)
