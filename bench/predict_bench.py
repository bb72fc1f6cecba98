"""Prediction throughput (issue 13): whole `docre predict` commands, per-component shares, padding,
old code vs new on the same checkpoint, and int8 vs fp32.

    python bench/predict_bench.py --cdr-model runs/cdr_pin/stage2/best \
        --redocred-model runs/redocred_random --old-code OLD_CODE --threads 2

* whole command: wall seconds of `python -m docre.cli predict MODEL INPUT OUT.parquet --iterations K
  --threads T --batch-size B [--int8]` (interpreter start, model load, reading and tokenization,
  prediction, writing), for the new code and, with --old-code (a `git worktree` of the code before
  this change), for the old code on the same checkpoint (its CLI has no --threads: torch's default,
  one thread per core);
* old vs new outputs: the triples of both whole-command runs (fp32), compared as sets of
  (doc, head, tail, relation, first iteration), with the largest score difference;
* in process (new code): docs/s of prediction alone, the share of time of each component (collate,
  encoder, attention rows, base head, inference module: F_0 share and each iteration, decoding),
  padding of the batches (pair cells and tokens, the length-only bucketing of the old code for
  comparison), and the fraction of the fp32 limit: the encoder's matmul FLOPs per document at
  --peak-gflops (170: this 2-vCPU VM's fp32 matmul peak on 2 threads);
* CDR dev F1 (--cdr-data, tokenized) at K = 0 and K, fp32 and int8;
* with --runtimes torch onnx, every measurement also for the encoder in ONNX Runtime (`--runtime onnx`,
  fp32 and int8), and the whole-command triples of ORT fp32 compared with torch fp32. The ONNX graphs are
  built (exported, fused, quantized, cached) before any timing; the build time is recorded apart.

Whole commands also record the child's CPU seconds (user + system), which other work on the
machine inflates far less than wall seconds.

Records `uptime` load averages before and after every timed run: other work on the same cores
slows everything down. Writes --out (bench/results/predict.json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = [("fp32", "torch"), ("int8", "torch")]  # (precision, encoder runtime); --runtimes onnx adds ORT
SHARED = ROOT.parent / "shared" / "datasets"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def whole_command(code: Path, model: str, inp: str, out: str, k: int, threads: int, batch_size: int,
                  int8: bool, old: bool, runtime: str = "torch") -> dict:
    cmd = [sys.executable, "-m", "docre.cli", "predict", str(Path(model).resolve()), str(Path(inp).resolve()), out,
           "--iterations", str(k)]
    if not old:
        cmd += ["--threads", str(threads), "--batch-size", str(batch_size)] + (["--int8"] if int8 else [])
        cmd += ["--runtime", runtime] if runtime != "torch" else []
    env = dict(os.environ, PYTHONPATH=str(code), TQDM_DISABLE="1")
    before = load()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # run from a neutral directory so that the interpreter imports `docre` from `code`, not from the cwd
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"command": " ".join(["docre"] + cmd[3:]), "code": "old" if old else "new", "runtime": runtime,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
            "load_before": before, "load_after": load()}


CHILD = """
import json, sys, time
c0 = time.process_time()
import torch
torch.set_num_threads(1)
from docre.data.io import read_documents
from docre.model.docre_ii import DocREModel
c1 = time.process_time()
model = DocREModel.from_pretrained(sys.argv[1])
if sys.argv[5] == "onnx":
    from docre.model.onnx_encoder import use_onnx_encoder
    use_onnx_encoder(model, int8=sys.argv[4] == "int8", threads=1)
elif sys.argv[4] == "int8":
    model.quantize_int8()
c2 = time.process_time()
docs = list(read_documents(sys.argv[2]))
c3 = time.process_time()
triples = model.predict(docs, int(sys.argv[3]))
c4 = time.process_time()
print(json.dumps({"imports": c1 - c0, "load": c2 - c1, "read": c3 - c2, "predict": c4 - c3, "total": c4 - c0,
                  "triples": len(triples)}))
