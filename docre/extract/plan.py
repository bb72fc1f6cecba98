"""Planning: which inputs, how they are cut into parts, and which parts exist. O(inputs + parts), never O(documents).

An input is prepared once (`docre.extract.prepare`) into parts of `part_docs`
documents; its manifest lists the parts. Planning an extraction is reading those
manifests: a few kilobytes per input file, whatever the number of documents.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from ..data.io import FORMATS, detect_format, is_archive
from ..registry.storage import exists, fs_of, full_url, join, read_json

_GLOB_CHARS = re.compile(r"[*?\[]")
PREPARE_SCHEMA_VERSION = 1


@dataclass
class PrepareConfig:
    """How raw inputs become prepared parts; flows pass it through unchanged.

    36 million PubMed abstracts at the default 10,000 documents per part are
    3,600 parts: a few thousand task runs, which a self-hosted Prefect server
    handles, instead of hundreds of thousands.
    """
    part_docs: int = 10_000
    format: str | None = None  # one of docre.data.io.FORMATS; None: from names and content
    passages: str = "title_abstract"  # BioC: or "all"
    concepts: str | None = None  # PubMed XML: bioconcepts2pubtator3 file or index
    unlinked: str = "drop"
    entity_types: str = "model"  # leave out types the model was not trained on ("all" keeps them)

    def __post_init__(self) -> None:
        if self.part_docs < 1:
            raise ValueError(f"part_docs must be >= 1, got {self.part_docs}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; one of {FORMATS}")


@dataclass(frozen=True)
class Part:
    """One prepared part: the unit of extraction (one task run)."""
    part_id: str
    input_url: str
    input_rank: int  # position of the input in the plan: later inputs supersede earlier ones (PubMed updates)
    data_url: str  # the part's tokenized Parquet
    quarantine_url: str  # records of its range the reader refused (prepare)
    first_record: int  # records [first, end) of the input (documents and quarantined records, in file order)
    end_record: int
    docs: int  # documents in the part (rows of data_url)
    quarantined: int  # records of this range refused while reading (in the input's prepare quarantine)


def list_inputs(url_or_glob: str | Iterable[str], format: str | None = None) -> list[str]:
    """Expand input URLs (a file, a directory, a glob, or a list/comma-separated mix) to file URLs, in order.

    Directories are searched recursively; from directories and globs only files
    whose format is recognised by name (and tar archives) are kept unless
    `format` is given; hidden or underscore-prefixed files (``_SUCCESS``) are
    skipped. Files keep the order given, and within a directory or glob the
    sorted order: later inputs supersede earlier ones, as PubMed update files
    (numbered after the baseline) must. Raises FileNotFoundError when nothing matches.
    """
    specs = [u.strip() for u in url_or_glob.split(",") if u.strip()] if isinstance(url_or_glob, str) \
        else [str(u) for u in url_or_glob]
    out: list[str] = []
    for spec in specs:
        fs, path = fs_of(spec)
        if _GLOB_CHARS.search(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            out.append(full_url(fs, path))
            continue
        else:
            raise FileNotFoundError(f"input not found: {spec}")
        kept = [p for p in found if _wanted(p, format)]
        if not kept:
            raise FileNotFoundError(f"no input documents under {spec}")
        out.extend(full_url(fs, p) for p in sorted(kept))
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


def input_fingerprint(url: str) -> str:
    """Size plus ETag or modification time: changes when the object is rewritten."""
    fs, path = fs_of(url)
    fs.invalidate_cache(path)
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return f"{info.get('size')}:{stamp}"


def input_key(url: str, fingerprint: str, cfg: PrepareConfig, tokenization: str) -> str:
    """The prepared data's identity: the input, its bytes, how it is read and tokenized, the part size."""
    payload = json.dumps([PREPARE_SCHEMA_VERSION, url, fingerprint, asdict(cfg), tokenization], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def prepared_dir(work_url: str, key: str) -> str:
    return join(work_url, key)


def read_input_manifest(work_url: str, key: str) -> dict | None:
    url = join(prepared_dir(work_url, key), "manifest.json")
    return read_json(url) if exists(url) else None


def plan_parts(manifests: list[dict]) -> list[Part]:
    """Parts of prepared inputs, in input order (the manifests' order is the inputs' rank)."""
    parts = []
    for rank, m in enumerate(manifests):
        for p in m["parts"]:
            parts.append(Part(p["part_id"], m["input_url"], rank, join(m["prepared_url"], p["file"]),
                              join(m["prepared_url"], p["quarantine_file"]), p["first_record"], p["end_record"],
                              p["docs"], p["quarantined"]))
    return parts


def write_plan(out_url: str, manifests: list[dict]) -> None:
    """Record the run's inputs in rank order (their prepare manifests), so the output can be re-aggregated."""
    from ..registry.storage import write_json_atomic
    write_json_atomic(join(out_url, "_plan.json"), {
        "inputs": [m["input_url"] for m in manifests],
        "manifests": [join(m["prepared_url"], "manifest.json") for m in manifests]})


def load_plan(out_url: str) -> tuple[list[Part], dict[int, list[str]]]:
    """(parts, deletions by input rank) of the run that wrote `out_url`."""
    url = join(out_url, "_plan.json")
    if not exists(url):
        raise FileNotFoundError(f"{url}: no extraction plan (was {out_url} written by docre-extract?)")
    manifests = [read_json(u) for u in read_json(url)["manifests"]]
    return plan_parts(manifests), {rank: m["deleted"] for rank, m in enumerate(manifests) if m["deleted"]}
