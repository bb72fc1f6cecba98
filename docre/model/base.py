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
from .inference import linear_fp32


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
    atts = hidden.new_zeros(n_max, H, T).index_add_(0, ent_idx, attention[:, pos].transpose(0, 1).to(hidden.dtype))
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


def batched_entity_embeddings(hidden: torch.Tensor, rows_att: torch.Tensor, m_tok: torch.Tensor,
                              m_ent: torch.Tensor, m_slot: torch.Tensor, m_valid: torch.Tensor,
                              n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`entity_embeddings` for a whole batch at once (no per-document loop).

    hidden [B, T, D]; rows_att [B, M, H, T], the attention rows of the mention markers; mentions as
    padded [B, M] tensors (marker position, entity, slot within the entity, real or padding)
    -> (entities [B, N, D] by logsumexp over mentions, entity attention [B, N, H, T] = mean of rows).
    """
    B, T, D = hidden.shape
    H = rows_att.shape[2]
    if not bool(m_valid.any()):
        return hidden.new_zeros(B, n_max, D), hidden.new_zeros(B, n_max, H, T)
    b_idx = torch.arange(B, device=hidden.device)[:, None].expand_as(m_tok)[m_valid]
    e_idx, s_idx = m_ent[m_valid], m_slot[m_valid]
    states = hidden[b_idx, m_tok[m_valid]]  # [P, D]
    padded = hidden.new_full((B, n_max, int(s_idx.max()) + 1, D), torch.finfo(hidden.dtype).min / 2)
    padded[b_idx, e_idx, s_idx] = states
    flat = b_idx * n_max + e_idx
    counts = hidden.new_zeros(B * n_max).index_add_(0, flat, torch.ones_like(flat, dtype=hidden.dtype))
    ents = torch.logsumexp(padded, dim=2) * (counts > 0).view(B, n_max, 1)  # entities with no mention -> 0
    # under CPU bf16 autocast the rows' softmax stays bf16 (CUDA autocast returns fp32) while hidden,
    # a LayerNorm output, is fp32
    atts = hidden.new_zeros(B * n_max, H, T).index_add_(0, flat, rows_att[m_valid].to(hidden.dtype))
    atts = atts / counts.clamp(min=1)[:, None, None]
    return ents, atts.view(B, n_max, H, T)


def batched_localized_context(hidden: torch.Tensor, ent_att: torch.Tensor) -> torch.Tensor:
    """`localized_context` (eq. 1) for a whole batch: hidden [B, T, D], ent_att [B, N, H, T] -> [B, N, N, D]."""
    B, N, H, T = ent_att.shape
    prod = ent_att[:, :, None, 0] * ent_att[:, None, :, 0]  # [B, N, N, T], accumulated head by head
    for h in range(1, H):
        prod.addcmul_(ent_att[:, :, None, h], ent_att[:, None, :, h])
    prod = prod / H
    prod = prod / (prod.sum(-1, keepdim=True) + 1e-5)
    return (prod.view(B, N * N, T) @ hidden).view(B, N, N, -1)


class BaseHeadPlan(nn.Module):
    """Prediction-time form of the base module's pair head (eq. 2-4; eval only, same math).

    ``W_s [h_s, c_so]`` splits by linearity into ``W_s^e h_s + W_s^c c_so``: the entity half is
    computed once per entity (N rows, not N^2), and the context halves of W_s and W_o run as one
    matmul; tanh of the sum is exactly ``[z_s, z_o]``, the FNN's input, so no concatenation is built."""

    def __init__(self, base: "BaseModule"):
        super().__init__()
        D = base.head_extractor.in_features // 2
        E = base.head_extractor.out_features
        self.E = E
        w_s, w_o = base.head_extractor.weight, base.tail_extractor.weight
        with torch.no_grad():
            self.ent_proj = nn.Linear(D, 2 * E).to(w_s)
            self.ent_proj.weight.copy_(torch.cat([w_s[:, :D], w_o[:, :D]]))
            self.ent_proj.bias.copy_(torch.cat([base.head_extractor.bias, base.tail_extractor.bias]))
            self.ctx_proj = nn.Linear(D, 2 * E, bias=False).to(w_s)
            self.ctx_proj.weight.copy_(torch.cat([w_s[:, D:], w_o[:, D:]]))
        # a submodule (not base.pair_features) so that int8 quantization of the plan reaches it
        self.pair = base.pair_fnn if hasattr(base, "pair_fnn") else base.bilinear
        self.classifier = base.classifier

    def forward(self, ent: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ent [B, N, D], ctx [B, N, N, D] -> (F_0 [B, N, N, d], logits [B, N, N, R])."""
        E = self.E
        e = self.ent_proj(ent)  # [B, N, 2E]
        z = self.ctx_proj(ctx)  # [B, N, N, 2E]
        z[..., :E] += e[:, :, None, :E]  # head s = row
        z[..., E:] += e[:, None, :, E:]  # tail o = column
        features = self.pair(torch.tanh_(z))
        return features, linear_fp32(self.classifier, features)


class GroupBilinear(nn.Module):
    """ATLOP's grouped bilinear pair map (the authors' release), as an alternative to the paper's FNN:
    z_s and z_o are cut into blocks of `block`, the outer product is taken block by block, and a linear
    layer maps the E x block products to F_0 (eq. 4's classifier then reads F_0 as usual)."""

    def __init__(self, emb_dim: int, feature_dim: int, block: int = 64):
        super().__init__()
        if emb_dim % block:
            raise ValueError(f"bilinear base: emb_dim {emb_dim} is not a multiple of the block size {block}")
        self.E, self.block = emb_dim, block
        self.proj = nn.Linear(emb_dim * block, feature_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z = [z_s, z_o] [..., 2E] -> [..., feature_dim]."""
        E, k = self.E, self.block
        zs = z[..., :E].unflatten(-1, (E // k, k))
        zo = z[..., E:].unflatten(-1, (E // k, k))
        return self.proj((zs[..., :, None] * zo[..., None, :]).flatten(-3))


class BaseModule(nn.Module):
    def __init__(self, encoder: WindowedEncoder, num_relations: int, feature_dim: int = 256,
                 emb_dim: int | None = None, dropout: float = 0.1, head: str = "fnn", block: int = 64):
        super().__init__()
        self.encoder = encoder
        D = encoder.hidden_size
        emb_dim = emb_dim or D
        self.head_extractor = nn.Linear(2 * D, emb_dim)  # W_s (eq. 2)
        self.tail_extractor = nn.Linear(2 * D, emb_dim)  # W_o (eq. 3)
        if head == "fnn":
            self.pair_fnn = nn.Sequential(nn.Linear(2 * emb_dim, feature_dim), nn.GELU(), nn.Dropout(dropout),
                                          nn.Linear(feature_dim, feature_dim))  # FNN (eq. 2-3)
        elif head == "bilinear":
            self.bilinear = GroupBilinear(emb_dim, feature_dim, block)
        else:
            raise ValueError(f"base head must be 'fnn' or 'bilinear', got {head!r}")
        self.classifier = nn.Linear(feature_dim, num_relations)  # W_r, b_r (eq. 4)

    def pair_features(self, z: torch.Tensor) -> torch.Tensor:
        """F_0 from z = [tanh(W_s[h_s, c]), tanh(W_o[h_o, c])] (eq. 2-3): the paper's FNN or the group bilinear."""
        return self.pair_fnn(z) if hasattr(self, "pair_fnn") else self.bilinear(z)

    def pair_head(self, ent: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2-4 for every ordered pair, differentiable: ent [B, N, D], ctx [B, N, N, D] ->
        (F_0 [B, N, N, d], logits [B, N, N, R]).

        ``W_s [h_s, c_so] + b_s = (W_s^e h_s + b_s) + W_s^c c_so`` (likewise W_o): the entity halves
        are computed per entity (N rows, not N^2) and broadcast over the grid, the context halves of
        W_s and W_o run as one matmul, and nothing of size [B, N, N, 2D] is concatenated. The same
        split `BaseHeadPlan` makes at prediction time, here on the live weights."""
        D = ent.shape[-1]
        E = self.head_extractor.out_features
        w_s, w_o = self.head_extractor.weight, self.tail_extractor.weight
        e_s = nn.functional.linear(ent, w_s[:, :D], self.head_extractor.bias)  # [B, N, E]: W_s^e h_s + b_s
        e_o = nn.functional.linear(ent, w_o[:, :D], self.tail_extractor.bias)  # [B, N, E]: W_o^e h_o + b_o
        z = nn.functional.linear(ctx, torch.cat([w_s[:, D:], w_o[:, D:]]))  # [B, N, N, 2E]: W^c c_so
        z_s = torch.tanh(z[..., :E] + e_s[:, :, None])  # eq. 2: head s = row
        z_o = torch.tanh(z[..., E:] + e_o[:, None, :])  # eq. 3: tail o = column
        features = self.pair_features(torch.cat([z_s, z_o], -1))  # FNN of eq. 2-3 -> F_0
        return features, linear_fp32(self.classifier, features)  # eq. 4, float32 under any autocast

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mention_tokens: torch.Tensor,
                mention_entity: torch.Tensor, mention_slot: torch.Tensor, mention_valid: torch.Tensor,
                entity_mask: torch.Tensor) -> BaseOutput:
        """Eq. 1-4 for a batch (training and the reference `iteration_logits`), one batched path with
        no per-document, per-entity or per-window autograd work: last-layer attention only at the
        mention start markers ([B, M, H, T], not [B, H, T, T]), entity pooling and localized context
        by gather / index_add over the whole batch, the pair head split by linearity (`pair_head`).
        Mentions come as `collate`'s padded [B, M] tensors; entity_mask [B, N]."""
        n_max = entity_mask.shape[1]
        hidden, rows_att = self.encoder.encode_rows(input_ids, attention_mask, mention_tokens)
        ent, ent_att = batched_entity_embeddings(hidden, rows_att, mention_tokens, mention_entity, mention_slot,
                                                 mention_valid, n_max)
        ctx = batched_localized_context(hidden, ent_att)  # eq. 1
        features, logits = self.pair_head(ent, ctx)
        return BaseOutput(features, logits, entity_mask)

    def predict_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mention_tokens: torch.Tensor,
                        mention_entity: torch.Tensor, mention_slot: torch.Tensor, mention_valid: torch.Tensor,
                        entity_mask: torch.Tensor, head: BaseHeadPlan | None = None, lap=None) -> BaseOutput:
        """`forward` for prediction, batched over documents: attention rows at mention markers only,
        batched entity pooling and localized context, and the head through a `BaseHeadPlan`.
        `lap(name)`, when given, is called after the encoder, the attention rows and the head."""
        n_max = entity_mask.shape[1]
        hidden, rows_att = self.encoder.encode_rows(input_ids, attention_mask, mention_tokens, lap=lap)
        ent, ent_att = batched_entity_embeddings(hidden, rows_att, mention_tokens, mention_entity, mention_slot,
                                                 mention_valid, n_max)
        ctx = batched_localized_context(hidden, ent_att)
        features, logits = (head or BaseHeadPlan(self))(ent, ctx)
        if lap:
            lap("base_head")
        return BaseOutput(features, logits, entity_mask)
