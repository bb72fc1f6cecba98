"""Reader throughput and peak memory on generated PubTator3 / PubMed-shaped inputs.

    python bench/reader_bench.py [--gb 1.0] [--work runs/bench_readers]

Generates (once, reused afterwards) inputs shaped like the real dumps:

* a BioC XML ``.tar.gz`` of ``--gb`` GB of XML (PMC-like documents: title, abstract with annotations and a
  relation, and ten paragraphs, which the default title + abstract reading parses but leaves out), in
  members of 2,000 documents, as PubTator3's ``BioCXML.N.tar.gz`` has;
* PubTator3 text (title + abstract + mention lines), a PubTator3 API BioC JSON file, a PubMed baseline XML
  file (30,000 citations, gzip), and a ``bioconcepts2pubtator3``-style file for it.

Each reader runs in its own process, so its peak RSS (VmHWM) is its own. Also measured: the
`bioc` package's XML reader on the same archive member (parse only), for the choice of parser, and the
concept index (build once, then one lookup per batch of 2,000 PMIDs, as `read_pubmed` does).
Prints a table and writes bench/results/readers.json.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

WORDS = ("the a of and in to with was were patients rats treatment induced dose study acute chronic toxicity "
         "renal cardiac liver disease syndrome effect effects after during group groups increased reduced "
         "levels significant compared control cells expression protein response").split()
CHEMS = [("metformin", "MESH:D008687"), ("cisplatin", "MESH:D002945"), ("lithium", "MESH:D008094"),
         ("haloperidol", "MESH:D006220"), ("aspirin", "MESH:D001241")]
DISEASES = [("nephrotoxicity", "MESH:D007674"), ("tremor", "MESH:D014202"), ("hypotension", "MESH:D007022"),
            ("dyskinesia", "MESH:D004409"), ("ulcer", "MESH:D014456")]


def sentence(rng: random.Random, n: int = 18) -> str:
    w = [rng.choice(WORDS) for _ in range(n)]
    return w[0].capitalize() + " " + " ".join(w[1:]) + "."


def abstract_doc(rng: random.Random, pmid: int) -> tuple[str, str, list[tuple[int, int, str, str, str]]]:
    """Title, abstract, mentions (offsets in title + ' ' + abstract)."""
    chem, dis = rng.choice(CHEMS), rng.choice(DISEASES)
    title = f"{chem[0].capitalize()} and {dis[0]} in a {rng.choice(WORDS)} study."
    parts = []
    for i in range(8):
        s = sentence(rng)
        if i % 3 == 0:
            s = s[:-1] + f" {chem[0]} caused {dis[0]}."
        parts.append(s)
    abstract = " ".join(parts)
    text = title + " " + abstract
    mentions = []
    for name, kb, typ in ((chem[0], chem[1], "Chemical"), (dis[0], dis[1], "Disease"),
                          (chem[0].capitalize(), chem[1], "Chemical")):
        start = text.find(name)
        while start >= 0:
            mentions.append((start, start + len(name), name, typ, kb))
            start = text.find(name, start + 1)
    return title, abstract, sorted(set(mentions))


def bioc_document(rng: random.Random, pmid: int, paragraphs: int = 10, relation: bool = True) -> str:
    title, abstract, mentions = abstract_doc(rng, pmid)
    o_abs = len(title) + 1
    anns = {"t": [], "a": []}
    for n, (s, e, name, typ, kb) in enumerate(mentions):
        key = "t" if s < len(title) else "a"
        anns[key].append(f'<annotation id="{n}"><infon key="identifier">{kb}</infon><infon key="type">{typ}</infon>'
                         f'<location offset="{s}" length="{e - s}"/><text>{name}</text></annotation>')
    chem = next(m for m in mentions if m[3] == "Chemical")
    dis = next(m for m in mentions if m[3] == "Disease")
    out = [f"<document><id>{pmid}</id>",
           f'<passage><infon key="type">title</infon><infon key="section_type">TITLE</infon><offset>0</offset>'
           f"<text>{title}</text>{''.join(anns['t'])}</passage>",
           f'<passage><infon key="type">abstract</infon><infon key="section_type">ABSTRACT</infon>'
           f"<offset>{o_abs}</offset><text>{abstract}</text>{''.join(anns['a'])}</passage>"]
    off = o_abs + len(abstract) + 1
    for _ in range(paragraphs):
        para = " ".join(sentence(rng) for _ in range(8))
        out.append(f'<passage><infon key="type">paragraph</infon><infon key="section_type">RESULTS</infon>'
                   f"<offset>{off}</offset><text>{para}</text></passage>")
        off += len(para) + 1
    if relation:
        out.append(f'<relation id="R0"><infon key="type">Association</infon><infon key="role1">Chemical|{chem[4]}'
                   f'</infon><infon key="role2">Disease|{dis[4]}</infon><infon key="score">0.9</infon></relation>')
    out.append("</document>\n")
    return "".join(out)


def make_archive(path: Path, gb: float, per_member: int = 2000) -> int:
    rng, pmid, size, n = random.Random(0), 10_000_000, 0, 0
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        member = 0
        while size < gb * 1e9:
            docs = "".join(bioc_document(rng, pmid + i) for i in range(per_member))
            data = ("<?xml version='1.0' encoding='UTF-8'?><collection><source>PubTator</source>"
                    + docs + "</collection>\n").encode()
            info = tarfile.TarInfo(f"output/BioCXML/{member}.BioC.XML")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            size += len(data)
            pmid += per_member
            n += per_member
            member += 1
    return n


def make_text_inputs(work: Path, n: int = 20_000) -> dict[str, int]:
    rng = random.Random(1)
    pub_lines, api_docs, pubmed, concepts = [], [], [], []
    for i in range(n):
        pmid = 20_000_000 + i
        title, abstract, mentions = abstract_doc(rng, pmid)
        pub_lines += [f"{pmid}|t|{title}", f"{pmid}|a|{abstract}"]
        pub_lines += [f"{pmid}\t{s}\t{e}\t{name}\t{typ}\t{kb}" for s, e, name, typ, kb in mentions] + [""]
        if i < n // 4:  # API JSON files are small: a quarter
            api_docs.append({"_id": f"{pmid}|None", "id": str(pmid), "pmid": pmid, "passages": [
                {"infons": {"type": "title"}, "offset": 0, "text": title, "annotations": [
                    {"id": str(k), "infons": {"identifier": kb, "type": typ, "valid": True}, "text": name,
                     "locations": [{"offset": s, "length": e - s}]}
                    for k, (s, e, name, typ, kb) in enumerate(mentions) if s < len(title)]},
                {"infons": {"type": "abstract"}, "offset": len(title) + 1, "text": abstract, "annotations": [
                    {"id": str(k), "infons": {"identifier": kb, "type": typ, "valid": True}, "text": name,
                     "locations": [{"offset": s, "length": e - s}]}
                    for k, (s, e, name, typ, kb) in enumerate(mentions) if s > len(title)]}]})
        pubmed.append(f'<PubmedArticle><MedlineCitation><PMID Version="1">{pmid}</PMID><Article>'
                      f"<ArticleTitle>{title}</ArticleTitle><Abstract><AbstractText>{abstract}</AbstractText>"
                      f"</Abstract></Article></MedlineCitation></PubmedArticle>")
        names = {}
        for _, _, name, typ, kb in mentions:
            names.setdefault((typ, kb), []).append(name)
        concepts += [f"{pmid}\t{typ}\t{kb}\t{'|'.join(dict.fromkeys(v))}\tMeSH" for (typ, kb), v in names.items()]
    (work / "pubtator3.pubtator").write_text("\n".join(pub_lines) + "\n")
    (work / "api.json").write_text(json.dumps({"PubTator3": api_docs}))
    with gzip.open(work / "pubmed26n0001.xml.gz", "wt", compresslevel=1) as f:
        f.write('<?xml version="1.0"?>\n<PubmedArticleSet>\n' + "\n".join(pubmed[:30_000]) + "\n</PubmedArticleSet>\n")
    rng.shuffle(concepts)  # the real file is not sorted by PMID either
    with gzip.open(work / "bioconcepts2pubtator3.gz", "wt", compresslevel=1) as f:
        f.write("\n".join(concepts) + "\n")
    return {"pubtator": n, "bioc_json": n // 4, "pubmed": min(n, 30_000)}


CHILD = r"""
import json, sys, time
from docre.data.io import read_documents, ReadOptions
url, kind, concepts = sys.argv[1], sys.argv[2], sys.argv[3] or None
t0 = time.perf_counter()
n = 0
if kind == "bioc-package":
    import bioc, tarfile
    with tarfile.open(url, "r|gz") as tar:
        for m in tar:
            if m.isfile():
                with bioc.biocxml.iterparse(tar.extractfile(m)) as reader:
                    for doc in reader:
                        n += 1
                break
