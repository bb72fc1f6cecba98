"""P^(K) (the paper) against the release's summed output, on trained checkpoints. A probe for issue 12.

The authors' release does not output the last iteration's P^(K): it sums the logits of the base and
of every iteration (`output: sum` in the model config). A sum of two classifiers is an ensemble, and
an ensemble can add F1 that iterating alone does not; this script asks whether it does here. Each
output is scored by its own `evaluate` pass with the config's `output` switched (prediction is
deterministic in eval mode, so K = 0, the base, is the same number in both rows).

    python bench/probes/output_modes.py runs/ablation/cdr/default-s66/stage2/best --data runs/data/cdr_dev \
        --json bench/results/output_modes_cdr.json
"""
from __future__ import annotations

import argparse

import torch

from result_rows import merge_rows  # the script's own folder is on sys.path when it runs

KS = [0, 1, 2, 3]


def output_modes(path: str, examples: list, docs: list) -> dict:
    """Dev F1 (%) at K = 0..3 of one checkpoint with the output as P^(K) ("last") and as the sum."""
    from docre.model.docre_ii import DocREModel
    from docre.training.train import evaluate
    model = DocREModel.from_pretrained(path).eval()
    row: dict = {"checkpoint": path}
    for mode in ("last", "sum"):
        model.config.output = mode
        scores = evaluate(model, examples, docs, KS)
        row[mode] = [round(scores[f"K{k}"]["f1"] * 100, 2) for k in KS]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| checkpoint | P^(K): K0 / K1 / K2 / K3 | sum: K0 / K1 / K2 / K3 | K3 sum - K3 last |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {' / '.join(map(str, r['last']))} | {' / '.join(map(str, r['sum']))} "
                     f"| {round(r['sum'][-1] - r['last'][-1], 2)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", required=True, help="tokenized split to score on")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="append the rows to this JSON list (rows of the same checkpoint are replaced)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from docre.training.train import load_split
    examples, docs = load_split(args.data)
    rows = []
    for c in args.checkpoints:
        rows.append(output_modes(c, examples, docs))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.json:
        merge_rows(args.json, rows)


if __name__ == "__main__":
    main()