"""


def single_thread_cpu(code: Path, model: str, inp: str, k: int, int8: bool, runtime: str = "torch") -> dict:
    """CPU seconds of the whole prediction (imports, load, reading, tokenization, prediction) on ONE
    thread, measured inside the child: other work on the machine barely changes it (no spinning
    threads to share cores with), so old and new code compare fairly even on a busy machine."""
    env = dict(os.environ, PYTHONPATH=str(code), TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(Path(model).resolve()), str(Path(inp).resolve()), str(k),
                           "int8" if int8 else "fp32", runtime], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def read_triples(path: str) -> dict[tuple, float]:
    import pyarrow.parquet as pq
    t = pq.read_table(path).to_pylist()
    return {(r["doc_id"], r["head"], r["tail"], r["relation"], r["iteration"]): r["score"] for r in t}


def build_onnx(model_dir: str, runtimes: list[str]) -> list[dict]:
    """Build (or find cached) the ONNX graphs of a checkpoint's encoder, so that no timed run exports."""
    if "onnx" not in runtimes:
        return []
    from docre.model.docre_ii import DocREModel
    from docre.model.onnx_encoder import build
    bert = DocREModel.from_pretrained(model_dir).base.encoder.model
    out = []
    for mode in ("fp32", "int8"):
        t0 = time.perf_counter()
        path = build(bert, mode)
        out.append({"model": model_dir, "mode": mode, "path": str(path), "seconds": round(time.perf_counter() - t0, 2),
                    "mb": round(path.stat().st_size / 2**20, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out


def variants(runtimes: list[str]) -> list[tuple[str, str]]:
    """(precision, runtime) pairs measured for the new code."""
    return [(p, r) for r in runtimes for p in ("fp32", "int8")]


def setup(model, precision: str, runtime: str, threads: int) -> None:
    if runtime == "onnx":
        from docre.model.onnx_encoder import use_onnx_encoder
        use_onnx_encoder(model, int8=precision == "int8", threads=threads)
    elif precision == "int8":
        model.quantize_int8()


def compare(old: dict, new: dict) -> dict:
    common = old.keys() & new.keys()
    return {"old_triples": len(old), "new_triples": len(new), "same": old.keys() == new.keys(),
            "only_old": sorted(map(list, old.keys() - new.keys()))[:10],
            "only_new": sorted(map(list, new.keys() - old.keys()))[:10],
            "max_score_diff": max((abs(old[k] - new[k]) for k in common), default=0.0)}


def encoder_flops(model, lengths: list[int]) -> float:
    """Matmul FLOPs of the encoder per document: 2 x linear weights x tokens + 4 x layers x T^2 x hidden."""
    import torch
    enc = model.base.encoder
    cfg = enc.model.config
    linear = sum(m.in_features * m.out_features for name, m in enc.model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    total = 0.0
    for n in lengths:
        for a, b in enc.windows(n):
            t = b - a + (0 if (a, b) == (0, n) else 2)
            total += 2 * linear * t + 4 * cfg.num_hidden_layers * t * t * cfg.hidden_size
    return total / max(1, len(lengths))


def in_process(model_dir: str, inp: str, ks: list[int], threads: int, batch_size: int, peak: float,
               repeats: int) -> list[dict]:
    import torch

    from docre.data.batch import Example, bucketed_batches, padding_stats, prediction_batches
    from docre.data.io import read_documents
    from docre.data.tokenize import encode_document
    from docre.model.docre_ii import DocREModel
    torch.set_num_threads(threads)
    rows = []
    for precision, runtime in VARIANTS:
        model = DocREModel.from_pretrained(model_dir)
        docs = list(read_documents(inp))
        examples = [Example.from_row(encode_document(d, model.tokenizer, model.inventory)) for d in docs]
        lengths = [len(e.input_ids) for e in examples]
        flops = encoder_flops(model, lengths)  # of the fp32 encoder (quantized Linears are no nn.Linear)
        setup(model, precision, runtime, threads)
        limit = peak * 1e9 / flops
        model.predict_examples(examples[:8], 0)  # warm-up
        for k in ks:
            best = None
            for _ in range(repeats):
                profile: dict = {}
                before = load()
                t0 = time.perf_counter()
                model.predict_examples(examples, k, batch_size=batch_size, profile=profile)
                seconds = time.perf_counter() - t0
                if best is None or seconds < best[0]:
                    best = (seconds, profile, before, load())
            seconds, profile, before, after = best
            total = sum(profile.values())
            new_pad = padding_stats(prediction_batches(examples, batch_size, 8192, 0.1, 0.1 + 0.25 * k))
            old_pad = padding_stats(bucketed_batches(examples, batch_size, False, max_tokens=8192))
            rows.append({
                "model": model_dir, "input": inp, "docs": len(examples), "K": k, "precision": precision,
                "runtime": runtime,
                "threads": threads, "batch_size": batch_size, "seconds": round(seconds, 2),
                "docs_per_s": round(len(examples) / seconds, 2),
                "share": {name: round(v / total, 4) for name, v in profile.items()},
                "seconds_by_component": {name: round(v, 3) for name, v in profile.items()},
                "pair_padding": round(new_pad["pair_padding"], 4), "token_padding": round(new_pad["token_padding"], 4),
                "batches": new_pad["batches"], "old_pair_padding": round(old_pad["pair_padding"], 4),
                "old_token_padding": round(old_pad["token_padding"], 4),
                "mean_tokens": round(sum(lengths) / len(lengths), 1),
                "mean_entities": round(sum(len(e.mention_pos) for e in examples) / len(examples), 2),
                "encoder_gflop_per_doc": round(flops / 1e9, 2), "fp32_limit_docs_per_s": round(limit, 2),
                "fraction_of_fp32_limit": round(len(examples) / seconds / limit, 3),
                "load_before": before, "load_after": after})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def f1_rows(model_dir: str, data: str, k: int, threads: int, batch_size: int) -> list[dict]:
    import torch

    from docre.model.docre_ii import DocREModel
    from docre.training.train import evaluate, load_split
    torch.set_num_threads(threads)
    examples, docs = load_split(data)
    out = []
    for precision, runtime in VARIANTS:
        model = DocREModel.from_pretrained(model_dir)
        model.predict_batch_size = batch_size
        setup(model, precision, runtime, threads)
        s = evaluate(model, examples, docs, [0, k])
        out.append({"precision": precision, "runtime": runtime, "K": k, "f1_K0": round(s["K0"]["f1"] * 100, 2),
                    f"f1_K{k}": round(s[f"K{k}"]["f1"] * 100, 2), "docs_per_s": s["docs_per_s"]})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cdr-model", required=True)
    ap.add_argument("--cdr-input", default=str(SHARED / "cdr" / "CDR_DevelopmentSet.PubTator.txt"))
    ap.add_argument("--cdr-data", default="runs/data/cdr_dev", help="tokenized CDR dev, for F1 (int8 vs fp32)")
    ap.add_argument("--redocred-model", help="a Re-DocRED checkpoint (97 classes)")
    ap.add_argument("--redocred-input", default="runs/data/redocred_val100.json",
                    help="the last 100 documents of Re-DocRED dev (docre data split ... --first 400)")
    ap.add_argument("--old-code", help="a checkout of the code before issue 13 (git worktree add OLD_CODE c57c808)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--peak-gflops", type=float, default=170.0)
    ap.add_argument("--repeats", type=int, default=1, help="in-process runs per setting; the fastest is kept")
    ap.add_argument("--runtimes", nargs="+", default=["torch"], choices=["torch", "onnx"],
                    help="encoder runtimes of the new code (onnx: --runtime onnx, needs onnxruntime)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["whole", "inprocess", "f1", "old", "cdr", "redocred", "cpu"])
    ap.add_argument("--out", default="bench/results/predict.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    global VARIANTS
    VARIANTS = variants(args.runtimes)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "threads": args.threads,
                    "batch_size": args.batch_size, "load_start": load(), "whole_command": [], "old_vs_new": [],
                    "in_process": [], "f1": [], "single_thread_cpu": [], "runtimes": args.runtimes,
                    "onnx_build": []}
    sets = [] if "cdr" in args.skip else [("cdr_dev", args.cdr_model, args.cdr_input)]
    if args.redocred_model and "redocred" not in args.skip:
        sets.append(("redocred_last100", args.redocred_model, args.redocred_input))
    tmp = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    for name, model, inp in sets:
        result["onnx_build"] += build_onnx(model, args.runtimes)
    if "whole" not in args.skip:
        for name, model, inp in sets:
            ndocs = None
            for k in args.iterations:
                runs = {}
                codes = [("new", ROOT)] + ([("old", Path(args.old_code))] if args.old_code and "old" not in args.skip
                                           else [])
                for code_name, code in codes:
                    for precision, runtime in (VARIANTS if code_name == "new" else [("fp32", "torch")]):
                        int8 = precision == "int8"
                        out = str(tmp / f"{name}_{code_name}_K{k}_{precision}_{runtime}.parquet")
                        r = whole_command(code, model, inp, out, k, args.threads, args.batch_size, int8,
                                          code_name == "old", runtime)
                        if ndocs is None:
                            import pyarrow.parquet as pq  # noqa: F401
                            from docre.data.io import read_documents
                            ndocs = sum(1 for _ in read_documents(inp))
                        r |= {"dataset": name, "K": k, "precision": "int8" if int8 else "fp32", "docs": ndocs,
                              "docs_per_s": round(ndocs / r["seconds"], 2)}
                        runs[(code_name, int8, runtime)] = out
                        result["whole_command"].append(r)
                        print(json.dumps(r), flush=True)
                if ("old", False, "torch") in runs and ("new", False, "torch") in runs:
                    c = compare(read_triples(runs[("old", False, "torch")]), read_triples(runs[("new", False, "torch")]))
                    c |= {"dataset": name, "K": k}
                    result["old_vs_new"].append(c)
                    print(json.dumps(c), flush=True)
                pairs = [(("new", False, "torch"), ("new", True, "torch"), "fp32 vs int8 (new code)"),
                         (("new", False, "torch"), ("new", False, "onnx"), "torch fp32 vs onnx fp32"),
                         (("new", False, "torch"), ("new", True, "onnx"), "torch fp32 vs onnx int8"),
                         (("new", True, "torch"), ("new", True, "onnx"), "torch int8 vs onnx int8")]
                for a, b, what in pairs:
                    if a in runs and b in runs:
                        c = compare(read_triples(runs[a]), read_triples(runs[b]))
                        result["old_vs_new"].append(c | {"dataset": name, "K": k, "what": what})
                        print(json.dumps(result["old_vs_new"][-1]), flush=True)
    if "cpu" not in args.skip:
        for name, model, inp in sets:
            for k in args.iterations:
                runs = [("new", ROOT, p == "int8", r) for p, r in VARIANTS]
                if args.old_code and "old" not in args.skip:
                    runs.append(("old", Path(args.old_code), False, "torch"))
                for code_name, code, int8, runtime in runs:
                    r = single_thread_cpu(code, model, inp, k, int8, runtime) | {
                        "dataset": name, "K": k, "code": code_name, "precision": "int8" if int8 else "fp32",
                        "runtime": runtime}
                    result["single_thread_cpu"].append(r)
                    print(json.dumps(r), flush=True)
    if "inprocess" not in args.skip:
        for name, model, inp in sets:
            result["in_process"] += [r | {"dataset": name} for r in
                                     in_process(model, inp, args.iterations, args.threads, args.batch_size,
                                                args.peak_gflops, args.repeats)]
    if "f1" not in args.skip and "cdr" not in args.skip and args.cdr_data:
        result["f1"] = f1_rows(args.cdr_model, args.cdr_data, max(args.iterations), args.threads, args.batch_size)
    result["load_end"] = load()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