elif kind == "lxml-parse":
    import tarfile
    from docre.data.bioc import iter_bioc_xml
    with tarfile.open(url, "r|gz") as tar:
        for m in tar:
            if m.isfile():
                n = sum(1 for _ in iter_bioc_xml(tar.extractfile(m), m.name))
                break
elif kind == "concepts-build":
    from docre.data.pubmed import build_concept_index
    n = build_concept_index(url, concepts, run_rows=200_000)["rows"]
else:
    q = []
    for doc in read_documents(url, quarantine=q, options=ReadOptions(concepts=concepts)):
        n += 1
    assert not q, q[:3]
dt = time.perf_counter() - t0
# VmHWM: the peak RSS of this process's own memory (ru_maxrss would include the parent's, inherited at fork)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"docs": n, "seconds": round(dt, 2), "peak_rss_mb": round(hwm / 1024, 1)}))
"""


def run(url: str, kind: str, concepts: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, url, kind, concepts], capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="uncompressed XML in the generated archive")
    ap.add_argument("--work", default="runs/bench_readers")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / f"BioCXML.bench{args.gb:g}.tar.gz"
    if not archive.exists():
        t = time.time()
        n = make_archive(archive, args.gb)
        print(f"generated {archive} ({archive.stat().st_size / 1e6:.0f} MB compressed, {n:,} documents) "
              f"in {time.time() - t:.0f} s", flush=True)
    if not (work / "bioconcepts2pubtator3.gz").exists():
        make_text_inputs(work)
    index = str(work / "concept_index")
    rows = [
        ("BioC XML tar.gz (title+abstract)", str(archive), "read", ""),
        ("BioC XML member, lxml iterparse (parse only)", str(archive), "lxml-parse", ""),
        ("BioC XML member, bioc package (parse only)", str(archive), "bioc-package", ""),
        ("PubTator3 text", str(work / "pubtator3.pubtator"), "read", ""),
        ("BioC JSON (PubTator3 API)", str(work / "api.json"), "read", ""),
        ("concept index build", str(work / "bioconcepts2pubtator3.gz"), "concepts-build", index),
        ("PubMed XML .gz (no concepts)", str(work / "pubmed26n0001.xml.gz"), "read", ""),
        ("PubMed XML .gz + concept index", str(work / "pubmed26n0001.xml.gz"), "read", index),
    ]
    results = []
    print(f"{'reader':48} {'docs':>9} {'seconds':>8} {'docs/s':>8} {'peak RSS MB':>12}", flush=True)
    for name, url, kind, conc in rows:
        r = run(url, kind, conc)
        r |= {"reader": name, "input": url, "input_mb": round(Path(url).stat().st_size / 1e6, 1),
              "docs_per_s": round(r["docs"] / r["seconds"], 1) if r["seconds"] else None}
        results.append(r)
        print(f"{name:48} {r['docs']:>9,} {r['seconds']:>8.1f} {r['docs_per_s']:>8,.0f} {r['peak_rss_mb']:>12,.0f}",
              flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename, "cpus": os.cpu_count(),
            "archive_gb_uncompressed": args.gb, "load_before": os.getloadavg()}
    out = Path(__file__).parent / "results" / "readers.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
