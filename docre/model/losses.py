"""Adaptive-threshold loss and decoding (ATLOP; DocRE-II eq. 13).

Class 0 is the threshold class TH. Training pushes every positive relation's
logit above TH's and TH's above every negative's; at prediction time a
relation is kept when its logit beats TH's, so each pair learns its own
threshold instead of sharing a global one.
"""
from __future__ import annotations

import torch


def adaptive_threshold_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 13, averaged over pairs. logits [P, R]; labels [P, R] multi-hot with column 0 = no relation.

    L = -sum_{r in P_T} log softmax over {P_T, TH} (logit_r)  -  log softmax over {N_T, TH} (logit_TH)
    """
    labels = labels.to(logits.dtype).clone()
    labels[:, 0] = 0.0
    th = torch.zeros_like(labels)
    th[:, 0] = 1.0
    very_negative = torch.finfo(logits.dtype).min / 2
    # positives vs TH: mask out negatives (keep positives and TH)
    pos_logits = logits.masked_fill((labels + th) == 0, very_negative)
    loss_pos = -(pos_logits.log_softmax(-1) * labels).sum(-1)
    # TH vs negatives: mask out positives (keep negatives and TH)
    neg_logits = logits.masked_fill(labels == 1, very_negative)
    loss_neg = -(neg_logits.log_softmax(-1) * th).sum(-1)
    return (loss_pos + loss_neg).mean()


def threshold_decode(logits: torch.Tensor, max_labels: int | None = 4) -> torch.Tensor:
    """Multi-hot predictions [P, R]: relations whose logit beats TH's, at most `max_labels` per pair.

    Column 0 is set when nothing beats TH (the pair has no relation).
    """
    th = logits[:, :1]
    keep = logits > th
    if max_labels is not None and max_labels > 0 and max_labels < logits.shape[1]:
        kth = logits.topk(max_labels, dim=1).values[:, -1:]
        keep &= logits >= kth
    keep[:, 0] = False
    out = keep.to(logits.dtype)
    out[:, 0] = (out.sum(1) == 0).to(logits.dtype)
    return out
