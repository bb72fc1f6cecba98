"""Prepare: stream each raw input exactly once into tokenized Parquet parts, with a manifest.

Layout under the work URL (by default ``<out_url>/_prepared``), one directory per input::

    <key>/part-00000.parquet         up to part_docs tokenized documents (docre.data.tokenize.SCHEMA + record)
    <key>/quarantine-00000.parquet   records of that part's range the reader refused, with where and why
    <key>/_progress.json             parts finished so far (while preparing)
    <key>/manifest.json              written LAST: input URL and fingerprint, parts with record ranges and
                                     counts, PubMed deletions, what was left out and why

``<key>`` hashes the input URL, its fingerprint (size + ETag/mtime), the read
options, the tokenizer and inventory, and the part size: a changed input or a
model with another tokenizer gets new parts, an unchanged one is never read
again. An interrupted prepare resumes: finished parts (in ``_progress.json``)
are not tokenized or written again; the raw stream is re-read up to them,
since gzip and object stores give no random access.

Set ``DOCRE_READ_LOG`` to a file path to append one line per raw-input read
(an audit trail; the tests use it to prove each input is read once).
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..data.document import RelationInventory
from ..data.io import Quarantined, ReadOptions, read_documents
from ..data.tokenize import SCHEMA as TOKEN_SCHEMA
from ..data.tokenize import encode_document
from ..data.pretrained import vocab_hash
from ..registry.storage import exists, join, read_json, write_bytes_atomic, write_json_atomic
from .plan import PrepareConfig, input_fingerprint, input_key, prepared_dir, read_input_manifest

PART_SCHEMA = TOKEN_SCHEMA.append(pa.field("record", pa.int64()))  # the document's record index in its input
PREPARE_QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()), ("where", pa.string()), ("reason", pa.string()), ("count", pa.int32()),
    ("record", pa.int64()),
])


def tokenization_id(tokenizer, inventory: RelationInventory, encoder: str = "") -> str:
    return json.dumps([encoder, vocab_hash(tokenizer), json.loads(inventory.to_json())], sort_keys=True)


def _parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema), buf, compression="zstd", row_group_size=1024)
    return buf.getvalue()


def _log_read(url: str) -> None:
    path = os.environ.get("DOCRE_READ_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"time": time.time(), "url": url, "pid": os.getpid()}) + "\n")


def prepare_input(url: str, work_url: str, tokenizer, inventory: RelationInventory,
                  cfg: PrepareConfig = PrepareConfig(), encoder: str = "",
                  on_part: Callable[[dict], None] | None = None) -> dict:
    """Prepare one input (or reuse its manifest); returns the manifest. Idempotent and resumable."""
    t0 = time.time()
    fingerprint = input_fingerprint(url)
    key = input_key(url, fingerprint, cfg, tokenization_id(tokenizer, inventory, encoder))
    done = read_input_manifest(work_url, key)
    if done is not None:
        return done | {"reused": True}
    base = prepared_dir(work_url, key)
    progress_url = join(base, "_progress.json")
    progress = read_json(progress_url) if exists(progress_url) else {"parts": []}
    resume_at = progress["parts"][-1]["end_record"] if progress["parts"] else 0
    parts: list[dict] = list(progress["parts"])

    options = ReadOptions(passages=cfg.passages, unlinked=cfg.unlinked, concepts=cfg.concepts,
                          unknown_relations="ignore", entity_types=cfg.entity_types)
    quarantine: list[Quarantined] = []
    counts: dict = {}  # the whole file is streamed (also when resuming), so these count the whole file
    deleted: list[str] = []
    rows: list[dict] = []
    q_rows: list[dict] = []
    record = 0
    entities = 0  # entities the model can score, in the documents kept (the whole file, as `counts`)
    part_first = resume_at
    drained = 0

    def close_part(end: int) -> None:
        nonlocal rows, q_rows, part_first
        index = len(parts)
        part = {"part_id": f"{key}-{index:05d}", "file": f"part-{index:05d}.parquet",
                "quarantine_file": f"quarantine-{index:05d}.parquet", "first_record": part_first,
                "end_record": end, "docs": len(rows), "quarantined": sum(q["count"] for q in q_rows)}
        write_bytes_atomic(join(base, part["file"]), _parquet(rows, PART_SCHEMA))
        write_bytes_atomic(join(base, part["quarantine_file"]), _parquet(q_rows, PREPARE_QUARANTINE_SCHEMA))
        parts.append(part)
        write_json_atomic(progress_url, {"parts": parts})  # resume point
        if on_part is not None:
            on_part(part)
        rows, q_rows, part_first = [], [], end

    def take_quarantine() -> None:
        nonlocal drained, record
        while drained < len(quarantine):
            q = quarantine[drained]
            if record >= resume_at:
                q_rows.append({"source": q.source, "where": q.where, "reason": q.reason, "count": q.count,
                               "record": record})
            drained, record = drained + 1, record + 1

    _log_read(url)
    for doc in read_documents(url, cfg.format, inventory, quarantine, options, counts, deleted):
        take_quarantine()
        entities += len(doc.entities)
        if record >= resume_at:
            try:
                row = encode_document(doc, tokenizer, inventory)
            except (ValueError, KeyError) as e:  # e.g. a marker the tokenizer splits: this document only
                q_rows.append({"source": url, "where": f"document {doc.id!r}", "reason": f"tokenization failed: {e}",
                               "count": 1, "record": record})
            else:
                rows.append(row | {"record": record})
        record += 1
        if len(rows) >= cfg.part_docs:
            close_part(record)
    take_quarantine()
    if rows or q_rows:
        close_part(record)
    manifest = {
        "schema_version": 1, "key": key, "input_url": url, "fingerprint": fingerprint,
        "prepared_url": base, "config": cfg.__dict__, "encoder": encoder,
        "records": record, "docs": sum(p["docs"] for p in parts),
        "quarantined": sum(p["quarantined"] for p in parts), "parts": parts, "left_out": counts,
        "entities": entities, "model_entity_types": sorted(inventory.entity_types or []),
        "deleted": deleted, "seconds": round(time.time() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed_at_record": resume_at,
    }
    write_json_atomic(join(base, "manifest.json"), manifest)  # commit point
    return manifest | {"reused": False}


class NoScoreableEntities(ValueError):
    """The model can score none of the input's entities: a run would succeed with zero triples."""


