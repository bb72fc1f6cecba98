"""Extract: one prepared part -> triples with provenance, committed atomically; and the exact run summary.

Layout under ``out_url``::

    triples/part-<id>.parquet       the part's triples (TRIPLE_SCHEMA)
    quarantine/part-<id>.parquet    the part's refused records: from reading (prepare) and from the model
    _committed/part-<id>.json       commit marker with the part's counts; written LAST
    manifest.json                   the run summary (`summarize`)

A part whose marker exists is skipped; a part that failed half-way is rewritten
under the same names. So a killed worker, a killed flow and a rerun give the
same triples, none lost and none duplicated. Readers trust only committed parts.
"""
from __future__ import annotations

import io
import json
import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..data.assemble import namespaced_id
from ..data.batch import Example
from ..data.document import Document
from ..registry.storage import exists, fs_of, join, list_files, read_json, write_bytes_atomic
from .plan import Part

SCHEMA_VERSION = 3  # 3: evidence_tail_sentence

TRIPLE_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("head_entity", pa.int32()),  # index into the document's entities
    ("tail_entity", pa.int32()),
    ("head_id", pa.string()),  # knowledge-base id with its namespace (MESH:D003920, NCBIGene:5562), when linked
    ("tail_id", pa.string()),
    ("head_name", pa.string()),  # the entity's most frequent mention
    ("tail_name", pa.string()),
    ("head_type", pa.string()),
    ("tail_type", pa.string()),
    ("relation", pa.string()),
    ("relation_name", pa.string()),
    ("score", pa.float32()),
    ("iteration", pa.int8()),  # first inference iteration (0 = base module) that predicted the fact
    ("evidence_sentence", pa.int32()),  # first sentence where head and tail co-occur, else the head's of the closest pair
    ("evidence_tail_sentence", pa.int32()),  # the tail's sentence: the same one when they co-occur
    ("evidence_text", pa.string()),  # that sentence; or the head's and the tail's, joined by " … "
    ("source", pa.string()),  # input URL
    ("part_id", pa.string()),
    ("model_version", pa.string()),
    ("code_version", pa.string()),
])

QUARANTINE_SCHEMA = pa.schema([
    ("part_id", pa.string()),
    ("source", pa.string()),  # input URL (archive!member for tar members)
    ("where", pa.string()),  # line / document inside the input
    ("reason", pa.string()),
    ("count", pa.int32()),  # documents the record stands for
    ("stage", pa.string()),  # "read" (invalid input) or "predict" (the model failed on it)
    ("model_version", pa.string()),
])


@dataclass
class PartResult:
    part_id: str
    input_url: str
    docs_in: int
    docs_out: int
    quarantined: int
    triples: int
    model_version: str
    triples_file: str = ""
    quarantine_file: str = ""
    seconds: float = 0.0
    docs_per_s: float = 0.0
    worker: str = ""  # host:pid of the process that extracted the part
    peak_rss_mb: float = 0.0
    committed_at: str = ""
    skipped: bool = False  # already committed: nothing was done
    extra_files: list[str] | None = None  # the part's triples in other formats (jsonl, BioC)

    @property
    def balanced(self) -> bool:
        return self.docs_in == self.docs_out + self.quarantined

    @staticmethod
    def from_dict(d: dict) -> "PartResult":
        return PartResult(**{k: v for k, v in d.items() if k in PartResult.__dataclass_fields__})


def _peak_rss_mb() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _marker_url(out_url: str, part_id: str) -> str:
    return join(out_url, "_committed", f"part-{part_id}.json")


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema), buf, compression="zstd")
    return buf.getvalue()


def evidence(doc: Document, head: int, tail: int) -> tuple[int, int, str]:
    """(head's sentence, tail's sentence, text): the first sentence where head and tail co-occur; else the
    closest pair of a sentence with the head and one with the tail, and those two sentences' text only
    (the span between them can run to pages)."""
    hs = sorted({m.sent_id for m in doc.entities[head].mentions})
    ts = sorted({m.sent_id for m in doc.entities[tail].mentions})
    both = sorted(set(hs) & set(ts))
    if both:
        a = b = both[0]
    else:
        a, b = min(((h, t) for h in hs for t in ts), key=lambda p: (abs(p[1] - p[0]), min(p), p[0]))
    text, chars = doc.layout()

    def sentence(i: int) -> str:
        return text[chars[i][0][0]:chars[i][-1][1]]
    return a, b, sentence(a) if a == b else f"{sentence(a)} … {sentence(b)}"


