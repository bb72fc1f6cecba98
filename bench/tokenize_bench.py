"""Tokenization throughput and cache reuse on the shared benchmark data.

    python bench/tokenize_bench.py [--out runs/bench_tok]

Prints a table (first run, then the cached second run) and writes
bench/results/tokenize.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from docre.data.tokenize import TokenizeConfig, tokenize_to_parquet

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
JOBS = [
    ("CDR train", [SHARED / "cdr/CDR_TrainingSet.PubTator.txt"], "cdr"),
    ("CDR dev", [SHARED / "cdr/CDR_DevelopmentSet.PubTator.txt"], "cdr"),
    ("Re-DocRED dev", [SHARED / "redocred/dev_revised.json"], str(SHARED / "docred/rel_info.json")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_tok")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rows = []
    for name, inputs, relations in JOBS:
        out = f"{args.out}/{name.replace(' ', '_').lower()}"
        for attempt in ("first run", "second run"):
            t0 = time.perf_counter()
            m = tokenize_to_parquet([str(p) for p in inputs], out, TokenizeConfig(relations=relations), progress=False)
            seconds = time.perf_counter() - t0
            size = os.path.getsize(f"{out}/data.parquet")
            rows.append({"dataset": name, "run": attempt, "documents": m.documents, "seconds": round(seconds, 2),
                         "docs_per_s": round(m.documents / seconds, 1), "parquet_mb": round(size / 2**20, 2),
                         "subword_tokens": m.subword_tokens, "reused_cache": m.reused})
    print(f"{'dataset':<15}{'run':<12}{'docs':>6}{'seconds':>9}{'docs/s':>9}{'MB':>7}{'subwords':>10}{'cache':>7}")
    for r in rows:
        print(f"{r['dataset']:<15}{r['run']:<12}{r['documents']:>6}{r['seconds']:>9}{r['docs_per_s']:>9}"
              f"{r['parquet_mb']:>7}{r['subword_tokens']:>10}{'reused' if r['reused_cache'] else '-':>7}")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/tokenize.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
