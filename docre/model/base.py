"""The base module (DocRE-II Sec. 2.1, eq. 1-4): ATLOP's encoder features, a pair FNN and a linear classifier.

Everything is computed for every ordered entity pair of each document and laid
out as N x N grids, because the inference module reads whole rows and columns
of that grid; which pairs are scored is decided by a mask (CDR scores only
Chemical -> Disease pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoder import WindowedEncoder


@dataclass
class BaseOutput:
    features: torch.Tensor  # F_0: [B, N, N, d] pair features (eq. 2-3)
    logits: torch.Tensor  # [B, N, N, R] relation logits (eq. 4, before the sigmoid)
    entity_mask: torch.Tensor  # [B, N] bool


def entity_embeddings(hidden: torch.Tensor, attention: torch.Tensor, mention_pos: list[list[int]],
                      n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One document: h(e) = logsumexp over its mentions' start-marker states; A_e = mean of their attention rows.

    hidden [T, D], attention [H, T, T] -> (entities [n_max, D], entity attention [n_max, H, T]).
    Vectorised over mentions: one gather, one padded logsumexp, one index_add.
    """
    T, D = hidden.shape
    H = attention.shape[0]
    flat = [(e, slot, p) for e, positions in enumerate(mention_pos) for slot, p in enumerate(positions) if p < T]
    if not flat:
        return hidden.new_zeros(n_max, D), hidden.new_zeros(n_max, H, T)
    ent_idx, slot_idx, pos = (torch.as_tensor(c, dtype=torch.long, device=hidden.device) for c in zip(*flat))
    # empty slots get a huge negative value (not -inf, which would make NaN gradients)
    padded = hidden.new_full((n_max, int(slot_idx.max()) + 1, D), torch.finfo(hidden.dtype).min / 2)
    padded[ent_idx, slot_idx] = hidden[pos]
    counts = torch.zeros(n_max, device=hidden.device, dtype=hidden.dtype).index_add_(
        0, ent_idx, torch.ones_like(ent_idx, dtype=hidden.dtype))
    ents = torch.logsumexp(padded, dim=1) * (counts > 0)[:, None]  # entities with no mention -> 0
    atts = hidden.new_zeros(n_max, H, T).index_add_(0, ent_idx, attention[:, pos].transpose(0, 1))
    atts = atts / counts.clamp(min=1)[:, None, None]
    return ents, atts


def localized_context(hidden: torch.Tensor, ent_att: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for all pairs of one document: c_{s,o} = H^T (A_s o A_o) / 1^T (A_s o A_o).

    As in ATLOP, the product is taken per head and then averaged over heads.
    hidden [T, D], ent_att [N, H, T] -> [N, N, D].
    """
    prod = (ent_att[:, None] * ent_att[None, :]).mean(2)  # [N, N, T]
    prod = prod / (prod.sum(-1, keepdim=True) + 1e-5)
    return prod @ hidden


class BaseModule(nn.Module):
    def __init__(self, encoder: WindowedEncoder, num_relations: int, feature_dim: int = 256,
                 emb_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        D = encoder.hidden_size
        emb_dim = emb_dim or D
        self.head_extractor = nn.Linear(2 * D, emb_dim)  # W_s (eq. 2)
        self.tail_extractor = nn.Linear(2 * D, emb_dim)  # W_o (eq. 3)
        self.pair_fnn = nn.Sequential(nn.Linear(2 * emb_dim, feature_dim), nn.GELU(), nn.Dropout(dropout),
                                      nn.Linear(feature_dim, feature_dim))  # FNN (eq. 2-3)
        self.classifier = nn.Linear(feature_dim, num_relations)  # W_r, b_r (eq. 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mention_pos: list[list[list[int]]]) -> BaseOutput:
        hidden, attention = self.encoder(input_ids, attention_mask)
        B = input_ids.shape[0]
        n_max = max(1, max(len(m) for m in mention_pos))
        ents, ctxs = [], []
        for b in range(B):
            e, a = entity_embeddings(hidden[b], attention[b], mention_pos[b], n_max)
            ents.append(e)
            ctxs.append(localized_context(hidden[b], a))
        ent = torch.stack(ents)  # [B, N, D]
        ctx = torch.stack(ctxs)  # [B, N, N, D]
        heads = ent[:, :, None].expand(-1, -1, n_max, -1)
        tails = ent[:, None, :].expand(-1, n_max, -1, -1)
        zs = torch.tanh(self.head_extractor(torch.cat([heads, ctx], -1)))
        zo = torch.tanh(self.tail_extractor(torch.cat([tails, ctx], -1)))
        features = self.pair_fnn(torch.cat([zs, zo], -1))
        logits = self.classifier(features)
        mask = torch.zeros(B, n_max, dtype=torch.bool, device=input_ids.device)
        for b, m in enumerate(mention_pos):
            mask[b, :len(m)] = True
        return BaseOutput(features, logits, mask)