LEFT_OUT_TYPE = re.compile(r"^entities of type '(.*)' left out$")


def entity_coverage(manifests: list[dict], warn_share: float = 0.5) -> dict:
    """How many of the inputs' entities the model can score, by the prepare manifests.

    Returns {"scored", "left_out", "left_out_by_type", "model_types", "share_left_out", "warning"};
    raises `NoScoreableEntities` when entities were read but none is of a type the model knows (a model
    for people and places on chemical abstracts), which would otherwise end green with zero triples.
    """
    scored = sum(m.get("entities", 0) for m in manifests)
    by_type: dict[str, int] = {}
    for m in manifests:
        for key, n in m.get("left_out", {}).items():
            if (hit := LEFT_OUT_TYPE.match(key)) is not None:
                by_type[hit[1]] = by_type.get(hit[1], 0) + n
    left = sum(by_type.values())
    model_types = sorted({t for m in manifests for t in m.get("model_entity_types", [])})
    share = left / (left + scored) if left + scored else 0.0
    types = ", ".join(f"{t}: {n:,}" for t, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
    if scored == 0 and left > 0:
        raise NoScoreableEntities(f"the model scores entity types {model_types}, but every one of the inputs' "
                                  f"{left:,} entities is of another type ({types}): 0 entities to extract from. "
                                  f"Use a model trained for these types")
    warning = (f"{share:.0%} of the inputs' entities are of types the model does not score ({types}); the model "
               f"scores {model_types}") if left and share > warn_share else ""
    return {"scored": scored, "left_out": left, "left_out_by_type": by_type, "model_types": model_types,
            "share_left_out": round(share, 4), "warning": warning}
