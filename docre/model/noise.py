"""Noise injection for stage 2 (paper Sec. 2.3): corrupt the relation matrix the inference module reads.

Stage 2 teaches the module to correct wrong base predictions by feeding it R_0 built from labels of
which a share r ~ U(0, 0.4) has been replaced by wrong ones. The paper's sentence admits more than
one reading; each is a function here, chosen by ``ModelConfig.noise``:

* :func:`inject_noise` (``"candidate_pairs"``): r of all candidate pair entries, NA included;
* :func:`inject_noise_predicted` (``"predicted_relations"``): r of the pairs predicted as a relation,
  and as many NA pairs;
* :func:`inject_noise_release` (``"release_gold"``): the authors' release, on the gold labels.

All draws happen on the CPU from the caller's generator, so a seed fixes the noise. Every function
is vectorised over the batch (issue 27): one draw of random keys for all documents, a per-document
random subset as "the entries whose key ranks below the document's count", one draw of replacement
classes; no Python loop over documents. The subsets have the same distribution as the per-document
``randperm`` draws of before (uniform among subsets of that size), not the same values for a seed.
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


def _counts(rate: Tensor, n: Tensor) -> Tensor:
    """:func:`noise_count` for every document at once (float64, as Python's float arithmetic)."""
    return torch.minimum(n, torch.floor(rate.double() * n.double() + 0.5).long())


def _random_subset(valid: Tensor, count: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Per row of ``valid`` [B, L] (CPU bool), a uniformly random subset of ``count[b]`` of its True entries.

    Every valid entry gets a uniform key, invalid ones a key above all of them; an entry is chosen
    when its key's rank within its row is below the row's count (ties have probability zero)."""
    keys = torch.rand(valid.shape, generator=generator, dtype=torch.float64).masked_fill_(~valid, 2.0)
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(valid.shape[1]).expand_as(order).contiguous())
    return (rank < count[:, None]) & valid


def _flip_to(old: Tensor, chosen: Tensor, low: int, num_relations: int,
             generator: Optional[torch.Generator]) -> Tensor:
    """``old`` [B, L] (CPU long) with every ``chosen`` entry replaced by a class drawn uniformly from
    ``low..C-1`` minus its own."""
    own = (old >= low).long()  # the current label is among the candidates and must be skipped
    span = num_relations - low - own
    draw = (torch.rand(old.shape, generator=generator) * span).long() + low
    new = draw + ((draw >= old) & (own == 1)).long()
    return torch.where(chosen, new, old)


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
    B = labels.shape[0]
    valid = pair_mask.reshape(B, -1).bool().cpu()
    old = labels.reshape(B, -1).cpu().long()
    count = _counts(torch.full((B,), float(rate), dtype=torch.float64), valid.sum(1))
    chosen = _random_subset(valid, count, generator)
    draw = torch.randint(0, num_relations - 1, old.shape, generator=generator)
    new = torch.where(chosen, draw + (draw >= old).long(), old)  # skip the current label -> uniform over the others
    return new.view(labels.shape).to(labels.device, labels.dtype)


def _relation_and_na(labels: Tensor, pair_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(label ids [B, L], valid pairs labelled with a relation [B, L], valid pairs labelled NA [B, L]), on the CPU."""
    B = labels.shape[0]
    ids = labels.reshape(B, -1).cpu().long()
    valid = pair_mask.reshape(B, -1).bool().cpu()
    return ids, valid & (ids != 0), valid & (ids == 0)


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
    ids, pos, neg = _relation_and_na(labels, pair_mask)
    B = ids.shape[0]
    count = _counts(torch.full((B,), float(rate), dtype=torch.float64), pos.sum(1))
    flip_pos = _random_subset(pos, count, generator)
    flip_neg = _random_subset(neg, torch.minimum(count, neg.sum(1)), generator)
    out = _flip_to(ids, flip_pos, 0, num_relations, generator)
    out = _flip_to(out, flip_neg, 1, num_relations, generator)
    return out.view(labels.shape).to(labels.device, labels.dtype)


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
    per document. (A random share of a random sample is a random subset of the negatives of that
    size, which is how it is drawn here.)"""
    ids, pos, neg = _relation_and_na(gold, pair_mask)
    B = ids.shape[0]
    u = torch.rand((B, 2), generator=generator, dtype=torch.float64)
    p_rate = positive_rate[0] + (positive_rate[1] - positive_rate[0]) * u[:, 0]
    n_rate = negative_rate[0] + (negative_rate[1] - negative_rate[0]) * u[:, 1]
    n_pos = pos.sum(1)
    sample = torch.minimum(neg.sum(1), negatives_per_positive * n_pos)
    flip_pos = _random_subset(pos, _counts(p_rate, n_pos), generator)
    flip_neg = _random_subset(neg, _counts(n_rate, sample), generator)
    out = _flip_to(ids, flip_pos, 0, num_relations, generator)
    out = _flip_to(out, flip_neg, 1, num_relations, generator)
    return out.view(gold.shape).to(gold.device, gold.dtype)
