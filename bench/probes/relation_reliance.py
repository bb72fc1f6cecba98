"""How much does a trained inference module use its relation matrix R? A test-time probe for issue 12.

The iterative gain can only come from R: with F_0 fixed, P^(1) differs from the base's P only through
what the module reads from the relation matrix built from the base's predictions. This script runs
one inference iteration on the dev set with R_0 built from five sources and prints dev F1 for each:

    base     emb(argmax) of the base's own predictions (what K = 1 is at prediction time)
    gold     the gold labels, the first one per pair (an oracle: the most R could tell the module)
    na       every pair "no relation"
    flip     the base's predictions with every candidate pair's label flipped (relation <-> NA)
    shuffle  the base's predictions, permuted across the candidate pairs of each document

If gold ~ base ~ na, the module has learned to ignore R and its K > 0 can never beat K = 0 by much.

    python bench/probes/relation_reliance.py runs/ablation/cdr/default-s66/stage2/best [...] --data runs/data/cdr_dev
"""
from __future__ import annotations

import argparse

import torch

from result_rows import merge_rows  # the script's own folder is on sys.path when it runs

SOURCES = ("base", "gold", "na", "flip", "shuffle")


def relation_ids(source: str, base_logits: torch.Tensor, labels: torch.Tensor, cand: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Label ids [B, N, N] of one probe source (0 = NA), zero outside candidate pairs."""
    from docre.model.docre_ii import restrict_to_candidates
    predicted = restrict_to_candidates(base_logits.float(), cand).argmax(-1).masked_fill(~cand, 0)
    if source == "base":
        ids = predicted
    elif source == "gold":
        ids = labels.float().argmax(-1)
    elif source == "na":
        ids = torch.zeros_like(predicted)
    elif source == "flip":
        # a relation becomes NA; an NA becomes relation id 1 (CDR's only relation; on DocRED, just one of 96)
        ids = torch.where(predicted > 0, torch.zeros_like(predicted), torch.ones_like(predicted))
    elif source == "shuffle":
        ids = predicted.clone()
        for b in range(ids.shape[0]):
            where = cand[b].nonzero(as_tuple=True)
            values = ids[b][where]
            ids[b][where] = values[torch.randperm(len(values), generator=generator)]
    else:
        raise ValueError(f"unknown source {source!r}")
    return ids.masked_fill(~cand, 0)


@torch.no_grad()
def probe(path: str, data: str, batch_size: int = 8) -> dict[str, float]:
    from docre.data.batch import bucketed_batches, collate
    from docre.training.metrics import docred_scores
    from docre.model.docre_ii import DocREModel, restrict_to_candidates
    from docre.training.train import load_split
    model = DocREModel.from_pretrained(path).eval()
    examples, docs = load_split(data)
    generator = torch.Generator().manual_seed(0)
    decisions: dict[str, list] = {s: [] for s in ("K0",) + SOURCES}
    for chunk in bucketed_batches(examples, batch_size, shuffle=False):
        batch = collate(chunk, model.inventory, model.tokenizer.pad_token_id or 0)
        out = model.run_base(batch)
        cand = batch.candidate_mask
        per_source = {"K0": restrict_to_candidates(out.logits, cand)}
        for source in SOURCES:
            ids = relation_ids(source, out.logits, batch.labels, cand, generator)
            r0 = model.inference.relation_matrix(ids, out.entity_mask)
            logits, _ = model.inference(out.features, r0, out.entity_mask)
            per_source[source] = restrict_to_candidates(logits, cand)
        for name, logits in per_source.items():
            for doc_id, found in zip(batch.doc_ids, model.decode_logits(logits.float(), cand)):
                decisions[name] += [(doc_id, h, t, model.inventory.ids[r]) for h, t, r, _ in found]
    return {name: round(docred_scores(docs, preds).f1 * 100, 2) for name, preds in decisions.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="runs/data/cdr_dev")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| checkpoint | K0 | K1, R from: " + " | ".join(SOURCES) + " |")
    print("|---" * (len(SOURCES) + 2) + "|")
    for path in args.checkpoints:
        r = probe(path, args.data)
        rows.append({"checkpoint": path} | r)
        print(f"| {path} | {r['K0']} | " + " | ".join(str(r[s]) for s in SOURCES) + " |", flush=True)
    if args.json:  # rows of the same checkpoint are replaced, the others kept
        merge_rows(args.json, rows)


if __name__ == "__main__":
    main()
