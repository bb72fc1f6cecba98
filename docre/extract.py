"""Sharded, resumable batch extraction of triples into any fsspec store.

Orchestrator-free on purpose (no Prefect here): the Prefect tasks in ``tasks/``
call these functions, and so can a plain script or a test.

Layout of an extraction output ``out_url`` (a local directory or ``s3://...``)::

    triples/shard-<id>.parquet       one file per shard (TRIPLE_SCHEMA)
    quarantine/shard-<id>.parquet    documents not extracted, with where and why (QUARANTINE_SCHEMA)
    _committed/shard-<id>.json       commit marker: the shard's counts; written LAST
    manifest.json                    aggregated summary, rewritten by `summarize` after a run
    _plan/counts.json                records per input + fingerprint, so reruns do not re-count

Shards are ranges of *records* of one input file. A record is one thing the
reader reports in file order: a document it yields or a document it
quarantines, so ``docs_in = docs_out + quarantined`` holds per shard. A shard's
id is a hash of (input URL, record range), so planning the same inputs with the
same ``docs_per_shard`` gives the same ids; a shard whose marker exists is
skipped, and a shard that failed half-way is rewritten under the same names, so
reruns neither duplicate nor lose triples. Readers of the output should only
trust shards that have a marker (`read_triples` does exactly that).

Cost note: a shard streams its input from the beginning and skips records
before its range (gzip and object stores give no random access), so for large
files prefer many input files of moderate size (e.g. PubMed's baseline files).

Models are published and loaded by `docre.store`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Mapping

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .data.document import Document, DocumentError, RelationInventory
from .data.io import Quarantined, ReadOptions, detect_format, is_archive, read_documents

SCHEMA_VERSION = 1

TRIPLE_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("head_entity", pa.int32()),  # index into the document's entities
    ("tail_entity", pa.int32()),
    ("head_id", pa.string()),  # knowledge-base id when the source has one
    ("tail_id", pa.string()),
    ("head_name", pa.string()),
    ("tail_name", pa.string()),
    ("head_type", pa.string()),
    ("tail_type", pa.string()),
    ("relation", pa.string()),
    ("relation_name", pa.string()),
    ("score", pa.float32()),
    ("iteration", pa.int8()),  # first inference iteration (0 = base module) that predicted the fact
    ("model_version", pa.string()),
])

QUARANTINE_SCHEMA = pa.schema([
    ("shard_id", pa.string()),
    ("source", pa.string()),  # input URL
    ("where", pa.string()),  # line / document inside the input
    ("reason", pa.string()),
    ("stage", pa.string()),  # "read" (invalid document) or "predict" (the model failed on it)
    ("model_version", pa.string()),
])

_GLOB_CHARS = re.compile(r"[*?\[]")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ------------------------------------------------------------------------------ data classes
@dataclass(frozen=True)
class ShardSpec:
    """Records [start, end) of one input file."""
    shard_id: str
    input_url: str
    start: int
    end: int
    format: str | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class ShardResult:
    shard_id: str
    input_url: str
    start: int
    end: int
    docs_in: int
    docs_out: int
    quarantined: int
    triples: int
    model_version: str
    triples_file: str = ""
    quarantine_file: str = ""
    seconds: float = 0.0
    worker: str = ""  # host:pid of the process that extracted the shard
    peak_rss_mb: float = 0.0  # that process's peak resident memory when it committed
    committed_at: str = ""
    skipped: bool = False  # True when the shard was already committed and nothing was done

    @property
    def balanced(self) -> bool:
        return self.docs_in == self.docs_out + self.quarantined

    @staticmethod
    def from_dict(d: dict) -> "ShardResult":
        known = {f for f in ShardResult.__dataclass_fields__}
        return ShardResult(**{k: v for k, v in d.items() if k in known})


def _peak_rss_mb() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------ small fs helpers
def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def _join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def _full_url(fs, path: str) -> str:
    """A path from `fs` as a URL usable anywhere: plain absolute paths locally, protocol://... otherwise."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a partial one.

    Written under a temporary name in the same directory, then moved: a rename
    on local disks; on object stores a server-side copy of the complete temp
    object (and a delete of the temp key).
    """
    fs, path = _fs(url)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if _is_local(fs) and parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:
            pass
        raise


def redact_url(url: str) -> str:
    """`url` safe to log: user-info (``user:secret@``) and query strings are masked."""
    url = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", str(url))
    return re.sub(r"\?.*$", "?***", url)


def _exists(url: str) -> bool:
    fs, path = _fs(url)
    fs.invalidate_cache(path)  # object-store listings are cached per process; other processes write too
    return fs.exists(path)


def _read_text(url: str) -> str:
    fs, path = _fs(url)
    return fs.cat_file(path).decode("utf-8")


# ------------------------------------------------------------------------------ inputs and shards
def list_inputs(url_or_glob: str | Iterable[str], format: str | None = None) -> list[str]:
    """Expand input URLs (a file, a directory, a glob, or a list/comma-separated mix) to sorted file URLs.

    Directories are searched recursively. From directories and globs only files
    whose format `detect_format` recognises are kept (unless `format` is given),
    and hidden or underscore-prefixed files (``_SUCCESS``, ``.tmp``) are skipped.
    A file named explicitly is kept as is. Raises FileNotFoundError when nothing matches.
    """
    if isinstance(url_or_glob, str):
        specs = [u.strip() for u in url_or_glob.split(",") if u.strip()]
    else:
        specs = [str(u) for u in url_or_glob]
    out: list[str] = []
    for spec in specs:
        fs, path = _fs(spec)
        if _GLOB_CHARS.search(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            out.append(_full_url(fs, path))
            continue
        else:
            raise FileNotFoundError(f"input not found: {spec}")
        kept = [p for p in found if _wanted(p, format)]
        if not kept:
            raise FileNotFoundError(f"no input documents under {spec}")
        out.extend(_full_url(fs, p) for p in sorted(kept))
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]


def _wanted(path: str, format: str | None) -> bool:
    name = path.rsplit("/", 1)[-1]
    if name.startswith((".", "_")):
        return False
    if format or is_archive(name):
        return True
    try:
        detect_format(name)
        return True
    except ValueError:
        return False


def iter_records(url: str, format: str | None = None, inventory: RelationInventory | None = None
                 ) -> Iterator[tuple[int, Document | Quarantined]]:
    """(record index, document or quarantine entry) in file order, from the lenient reader.

    An error that stops the reader for the whole file (e.g. a JSON array that
    does not parse) becomes one final quarantined record. Other exceptions
    (I/O, network) propagate, so a retry can recover them.
    """
    quarantine: list[Quarantined] = []
    drained = 0
    i = 0
    try:
        # gold labels from another schema are ignored and foreign entity types left out, never fatal
        options = ReadOptions(unknown_relations="ignore")
        for doc in read_documents(url, format, inventory, quarantine=quarantine, options=options):
            while drained < len(quarantine):  # records the reader refused before this document
                yield i, quarantine[drained]
                drained, i = drained + 1, i + 1
            yield i, doc
            i += 1
    except DocumentError as err:
        quarantine.append(Quarantined.of(err))
    while drained < len(quarantine):
        yield i, quarantine[drained]
        drained, i = drained + 1, i + 1


def count_records(url: str, format: str | None = None) -> int:
    n = 0
    for n, _ in enumerate(iter_records(url, format), 1):
        pass
    return n


def input_fingerprint(url: str) -> str:
    """Size plus ETag or modification time: changes when the object is rewritten."""
    fs, path = _fs(url)
    fs.invalidate_cache(path)
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return f"{info.get('size')}:{stamp}"


def count_inputs(urls: Iterable[str], format: str | None = None, cache_url: str | None = None) -> dict[str, int]:
    """Records per input; with `cache_url` (a JSON file) counts of unchanged inputs are reused.

    Counting parses every document, so an extraction rerun over a large
    collection should not redo it: the cache maps each URL to its fingerprint
    (`input_fingerprint`) and count. A stale count cannot corrupt output:
    `extract_shard` refuses a shard whose records do not match the plan.
    """
    urls = list(urls)
    cached: dict = {}
    if cache_url and _exists(cache_url):
        cached = json.loads(_read_text(cache_url))
    out, fresh, changed = {}, {}, False
    for url in urls:
        fp = input_fingerprint(url)
        hit = cached.get(url)
        if hit and hit.get("fingerprint") == fp and hit.get("format") == format:
            out[url] = int(hit["records"])
        else:
            out[url] = count_records(url, format)
            changed = True
        fresh[url] = {"fingerprint": fp, "records": out[url], "format": format}
    if cache_url and changed:
        write_bytes_atomic(cache_url, json.dumps(cached | fresh, indent=1).encode())
    return out


def shard_id(input_url: str, start: int, end: int) -> str:
    return hashlib.sha256(f"{input_url}\x00{start}\x00{end}".encode()).hexdigest()[:20]


def plan_shards(inputs: Iterable[str], docs_per_shard: int, format: str | None = None,
                counts: Mapping[str, int] | None = None) -> list[ShardSpec]:
    """Split every input into consecutive ranges of `docs_per_shard` records; deterministic.

    Counting streams each input once through the reader (no tokenizer, no
    model); pass `counts` (URL -> records) to skip that.
    """
    if docs_per_shard < 1:
        raise ValueError(f"docs_per_shard must be >= 1, got {docs_per_shard}")
    specs = []
    for url in inputs:
        n = counts[url] if counts is not None and url in counts else count_records(url, format)
        for start in range(0, n, docs_per_shard):
            end = min(n, start + docs_per_shard)
            specs.append(ShardSpec(shard_id(url, start, end), url, start, end, format))
    return specs


# ------------------------------------------------------------------------------ committed shards
def _marker_url(out_url: str, sid: str) -> str:
    return _join(out_url, "_committed", f"shard-{sid}.json")


def read_committed(out_url: str) -> dict[str, ShardResult]:
    """shard id -> result, for every shard with a commit marker under `out_url`."""
    fs, path = _fs(out_url)
    base = f"{path.rstrip('/')}/_committed"
    fs.invalidate_cache(base)  # markers are written by other processes
    try:
        files = [p for p in fs.ls(base, detail=False) if p.rsplit("/", 1)[-1].startswith("shard-")
                 and p.endswith(".json")]
    except FileNotFoundError:
        return {}
    out: dict[str, ShardResult] = {}
    for p, data in sorted(fs.cat(files).items()) if files else []:
        r = ShardResult.from_dict(json.loads(data))
        out[r.shard_id] = r
    return out


def pending_shards(specs: list[ShardSpec], out_url: str, model_version: str | None = None
                   ) -> tuple[list[ShardSpec], dict[str, ShardResult]]:
    """(shards still to run, committed results of the others).

    Refuses to mix: a committed shard of the same input whose range overlaps a
    planned shard with another id (the inputs or `docs_per_shard` changed), or a
    committed shard made by another model version, raises ValueError, since
    running would duplicate or mix triples. Use a fresh `out_url` then.
    """
    committed = read_committed(out_url)
    planned = {s.shard_id for s in specs}
    by_input: dict[str, list[ShardResult]] = {}
    for r in committed.values():
        by_input.setdefault(r.input_url, []).append(r)
    for s in specs:
        for r in by_input.get(s.input_url, []):
            if r.shard_id not in planned and r.start < s.end and s.start < r.end:
                raise ValueError(
                    f"{out_url} already holds shard {r.shard_id} of {s.input_url} (records {r.start}-{r.end}), "
                    f"which overlaps planned shard {s.shard_id} ({s.start}-{s.end}): the input or "
                    f"docs_per_shard changed since that run; write to a fresh out_url")
    if model_version is not None:
        other = sorted({r.model_version for sid, r in committed.items() if sid in planned} - {model_version})
        if other:
            raise ValueError(f"{out_url} holds shards extracted with model version(s) {other}, not "
                             f"{model_version!r}; write to a fresh out_url (or extract with that version)")
    pending = [s for s in specs if s.shard_id not in committed]
    done = {s.shard_id: committed[s.shard_id] for s in specs if s.shard_id in committed}
    return pending, done


# ------------------------------------------------------------------------------ extraction
def _quarantine_row(spec: ShardSpec, q: Quarantined, stage: str, version: str) -> dict:
    return {"shard_id": spec.shard_id, "source": q.source, "where": q.where, "reason": q.reason,
            "stage": stage, "model_version": version}


def triple_rows(triples: Iterable, model_version: str) -> list[dict]:
    """`Triple`s (docre.model.docre_ii) -> rows of TRIPLE_SCHEMA."""
    return [{"doc_id": t.doc_id, "head_entity": t.head, "tail_entity": t.tail, "head_id": t.head_id,
             "tail_id": t.tail_id, "head_name": t.head_name, "tail_name": t.tail_name,
             "head_type": t.head_type, "tail_type": t.tail_type, "relation": t.relation,
             "relation_name": t.relation_name, "score": t.score, "iteration": t.iteration,
             "model_version": model_version} for t in triples]


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema), buf, compression="zstd")
    return buf.getvalue()


def predict_leniently(model, docs: list[Document], iterations: int | None = None, batch_size: int = 8
                      ) -> tuple[list, list[tuple[Document, str]]]:
    """(triples, [(document, error text)]): a document that makes the model fail is set aside, not lost.

    The shard is predicted in one call; if that raises, documents are retried
    one by one to find the culprits. If every document of a shard with several
    fails, the problem is not the documents (out of memory, a broken model):
    the first error is raised so the caller can retry instead of quarantining.
    """
    if not docs:
        return [], []
    try:
        return model.predict(docs, iterations, batch_size=batch_size), []
    except Exception:
        pass
    triples, failed, first_error = [], [], None
    for doc in docs:
        try:
            triples.extend(model.predict([doc], iterations, batch_size=1))
        except Exception as e:  # noqa: BLE001 - anything the model raises on this document
            first_error = first_error or e
            failed.append((doc, f"prediction failed: {type(e).__name__}: {e}"))
    if len(docs) > 1 and len(failed) == len(docs):
        raise first_error
    return triples, failed


def extract_shard(model, spec: ShardSpec, out_url: str, model_version: str, iterations: int | None = None,
                  batch_size: int = 8, before_commit: Callable[[ShardSpec], None] | None = None) -> ShardResult:
    """Extract one shard and commit it; a committed shard is returned from its marker untouched.

    Writes triples and quarantine Parquet files atomically, then (after the
    optional `before_commit` hook) the commit marker. Raises, committing
    nothing, if the input no longer has the planned records.
    """
    marker = _marker_url(out_url, spec.shard_id)
    if _exists(marker):
        done = ShardResult.from_dict(json.loads(_read_text(marker)))
        done.skipped = True
        return done
    t0 = time.time()
    docs: list[Document] = []
    where: dict[int, str] = {}
    quarantine: list[dict] = []
    seen = 0
    for i, rec in iter_records(spec.input_url, spec.format, getattr(model, "inventory", None)):
        if i >= spec.end:
            break
        if i < spec.start:
            continue
        seen += 1
        if isinstance(rec, Quarantined):
            quarantine.append(_quarantine_row(spec, rec, "read", model_version))
        else:
            where[id(rec)] = f"record {i} (document {rec.id!r})"
            docs.append(rec)
    if seen != spec.size:
        raise ValueError(f"{spec.input_url}: shard {spec.shard_id} expected records {spec.start}-{spec.end} "
                         f"but the input has {spec.start + seen}: it changed since planning")
    triples, failed = predict_leniently(model, docs, iterations, batch_size)
    for doc, reason in failed:
        quarantine.append(_quarantine_row(spec, Quarantined(spec.input_url, where[id(doc)], reason),
                                          "predict", model_version))
    rows = triple_rows(triples, model_version)
    triples_url = _join(out_url, "triples", f"shard-{spec.shard_id}.parquet")
    quarantine_url = _join(out_url, "quarantine", f"shard-{spec.shard_id}.parquet")
    write_bytes_atomic(triples_url, _parquet_bytes(rows, TRIPLE_SCHEMA))
    write_bytes_atomic(quarantine_url, _parquet_bytes(quarantine, QUARANTINE_SCHEMA))
    result = ShardResult(spec.shard_id, spec.input_url, spec.start, spec.end, docs_in=seen,
                         docs_out=len(docs) - len(failed), quarantined=len(quarantine), triples=len(rows),
                         model_version=model_version, triples_file=f"triples/shard-{spec.shard_id}.parquet",
                         quarantine_file=f"quarantine/shard-{spec.shard_id}.parquet",
                         seconds=round(time.time() - t0, 3), worker=f"{socket.gethostname()}:{os.getpid()}",
                         peak_rss_mb=_peak_rss_mb())
    if not result.balanced:  # cannot happen unless the code above is wrong; never commit it
        raise AssertionError(f"shard {spec.shard_id}: docs_in {result.docs_in} != docs_out {result.docs_out} "
                             f"+ quarantined {result.quarantined}")
    if before_commit is not None:
        before_commit(spec)
    result.committed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    payload = asdict(result) | {"schema_version": SCHEMA_VERSION, "format": spec.format}
    write_bytes_atomic(marker, json.dumps(payload, indent=1).encode())  # commit point
    return result


def summarize(specs: list[ShardSpec], out_url: str, model_version: str | None = None, verify: bool = True,
              write_manifest: bool = True, extra: Mapping | None = None) -> dict:
    """Exact totals over the planned shards, from their commit markers; writes `out_url/manifest.json`.

    With `verify`, each committed shard's Parquet row counts are checked
    against its marker. ``complete`` is True when every planned shard is
    committed and the counts balance (docs_in = docs_out + quarantined).
    """
    committed = read_committed(out_url)
    done = [committed[s.shard_id] for s in specs if s.shard_id in committed]
    missing = [s.shard_id for s in specs if s.shard_id not in committed]
    mismatched = []
    if verify:
        from concurrent.futures import ThreadPoolExecutor

        def rows(rel: str) -> int:
            fs, path = _fs(_join(out_url, rel))
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        checks = [(rel, expected) for r in done
                  for rel, expected in ((r.triples_file, r.triples), (r.quarantine_file, r.quarantined))]
        with ThreadPoolExecutor(max_workers=16) as pool:  # footers only; many small reads on object stores
            counted = list(pool.map(rows, [rel for rel, _ in checks]))
        mismatched = [rel for (rel, expected), n in zip(checks, counted) if n != expected]
    totals = {k: sum(getattr(r, k) for r in done) for k in ("docs_in", "docs_out", "quarantined", "triples")}
    summary = {
        "out_url": out_url,
        "model_version": model_version,
        "inputs": len({s.input_url for s in specs}),
        "shards": len(specs),
        "shards_committed": len(done),
        "shards_missing": missing,
        "mismatched_files": mismatched,
        **totals,
        "balanced": totals["docs_in"] == totals["docs_out"] + totals["quarantined"]
        and all(r.balanced for r in done),
        "versions": sorted({r.model_version for r in done}),
        "all_committed_shards": len(committed),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(dict(extra) if extra else {}),
    }
    summary["complete"] = not missing and not mismatched and summary["balanced"]
    if write_manifest:
        manifest = summary | {"schema_version": SCHEMA_VERSION,
                              "shard_list": [asdict(committed[s.shard_id]) for s in specs if s.shard_id in committed]}
        write_bytes_atomic(_join(out_url, "manifest.json"), json.dumps(manifest, indent=1).encode())
    return summary


def read_triples(out_url: str) -> pa.Table:
    """All triples of committed shards (files of uncommitted attempts are ignored)."""
    return _read_committed_files(out_url, "triples_file", TRIPLE_SCHEMA)


def read_quarantine(out_url: str) -> pa.Table:
    return _read_committed_files(out_url, "quarantine_file", QUARANTINE_SCHEMA)


def _read_committed_files(out_url: str, attr: str, schema: pa.Schema) -> pa.Table:
    tables = []
    for r in sorted(read_committed(out_url).values(), key=lambda r: (r.input_url, r.start)):
        fs, path = _fs(_join(out_url, getattr(r, attr)))
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()
