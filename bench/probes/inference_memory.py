"""Peak memory of the inference module (eq. 5-12) as the number of entities N grows.

    python bench/probes/inference_memory.py [--sizes 50 100 200] [--hidden 256]

Each size runs in a fresh subprocess so ru_maxrss is that size's own peak.
The axial ECA keeps activations at O(N^2 d) plus O(N^3) attention scores; the
authors' release gathers [N^2, N+1, d] keys per head (O(N^3 d)), which this
table lets you compare against (its estimate is printed alongside).
Writes bench/results/inference_memory.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(n: int, hidden: int, backward: bool) -> dict:
    import torch
    from docre.model.inference import InferenceConfig, InferenceModule
    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    module = InferenceModule(InferenceConfig(hidden=hidden, num_relations=97))
    f0 = torch.randn(1, n, n, hidden)
    logits = torch.randn(1, n, n, 97)
    mask = torch.ones(1, n, dtype=torch.bool)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        r0 = module.relation_matrix(logits, mask)
        out, _ = module(f0, r0, mask)
        if backward:
            out.sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"entities": n, "hidden": hidden, "backward": backward, "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak / 1024, 1), "added_mb": round((peak - start) / 1024, 1),
            "release_gather_estimate_mb": round(4 * n * n * (n + 1) * hidden * 4 / 2**20, 1),
            "baseline_mb": round(base / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--child", nargs=3, type=int)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child[0], args.child[1], bool(args.child[2]))))
        return
    rows = []
    for n in args.sizes:
        for backward in (0, 1):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), str(args.hidden), str(backward)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'N':>5}{'pass':>10}{'seconds':>9}{'peak RSS MB':>13}{'added MB':>10}{'release gather MB':>19}")
    for r in rows:
        print(f"{r['entities']:>5}{'fwd+bwd' if r['backward'] else 'forward':>10}{r['seconds']:>9}"
              f"{r['peak_rss_mb']:>13}{r['added_mb']:>10}{r['release_gather_estimate_mb']:>19}")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/inference_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