def most_frequent_mention(doc: Document, entity: int) -> str:
    names = Counter(m.text for m in doc.entities[entity].mentions)
    return names.most_common(1)[0][0] if names else ""


def triple_rows(triples: Iterable, docs: dict[str, Document], part: Part, model_version: str,
                code_version: str) -> list[dict]:
    """`Triple`s (docre.model.docre_ii) -> rows of TRIPLE_SCHEMA with provenance and evidence."""
    rows = []
    for t in triples:
        doc = docs[t.doc_id]
        sent, tail_sent, text = evidence(doc, t.head, t.tail)
        rows.append({"doc_id": t.doc_id, "head_entity": t.head, "tail_entity": t.tail,
                     "head_id": namespaced_id(t.head_id, t.head_type), "tail_id": namespaced_id(t.tail_id, t.tail_type),
                     "head_name": most_frequent_mention(doc, t.head), "tail_name": most_frequent_mention(doc, t.tail),
                     "head_type": t.head_type, "tail_type": t.tail_type, "relation": t.relation,
                     "relation_name": t.relation_name, "score": t.score, "iteration": t.iteration,
                     "evidence_sentence": sent, "evidence_tail_sentence": tail_sent, "evidence_text": text, "source": part.input_url,
                     "part_id": part.part_id, "model_version": model_version, "code_version": code_version})
    return rows


def predict_leniently(model, examples: list[Example], docs: list[Document], iterations: int | None = None,
                      batch_size: int = 8) -> tuple[list, list[tuple[Document, str]]]:
    """(triples, [(document, error text)]): a document that makes the model fail is set aside, not lost.

    If every document of a part with several fails, the problem is not the
    documents (out of memory, a broken model): the first error is raised so the
    task is retried instead of quarantining a whole part.
    """
    if not docs:
        return [], []
    try:
        return model.triples(docs, model.predict_examples(examples, iterations, batch_size)), []
    except Exception:  # noqa: BLE001 - find the culprits one by one below
        pass
    triples, failed, first_error = [], [], None
    for ex, doc in zip(examples, docs):
        try:
            triples.extend(model.triples([doc], model.predict_examples([ex], iterations, 1)))
        except Exception as e:  # noqa: BLE001 - anything the model raises on this document
            first_error = first_error or e
            failed.append((doc, f"prediction failed: {type(e).__name__}: {e}"))
    if len(docs) > 1 and len(failed) == len(docs):
        raise first_error
    return triples, failed


def read_part(part: Part) -> tuple[list[Example], list[Document], list[dict]]:
    """Examples, documents and the prepare-time quarantine of one part."""
    fs, path = fs_of(part.data_url)
    with fs.open(path, "rb") as f:
        rows = pq.read_table(f).to_pylist()
    fs, path = fs_of(part.quarantine_url)
    with fs.open(path, "rb") as f:
        q_rows = pq.read_table(f).to_pylist()
    return [Example.from_row(r) for r in rows], [Document.from_dict(json.loads(r["document"])) for r in rows], q_rows


EXTRA_FORMATS = ("jsonl", "bioc_xml", "bioc_json")


def _extra_output(fmt: str, rows: list[dict], docs: list[Document], model_version: str) -> tuple[str, bytes]:
    """(file suffix, bytes) of one part's triples in another format, for tools that do not read Parquet."""
    if fmt == "jsonl":
        return "jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    triples = [{"doc_id": r["doc_id"], "head": r["head_entity"], "tail": r["tail_entity"], "relation": r["relation"],
                "score": r["score"], "iteration": r["iteration"]} for r in rows]
    from ..data.bioc import write_bioc_json, write_bioc_xml
    if fmt == "bioc_xml":
        return "xml", "".join(write_bioc_xml(docs, triples, model_version)).encode()
    if fmt == "bioc_json":
        return "bioc.json", write_bioc_json(docs, triples, model_version).encode()
    raise ValueError(f"unknown output format {fmt!r}; one of {EXTRA_FORMATS}")


