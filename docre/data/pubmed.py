"""PubMed baseline/update XML, and entities for it from PubTator3's ``bioconcepts2pubtator3``.

PubMed XML (``pubmed25n0001.xml.gz``) has text but no entities:
``PubmedArticle/MedlineCitation/PMID``, ``Article/ArticleTitle`` and
``Abstract/AbstractText`` (several in structured abstracts, each a sentence
boundary; inline markup such as ``<i>`` is flattened). Update files also hold
``DeleteCitation/PMID`` elements; they are reported through `deleted`.

Entities come from ``bioconcepts2pubtator3.gz`` (tab-separated PMID, type,
concept id, mentions joined by ``|``, resource), which covers all of PubMed:
reading it once per baseline file would cost 1,300 passes over a multi-GB
file. `build_concept_index` reads it once into sorted Parquet runs whose row
groups carry PMID min/max statistics; `ConceptIndex.lookup` then touches only
the row groups that overlap one batch of PMIDs. Each mention string is placed
in the title and abstract by exact, case-sensitive match on token boundaries
(the characters around it are not letters or digits), every occurrence.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Literal

from .assemble import AssembleOptions, RawDocument, RawMention, assemble, join_passages, split_ids
from .document import Document, DocumentError, RelationInventory
from .streams import iter_lines
from .xmlstream import iter_records


@dataclass
class Citation:
    pmid: str
    version: int
    title: str
    abstract: list[str]  # AbstractText parts, in order
    line: int


def _text(el) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


DELETED = "citations deleted (DeleteCitation PMIDs)"
OLDER_VERSIONS = "older versions of a PMID dropped (the latest Version is read)"
LATE_NEWER_VERSIONS = "newer versions of a PMID read far after an older one already read (both kept)"
UNMATCHED_CONCEPTS = "concept mentions never found in the text"


def _version(pmid_el, source: str, line: int, pmid: str) -> int:
    raw = pmid_el.get("Version", "1") if pmid_el is not None else "1"
    try:
        return int(raw)
    except ValueError:
        raise DocumentError(source, f"line {line}, document {pmid!r}",
                            f"PMID Version {raw!r} is not a whole number") from None


def iter_pubmed_xml(f: IO[bytes], source: str, deleted: list[str] | None = None,
                    counts: dict | None = None) -> Iterator[Citation | DocumentError]:
    """Citations of a PubmedArticleSet stream (journal and book articles); DeleteCitation PMIDs go to `deleted`.

    A citation that cannot be read comes back as the DocumentError that says
    why, in its place, so one bad record never ends the file.
    """
    for el in iter_records(f, source, ("PubmedArticle", "DeleteCitation", "PubmedBookArticle")):
        if el.tag == "DeleteCitation":
            pmids = [(p.text or "").strip() for p in el.iterfind("PMID")]
            if deleted is not None:
                deleted.extend(pmids)
            if counts is not None:
                counts[DELETED] = counts.get(DELETED, 0) + len(pmids)
            continue
        if el.tag == "PubmedArticle":
            cit = el.find("MedlineCitation")
            pmid_el = cit.find("PMID") if cit is not None else None
            art = cit.find("Article") if cit is not None else None
            title = _text(art.find("ArticleTitle")) if art is not None else ""
            abstracts = art.iterfind("Abstract/AbstractText") if art is not None else []
        else:  # PubmedBookArticle: a book or chapter, with its own title and abstract
            book = el.find("BookDocument")
            pmid_el = book.find("PMID") if book is not None else None
            title = ""
            if book is not None:
                title = _text(book.find("ArticleTitle")) or _text(book.find("Book/BookTitle"))
            abstracts = book.iterfind("Abstract/AbstractText") if book is not None else []
        pmid = (pmid_el.text or "").strip() if pmid_el is not None else ""
        try:
            version = _version(pmid_el, source, el.sourceline, pmid)
        except DocumentError as err:
            yield err
            continue
        parts = [t for t in (_text(a) for a in abstracts) if t]
        yield Citation(pmid, version, title, parts, el.sourceline)


# ---------------------------------------------------------------- the concept index

CONCEPT_COLUMNS = ("pmid", "type", "concept_id", "mentions", "resource")


def _concept_schema():
    import pyarrow as pa
    return pa.schema([("pmid", pa.int64()), ("type", pa.string()), ("concept_id", pa.string()),
                      ("mentions", pa.list_(pa.string())), ("resource", pa.string())])


def build_concept_index(concepts_url: str, index_url: str, run_rows: int = 1_000_000,
                        row_group_rows: int = 32_768, progress: bool = False) -> dict:
    """Read a bioconcepts2pubtator3-style file once into a PMID-sorted Parquet index; returns its manifest.

    Bad lines (wrong field count, non-numeric PMID) are counted and skipped
    with their line numbers in the manifest (the first 100), never fatal: the
    file has hundreds of millions of lines. Memory is bounded by `run_rows`.
    """
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq


    t0 = time.time()
    fs, root = fsspec.core.url_to_fs(index_url)
    fs.makedirs(root, exist_ok=True)
    schema = _concept_schema()
    cols: dict[str, list] = {c: [] for c in CONCEPT_COLUMNS}
    runs, rows, bad, bad_lines = [], 0, 0, []

    def flush() -> None:
        if not cols["pmid"]:
            return
        table = pa.Table.from_pydict(cols, schema).sort_by("pmid")
        name = f"run-{len(runs):05d}.parquet"
        with fs.open(f"{root}/{name}", "wb") as out:
            pq.write_table(table, out, row_group_size=row_group_rows)
        runs.append({"file": name, "rows": table.num_rows,
                     "min_pmid": int(table["pmid"][0].as_py()), "max_pmid": int(table["pmid"][-1].as_py())})
        for c in cols.values():
            c.clear()

    for n, line in iter_lines(concepts_url):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 4 or not fields[0].strip().isdigit():
            if line.strip():
                bad += 1
                if len(bad_lines) < 100:
                    bad_lines.append(n)
            continue
        cols["pmid"].append(int(fields[0]))
        cols["type"].append(fields[1])
        cols["concept_id"].append(fields[2])
        cols["mentions"].append([m for m in fields[3].split("|") if m])
        cols["resource"].append(fields[4] if len(fields) > 4 else "")
        rows += 1
        if len(cols["pmid"]) >= run_rows:
            flush()
    flush()
    manifest = {"source": concepts_url, "rows": rows, "bad_lines": bad, "first_bad_lines": bad_lines,
                "runs": runs, "seconds": round(time.time() - t0, 3)}
    with fs.open(f"{root}/manifest.json", "w") as out:  # written last: an index without it is incomplete
        json.dump(manifest, out, indent=1)
    return manifest


def concept_index_for(url: str, cache_dir: str | None = None) -> str:
    """A concept index URL for `url`: the index itself, or one built once from a raw bioconcepts file.

    A raw file is indexed into ``cache_dir`` (default ``$DOCRE_CACHE`` or
    ``~/.cache/docre``) under a key of its URL, size and modification stamp,
    so every baseline file, process and later run reuses one index; the
    index is built under a temporary name and renamed when complete, so
    concurrent builders never see half an index.
    """
    import hashlib
    import os
    import shutil
    import uuid

    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        if not fs.exists(f"{path}/manifest.json"):
            raise DocumentError(url, "manifest.json", "not a concept index (no manifest.json)")
        return url
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
    key = hashlib.sha256(f"{url}|{info.get('size')}|{stamp}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("DOCRE_CACHE") or Path.home() / ".cache" / "docre") / "concepts"
    final = root / key
    if (final / "manifest.json").exists():
        return str(final)
    tmp = root / f".{key}-{uuid.uuid4().hex[:8]}"
    build_concept_index(url, str(tmp))
    try:
        tmp.rename(final)
    except OSError:  # another process finished first: use its index
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


class ConceptIndex:
    """PMID -> [(type, concept id, mentions)] over a `build_concept_index` directory."""

    def __init__(self, index_url: str):
        import fsspec

        self.url = index_url
        self.fs, self.root = fsspec.core.url_to_fs(index_url)
        try:
            with self.fs.open(f"{self.root}/manifest.json", "r") as f:
                self.manifest = json.load(f)
        except FileNotFoundError:
            raise DocumentError(index_url, "manifest.json", "not a concept index (no manifest.json); build one "
                                                            "with `docre data concepts`") from None
        self.lookups = 0

    def lookup(self, pmids: Iterable[str]) -> dict[str, list[tuple[str, str, list[str]]]]:
        import pyarrow.parquet as pq

        wanted = {int(p) for p in pmids if str(p).isdigit()}
        out: dict[str, list[tuple[str, str, list[str]]]] = {}
        if not wanted:
            return out
        lo, hi = min(wanted), max(wanted)
        self.lookups += 1
        for run in self.manifest["runs"]:
            if run["max_pmid"] < lo or run["min_pmid"] > hi:
                continue
            with self.fs.open(f"{self.root}/{run['file']}", "rb") as f:
                pf = pq.ParquetFile(f)
                for g in range(pf.num_row_groups):
                    st = pf.metadata.row_group(g).column(0).statistics
                    if st is not None and st.has_min_max and (st.max < lo or st.min > hi):
                        continue
                    for row in pf.read_row_group(g).to_pylist():
                        if row["pmid"] in wanted:
                            out.setdefault(str(row["pmid"]), []).append(
                                (row["type"], row["concept_id"], row["mentions"]))
        return out


_WORD = re.compile(r"\w", re.UNICODE)


def locate_mentions(text: str, concepts: list[tuple[str, str, list[str]]],
                    spans: list[tuple[int, int]], counts: dict | None = None) -> list[RawMention]:
    """Every exact occurrence of each concept's mention strings on token boundaries, inside one passage.

    Mention strings found nowhere are counted in `counts`: a concept file for
    another version of the abstract would otherwise just lose its entities.
    """
    out = []
    for etype, concept_id, mentions in concepts:
        ids = split_ids(concept_id)
        for m in dict.fromkeys(mentions):
            if not m:
                continue
            found = len(out)
            start = text.find(m)
            while start >= 0:
                end = start + len(m)
                before = text[start - 1] if start else " "
                after = text[end] if end < len(text) else " "
                inside = any(a <= start and end <= b for a, b in spans)
                if inside and not (_WORD.match(before) and _WORD.match(m[0])) and \
                        not (_WORD.match(after) and _WORD.match(m[-1])):
                    out.append(RawMention(start, end, m, etype, ids, f"concept {concept_id!r}"))
                start = text.find(m, start + 1)
            if len(out) == found and counts is not None:
                counts[UNMATCHED_CONCEPTS] = counts.get(UNMATCHED_CONCEPTS, 0) + 1
    out.sort(key=lambda r: (r.start, r.end))
    return out


def read_pubmed(f: IO[bytes], source: str, concepts: ConceptIndex | None = None,
                inventory: RelationInventory | None = None, unlinked: Literal["drop", "keep"] = "drop",
                on_error: Callable[[DocumentError], None] | None = None, counts: dict | None = None,
                deleted: list[str] | None = None, batch: int = 2000) -> Iterator[Document]:
    """Unlabelled documents (title + abstract) of a PubMed XML stream, with entities when `concepts` is given.

    Within one file the latest version of a PMID wins; DeleteCitation PMIDs go to `deleted`.
    """
    options = AssembleOptions(unlinked=unlinked)
    pending: list[Citation] = []
    emitted: dict[str, int] = {}  # PMID -> Version already handed on, for repeats a batch apart

    def count(key: str) -> None:
        if counts is not None:
            counts[key] = counts.get(key, 0) + 1

    def emit(cits: list[Citation]) -> Iterator[Document]:
        found = concepts.lookup(c.pmid for c in cits) if concepts is not None else {}
        latest: dict[str, Citation] = {}
        for c in cits:
            if c.pmid in emitted and c.version <= emitted[c.pmid]:
                count(OLDER_VERSIONS)
                continue
            if c.pmid in emitted:  # a newer Version far after the older one, which is already read
                count(LATE_NEWER_VERSIONS)
            if c.pmid in latest:
                count(OLDER_VERSIONS)
                if latest[c.pmid].version > c.version:
                    continue
            latest.pop(c.pmid, None)
            latest[c.pmid] = c
        emitted.update((pmid, c.version) for pmid, c in latest.items() if pmid)
        for c in latest.values():
            try:
                where = f"line {c.line}, document {c.pmid!r}"
                if not c.pmid:
                    raise DocumentError(source, f"line {c.line}", "citation has no PMID")
                text, spans, _ = join_passages([c.title] + c.abstract)
                if not c.title:
                    text, spans, _ = join_passages(c.abstract)
                if not text.strip():
                    raise DocumentError(source, where, "citation has no title and no abstract")
                mentions = locate_mentions(text, found.get(c.pmid, []), spans, counts)
                raw = RawDocument(c.pmid, text, spans, c.title, mentions, [], labelled=False, where=where)
                yield assemble(raw, source, inventory, options, counts)
            except DocumentError as err:
                if on_error is None:
                    raise
                on_error(err)

    try:
        for cit in iter_pubmed_xml(f, source, deleted, counts):
            if isinstance(cit, DocumentError):
                if on_error is None:
                    yield from emit(pending)
                    pending = []
                    raise cit
                on_error(cit)
                continue
            pending.append(cit)
            if len(pending) >= batch:
                # the versions of a PMID stand together in PubMed files: keep the last PMID's run for the next
                # batch, so its versions are compared with each other and only the latest is read
                cut = len(pending) - 1
                while cut > 0 and pending[cut - 1].pmid == pending[-1].pmid:
                    cut -= 1
                yield from emit(pending[:cut] if cut else pending)
                pending = pending[cut:] if cut else []
    except DocumentError as err:
        yield from emit(pending)
        pending = []
        if on_error is None:
            raise
        on_error(err)
    yield from emit(pending)
