"""Bulk extraction: prepare and extract docs/s with 1 and 2 workers, and planning time for 2,000 parts.

    python bench/extract_bench.py [MODEL_DIR] [--docs 1000] [--workers 1 2] [--part-docs 250]

Inputs: two generated PubTator3-style BioC archives (`BioCXML.{0,1}.tar.gz`, CDR-like abstracts with
Chemical/Disease annotations, members of 250 documents), so two workers can prepare in parallel.
Model: MODEL_DIR, or (default) the offline MiniLM encoder with freshly initialised heads at the CDR
configuration, which costs the same per document as a trained one.

Each worker count runs the real `docre-extract` flow (temporary Prefect API, LocalCluster of N processes with
1 torch thread each) into a fresh output and work directory, and reports: prepare docs/s (documents over the
summed prepare seconds of the inputs, and over the wall time of the prepare phase), extract docs/s (documents
over the wall time of the extraction phase, and per worker from the commit markers), and the whole flow's
wall time. Planning is timed on 2,000 synthetic parts in 20 prepare manifests on local disk (reading the
manifests, planning, listing committed parts). Prints a table and writes bench/results/extract.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tarfile
import time
from pathlib import Path

from reader_bench import bioc_document  # bench/ is on sys.path when this script runs


def make_archives(root: Path, docs: int, per_member: int = 250) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    urls, pmid = [], 30_000_000
    for a in range(2):
        path = root / f"BioCXML.{a}.tar.gz"
        urls.append(str(path))
        if path.exists():
            pmid += docs // 2
            continue
        rng = random.Random(a)
        with tarfile.open(path, "w:gz") as tar:
            for m in range(0, docs // 2, per_member):
                body = "".join(bioc_document(rng, pmid + i, paragraphs=0, relation=False) for i in range(m, min(m + per_member, docs // 2)))
                data = (f"<?xml version='1.0' encoding='UTF-8'?><collection><source>PubTator</source>{body}"
                        "</collection>\n").encode()
                info = tarfile.TarInfo(f"output/BioCXML/{a * 1000 + m // per_member}.BioC.XML")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        pmid += docs // 2
    return urls


def default_model(root: Path) -> str:
    path = root / "model"
    if not (path / "config.json").exists():
        import dataclasses
        import torch
        from docre.data.document import cdr_inventory
        from docre.model.docre_ii import DocREModel, ModelConfig
        torch.manual_seed(0)
        inventory = dataclasses.replace(cdr_inventory(), entity_types=["Chemical", "Disease"])
        DocREModel.create(ModelConfig(), inventory, pretrained=True).save_pretrained(path)
    return str(path)


def planning_time(root: Path, parts: int = 2000, inputs: int = 20) -> dict:
    from docre import extract as ex
    from docre.registry.storage import write_json_atomic
    work = root / "plan_work"
    shutil.rmtree(work, ignore_errors=True)
    manifests = []
    for i in range(inputs):
        base = str(work / f"in{i}")
        m = {"input_url": f"s3://bucket/pubmed26n{i:04d}.xml.gz", "prepared_url": base, "deleted": [],
             "parts": [{"part_id": f"in{i}-{j:05d}", "file": f"part-{j:05d}.parquet",
                        "quarantine_file": f"quarantine-{j:05d}.parquet", "first_record": j * 10_000,
                        "end_record": (j + 1) * 10_000, "docs": 10_000, "quarantined": 0}
                       for j in range(parts // inputs)]}
        write_json_atomic(f"{base}/manifest.json", m)
        manifests.append(f"{base}/manifest.json")
    t0 = time.perf_counter()
    from docre.registry.storage import read_json
    loaded = [read_json(u) for u in manifests]
    planned = ex.plan_parts(loaded)
    pending, _ = ex.pending_parts(planned, str(root / "plan_out"), "v1")
    return {"parts": len(planned), "pending": len(pending), "seconds": round(time.perf_counter() - t0, 4)}


PUBMED_ABSTRACTS = 36_000_000  # PubMed baseline, order of magnitude: the projection's denominator


def input_shape(urls: list[str], model: str) -> dict:
    """Mean subword tokens and entities per document as the model sees them: what extraction cost scales with."""
    from docre.data.io import ReadOptions, read_documents
    from docre.data.tokenize import encode_document
    from docre.model.docre_ii import DocREModel
    m = DocREModel.from_pretrained(model)
    tokens = entities = docs = 0
    for url in urls:
        for d in read_documents(url, inventory=m.inventory, quarantine=[],
                                options=ReadOptions(unknown_relations="ignore")):
            tokens += len(encode_document(d, m.tokenizer, m.inventory)["input_ids"])
            entities += len(d.entities)
            docs += 1
    return {"documents": docs, "mean_subword_tokens": round(tokens / docs, 1),
            "mean_entities": round(entities / docs, 2)}


def run(urls: list[str], model: str, out: Path, workers: int, part_docs: int) -> dict:
    from docre import extract as ex
    from flows.extract import docre_extract
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = docre_extract(inputs=",".join(urls), out_url=str(out), model_url=model, part_docs=part_docs,
                            n_workers=workers, threads_per_worker=max(1, (os.cpu_count() or 2) // workers))
    wall = time.perf_counter() - t0
    parts, _ = ex.load_plan(str(out))
    manifests = [json.loads(Path(p).read_text()) for p in json.loads((out / "_plan.json").read_text())["manifests"]]
    prepare_seconds = sum(m["seconds"] for m in manifests)
    committed = ex.read_committed(str(out))
    extract_seconds = sum(r.seconds for r in committed.values())
    first = min(r.committed_at for r in committed.values())
    threads = max(1, (os.cpu_count() or 2) // workers)
    per_core = summary["docs_out"] / extract_seconds / threads  # a part runs on one worker's `threads` cores
    per_cpu_second = summary["docs_out"] / (wall * workers * threads)  # everything: start-up, prepare, aggregate
    return {"workers": workers, "threads_per_worker": threads,
            "extract_docs_per_s_per_core": round(per_core, 2),
            "docs_per_cpu_second_whole_flow": round(per_cpu_second, 2),
            "pubmed_core_hours_extract_only": round(PUBMED_ABSTRACTS / per_core / 3600),
            "pubmed_core_hours_whole_flow": round(PUBMED_ABSTRACTS / per_cpu_second / 3600),
            "documents": summary["docs_in"], "parts": summary["parts"], "triples": summary["triples"],
            "prepare_docs_per_s_per_input_process": round(summary["docs_in"] / prepare_seconds, 1),
            "extract_docs_per_s_summed_over_parts": round(summary["docs_out"] / extract_seconds, 2),
            "extract_docs_per_s_by_worker": {w: s["docs_per_s"] for w, s in summary["workers"].items()},
            "flow_wall_seconds": round(wall, 1), "flow_docs_per_s": round(summary["docs_out"] / wall, 2),
            "first_commit": first, "load_avg_after": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--part-docs", type=int, default=250)
    ap.add_argument("--work", default="runs/bench_extract")
    ap.add_argument("--inputs", nargs="+", help="real input files (e.g. the CDR PubTator sets: CDR-shaped "
                                                "abstracts) instead of the generated archives")
    args = ap.parse_args()
    root = Path(args.work)
    urls = [str(Path(u).resolve()) for u in args.inputs] if args.inputs else make_archives(root / "inputs", args.docs)
    model = args.model or default_model(root)
    shape = input_shape(urls, model)
    print(f"inputs: {shape['documents']} documents, {shape['mean_subword_tokens']} subword tokens and "
          f"{shape['mean_entities']} entities per document; model {'given' if args.model else 'untrained heads'}",
          flush=True)
    plan = planning_time(root)
    print(f"planning {plan['parts']} parts from 20 manifests: {plan['seconds']} s", flush=True)
    rows = [run(urls, model, root / f"out_w{n}", n, args.part_docs) for n in args.workers]
    print(f"{'workers':>8} {'threads':>7} {'docs':>6} {'parts':>6} {'prepare docs/s':>15} {'extract docs/s':>15} "
          f"{'flow s':>8} {'flow docs/s':>12} {'docs/CPU-s':>11} {'PubMed core-h':>14}")
    for r in rows:
        print(f"{r['workers']:>8} {r['threads_per_worker']:>7} {r['documents']:>6} {r['parts']:>6} "
              f"{r['prepare_docs_per_s_per_input_process']:>15} {r['extract_docs_per_s_summed_over_parts']:>15} "
              f"{r['flow_wall_seconds']:>8} {r['flow_docs_per_s']:>12} {r['docs_per_cpu_second_whole_flow']:>11} "
              f"{r['pubmed_core_hours_whole_flow']:>14}")
    out = Path(__file__).parent / "results" / ("extract_cdr.json" if args.inputs else "extract.json")
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                               "model": "given" if args.model else "untrained heads", "inputs": shape,
                               "planning": plan, "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
