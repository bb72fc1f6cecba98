"""Is the iterative gain a better ranking of the candidate facts, or a shifted threshold? A probe for issue 12.

F1 at the learned adaptive threshold mixes two things: how well a model orders the candidate facts,
and where its threshold class cuts that order. On CDR (one relation) a module whose K1 merely moves
the cut trades precision for recall and can gain or lose a point of F1 without knowing anything more
than the base. This script scores every candidate (pair, relation) by its margin over the threshold
class, logit_r - logit_TH, at K = 0..3 on a dev set and prints, per K:

    f1      F1 with the learned threshold (margin > 0; every relation above it, no `max_labels` cap)
    best    F1 at the best single margin offset for the whole split (an oracle cut, tuned on dev)
    offset  the margin that best cut sits at: negative means the learned threshold (0) is too strict
    ap      average precision of the ranking (gold facts outside the candidate pairs count as never found)

If `ap` and `best` rise from K0 to K3 the module ranks better; if only `f1` does, it moved the cut.

    python bench/probes/threshold_free.py runs/ablation/cdr/default-s6{6,7}/stage2/best --data runs/data/cdr_dev
"""
from __future__ import annotations

import argparse

import torch

from result_rows import merge_rows  # the script's own folder is on sys.path when it runs


def ranking_scores(margins: torch.Tensor, is_gold: torch.Tensor, n_gold: int) -> dict[str, float]:
    """F1 at margin > 0, the best F1 over one global margin cut (and that cut), and average precision.

    `margins` and `is_gold` are flat over every candidate (pair, relation); `n_gold` counts every gold
    fact of the split, including those no candidate can find, so recall is never overstated."""
    if n_gold <= 0:
        raise ValueError("ranking scores need at least one gold fact")
    order = torch.argsort(margins, descending=True, stable=True)
    m, g = margins[order].double(), is_gold[order].double()
    tp = torch.cumsum(g, 0)
    n_pred = torch.arange(1, len(m) + 1, dtype=torch.float64)
    # a cut can only fall between distinct margins: keep the last position of each run of ties
    last = torch.ones(len(m), dtype=torch.bool)
    last[:-1] = m[1:] != m[:-1]
    f1_at = 2 * tp / (n_pred + n_gold)
    best = int(torch.argmax(torch.where(last, f1_at, torch.full_like(f1_at, -1.0))))
    # the learned threshold is one more cut on the same curve (margin > 0 never splits ties)
    n_above = int((m > 0).sum())
    f1_learned = float(f1_at[n_above - 1]) if n_above else 0.0
    ap = float((tp / n_pred * g).sum()) / n_gold
    # where the best cut sits: midway between the last margin kept and the next one (one logit below
    # the lowest margin when every candidate is kept)
    nxt = float(m[best + 1]) if best + 1 < len(m) else float(m[best]) - 1.0
    return {"f1": f1_learned, "best": float(f1_at[best]), "offset": (float(m[best]) + nxt) / 2, "ap": ap}


@torch.no_grad()
def probe(path: str, data: str, iterations: int = 3, batch_size: int = 8) -> dict[str, dict[str, float]]:
    from docre.data.batch import bucketed_batches, collate
    from docre.model.docre_ii import DocREModel
    from docre.training.train import load_split
    model = DocREModel.from_pretrained(path).eval()
    examples, docs = load_split(data)
    margins: list[list[torch.Tensor]] = [[] for _ in range(iterations + 1)]
    golds: list[torch.Tensor] = []
    for chunk in bucketed_batches(examples, batch_size, shuffle=False):
        batch = collate(chunk, model.inventory, model.tokenizer.pad_token_id or 0)
        cand = batch.candidate_mask
        for k, logits in enumerate(model.iteration_logits(batch, iterations)):
            pair = logits[cand].float()
            margins[k].append((pair[:, 1:] - pair[:, :1]).flatten())
        golds.append(batch.labels[cand][:, 1:].flatten().bool())
    n_gold = sum(len(d.facts or []) for d in docs)
    is_gold = torch.cat(golds)
    out = {f"K{k}": ranking_scores(torch.cat(ms), is_gold, n_gold) for k, ms in enumerate(margins)}
    out["gold_in_candidates"] = {"found": int(is_gold.sum()), "all": n_gold}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="runs/data/cdr_dev")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ks = [f"K{k}" for k in range(args.iterations + 1)]
    print("| checkpoint | " + " | ".join(f"{k} f1 / best / ap" for k in ks) + " | best cut K0 / K3 |")
    print("|---" * (len(ks) + 2) + "|")
    rows = []
    for path in args.checkpoints:
        r = probe(path, args.data, args.iterations)
        rows.append({"checkpoint": path, "data": args.data} | r)
        cells = [f"{100 * r[k]['f1']:.2f} / {100 * r[k]['best']:.2f} / {100 * r[k]['ap']:.2f}" for k in ks]
        print(f"| {path} | " + " | ".join(cells) + f" | {r['K0']['offset']:+.2f} / {r[ks[-1]]['offset']:+.2f} |",
              flush=True)
    if args.json:  # rows of the same checkpoint are replaced, the others kept
        merge_rows(args.json, rows)


if __name__ == "__main__":
    main()
