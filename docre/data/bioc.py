"""BioC XML and BioC JSON: PubTator3 bulk archives, the PubTator3 API, BioCreative CDR's BioC release.

Both encodings are read into the same plain dict per document (the BioC JSON
shape) and then into one `RawDocument`, so XML and JSON cannot disagree.

* **Passages.** Title + abstract by default, which is what models are trained
  on: a passage counts when its ``type`` infon is ``title``/``abstract``/
  ``front`` or its ``section_type`` is ``TITLE``/``ABSTRACT``; a document whose
  passages carry neither infon is taken whole (first passage = title).
  ``passages="all"`` keeps full text (PMC articles). Kept passages are joined
  by one space and are hard sentence boundaries.
* **Offsets** are document coordinates (a passage's text starts at its own
  ``<offset>``; gaps between passages are normal); each annotation location is
  mapped into the joined text. Annotations need not be sorted; entities are
  numbered by first mention in text order.
* **Ids**: the ``identifier`` infon (else ``MESH``/``NCBI Gene``/... infons),
  split and normalised as described in `docre.data.assemble`.
* **Relations**: PubTator3's ``role1``/``role2`` infons (``Chemical|MESH:D003911``),
  else ``<node refid role>``s pointing at annotations, else the CDR release's
  ``relation``/``Chemical``/``Disease`` infons. Relations whose entity has no
  mention in the kept passages are dropped (counted), not fatal.
* **Document id**: the PMID (``article-id_pmid`` infon for PMC full text), else ``<id>``.
* A document is labelled (facts, possibly none) when it has relations or the
  writer marked it (document infon ``docre_labelled``); otherwise it is
  unlabelled, as raw PubTator3 output is.

Parsing is lxml ``iterparse``: one ``<document>`` at a time, cleared after
use, so memory stays flat on 20 GB archives.
"""
from __future__ import annotations

import json
import time
from typing import IO, Any, Callable, Iterable, Iterator, Literal
from xml.sax.saxutils import escape, quoteattr

from .assemble import (AssembleOptions, RawDocument, RawMention, RawRelation, assemble, join_passages,
                       split_ids)
from .document import Document, DocumentError, RelationInventory
from .validate import each_document
from .xmlstream import child_text, element_text, iter_records

Passages = Literal["title_abstract", "all"]
_TITLE_TYPES = {"title", "front"}
_ABSTRACT_TYPES = {"abstract", "abstract_title_1"}
_ID_INFONS = ("identifier", "Identifier", "MESH", "NCBI Gene", "NCBI Taxonomy", "normalized_id", "database_id")


# ---------------------------------------------------------------- XML -> dicts

def _infons(el, counts: dict | None = None) -> dict[str, str]:
    return {i.get("key"): element_text(i, counts) for i in el.iterfind("infon")}


def _xml_document(el, counts: dict | None = None) -> dict:
    """One lxml ``<document>`` element as a BioC JSON-shaped dict (entities in its text resolved and counted)."""
    def annotations(parent) -> list[dict]:
        return [{"id": a.get("id"), "infons": _infons(a, counts), "text": child_text(a, "text", counts) or "",
                 "locations": [{"offset": loc.get("offset"), "length": loc.get("length")}
                               for loc in a.iterfind("location")]}
                for a in parent.iterfind("annotation")]

    def relations(parent) -> list[dict]:
        return [{"id": r.get("id"), "infons": _infons(r, counts),
                 "nodes": [{"refid": n.get("refid"), "role": n.get("role")} for n in r.iterfind("node")]}
                for r in parent.iterfind("relation")]

    passages = []
    for p in el.iterfind("passage"):
        sentences = [{"offset": s.findtext("offset"), "text": child_text(s, "text", counts)}
                     for s in p.iterfind("sentence")]
        text = child_text(p, "text", counts)
        if text is None:  # sentence-level BioC: the passage text is its sentences' texts at their offsets
            text = _sentences_text(p.findtext("offset"), sentences)
        passages.append({"infons": _infons(p, counts), "offset": p.findtext("offset"), "text": text,
                         "sentences": sentences,
                         "annotations": annotations(p) + [a for s in p.iterfind("sentence") for a in annotations(s)],
                         "relations": relations(p)})
    return {"id": el.findtext("id"), "infons": _infons(el, counts), "passages": passages,
            "annotations": annotations(el), "relations": relations(el), "sourceline": el.sourceline}


