"""The losses of DocRE-II: the adaptive-threshold loss and its decoding (ATLOP; eq. 13), and the
contrastive loss of stage 2 (SimSiam, eq. 14) with its second view and the SimCLR ablation.

Class 0 is the threshold class TH. Training pushes every positive relation's
logit above TH's and TH's above every negative's; at prediction time a
relation is kept when its logit beats TH's, so each pair learns its own
threshold instead of sharing a global one.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as Fn
from torch import Tensor


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


# contrastive loss (Sec. 2.3, eq. 14) and the SimCLR ablation
def reversed_view(module: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]], f0: Tensor, r_hat: Tensor,
                  mask: Tensor) -> Tensor:
    """Second SimSiam view of Sec. 2.3 / Fig. 4: the inputs are fed in reversed order,
    ``module(R_hat, F_0)`` -- ``R_hat`` goes into the feature slot, ``F_0`` into the relation slot.

    The top layer then yields ``[X_f, X_r]`` with ``X_f`` the feature-slot stream (derived from
    ``R_hat``) and ``X_r`` the relation-slot stream (derived from ``F_0``). Eq. 14 pairs
    ``M_bar = [F_NI, R_bar_NI]`` with ``M_hat = [F_NI, R_hat_NI]``, so we return the halves
    swapped, ``M_hat = [X_r, X_f]``: first half from the F_0 input, second half from the relation
    input, aligning component-wise with ``M_bar`` of the normal view ``module(F_0, R_bar)``.
    ``mask`` is the entity mask ``[B, N]``."""
    _, m_top = module(r_hat, f0, mask)
    d = m_top.shape[-1] // 2
    return torch.cat([m_top[..., d:], m_top[..., :d]], dim=-1)


def simsiam_loss(
    predictor: Callable[[Tensor], Tensor], m_bar: Tensor, m_hat: Tensor, pair_mask: Tensor
) -> Tensor:
    """Contrastive loss L_C, eq. 14 (SimSiam):
    ``2 - (cos(MLP(M_hat), SG(M_bar)) + cos(MLP(M_bar), SG(M_hat)))``, averaged over valid pairs.

    ``m_bar`` / ``m_hat``: ``[B, N, N, 2d]`` top-layer outputs of the two views (see
    :func:`reversed_view`); only the entries where ``pair_mask`` is True are used."""
    pm = pair_mask.bool()
    a, b = m_bar[pm], m_hat[pm]  # [P, 2d]
    if a.shape[0] == 0:
        return (m_bar.sum() + m_hat.sum()) * 0.0
    cos_1 = Fn.cosine_similarity(predictor(b), a.detach(), dim=-1)
    cos_2 = Fn.cosine_similarity(predictor(a), b.detach(), dim=-1)
    return (2.0 - (cos_1 + cos_2)).mean()


def simclr_loss(z1: Tensor, z2: Tensor, pair_mask: Tensor, temperature: float = 0.1) -> Tensor:
    """Ablation "w/ negative pairs" (SimCLR NT-Xent): for every valid pair, its representation in
    the other view is the positive, every other valid pair of the same document (in both views)
    is a negative. Averaged over all 2P anchors of the batch."""
    pm = pair_mask.bool()
    total = z1.new_zeros(())
    anchors = 0
    for b in range(z1.shape[0]):
        a, c = z1[b][pm[b]], z2[b][pm[b]]
        p = a.shape[0]
        if p == 0:
            continue
        z = Fn.normalize(torch.cat([a, c], dim=0), dim=-1)  # [2P, D]
        sim = z @ z.t() / temperature
        sim = sim.masked_fill(torch.eye(2 * p, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(p, 2 * p), torch.arange(0, p)]).to(z.device)
        total = total + Fn.cross_entropy(sim, target, reduction="sum")
        anchors += 2 * p
    if anchors == 0:
        return (z1.sum() + z2.sum()) * 0.0
    return total / anchors