def extract_part(model, part: Part, out_url: str, model_version: str, iterations: int | None = None,
                 batch_size: int = 8, code_version: str = "",
                 before_commit: Callable[[Part], None] | None = None,
                 extra_formats: Iterable[str] = ()) -> PartResult:
    """Extract one part and commit it; a committed part is returned from its marker untouched.

    Triples always go to Parquet; `extra_formats` ("jsonl", "bioc_xml", "bioc_json") also writes them as
    ``<format>/part-<id>.<suffix>`` (BioC: the part's documents with the predicted relations), committed
    with the rest.
    """
    marker = _marker_url(out_url, part.part_id)
    if exists(marker):
        done = PartResult.from_dict(read_json(marker))
        done.skipped = True
        return done
    t0 = time.time()
    examples, docs, read_quarantine_rows = read_part(part)
    if len(docs) != part.docs:
        raise ValueError(f"{part.data_url}: {len(docs)} documents, the prepare manifest says {part.docs}")
    triples, failed = predict_leniently(model, examples, docs, iterations, batch_size)
    quarantine = [{"part_id": part.part_id, "source": q["source"], "where": q["where"], "reason": q["reason"],
                   "count": q["count"], "stage": "read", "model_version": model_version} for q in read_quarantine_rows]
    quarantine += [{"part_id": part.part_id, "source": part.input_url, "where": f"document {doc.id!r}",
                    "reason": reason, "count": 1, "stage": "predict", "model_version": model_version}
                   for doc, reason in failed]
    rows = triple_rows(triples, {d.id: d for d in docs}, part, model_version, code_version)
    triples_file = f"triples/part-{part.part_id}.parquet"
    quarantine_file = f"quarantine/part-{part.part_id}.parquet"
    write_bytes_atomic(join(out_url, triples_file), _parquet_bytes(rows, TRIPLE_SCHEMA))
    write_bytes_atomic(join(out_url, quarantine_file), _parquet_bytes(quarantine, QUARANTINE_SCHEMA))
    extra_files = []
    for fmt in extra_formats:
        suffix, data = _extra_output(fmt, rows, docs, model_version)
        extra_files.append(f"{fmt}/part-{part.part_id}.{suffix}")
        write_bytes_atomic(join(out_url, extra_files[-1]), data)
    seconds = time.time() - t0
    result = PartResult(part.part_id, part.input_url, docs_in=part.docs + part.quarantined,
                        docs_out=len(docs) - len(failed), quarantined=sum(q["count"] for q in quarantine),
                        triples=len(rows), model_version=model_version, triples_file=triples_file,
                        quarantine_file=quarantine_file, seconds=round(seconds, 3),
                        docs_per_s=round(len(docs) / seconds, 2) if seconds > 0 else 0.0,
                        worker=f"{socket.gethostname()}:{os.getpid()}", peak_rss_mb=_peak_rss_mb(),
                        extra_files=extra_files)
    if not result.balanced:  # cannot happen unless the code above is wrong; never commit it
        raise AssertionError(f"part {part.part_id}: docs_in {result.docs_in} != docs_out {result.docs_out} + "
                             f"quarantined {result.quarantined}")
    if before_commit is not None:
        before_commit(part)
    result.committed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_bytes_atomic(marker, json.dumps(asdict(result) | {"schema_version": SCHEMA_VERSION}, indent=1).encode())
    return result


def read_committed(out_url: str) -> dict[str, PartResult]:
    """part id -> result, for every part with a commit marker under `out_url`."""
    files = list_files(join(out_url, "_committed"), "part-", ".json")
    if not files:
        return {}
    fs, _ = fs_of(files[0])
    out = {}
    for _, data in sorted(fs.cat([fs_of(f)[1] for f in files]).items()):
        r = PartResult.from_dict(json.loads(data))
        out[r.part_id] = r
    return out


