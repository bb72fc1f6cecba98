"""How well does the base already fit the documents stage 2 trains on? A probe for issue 12.

Stage 2 builds R_0 from the base's predictions on the *training* documents and teaches the inference
module to correct them. At prediction time it corrects predictions on unseen documents. If the base
fits its training documents far better than unseen ones, the errors the module learns to fix (the
injected noise, with F_0 almost always right) are not the errors it meets at test time (F_0 itself
wrong), and the module learns to follow F_0. This script prints each checkpoint's F1 on the training
and on the dev split at the K values asked for, and the gap between them.

    python bench/probes/train_dev_gap.py runs/ablation/cdr/stage1/best --train runs/data/cdr_train \
        --dev runs/data/cdr_dev --iterations 0 --json bench/results/train_dev_gap_cdr.json
"""
from __future__ import annotations

import argparse

import torch

from result_rows import merge_rows  # the script's own folder is on sys.path when it runs


Split = tuple[list, list]  # (examples, documents), as docre.training.train.load_split returns them


def gap(path: str, splits: dict[str, Split], iterations: list[int]) -> dict:
    """F1 (%) per split ("train", "dev") and K, and train - dev per K, of one checkpoint."""
    from docre.model.docre_ii import DocREModel
    from docre.training.train import evaluate
    model = DocREModel.from_pretrained(path).eval()
    row: dict = {"checkpoint": path}
    for split, (examples, docs) in splits.items():
        scores = evaluate(model, examples, docs, iterations)
        for k in iterations:
            row[f"{split}_K{k}"] = round(scores[f"K{k}"]["f1"] * 100, 2)
    for k in iterations:
        row[f"gap_K{k}"] = round(row[f"train_K{k}"] - row[f"dev_K{k}"], 2)
    return row


def table(rows: list[dict], iterations: list[int]) -> str:
    head = " | ".join(f"train K{k} | dev K{k} | gap K{k}" for k in iterations)
    lines = [f"| checkpoint | {head} |", "|---" * (1 + 3 * len(iterations)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r[f'train_K{k}']} | {r[f'dev_K{k}']} | {r[f'gap_K{k}']}" for k in iterations)
        lines.append(f"| {r['checkpoint']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--train", required=True, help="tokenized training split (the one stage 2 trains on)")
    p.add_argument("--dev", required=True, help="tokenized dev split")
    p.add_argument("--iterations", default="0", help="comma-separated K values (stage-1 checkpoints: 0)")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="append the rows to this JSON list (rows of the same checkpoint are replaced)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    iterations = [int(k) for k in args.iterations.split(",")]
    from docre.training.train import load_split
    splits = {"train": load_split(args.train), "dev": load_split(args.dev)}  # read once for every checkpoint
    rows = [gap(c, splits, iterations) for c in args.checkpoints]
    print(table(rows, iterations))
    if args.json:
        merge_rows(args.json, rows)


if __name__ == "__main__":
    main()