def _sentences_text(offset: str | None, sentences: list[dict]) -> str:
    """A passage text rebuilt from its sentences; offsets that are not numbers are left to `bioc_raw` to report."""
    try:
        base = int(offset or 0)
        text = ""
        for s in sentences:
            text = text.ljust(int(s["offset"] or 0) - base) + (s["text"] or "")
        return text
    except (TypeError, ValueError):
        return ""


def iter_bioc_xml(f: IO[bytes], source: str, counts: dict | None = None) -> Iterator[dict]:
    """BioC documents of an XML stream, one at a time; a syntax error raises DocumentError with the line."""
    index = 0
    for el in iter_records(f, source, "document"):
        if el.getparent() is None or el.getparent().tag != "collection":
            continue  # a "document" element that is not a BioC document of the collection
        yield _xml_document(el, counts) | {"index": index}
        index += 1


def iter_bioc_json(data: Any, source: str) -> Iterator[dict]:
    """BioC documents of a parsed JSON value: a collection, the PubTator3 API object, or a document list."""
    if isinstance(data, dict) and "PubTator3" in data:
        docs = data["PubTator3"]
    elif isinstance(data, dict) and "documents" in data:
        docs = data["documents"]
    elif isinstance(data, dict) and "passages" in data:
        docs = [data]
    elif isinstance(data, list):
        docs = data
    else:
        raise DocumentError(source, "top level", "not a BioC JSON collection: expected an object with "
                                                 "'documents' or 'PubTator3', or a list of documents")
    if not isinstance(docs, list):
        raise DocumentError(source, "top level", f"'documents' must be a list, got {type(docs).__name__}")
    for i, d in enumerate(docs):
        if isinstance(d, dict):
            d = dict(d)
            d.setdefault("index", i)
        yield d


# ---------------------------------------------------------------- dicts -> documents

def _doc_id(d: dict) -> str:
    for p in d.get("passages") or []:
        pmid = (p.get("infons") or {}).get("article-id_pmid")
        if pmid:
            return str(pmid).strip()
    pmid = (d.get("infons") or {}).get("article-id_pmid")
    if pmid:
        return str(pmid).strip()
    for key in ("pmid", "id", "_id"):
        if d.get(key) not in (None, ""):
            return str(d[key]).split("|")[0].strip()
    return ""


def _kind(infons: dict) -> str | None:
    """'title', 'abstract', 'other', or None when the passage says nothing about itself."""
    ptype = str(infons.get("type", "")).strip().lower()
    section = str(infons.get("section_type", "")).strip().upper()
    if not ptype and not section:
        return None
    if section == "TITLE" or (ptype in _TITLE_TYPES and section in ("", "TITLE")):
        return "title"
    if section == "ABSTRACT" or ptype in _ABSTRACT_TYPES:
        return "abstract"
    return "other"


def _ids_of(infons: dict) -> str:
    for key in _ID_INFONS:
        if infons.get(key) not in (None, ""):
            return str(infons[key])
    return ""


