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


class PlanConflict(ValueError):
    """A run that would make an output disagree with itself: another preparation, an input out of order."""


PLAN_FILE = "_plan.json"
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)(?P<suffix>\D*)$")


def sequence_key(url: str) -> tuple[str, int] | None:
    """(name pattern, number) of a numbered input such as ``pubmed25n1275.xml.gz`` or ``BioCXML.3.tar.gz``.

    PubMed numbers its update files after the baseline and each update may delete or revise citations of
    the files before it, so files of one series must be added to an output in number order."""
    m = _NUMBERED.match(url.rstrip("/").rsplit("/", 1)[-1])
    return (m["stem"] + "#" + m["suffix"], int(m["number"])) if m else None


def read_plan(out_url: str) -> dict | None:
    """The output's ledger: its preparation and its inputs in rank order (None for a new output)."""
    url = join(out_url, PLAN_FILE)
    return read_json(url) if exists(url) else None


def new_inputs(out_url: str, urls: list[str], cfg: PrepareConfig) -> list[str]:
    """The inputs of `urls` that the output does not hold yet, in order; refuses what would make the output
    disagree with itself.

    An output is a growing, ordered set of inputs: the baseline in one run, then an update file a day.
    Inputs it already holds are skipped (never counted twice). A run prepared otherwise (another part size,
    format, passages or concepts) would count the same documents twice, and a file numbered before one the
    output holds would apply PubMed's revisions out of order: both raise `PlanConflict` before any work.
    """
    plan = read_plan(out_url)
    if plan is None:
        return list(dict.fromkeys(urls))
    if plan.get("prepare") is not None and plan["prepare"] != asdict(cfg):
        differ = [f"{k}: {plan['prepare'].get(k)!r} there, {v!r} now"
                  for k, v in asdict(cfg).items() if plan["prepare"].get(k) != v]
        raise PlanConflict(f"{out_url} was prepared with other settings ({'; '.join(differ)}): the same documents "
                           f"would be counted twice. Rerun with the output's settings, or write to a new out_url")
    held = set(plan["inputs"])
    last: dict[str, tuple[int, str]] = {}
    for url in plan["inputs"]:
        if (key := sequence_key(url)) is not None:
            last[key[0]] = max(last.get(key[0], (-1, "")), (key[1], url))
    out = []
    for url in dict.fromkeys(urls):
        if url in held:
            continue
        if (key := sequence_key(url)) is not None:
            if key[0] in last and key[1] < last[key[0]][0]:
                raise PlanConflict(f"{url} is numbered before {last[key[0]][1]}, which {out_url} already holds: "
                                   f"files of one series must be added in number order (PubMed updates after "
                                   f"the baseline)")
            last[key[0]] = (key[1], url)
        out.append(url)
    return out


def extend_plan(out_url: str, manifests: list[dict], cfg: PrepareConfig) -> list[dict]:
    """Append this run's prepared inputs to the output's ordered set (see `new_inputs`); returns the
    manifests of every input the output holds, in rank order. The plan file is rewritten atomically."""
    from ..registry.storage import write_json_atomic
    fresh = set(new_inputs(out_url, [m["input_url"] for m in manifests], cfg))
    plan = read_plan(out_url) or {"schema_version": 2, "inputs": [], "manifests": []}
    for m in manifests:
        if m["input_url"] in fresh:
            plan["inputs"].append(m["input_url"])
            plan["manifests"].append(join(m["prepared_url"], "manifest.json"))
    plan["prepare"] = asdict(cfg)
    write_json_atomic(join(out_url, PLAN_FILE), plan)
    return [read_json(u) for u in plan["manifests"]]


def write_plan(out_url: str, manifests: list[dict], cfg: PrepareConfig | None = None) -> None:
    """Record `manifests` as the output's inputs, in rank order (for tests and tools that plan by hand)."""
    from ..registry.storage import write_json_atomic
    write_json_atomic(join(out_url, PLAN_FILE), {
        "schema_version": 2, "prepare": asdict(cfg) if cfg is not None else None,
        "inputs": [m["input_url"] for m in manifests],
        "manifests": [join(m["prepared_url"], "manifest.json") for m in manifests]})


def load_plan(out_url: str) -> tuple[list[Part], dict[int, list[str]]]:
    """(parts, deletions by input rank) of every input the output holds."""
    plan = read_plan(out_url)
    if plan is None:
        raise FileNotFoundError(f"{join(out_url, PLAN_FILE)}: no extraction plan (was {out_url} written by "
                                f"docre-extract?)")
    manifests = [read_json(u) for u in plan["manifests"]]
    return plan_parts(manifests), {rank: m["deleted"] for rank, m in enumerate(manifests) if m["deleted"]}
