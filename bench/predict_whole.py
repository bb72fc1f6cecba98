"""The whole `docre predict` command, wall clock, old code against this code, one run after the other.

    python bench/predict_whole.py --model runs/cdr_pin/stage2/best \
        --input $DATA/cdr/CDR_DevelopmentSet.PubTator.txt --old-code OLD_CODE \
        --variants old fp32 int8 onnx-int8 --threads 2 --iterations 3 [--pause-pid PID]

Each variant is a fresh `python -m docre.cli predict` (imports, model load, reading, tokenization,
prediction, writing). `--pause-pid` SIGSTOPs a background job (a training run) for the timed window and
always resumes it. Prints a table (seconds, docs/s, speed-up over `old`, triples, same triples as fp32)
and writes `bench/results/predict_whole.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

FLAGS = {"old": [], "fp32": [], "int8": ["--int8"], "onnx-fp32": ["--runtime", "onnx"],
         "onnx-int8": ["--int8", "--runtime", "onnx"]}


def triples(path: Path) -> set[tuple]:
    t = pq.read_table(path).to_pylist()
    return {(r["doc_id"], r["head"], r["tail"], r["relation"], r["iteration"]) for r in t}


def run(variant: str, args: argparse.Namespace, out: Path) -> dict:
    cwd = args.old_code if variant == "old" else str(Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-m", "docre.cli", "predict", str(Path(args.model).resolve()),
           str(Path(args.input).resolve()), str(out), "--iterations", str(args.iterations)]
    env = dict(os.environ, PYTHONPATH=cwd)
    if variant != "old":
        cmd += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)] + FLAGS[variant]
    else:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return {"variant": variant, "seconds": round(time.perf_counter() - t0, 2), "load_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--old-code", help="a checkout of the code before issue 13")
    ap.add_argument("--variants", nargs="+", default=["old", "fp32", "int8"], choices=list(FLAGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--pause-pid", type=int)
    ap.add_argument("--out", default="bench/results/predict_whole.json")
    args = ap.parse_args()
    rows, outs = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="predict-whole-"))
    if args.pause_pid:
        os.kill(args.pause_pid, signal.SIGSTOP)
    try:
        for v in args.variants:
            outs[v] = tmp / f"{v}.parquet"
            rows.append(run(v, args, outs[v]))
    finally:
        if args.pause_pid:
            os.kill(args.pause_pid, signal.SIGCONT)
    from docre.data.io import read_documents
    docs = sum(1 for _ in read_documents(args.input))
    ref = triples(outs["fp32"]) if "fp32" in outs else None
    base = next((r["seconds"] for r in rows if r["variant"] == "old"), None)
    print(f"{Path(args.input).name}: {docs} documents, K = {args.iterations}, {args.threads} threads")
    print("| variant | seconds | docs/s | vs old | triples | same triples as fp32 | load before |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        got = triples(outs[r["variant"]])
        r.update(docs=docs, docs_per_s=round(docs / r["seconds"], 2), triples=len(got),
                 speedup=round(base / r["seconds"], 2) if base else None,
                 same_as_fp32=None if ref is None else got == ref,
                 differ_from_fp32=None if ref is None else len(got ^ ref))
        print(f"| {r['variant']} | {r['seconds']} | {r['docs_per_s']} | {r['speedup'] or ''}x | {r['triples']} | "
              f"{r['same_as_fp32']} ({r['differ_from_fp32']} differ) | {r['load_before']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
    Path(args.out).write_text(json.dumps(old + [{"input": args.input, "model": args.model, "threads": args.threads,
                                                  "iterations": args.iterations, "rows": rows,
                                                  "date": time.strftime("%Y-%m-%d %H:%M")}], indent=2))


if __name__ == "__main__":
    main()