def _int(value: Any, what: str, source: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DocumentError(source, where, f"{what} {value!r} is not an integer") from None


def _objects(value: Any, what: str, source: str, where: str) -> list[dict]:
    """A list of JSON objects, or a DocumentError that names what is not one (not a bare AttributeError)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DocumentError(source, where, f"{what}s must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        _object(item, f"{what} {i}", source, where)
    return value


def _object(value: Any, what: str, source: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise DocumentError(source, where, f"{what} is not an object (got {type(value).__name__} {value!r:.40})")
    return value


def _role(value: str) -> tuple[str, str] | None:
    """PubTator3 ``Type|ID`` -> (type, id); None when unusable."""
    if not value or "|" not in value:
        return None
    etype, kb = value.split("|", 1)
    ids = split_ids(kb)
    return (etype.strip(), ids[0]) if len(ids) == 1 else None


def bioc_raw(d: dict, source: str, passages: Passages = "title_abstract", counts: dict | None = None) -> RawDocument:
    """A BioC document dict -> RawDocument in the joined text's coordinates."""
    if not isinstance(d, dict):
        raise DocumentError(source, "document", f"expected a JSON object, got {type(d).__name__}")
    for key in ("infons", "passages"):
        for p in ([d] + d["passages"] if key == "passages" and isinstance(d.get("passages"), list) else [d]):
            if isinstance(p, dict) and not isinstance(p.get("infons") or {}, dict):
                raise DocumentError(source, f"document {d.get('id', d.get('index', '?'))!r}",
                                    f"infons must be an object, got {type(p.get('infons')).__name__}")
    doc_id = _doc_id(d)
    where = f"document {doc_id!r}" if doc_id else f"document {d.get('index', '?')}"
    if "sourceline" in d:
        where = f"line {d['sourceline']}, {where}"
    if not doc_id:
        raise DocumentError(source, where, "document has no id")
    raw_passages = d.get("passages")
    if not isinstance(raw_passages, list) or not raw_passages:
        raise DocumentError(source, where, "document has no passages")
    kinds = [_kind(p.get("infons") or {}) if isinstance(p, dict) else None for p in raw_passages]
    untyped = all(k is None for k in kinds)
    kept: list[tuple[dict, str]] = []
    for i, (p, kind) in enumerate(zip(raw_passages, kinds)):
        if not isinstance(p, dict):
            raise DocumentError(source, where, f"passage {i} is not an object")
        if untyped:
            kind = "title" if i == 0 else "abstract"
        if passages == "all" or kind in ("title", "abstract"):
            kept.append((p, kind or "other"))
        elif counts is not None:
            counts["passages left out"] = counts.get("passages left out", 0) + 1
    texts = [str(p.get("text") or "") for p, _ in kept]
    text, spans, starts = join_passages(texts)
    title = next((t for (p, k), t in zip(kept, texts) if k == "title"), "")
    if title and not text.startswith(title):
        title = ""  # the title is not the first kept passage: no title
    mentions: list[RawMention] = []
    by_ann: dict[str, list[tuple[str, str]]] = {}
    sentences: list[tuple[int, int]] | None = []
    for (p, _), start, t in zip(kept, starts, texts):
        p_off = _int(p.get("offset", 0), "passage offset", source, where)
        sents = _objects(p.get("sentences"), "sentence", source, where)
        if sentences is not None and sents and all(s.get("text") for s in sents):
            for s in sents:  # sentences the source states: used as they are (every kept passage must have them)
                local = _int(s.get("offset"), "sentence offset", source, where) - p_off
                if t[local:local + len(s["text"])] != s["text"]:
                    raise DocumentError(source, where, f"sentence at offset {s.get('offset')} does not match "
                                                       f"its passage text")
                sentences.append((start + local, start + local + len(s["text"])))
        else:
            sentences = None
        for a in _objects(p.get("annotations"), "annotation", source, where):
            infons = _object(a.get("infons") or {}, f"annotation {str(a.get('id'))!r} infons", source, where)
            aid = str(a.get("id"))
            awhere = f"annotation {aid!r}"
            etype = str(infons.get("type", "")).strip()
            ids = split_ids(_ids_of(infons))
            by_ann[aid] = [(etype, i) for i in ids]
            atext = str(a.get("text") or "")
            locs = a.get("locations") or []
            if not locs:
                raise DocumentError(source, f"{awhere}, {where}", "annotation has no location")
            for loc in _objects(locs, "location", source, f"{awhere}, {where}"):
                off = _int(loc.get("offset"), "location offset", source, f"{awhere}, {where}")
                length = _int(loc.get("length"), "location length", source, f"{awhere}, {where}")
                if length <= 0:
                    raise DocumentError(source, f"{awhere}, {where}",
                                        f"zero-length annotation at offset {off}" if length == 0 else
                                        f"annotation with negative length {length} at offset {off}")
                local = off - p_off
                if not 0 <= local < local + length <= len(t):
                    raise DocumentError(source, f"{awhere}, {where}",
                                        f"location [{off}, {off + length}) is outside its passage "
                                        f"[{p_off}, {p_off + len(t)})")
                mtext = atext if len(locs) == 1 else t[local:local + length]
                mentions.append(RawMention(start + local, start + local + length, mtext, etype, ids, awhere))
    # annotations of passages left out still name entities for relation nodes
    for p in raw_passages:
        for a in _objects(p.get("annotations"), "annotation", source, where):
            by_ann.setdefault(str(a.get("id")), [(str((a.get("infons") or {}).get("type", "")),
                                                 i) for i in split_ids(_ids_of(a.get("infons") or {}))])
    mentions.sort(key=lambda m: (m.start, m.end))
    relations: list[RawRelation] = []
    all_rel = list(d.get("relations") or []) + [r for p, _ in kept for r in (p.get("relations") or [])]
    for r in _objects(all_rel, "relation", source, where):
        infons = _object(r.get("infons") or {}, f"relation {str(r.get('id'))!r} infons", source, where)
        rwhere = f"relation {str(r.get('id'))!r}"
        rtype = str(infons.get("type") or infons.get("relation") or "").strip()
        head, tail = _role(infons.get("role1", "")), _role(infons.get("role2", ""))
        if head is None or tail is None:
            nodes = r.get("nodes") or []
            ends = [by_ann.get(str(n.get("refid")), []) for n in nodes]
            if len(ends) == 2 and all(len(e) == 1 for e in ends):
                head, tail = ends[0][0], ends[1][0]
            elif "Chemical" in infons and "Disease" in infons:  # BioCreative CDR BioC
                head = ("Chemical", split_ids(infons["Chemical"])[0]) if split_ids(infons["Chemical"]) else None
                tail = ("Disease", split_ids(infons["Disease"])[0]) if split_ids(infons["Disease"]) else None
        if not rtype or head is None or tail is None:
            raise DocumentError(source, f"{rwhere}, {where}", "relation without a type and two resolvable "
                                                              "entities (role1/role2, nodes, or Chemical/Disease)")
        relations.append(RawRelation(rtype, head, tail, rwhere))
    labelled = bool(all_rel) or str((d.get("infons") or {}).get("docre_labelled", "")).lower() == "true"
    return RawDocument(doc_id, text, spans, title, mentions, relations, labelled, where, sentences or None)


def read_bioc(records: Iterable[dict], source: str, inventory: RelationInventory | None = None,
              passages: Passages = "title_abstract", unlinked: Literal["drop", "keep"] = "drop",
              on_error: Callable[[DocumentError], None] | None = None,
              counts: dict | None = None) -> Iterator[Document]:
    """Documents from BioC document dicts (`iter_bioc_xml` / `iter_bioc_json`); bad ones raise or go to on_error."""
    options = AssembleOptions(unlinked=unlinked, missing_entity="drop")

    def until_broken(records: Iterable[dict]) -> Iterator[dict]:
        try:
            yield from records
        except DocumentError as err:  # the stream itself broke (XML syntax): nothing after it is readable
            if on_error is None:
                raise
            on_error(err)

    def build(d: dict) -> tuple[Document, str]:
        raw = bioc_raw(d, source, passages, counts)
        return assemble(raw, source, inventory, options, counts), raw.where
    yield from each_document(until_broken(records), build, source, on_error)


# ---------------------------------------------------------------- writers

def _passages_of(doc: Document) -> list[tuple[str, int, str]]:
    """(type, offset, text) passages of a document: title and abstract when the text has them."""
    text, _ = doc.layout()
    if doc.title and doc.text is not None and text.startswith(doc.title + " "):
        return [("title", 0, doc.title), ("abstract", len(doc.title) + 1, text[len(doc.title) + 1:])]
    if doc.title and doc.text is not None and text == doc.title:
        return [("title", 0, doc.title)]
    return [("abstract", 0, text)]


def _sentence_spans(doc: Document) -> list[tuple[int, int]]:
    return [(toks[0][0], toks[-1][1]) for toks in doc.layout()[1] if toks]


def _mention_spans(doc: Document) -> list[tuple[int, int, str, str, list[str], list[int]]]:
    """(start, end, text, type, ids, entity indices) per distinct span, in text order."""
    text, chars = doc.layout()
    spans: dict[tuple[int, int], tuple[str, str, list[str], list[int]]] = {}
    for ei, ent in enumerate(doc.entities):
        for m in ent.mentions:
            a, b = chars[m.sent_id][m.start][0], chars[m.sent_id][m.end - 1][1]
            entry = spans.setdefault((a, b), (text[a:b], ent.type, [], []))
            if ei not in entry[3]:
                entry[2].append(ent.kb_id or "-")
                entry[3].append(ei)
    return [(a, b, *v) for (a, b), v in sorted(spans.items())]


def _bioc_dict(doc: Document, relations: list[dict] | None, model_version: str | None) -> dict:
    passages = [{"infons": {"type": ptype, "section_type": ptype.upper()}, "offset": off, "text": text,
                 "sentences": [], "annotations": [], "relations": []} for ptype, off, text in _passages_of(doc)]
    for a, b in _sentence_spans(doc):  # our segmentation, so reading the file back gives the same sentences
        target = next(p for p in reversed(passages) if p["offset"] <= a)
        target["sentences"].append({"offset": a, "text": target["text"][a - target["offset"]:b - target["offset"]],
                                    "annotations": [], "relations": []})
    first_ann: dict[int, str] = {}
    for n, (a, b, mtext, mtype, ids, ents) in enumerate(_mention_spans(doc)):
        aid = f"T{n}"
        for e in ents:
            first_ann.setdefault(e, aid)
        target = next(p for p in reversed(passages) if p["offset"] <= a)
        target["annotations"].append({"id": aid, "infons": {"identifier": "|".join(ids), "type": mtype},
                                      "text": mtext, "locations": [{"offset": a, "length": b - a}]})
    rels = []
    if relations is None:
        relations = [{"head": f.head, "tail": f.tail, "relation": f.relation} for f in doc.facts or []]
    for n, r in enumerate(relations):
        h, t = doc.entities[r["head"]], doc.entities[r["tail"]]
        infons = {"type": r["relation"], "role1": f"{h.type}|{h.kb_id or '-'}", "role2": f"{t.type}|{t.kb_id or '-'}"}
        if r.get("score") is not None:
            infons["score"] = f"{r['score']:.4f}"
        if model_version:
            infons["model_version"] = model_version
        if r.get("iteration") is not None:
            infons["iteration"] = str(r["iteration"])
        rels.append({"id": f"R{n}", "infons": infons,
                     "nodes": [{"refid": first_ann.get(r["head"], ""), "role": "head"},
                               {"refid": first_ann.get(r["tail"], ""), "role": "tail"}]})
    infons = {"docre_labelled": "true"} if doc.facts is not None or relations else {}
    return {"id": doc.id, "infons": infons, "passages": passages, "relations": rels}


def _relations_by_doc(triples: Iterable[Any] | None) -> dict[str, list[dict]] | None:
    if triples is None:
        return None
    out: dict[str, list[dict]] = {}
    for t in triples:
        row = t if isinstance(t, dict) else t.__dict__
        out.setdefault(str(row["doc_id"]), []).append(row)
    return out


def write_bioc_json(docs: Iterable[Document], triples: Iterable[Any] | None = None,
                    model_version: str | None = None) -> str:
    """A BioC JSON collection; with `triples`, their relations (with score and model version) replace the gold ones."""
    by_doc = _relations_by_doc(triples)
    return json.dumps({"source": "docre", "date": time.strftime("%Y%m%d"), "key": "BioC.key", "infons": {},
                       "documents": [_bioc_dict(d, None if by_doc is None else by_doc.get(d.id, []), model_version)
                                     for d in docs]}, ensure_ascii=False)


def write_bioc_xml(docs: Iterable[Document], triples: Iterable[Any] | None = None,
                   model_version: str | None = None) -> Iterator[str]:
    """BioC XML, streamed as text chunks (one per document); loads in PubTator and the `bioc` package."""
    by_doc = _relations_by_doc(triples)

    def infons(d: dict, pad: str) -> str:
        return "".join(f"{pad}<infon key={quoteattr(k)}>{escape(str(v))}</infon>\n" for k, v in d.items())

    yield ("<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE collection SYSTEM 'BioC.dtd'>\n"
           f"<collection>\n  <source>docre</source>\n  <date>{time.strftime('%Y%m%d')}</date>\n"
           "  <key>BioC.key</key>\n")
    for doc in docs:
        d = _bioc_dict(doc, None if by_doc is None else by_doc.get(doc.id, []), model_version)
        out = [f"  <document>\n    <id>{escape(d['id'])}</id>\n", infons(d["infons"], "    ")]
        for p in d["passages"]:
            out.append(f"    <passage>\n{infons(p['infons'], '      ')}      <offset>{p['offset']}</offset>\n"
                       f"      <text>{escape(p['text'])}</text>\n")
            out.extend(f"      <sentence><offset>{s['offset']}</offset><text>{escape(s['text'])}</text></sentence>\n"
                       for s in p["sentences"])
            for a in p["annotations"]:
                loc = a["locations"][0]
                out.append(f"      <annotation id={quoteattr(a['id'])}>\n{infons(a['infons'], '        ')}"
                           f"        <location offset=\"{loc['offset']}\" length=\"{loc['length']}\"/>\n"
                           f"        <text>{escape(a['text'])}</text>\n      </annotation>\n")
            out.append("    </passage>\n")
        for r in d["relations"]:
            nodes = "".join(f"      <node refid={quoteattr(n['refid'])} role={quoteattr(n['role'])}/>\n"
                            for n in r["nodes"])
            out.append(f"    <relation id={quoteattr(r['id'])}>\n{infons(r['infons'], '      ')}{nodes}    </relation>\n")
        out.append("  </document>\n")
        yield "".join(out)
    yield "</collection>\n"
