"""Noise injection for stage 2 (paper Sec. 2.3): corrupt the relation matrix the inference module reads.

Stage 2 teaches the module to correct wrong base predictions by feeding it R_0 built from labels of
which a share r ~ U(0, 0.4) has been replaced by wrong ones. The paper's sentence admits more than
one reading; each is a function here, chosen by ``ModelConfig.noise``:

* :func:`inject_noise` (``"candidate_pairs"``): r of all candidate pair entries, NA included;
* :func:`inject_noise_predicted` (``"predicted_relations"``): r of the pairs predicted as a relation,
  and as many NA pairs;
* :func:`inject_noise_release` (``"release_gold"``): the authors' release, on the gold labels.

All draws happen on the CPU from the caller's generator, so a seed fixes the noise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["inject_noise", "inject_noise_predicted", "inject_noise_release", "noise_count", "sample_noise_rate"]


def sample_noise_rate(generator: Optional[torch.Generator] = None, low: float = 0.0, high: float = 0.4) -> float:
    """Noise rate r ~ U(low, high) (Sec. 2.3; paper U(0, 0.4))."""
    u = torch.rand((), generator=generator).item()
    return low + (high - low) * u


def noise_count(rate: float, n_valid: int) -> int:
    """Number of entries :func:`inject_noise` corrupts: ``round(rate * n_valid)``, halves up."""
    return min(n_valid, int(math.floor(rate * n_valid + 0.5)))


def inject_noise(
    labels: Tensor,
    rate: float,
    pair_mask: Tensor,
    num_relations: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Noise ``"candidate_pairs"`` (Sec. 2.3 read as r of *all* candidate entries, NA included; the
    code's behaviour before the other readings existed): in every document replace ``round(rate * n_valid)`` randomly
    chosen valid entries of the ``[B, N, N]`` label-id matrix with a wrong relation id drawn
    uniformly from the other ``num_relations - 1`` classes. Padded / diagonal entries are never
    touched. Returns a new tensor; random draws happen on the CPU (``generator`` must be a CPU
    generator)."""
    if num_relations < 2:
        raise ValueError("need at least two classes to draw a wrong label")
    out = labels.clone()
    for b in range(labels.shape[0]):
        idx = pair_mask[b].reshape(-1).nonzero().squeeze(-1).cpu()
        count = noise_count(rate, idx.numel())
        if count == 0:
            continue
        chosen = idx[torch.randperm(idx.numel(), generator=generator)[:count]]
        flat = out[b].view(-1)
        old = flat[chosen.to(flat.device)].cpu()
        draw = torch.randint(0, num_relations - 1, (count,), generator=generator)
        new = draw + (draw >= old).long()  # skip the current label -> uniform over the others
        flat[chosen.to(flat.device)] = new.to(flat.device, flat.dtype)
    return out


def _flip(flat: Tensor, chosen: Tensor, low: int, num_relations: int, generator: Optional[torch.Generator]) -> None:
    """Give every entry of ``flat`` at ``chosen`` a class drawn uniformly from ``low..C-1`` minus its own."""
    if chosen.numel() == 0:
        return
    old = flat[chosen].cpu()
    # classes low..C-1 other than the current one: draw among (C - low - 1) and skip the current label
    own = (old >= low).long()
    span = num_relations - low - own
    draw = (torch.rand(chosen.numel(), generator=generator) * span).long() + low
    new = draw + ((draw >= old) & (own == 1)).long()
    flat[chosen] = new.to(flat.device, flat.dtype)


def _relation_and_na_pairs(flat: Tensor, pair_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices (on the CPU) of one document's valid pairs labelled with a relation, and labelled NA."""
    valid, ids = pair_mask.reshape(-1).cpu(), flat.cpu()
    return (valid & (ids != 0)).nonzero().squeeze(-1), (valid & (ids == 0)).nonzero().squeeze(-1)


def inject_noise_predicted(
    labels: Tensor,
    rate: float,
    pair_mask: Tensor,
    num_relations: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Noise ``"predicted_relations"`` (a reading of Sec. 2.3, "substituting r percent of predicted
    relations with incorrect ones"): in every document ``round(rate * P)`` of the P candidate pairs
    predicted as a relation get another class (any other, NA included), and as many pairs predicted
    as NA get a random relation, so false relations never outnumber the true ones the way
    :func:`inject_noise` makes them on sparse data. The equal-sized NA sample is a design choice,
    not the paper's. Documents with no predicted relation are left as they are."""
    out = labels.clone()
    for b in range(labels.shape[0]):
        flat = out[b].view(-1)
        pos, neg = _relation_and_na_pairs(flat, pair_mask[b])
        count = noise_count(rate, pos.numel())
        if count == 0:
            continue
        flip_pos = pos[torch.randperm(pos.numel(), generator=generator)[:count]]
        flip_neg = neg[torch.randperm(neg.numel(), generator=generator)[:min(count, neg.numel())]]
        _flip(flat, flip_pos.to(flat.device), 0, num_relations, generator)
        _flip(flat, flip_neg.to(flat.device), 1, num_relations, generator)
    return out


def inject_noise_release(
    gold: Tensor,
    pair_mask: Tensor,
    num_relations: int,
    generator: Optional[torch.Generator] = None,
    positive_rate: tuple[float, float] = (0.2, 0.5),
    negative_rate: tuple[float, float] = (0.05, 0.15),
    negatives_per_positive: int = 5,
) -> Tensor:
    """Noise ``"release_gold"`` (the authors' release): corrupt the **gold** label ids. In every
    document a U(0.2, 0.5) share of the positive pairs gets another class, and of a sample of
    ``5 x positives`` negative pairs a U(0.05, 0.15) share gets a random relation. Rates are drawn
    per document."""
    out = gold.clone()
    for b in range(gold.shape[0]):
        flat = out[b].view(-1)
        pos, neg = _relation_and_na_pairs(flat, pair_mask[b])
        p_rate = sample_noise_rate(generator, *positive_rate)
        n_rate = sample_noise_rate(generator, *negative_rate)
        flip_pos = pos[torch.randperm(pos.numel(), generator=generator)[:noise_count(p_rate, pos.numel())]]
        sample = neg[torch.randperm(neg.numel(), generator=generator)[:negatives_per_positive * pos.numel()]]
        flip_neg = sample[:noise_count(n_rate, sample.numel())]
        _flip(flat, flip_pos.to(flat.device), 0, num_relations, generator)
        _flip(flat, flip_neg.to(flat.device), 1, num_relations, generator)
    return out
