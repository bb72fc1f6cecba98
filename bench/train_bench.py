"""Training throughput (issue 27): docs/s of stage 1 and stage 2, old code against new in one run, a
per-component breakdown, 1 process x T threads against T processes x 1 thread (gloo), peak memory.

    git worktree add OLD_CODE <commit before the training speed pass, e.g. ea894e9>
    python bench/train_bench.py --old-code OLD_CODE --data runs/data/cdr_train --docs 160 --threads 2

Every measurement is one child process (a fresh interpreter with PYTHONPATH at the code under test) that
runs that code's own `train_stage` for one epoch over the first `--docs` training documents (its own
batching, collation, forward, backward, clipping, optimiser step; evaluation on one dev document, timed
apart and left out of docs/s). `--docs 0` is the whole training set. The model is the default encoder
(the offline MiniLM when `encoder` is null) with fresh heads, seed 0, batch 4, max 4096 tokens; stage 2 runs
`train_stage(..., 2, ...)` on the same fresh model (the same work per step as after stage 1).

Components (seconds over the epoch, from wrappers the child installs around the code's own functions):
collate; forward, split into the encoder (`WindowedEncoder.forward` in the old code, `encode_rows` in the
new), the rest of the base module (pooling, eq. 1 context, pair head), the inference module (stage 2:
both views) and the rest (losses, noise, R_0); backward; clip + optimiser step; other (batch planning,
progress, `.item()` syncs). docs/s is training documents over the epoch's training seconds.

Both codes' processes start as their CLIs start them: no OMP_WAIT_POLICY (libgomp's short spin); the
`-passive` variants set OMP_WAIT_POLICY=PASSIVE. The new code runs with its defaults otherwise (thread
governor, freed memory retained: docre/training/cpu.py). `uptime` load averages are recorded before and
after every run: other work on the same cores slows everything down. `--busy-after S` starts the busy
loops S seconds into each run instead of before it (work that arrives while training runs). Writes --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
import docre.training.train as T
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.data.tokenize import read_manifest
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    import torch.distributed as dist
    dist.init_process_group("gloo")
rank = int(os.environ.get("RANK", "0"))
examples, docs = T.load_split(args["data"])
n = args["docs"] or len(examples)
train = (examples[:n], docs[:n])
dev = (examples[-1:], docs[-1:])
inventory = read_manifest(args["data"]).relation_inventory
torch.manual_seed(0)
model_options = args["options"].pop("model", {}) if args["new"] else {}
model = DocREModel.create(ModelConfig(max_labels=1, **model_options), inventory)
times = {}
def timed(name, fn, training_only=False):
    def wrapper(*a, **k):
        if training_only and not model.training:  # prediction (evaluation) uses the new encode_rows too
            return fn(*a, **k)
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
    return wrapper
enc = model.base.encoder
if args["new"]:
    enc.encode_rows = timed("encoder", enc.encode_rows, training_only=True)
else:
    enc.forward = timed("encoder", enc.forward)
model.base.forward = timed("base", model.base.forward)
model.inference.forward = timed("inference", model.inference.forward)
model.stage1_loss = timed("forward", model.stage1_loss)
model.stage2_loss = timed("forward", model.stage2_loss)
T.collate = timed("collate", T.collate)
T.evaluate = timed("evaluate", T.evaluate)
backward = torch.Tensor.backward
torch.Tensor.backward = timed("backward", backward)
torch.nn.utils.clip_grad_norm_ = timed("clip", torch.nn.utils.clip_grad_norm_)
torch.optim.AdamW.step = timed("optimizer", torch.optim.AdamW.step)
cfg = T.TrainConfig(train_data=args["data"], dev_data=args["data"], out_dir=args["out"], progress=False,
                    device="cpu", seed=66, eval_iterations=[0, model.config.iterations],
                    **(args["options"] if args["new"] else {}),
                    stage1=T.StageConfig(epochs=1, batch_size=4, lr_encoder=5e-5, lr_head=2e-4),
                    stage2=T.StageConfig(epochs=1, batch_size=4, lr_encoder=5e-6, lr_head=2e-4))
if args["new"]:
    from docre.data.batch import padding_stats, training_batches
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = training_batches(train[0], 4, True, seed=1, max_tokens=4096, max_padding=cfg.max_padding, world_size=world)
else:
    from docre.data.batch import bucketed_batches
    plan = bucketed_batches(train[0], 4, True, seed=1, max_tokens=4096)
lengths = [[len(e.input_ids) for e in b] for b in plan]
tok_pad = sum(len(l) * max(l) for l in lengths)
tok = sum(sum(l) for l in lengths)
cpu0 = time.process_time()
t0 = time.perf_counter()
result = T.train_stage(cfg, args["stage"], model, train, dev, on_epoch=lambda r: None)
wall = time.perf_counter() - t0
record = result.history[-1]
if rank == 0:
    train_s = record["train_seconds"]
    fwd = times.get("forward", 0.0)
    comp = {"collate": times.get("collate", 0.0), "encoder_fwd": times.get("encoder", 0.0),
            "base_rest_fwd": times.get("base", 0.0) - times.get("encoder", 0.0),
            "inference_fwd": times.get("inference", 0.0),
            "loss_noise_fwd": fwd - times.get("base", 0.0) - times.get("inference", 0.0),
            "backward": times.get("backward", 0.0), "clip_optimizer": times.get("clip", 0.0) + times.get("optimizer", 0.0)}
    comp["other"] = train_s - sum(comp.values())
    print("RESULT " + json.dumps({
        "docs": n, "train_seconds": train_s, "docs_per_s": round(n / train_s, 3),
        "loss": record["loss"], "eval_seconds": round(times.get("evaluate", 0.0), 2),
        "components_s": {k: round(v, 2) for k, v in comp.items()},
        "batches": len(plan), "token_padding": round(tok_pad / tok - 1, 4),
        "cpu_seconds": round(time.process_time() - cpu0, 1), "thread_changes": record.get("thread_changes"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}), flush=True)
'''


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(code: Path, new: bool, stage: int, data: str, docs: int, threads: int, procs: int,
        policy: str | None, options: dict | None = None, busy: int = 0, busy_after: float | None = None) -> dict:
    out = tempfile.mkdtemp(prefix="train-bench-")
    args = json.dumps({"data": str(Path(data).resolve()), "docs": docs, "threads": threads, "stage": stage,
                       "out": out, "new": new, "options": options or {}})
    env = dict(os.environ, PYTHONPATH=str(code), TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    script = Path(out) / "child.py"
    script.write_text(CHILD)
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(script), args]
    else:
        cmd = [sys.executable, str(script), args]
    before = load()
    t0 = time.perf_counter()
    # busy loops that arrive while this run trains (--busy-after); --busy ones run for the whole script
    late = [subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({busy_after}); exec('while True: pass')"])
            for _ in range(busy if busy_after is not None else 0)]
    try:
        proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
    finally:
        for p in late:
            p.kill()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[7:])
    peak = result["peak_rss_mb"]
    return {"code": "new" if new else "old", "stage": stage, "processes": procs, "threads": threads,
            "options": options or {},
            "omp_wait_policy": env.get("OMP_WAIT_POLICY", "(unset)"), **result, "peak_rss_mb_rank0": peak,
            "process_seconds": round(seconds, 1), "load_before": before, "load_after": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-code", required=True, help="a git worktree of the code before issue 27")
    ap.add_argument("--data", default="runs/data/cdr_train")
    ap.add_argument("--docs", type=int, default=160, help="first n training documents (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="1,2")
    ap.add_argument("--variants", default="old,new,new-bf16,new-bf16-NxT",
                    help="comma-separated: old (its CLI's environment), old-passive (OMP_WAIT_POLICY=PASSIVE); "
                         "the current code in fp32 with torch's dropout masks: new, new-passive, new-NxT (--threads "
                         "processes x 1 thread, gloo), new-1t (1 process x 1 thread), new-fast (fast masks); in "
                         "bf16 with fast masks (auto on a CPU with AVX-512 BF16 or AMX): new-bf16, "
                         "new-bf16-passive, new-bf16-NxT, new-bf16-1t, new-bf16-fixed (no thread governor), "
                         "new-bf16-oneview (stage 2 without L_C, so without the second view)")
    ap.add_argument("--busy", type=int, default=0,
                    help="start this many single-thread busy loops for the duration (a loaded machine, as "
                         "another job on the same cores)")
    ap.add_argument("--busy-after", type=float, default=None,
                    help="start the --busy loops this many seconds into each run (and stop them after it)")
    ap.add_argument("--tag", default="quiet", help="section of --out these runs are written under")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = ap.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy if args.busy_after is None else 0)]
    try:
        _measure(args)
    finally:
        for p in busy:
            p.kill()


def _measure(args: argparse.Namespace) -> None:
    fp32 = {"precision": "fp32", "dropout_masks": "torch"}  # the arithmetic and random stream of the old code
    fast = {"precision": "fp32", "dropout_masks": "fast"}
    bf16 = {"precision": "bf16", "dropout_masks": "fast"}  # what `auto` picks on a CPU with AVX-512 BF16 or AMX
    variants = {"old": (Path(args.old_code), False, 1, args.threads, None, None),
                "old-passive": (Path(args.old_code), False, 1, args.threads, "PASSIVE", None),
                "new": (ROOT, True, 1, args.threads, None, fp32),
                "new-passive": (ROOT, True, 1, args.threads, "PASSIVE", fp32),
                "new-NxT": (ROOT, True, args.threads, 1, None, fp32),
                "new-1t": (ROOT, True, 1, 1, None, fp32),
                "new-fast": (ROOT, True, 1, args.threads, None, fast),
                "new-bf16": (ROOT, True, 1, args.threads, None, bf16),
                "new-bf16-passive": (ROOT, True, 1, args.threads, "PASSIVE", bf16),
                "new-bf16-NxT": (ROOT, True, args.threads, 1, None, bf16),
                "new-bf16-1t": (ROOT, True, 1, 1, None, bf16),
                "new-bf16-fixed": (ROOT, True, 1, args.threads, None, bf16 | {"adapt_threads": False}),
                # stage 2 without the contrastive loss: one view, what the second one costs
                "new-bf16-oneview": (ROOT, True, 1, args.threads, None, bf16 | {"model": {"contrastive": "none"}})}
    rows = []
    for stage in [int(s) for s in args.stages.split(",")]:
        for name in args.variants.split(","):
            code, new, procs, threads, policy, options = variants[name]
            row = run(code, new, stage, args.data, args.docs, threads, procs, policy, options,
                      busy=args.busy, busy_after=args.busy_after) | {"variant": name}
            rows.append(row)
            print(f"stage {stage} {name:>11} {procs}x{threads}: {row['docs_per_s']:.2f} docs/s "
                  f"({row['train_seconds']:.1f} s, peak {row['peak_rss_mb']:.0f} MB, load {row['load_before']} -> "
                  f"{row['load_after']}) {row['components_s']}", flush=True)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            saved = json.loads(out.read_text()) if out.exists() else {}
            saved.setdefault("runs", {})[args.tag] = {"docs": args.docs or "all", "threads": args.threads,
                                                      "data": args.data, "busy_loops": args.busy,
                                                      "busy_after_s": args.busy_after,
                                                      "rows": rows}
            out.write_text(json.dumps(saved, indent=2) + "\n")
    print("\n| stage | variant | processes x threads | OMP_WAIT_POLICY | docs/s | vs old | train s | CPU s | "
          "peak RSS MB | load before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        old = next((o for o in rows if o["stage"] == r["stage"] and o["variant"] == "old"), None)
        speed = f"{r['docs_per_s'] / old['docs_per_s']:.2f}x" if old else ""
        print(f"| {r['stage']} | {r['variant']} | {r['processes']} x {r['threads']} | {r['omp_wait_policy']} | "
              f"{r['docs_per_s']:.2f} | {speed} | {r['train_seconds']:.1f} | {r['cpu_seconds']} | "
              f"{r['peak_rss_mb']:.0f} | {r['load_before'][0]} -> {r['load_after'][0]} |")


if __name__ == "__main__":
    main()
