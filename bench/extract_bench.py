"""Bulk-extraction throughput through the docre-extract flow on DocRED test (1000 documents).

    python bench/extract_bench.py MODEL_DIR [--workers 1 2] [--docs-per-shard 50]

Runs the real flow (ephemeral Prefect API, local Dask cluster with N worker
processes of 1 thread each over the machine's cores) into a fresh output
directory per worker count; reports documents/s over the whole flow run and
peak resident memory per worker process (recorded in each shard's commit
marker). Writes bench/results/extract.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--inputs", default=str(SHARED / "docred" / "test.json"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--docs-per-shard", type=int, default=50)
    ap.add_argument("--out", default="runs/bench_extract")
    args = ap.parse_args()
    from docre.extract import read_committed
    from flows.extract import docre_extract
    rows = []
    for n in args.workers:
        out = f"{args.out}/workers{n}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        summary = docre_extract(inputs=args.inputs, out_url=out, model_url=args.model,
                                docs_per_shard=args.docs_per_shard, n_workers=n)
        seconds = time.perf_counter() - t0
        peak = defaultdict(float)
        for r in read_committed(out).values():
            peak[r.worker] = max(peak[r.worker], r.peak_rss_mb)
        rows.append({"workers": n, "documents": summary["docs_in"], "triples": summary["triples"],
                     "quarantined": summary["quarantined"], "seconds": round(seconds, 1),
                     "docs_per_s": round(summary["docs_in"] / seconds, 2),
                     "peak_rss_mb_per_worker": sorted(peak.values())})
    print(f"{'workers':>8}{'docs':>7}{'triples':>9}{'seconds':>9}{'docs/s':>8}  peak RSS MB per worker")
    for r in rows:
        print(f"{r['workers']:>8}{r['documents']:>7}{r['triples']:>9}{r['seconds']:>9}{r['docs_per_s']:>8}  "
              f"{r['peak_rss_mb_per_worker']}")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/extract.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
