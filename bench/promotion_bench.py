"""Issue 28: how long the champion/challenger paired bootstrap takes (docre.registry.promotion.paired_bootstrap).

    python bench/promotion_bench.py [--repeats 20] [--out bench/results/promotion.json]

The evaluation set is synthetic but shaped like CDR's development set: 500 documents, 6-12
entities and 1-4 gold facts each (CDR dev: 500 documents, about 1,000 CID facts). Two
prediction sets ("models") find each gold fact with probability 0.60 and 0.58 and add 0-2
false positives per document; per-document counts come from
docre.training.metrics.docred_doc_counts, as the flow gets them from evaluate(per_doc=True).

Measured, each after one warm-up call:

* the bootstrap: `--repeats` timed calls each of 1,000 resamples over 500 documents (the
  default), 10,000 over 500, and 1,000 over 3,000 documents (median, min, max seconds);
* the per-document counts of one prediction set (`docred_doc_counts`, done once per model);
* the naive alternative, re-scoring both models with docred_scores on every resampled set of
  documents: `--naive` resamples timed and scaled to 1,000; its differences are checked to
  equal the vectorised ones for the same indices.

Records the 1-minute load average before and after: other work on the same cores slows everything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docre.data.document import Document, Entity, Fact, Mention  # noqa: E402
from docre.registry.promotion import paired_bootstrap, paired_counts  # noqa: E402
from docre.training.metrics import docred_doc_counts, docred_scores  # noqa: E402


def synthetic_eval(n_docs: int, seed: int = 0) -> tuple[list[Document], list[tuple], list[tuple]]:
    """CDR-shaped gold documents and two prediction sets of slightly different quality."""
    rng = np.random.default_rng(seed)
    docs, preds = [], {0.60: [], 0.58: []}
    for i in range(n_docs):
        n_ent = int(rng.integers(6, 13))
        ents = [Entity([Mention(0, j, j + 1, f"e{j}")], "Chemical" if j % 2 else "Disease") for j in range(n_ent)]
        pairs = [(h, t) for h in range(n_ent) for t in range(n_ent) if h != t]
        chosen = rng.choice(len(pairs), size=int(rng.integers(1, 5)) + 2, replace=False)
        gold = [pairs[c] for c in chosen[:-2]]
        doc_id = f"doc{i:05d}"
        docs.append(Document(doc_id, [["w"] * n_ent], ents, [Fact(h, t, "CID") for h, t in gold]))
        for p, out in preds.items():
            out += [(doc_id, h, t, "CID") for h, t in gold if rng.random() < p]
            fp = [pairs[c] for c in rng.choice(len(pairs), size=int(rng.integers(0, 3)), replace=False)]
            out += [(doc_id, h, t, "CID") for h, t in fp]
    return docs, preds[0.60], preds[0.58]


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"repeats": repeats, "median_s": round(statistics.median(times), 5), "min_s": round(min(times), 5),
            "max_s": round(max(times), 5)}


def naive_diffs(docs: list[Document], a: list[tuple], b: list[tuple], indices: np.ndarray) -> list[float]:
    """Re-score both prediction sets on each resampled document set (a document drawn twice counts twice)."""
    by_doc: dict[str, tuple[list, list]] = {d.id: ([], []) for d in docs}
    for p in a:
        by_doc[p[0]][0].append(p)
    for p in b:
        by_doc[p[0]][1].append(p)
    out = []
    for row in indices:
        gold, pa, pb = [], [], []
        for j, i in enumerate(row):
            d = docs[i]
            new_id = f"{d.id}#{j}"
            gold.append(Document(new_id, d.sentences, d.entities, d.facts))
            pa += [(new_id, *p[1:]) for p in by_doc[d.id][0]]
            pb += [(new_id, *p[1:]) for p in by_doc[d.id][1]]
        out.append(100 * (docred_scores(gold, pa).f1 - docred_scores(gold, pb).f1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--naive", type=int, default=20, help="resamples re-scored the naive way (scaled to 1,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "promotion.json"))
    args = ap.parse_args(argv)

    load_before = round(os.getloadavg()[0], 2)
    results: dict = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                 "python": platform.python_version(), "numpy": np.__version__},
                     "runs": []}
    try:
        import torch
        results["machine"]["torch"] = torch.__version__
    except ImportError:
        pass

    for n_docs, resamples in ((500, 1000), (500, 10000), (3000, 1000)):
        docs, a, b = synthetic_eval(n_docs, args.seed)
        t0 = time.perf_counter()
        ca = docred_doc_counts(docs, a)
        counts_s = time.perf_counter() - t0
        cb = docred_doc_counts(docs, b)
        xa, xb, _ = paired_counts(ca, cb)
        interval = paired_bootstrap(xa, xb, resamples, args.seed)
        row = {"documents": n_docs, "resamples": resamples, "gold_facts": int(xa[:, 2].sum()),
               "bootstrap": timed(lambda: paired_bootstrap(xa, xb, resamples, args.seed), args.repeats),
               "doc_counts_one_model_s": round(counts_s, 4),
               "interval": {"observed": interval.observed, "mean": interval.mean, "low": interval.low,
                            "high": interval.high}}
        if n_docs == 500 and resamples == 1000 and args.naive:
            order = {d.id: i for i, d in enumerate(docs)}
            assert [order[k] for k in sorted(ca)] == list(range(n_docs))  # paired_counts sorts by id: same order
            indices = np.random.default_rng(args.seed).integers(0, n_docs, size=(args.naive, n_docs))
            t0 = time.perf_counter()
            slow = naive_diffs(docs, a, b, indices)
            naive_s = time.perf_counter() - t0
            fast = paired_bootstrap(xa, xb, args.naive, args.seed)
            assert abs(fast.mean - float(np.mean(slow))) < 1e-3, (fast.mean, np.mean(slow))
            row["naive_rescoring"] = {"resamples_timed": args.naive, "seconds": round(naive_s, 3),
                                      "scaled_to_1000_s": round(naive_s * 1000 / args.naive, 2),
                                      "same_mean_difference": True}
            row["speedup_vs_naive"] = round(naive_s * 1000 / args.naive / row["bootstrap"]["median_s"], 1)
        results["runs"].append(row)
        print(json.dumps(row))
    results["load_1min"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"load {results['load_1min']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