def pending_parts(parts: list[Part], out_url: str, model_version: str | None = None
                  ) -> tuple[list[Part], dict[str, PartResult]]:
    """(parts still to run, committed results of the others); refuses to mix model versions in one output."""
    committed = read_committed(out_url)
    if model_version is not None:
        other = sorted({r.model_version for pid, r in committed.items()} - {model_version})
        if other:
            raise ValueError(f"{out_url} holds parts extracted with model version(s) {other}, not "
                             f"{model_version!r}; write to a fresh out_url (or extract with that version)")
    pending = [p for p in parts if p.part_id not in committed]
    return pending, {p.part_id: committed[p.part_id] for p in parts if p.part_id in committed}


def summarize(parts: list[Part], out_url: str, model_version: str | None = None, verify: bool = True,
              extra: dict | None = None) -> dict:
    """Exact totals over the planned parts from their commit markers; writes `out_url/manifest.json`.

    With `verify`, each committed part's Parquet row counts are checked against
    its marker. ``complete`` is True when every planned part is committed and
    documents in = documents out + quarantined holds for each and in total.
    """
    committed = read_committed(out_url)
    done = [committed[p.part_id] for p in parts if p.part_id in committed]
    missing = [p.part_id for p in parts if p.part_id not in committed]
    mismatched = []
    if verify and done:
        from concurrent.futures import ThreadPoolExecutor

        def rows(rel: str) -> int:
            fs, path = fs_of(join(out_url, rel))
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        checks = [(r.triples_file, r.triples) for r in done]  # quarantine rows may stand for several documents
        with ThreadPoolExecutor(max_workers=16) as pool:  # footers only: many small reads on object stores
            counted = list(pool.map(rows, [rel for rel, _ in checks]))
        mismatched = [rel for (rel, want), n in zip(checks, counted) if n != want]
    totals = {k: sum(getattr(r, k) for r in done) for k in ("docs_in", "docs_out", "quarantined", "triples")}
    workers: dict[str, dict] = {}
    for r in done:
        if r.worker:
            w = workers.setdefault(r.worker, {"parts": 0, "docs": 0, "seconds": 0.0, "peak_rss_mb": 0.0})
            w["parts"] += 1
            w["docs"] += r.docs_out
            w["seconds"] += r.seconds
            w["peak_rss_mb"] = max(w["peak_rss_mb"], r.peak_rss_mb)
    for w in workers.values():
        w["docs_per_s"] = round(w["docs"] / w["seconds"], 2) if w["seconds"] else None
    summary = {
        "out_url": out_url, "model_version": model_version, "inputs": len({p.input_url for p in parts}),
        "parts": len(parts), "parts_committed": len(done), "parts_missing": missing,
        "mismatched_files": mismatched, **totals,
        "balanced": totals["docs_in"] == totals["docs_out"] + totals["quarantined"] and all(r.balanced for r in done),
        "workers": workers, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}),
    }
    summary["complete"] = not missing and not mismatched and summary["balanced"]
    write_bytes_atomic(join(out_url, "manifest.json"), json.dumps(
        summary | {"schema_version": SCHEMA_VERSION, "part_list": [asdict(r) for r in done]}, indent=1).encode())
    return summary


def read_triples(out_url: str) -> pa.Table:
    """All triples of committed parts (files of uncommitted attempts are ignored)."""
    return _read_committed_files(out_url, "triples_file", TRIPLE_SCHEMA)


def read_quarantine(out_url: str) -> pa.Table:
    return _read_committed_files(out_url, "quarantine_file", QUARANTINE_SCHEMA)


def _read_committed_files(out_url: str, attr: str, schema: pa.Schema) -> pa.Table:
    tables = []
    for r in sorted(read_committed(out_url).values(), key=lambda r: r.part_id):
        fs, path = fs_of(join(out_url, getattr(r, attr)))
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        for field in schema:  # parts committed by an older schema: its new columns are null
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        tables.append(table.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()
