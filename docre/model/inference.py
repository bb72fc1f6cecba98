"""Inference module of DocRE-II (paper Sec. 2.2, eq. 5-12): Extended Cross Attention over the
pair grid, the fusion gate, the residual updates, the classifier, and the test-time iteration.

Shapes used throughout (B documents, N = max entities in the batch, d = hidden size):

* ``F``  feature matrix             ``[B, N, N, d]``  (pair features from the base module)
* ``R``  relation matrix            ``[B, N, N, d]``  (relation embeddings)
* ``M``  concatenation ``[F, R]``   ``[B, N, N, 2d]``
* ``entity_mask`` ``[B, N]`` bool, True for real (non-padded) entities.
* ``pair_mask``   ``[B, N, N]`` bool, True for an entity pair ``(s, o)`` with both entities real
  and ``s != o`` (the diagonal is not an entity pair); see :func:`pair_mask_from_entities`.

Logits are returned, never probabilities: the sigmoid of eq. 4/12 lives in the loss and decoder.
Class 0 is the threshold / no-relation class (adaptive-threshold loss, eq. 13).

Extended Cross Attention (eq. 5-7) is computed *axially*: every head is ordinary attention
over a line of length N (one row or one column of the pair grid), batched over ``B * N`` lines,
so memory grows as ``N^2 d`` for the activations plus ``4 B N^3`` scalar scores, and no per-pair
copy of a row or column is ever gathered.

Stage-2 training helpers live beside this file: the noise of Sec. 2.3 in ``noise.py``, the
contrastive losses (eq. 14) in ``losses.py``; the prediction-time form of this module in ``plan.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

__all__ = [
    "InferenceConfig",
    "pair_mask_from_entities",
    "entity_mask_from_counts",
    "linear_fp32",
    "ExtendedCrossAttention",
    "FullPairAttention",
    "FeedForward",
    "InferenceLayer",
    "InferenceModule",
    "SimSiamPredictor",
]

NUM_ECA_HEADS = 4


# ---------------------------------------------------------------------------------------------
# configuration and masks
# ---------------------------------------------------------------------------------------------
@dataclass
class InferenceConfig:
    """Hyper-parameters of the inference module.

    hidden:          d, the size of F0 (already projected by the base module) and of emb(.).
    num_layers:      N_I, the number of stacked inference layers (paper best: 2).
    ffn_dim:         inner size of FNN in eq. 10/11; ``None`` means ``2 * hidden``.
    dropout:         dropout on attention-unit outputs and inside the FNNs.
    num_relations:   number of classes including class 0 (threshold / no relation).
    attention:       ``"eca"`` (eq. 5-7) or ``"full"`` (ablation "w/o ECA": plain 4-head
                     self-attention of every valid pair over all valid pairs).
    fusion:          eq. 8-9 gate; ``False`` is the ablation "w/o fusion", where
                     F_{l+1} = LN(F + FNN_F(F~)) and R_{l+1} = LN(R + FNN_R(R~)).
    shared_ffn:      the paper writes the same FNN(M~) in eq. 10 and 11; default uses two
                     separate FNNs, ``True`` shares one.
    relation_matrix: ``"argmax"`` (paper: emb(argmax p)) or ``"multihot"`` (public release: sum of
                     the embeddings of every label whose logit beats class 0, emb(0) if none).
    predictor_dim:   bottleneck of the SimSiam predictor (2d -> predictor_dim -> 2d);
                     ``None`` means ``hidden``.
    predictor_norm:  normalisation inside the predictor: ``"layer"`` (default), ``"batch"`` (the
                     release's choice) or ``"none"``.
    queries:         where each attention unit takes its queries from: ``"own"`` (the unit's own
                     matrix: F for the feature-level unit, R for the relation-level unit; keys and
                     values from M = [F, R]; the paper's feature-level / "likewise" relation-level
                     inference and the release) or ``"joint"`` (queries from M as well, so both
                     units see identical inputs; checkpoints from before this option).
    self_key:        every head also attends to the pair's own cell as one extra key (the
                     release's gather of row/column + the pair itself); rows s and columns o
                     already hold (s, o), so this matters for heads 3 and 4.
    """

    hidden: int = 256
    num_layers: int = 2
    ffn_dim: Optional[int] = None
    dropout: float = 0.1
    num_relations: int = 97
    attention: Literal["eca", "full"] = "eca"
    fusion: bool = True
    shared_ffn: bool = False
    relation_matrix: Literal["argmax", "multihot"] = "argmax"
    predictor_dim: Optional[int] = None
    predictor_norm: Literal["layer", "batch", "none"] = "layer"
    queries: Literal["own", "joint"] = "own"
    self_key: bool = False

    def __post_init__(self) -> None:
        if self.hidden % NUM_ECA_HEADS != 0:
            raise ValueError(f"hidden={self.hidden} must be divisible by {NUM_ECA_HEADS} heads")
        if self.attention not in ("eca", "full"):
            raise ValueError(f"attention must be 'eca' or 'full', got {self.attention!r}")
        if self.relation_matrix not in ("argmax", "multihot"):
            raise ValueError(f"relation_matrix must be 'argmax' or 'multihot', got {self.relation_matrix!r}")
        if self.predictor_norm not in ("layer", "batch", "none"):
            raise ValueError(f"predictor_norm must be layer/batch/none, got {self.predictor_norm!r}")
        if self.queries not in ("own", "joint"):
            raise ValueError(f"queries must be 'own' or 'joint', got {self.queries!r}")
        if self.num_relations < 2:
            raise ValueError("num_relations counts class 0 and needs at least one real relation")
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")


def linear_fp32(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` computed in float32 even inside a bf16 autocast region (classifier heads)."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


def pair_mask_from_entities(entity_mask: Tensor) -> Tensor:
    """``[B, N]`` entity mask -> ``[B, N, N]`` pair mask (both entities real, ``s != o``)."""
    em = entity_mask.bool()
    n = em.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=em.device)
    return em[:, :, None] & em[:, None, :] & ~eye


def entity_mask_from_counts(counts: Tensor | list[int], n: Optional[int] = None) -> Tensor:
    """Entity counts per document -> ``[B, N]`` bool mask (N = max count unless given)."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    n = int(counts.max().item()) if n is None else n
    return torch.arange(n)[None, :] < counts[:, None]


def _additive_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool key-validity -> additive float mask (0 valid, a large negative number otherwise).

    A finite value (not -inf) keeps fully masked lines NaN-free (their softmax is uniform; their
    outputs belong to padded queries and are zeroed afterwards)."""
    neg = torch.finfo(dtype).min / 2
    out = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return out.masked_fill(~valid, neg)


# ---------------------------------------------------------------------------------------------
# attention units
# ---------------------------------------------------------------------------------------------
class _FourHeadProjections(nn.Module):
    """Q, K, V and W_O of a four-head attention unit over pair representations (shared by ECA and its ablation).

    ``query_dim`` is the size of the matrix queries come from: ``in_dim`` (M itself) or d (the unit's
    own F or R, see ``InferenceConfig.queries``); keys and values always come from M."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.0, query_dim: Optional[int] = None,
                 self_key: bool = False):
        super().__init__()
        if hidden % NUM_ECA_HEADS != 0:
            raise ValueError(f"hidden={hidden} must be divisible by {NUM_ECA_HEADS}")
        self.hidden = hidden
        self.head_dim = hidden // NUM_ECA_HEADS
        self.self_key = self_key
        self.q_proj = nn.Linear(query_dim or in_dim, hidden)
        self.k_proj = nn.Linear(in_dim, hidden)
        self.v_proj = nn.Linear(in_dim, hidden)
        self.o_proj = nn.Linear(hidden, hidden)  # W_O of eq. 7
        self.dropout = nn.Dropout(dropout)


class ExtendedCrossAttention(_FourHeadProjections):
    """Extended Cross Attention, eq. 5-7.

    Input ``M = [F, R]`` of shape ``[B, N, N, in_dim]`` (in_dim = 2d), output ``[B, N, N, d]``.
    Q, K, V are linear maps of M to d = 4 heads x d/4. For the pair ``(s, o)``:

    * head 1 attends over row s     (keys ``M[s, j]``)   -- eq. 5 as written in the paper,
    * head 2 attends over column o  (keys ``M[j, o]``),
    * head 3 attends over column s  (keys ``M[j, s]``),
    * head 4 attends over row o     (keys ``M[o, j]``),

    with scaled dot-product attention (eq. 6), then ``Concat(head_1..head_4) W_O`` (eq. 7).

    Axial implementation: each head is attention over ``B * N`` lines ("groups") of length N.
    With g the group index, i the query position and j the key position on the line:

    ======  ===========  ==========  ===================
    head    query cell   key cell    group = ...
    ======  ===========  ==========  ===================
    1       (g, i)       (g, j)      s (row-grouped)
    2       (i, g)       (j, g)      o (transposed grid)
    3       (g, i)       (j, g)      s, keys transposed
    4       (i, g)       (g, j)      o, queries transposed
    ======  ===========  ==========  ===================

    In every head key j is valid iff ``j < n_entities(b)`` and ``j != g`` (the diagonal cell
    (g, g) is not an entity pair), so a single ``[B*N, 1, 1, N]`` mask serves all four heads.
    Outputs of queries that are not valid pairs (padding and the diagonal) are set to zero.
    """

    @staticmethod
    def _arrange(x: Tensor, keys: bool) -> Tensor:
        """``[B, N, N, 4, dh]`` projection -> ``[B*N, 4, N, dh]`` line layout (see class table)."""
        b, n = x.shape[0], x.shape[1]
        t = x.transpose(1, 2)  # t[b, g, i] = x[b, i, g]
        if keys:  # heads 1..4 take keys from rows s / columns o / columns s / rows o
            parts = [x[..., 0, :], t[..., 1, :], t[..., 2, :], x[..., 3, :]]
        else:  # queries: heads 1,3 grouped by s (as is), heads 2,4 grouped by o (transposed)
            parts = [x[..., 0, :], t[..., 1, :], x[..., 2, :], t[..., 3, :]]
        out = torch.stack(parts, dim=2)  # [B, N(g), 4, N(pos), dh]
        return out.reshape(b * n, NUM_ECA_HEADS, n, x.shape[-1])

    def forward(self, m: Tensor, entity_mask: Tensor, return_weights: bool = False, query: Optional[Tensor] = None):
        """Eq. 5-7. ``query`` is the matrix queries come from (the unit's own F or R; ``None``: M).
        Returns ``[B, N, N, d]`` (and, when ``return_weights``, a dense
        ``[B, 4, N*N, N*N]`` map: weight of query cell ``s*N+o`` on key cell ``s'*N+o'`` per head;
        this path materialises the scores explicitly and is meant for small N only)."""
        qin = m if query is None else query
        if not return_weights:
            return self.attend(self.q_proj(qin), self.k_proj(m), self.v_proj(m), entity_mask)
        if self.self_key:
            raise NotImplementedError("return_weights is not available with self_key")
        b, n = m.shape[0], m.shape[1]
        dh = self.head_dim
        q = self._arrange(self.q_proj(qin).view(b, n, n, NUM_ECA_HEADS, dh), keys=False)
        k = self._arrange(self.k_proj(m).view(b, n, n, NUM_ECA_HEADS, dh), keys=True)
        v = self._arrange(self.v_proj(m).view(b, n, n, NUM_ECA_HEADS, dh), keys=True)

        em = entity_mask.bool()
        eye = torch.eye(n, dtype=torch.bool, device=m.device)
        key_valid = em[:, None, :] & ~eye[None]  # [B, N(g), N(j)]
        add_mask = _additive_mask(key_valid, q.dtype).reshape(b * n, 1, 1, n)

        weights = None
        if return_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + add_mask
            weights = scores.softmax(dim=-1)  # [B*N, 4, N(i), N(j)]
            out = weights @ v
        else:
            out = Fn.scaled_dot_product_attention(q, k, v, attn_mask=add_mask)

        out = out.view(b, n, NUM_ECA_HEADS, n, dh)  # [B, g, head, i, dh]
        heads = [
            out[:, :, 0],  # grouped by s, positions o
            out[:, :, 1].transpose(1, 2),  # grouped by o -> back to [s, o]
            out[:, :, 2],
            out[:, :, 3].transpose(1, 2),
        ]
        merged = torch.cat(heads, dim=-1)  # [B, N, N, d]  (Concat of eq. 7)
        pair_mask = pair_mask_from_entities(em)
        merged = merged * pair_mask[..., None].to(merged.dtype)
        y = self.dropout(self.o_proj(merged)) * pair_mask[..., None].to(merged.dtype)
        if not return_weights:
            return y
        return y, self._dense_weights(weights.view(b, n, NUM_ECA_HEADS, n, n), pair_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, entity_mask: Tensor,
               masks: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Eq. 6-7 from already projected ``Q, K, V`` (each ``[B, N, N, d]``): the four axial heads,
        their concatenation, W_O and the pair mask. ``masks`` optionally passes precomputed
        ``(additive key mask [B*N, 1, 1, N], pair mask [B, N, N, 1] as floats)`` (see :meth:`masks`)."""
        b, n = q.shape[0], q.shape[1]
        dh = self.head_dim
        k_cells, v_cells = k, v
        q = self._arrange(q.view(b, n, n, NUM_ECA_HEADS, dh), keys=False)
        k = self._arrange(k.view(b, n, n, NUM_ECA_HEADS, dh), keys=True)
        v = self._arrange(v.view(b, n, n, NUM_ECA_HEADS, dh), keys=True)
        add_mask, pm = masks if masks is not None else self.masks(entity_mask, q.dtype)
        if self.self_key:
            # the pair's own cell as one more key: it sits in the query layout, not on the line
            k_self = self._arrange(k_cells.view(b, n, n, NUM_ECA_HEADS, dh), keys=False)
            v_self = self._arrange(v_cells.view(b, n, n, NUM_ECA_HEADS, dh), keys=False)
            scores = torch.cat([q @ k.transpose(-1, -2) + add_mask, (q * k_self).sum(-1, keepdim=True)], -1)
            w = (scores / math.sqrt(dh)).softmax(-1)
            out = w[..., :n] @ v + w[..., n:] * v_self
        else:
            out = Fn.scaled_dot_product_attention(q, k, v, attn_mask=add_mask)
        out = out.view(b, n, NUM_ECA_HEADS, n, dh)  # [B, g, head, i, dh]
        merged = torch.cat([out[:, :, 0], out[:, :, 1].transpose(1, 2), out[:, :, 2],
                            out[:, :, 3].transpose(1, 2)], dim=-1)  # [B, N, N, d]  (Concat of eq. 7)
        merged = merged * pm
        return self.dropout(self.o_proj(merged)) * pm

    @staticmethod
    def masks(entity_mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(additive key mask ``[B*N, 1, 1, N]``, float pair mask ``[B, N, N, 1]``) for :meth:`attend`."""
        em = entity_mask.bool()
        b, n = em.shape
        eye = torch.eye(n, dtype=torch.bool, device=em.device)
        key_valid = em[:, None, :] & ~eye[None]  # [B, N(g), N(j)]
        return (_additive_mask(key_valid, dtype).reshape(b * n, 1, 1, n),
                pair_mask_from_entities(em)[..., None].to(dtype))

    @staticmethod
    def _dense_weights(w: Tensor, pair_mask: Tensor) -> Tensor:
        """Scatter per-line weights ``[B, g, 4, i, j]`` to a dense ``[B, 4, N*N, N*N]`` cell map."""
        b, n = w.shape[0], w.shape[1]
        g, i, j = torch.meshgrid(
            *(torch.arange(n, device=w.device) for _ in range(3)), indexing="ij"
        )
        cells = [
            (g * n + i, g * n + j),  # head 1: (g,i) -> (g,j)
            (i * n + g, j * n + g),  # head 2: (i,g) -> (j,g)
            (g * n + i, j * n + g),  # head 3: (g,i) -> (j,g)
            (i * n + g, g * n + j),  # head 4: (i,g) -> (g,j)
        ]
        dense = w.new_zeros(b, NUM_ECA_HEADS, n * n, n * n)
        for h, (qc, kc) in enumerate(cells):
            dense[:, h, qc.reshape(-1), kc.reshape(-1)] = w[:, :, h].reshape(b, -1)
        return dense * pair_mask.reshape(b, 1, n * n, 1).to(dense.dtype)


class FullPairAttention(_FourHeadProjections):
    """Ablation "w/o ECA": standard 4-head self-attention (eq. 6-7 without the row/column
    restriction) in which every valid pair attends to every valid pair of its document.

    Same interface as :class:`ExtendedCrossAttention`; scores are ``[B, 4, N^2, N^2]``, so this
    variant costs N^4 memory and is meant for the ablation only."""

    def forward(self, m: Tensor, entity_mask: Tensor, return_weights: bool = False, query: Optional[Tensor] = None):
        """Returns ``[B, N, N, d]`` (and dense ``[B, 4, N*N, N*N]`` weights when asked); ``query`` as in
        :meth:`ExtendedCrossAttention.forward`. Every pair already attends to itself here, so
        ``self_key`` changes nothing."""
        qin = m if query is None else query
        if not return_weights:
            return self.attend(self.q_proj(qin), self.k_proj(m), self.v_proj(m), entity_mask)
        b, n = m.shape[0], m.shape[1]
        dh = self.head_dim

        def heads(x: Tensor) -> Tensor:
            return x.view(b, n * n, NUM_ECA_HEADS, dh).transpose(1, 2)  # [B, 4, N^2, dh]

        q, k, v = heads(self.q_proj(qin)), heads(self.k_proj(m)), heads(self.v_proj(m))
        pair_mask = pair_mask_from_entities(entity_mask)
        add_mask = _additive_mask(pair_mask.reshape(b, 1, 1, n * n), q.dtype)
        weights = None
        if return_weights:
            weights = (q @ k.transpose(-1, -2) / math.sqrt(dh) + add_mask).softmax(-1)
            out = weights @ v
        else:
            out = Fn.scaled_dot_product_attention(q, k, v, attn_mask=add_mask)
        out = out.transpose(1, 2).reshape(b, n, n, self.hidden)
        pm = pair_mask[..., None].to(out.dtype)
        y = self.dropout(self.o_proj(out * pm)) * pm
        if not return_weights:
            return y
        return y, weights * pair_mask.reshape(b, 1, n * n, 1).to(weights.dtype)


    def attend(self, q: Tensor, k: Tensor, v: Tensor, entity_mask: Tensor,
               masks: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Attention from already projected ``Q, K, V`` (each ``[B, N, N, d]``); ``masks`` is unused
        (it is the ECA's precomputed mask pair; this ablation builds its own)."""
        b, n = q.shape[0], q.shape[1]
        dh = self.head_dim

        def heads(x: Tensor) -> Tensor:
            return x.reshape(b, n * n, NUM_ECA_HEADS, dh).transpose(1, 2)  # [B, 4, N^2, dh]

        pair_mask = pair_mask_from_entities(entity_mask)
        add_mask = _additive_mask(pair_mask.reshape(b, 1, 1, n * n), q.dtype)
        out = Fn.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=add_mask)
        out = out.transpose(1, 2).reshape(b, n, n, self.hidden)
        pm = pair_mask[..., None].to(out.dtype)
        return self.dropout(self.o_proj(out * pm)) * pm


# ---------------------------------------------------------------------------------------------
# inference layer
# ---------------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """FNN of eq. 10/11: Linear(d, ffn) -> ReLU -> Dropout -> Linear(ffn, d) -> Dropout."""

    def __init__(self, hidden: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class InferenceLayer(nn.Module):
    """One inference layer, eq. 5-11.

    Two attention units (feature-level and relation-level) give F~ and R~ (eq. 5-7): keys and values
    come from ``M_l = [F_l, R_l]``, queries from the unit's own F_l or R_l (``queries="own"``) or from
    ``M_l`` too (``"joint"``); the fusion sub-layer (eq. 8-9) gates them into M~; the residual
    updates of eq. 10-11 produce ``F_{l+1}`` and ``R_{l+1}``."""

    def __init__(self, cfg: InferenceConfig):
        super().__init__()
        d = cfg.hidden
        attn_cls = ExtendedCrossAttention if cfg.attention == "eca" else FullPairAttention
        self.own_queries = cfg.queries == "own"
        query_dim = d if self.own_queries else 2 * d
        self.feature_attn = attn_cls(2 * d, d, cfg.dropout, query_dim, cfg.self_key)
        self.relation_attn = attn_cls(2 * d, d, cfg.dropout, query_dim, cfg.self_key)
        self.use_fusion = cfg.fusion
        self.gate = nn.Linear(2 * d, d) if cfg.fusion else None  # W_g, b_g of eq. 8
        ffn_dim = cfg.ffn_dim or 2 * d
        self.ffn_f = FeedForward(d, ffn_dim, cfg.dropout)
        self.ffn_r = self.ffn_f if cfg.shared_ffn else FeedForward(d, ffn_dim, cfg.dropout)
        self.norm_f = nn.LayerNorm(d)
        self.norm_r = nn.LayerNorm(d)

    def fuse(self, f_tilde: Tensor, r_tilde: Tensor) -> Tensor:
        """Fusion sub-layer, eq. 8-9: ``s = sigmoid([F~, R~] W_g + b_g)``,
        ``M~ = s * F~ + (1 - s) * R~`` (element-wise gate of size d)."""
        s = torch.sigmoid(self.gate(torch.cat([f_tilde, r_tilde], dim=-1)))
        return s * f_tilde + (1.0 - s) * r_tilde

    def update(self, f: Tensor, r: Tensor, f_tilde: Tensor, r_tilde: Tensor) -> tuple[Tensor, Tensor]:
        """Residual + LayerNorm updates, eq. 10 ``F_{l+1} = LN(F_l + FNN(M~))`` and eq. 11
        ``R_{l+1} = LN(R_l + FNN(M~))``. Without fusion each stream uses its own F~ / R~."""
        if self.use_fusion:
            m_tilde = self.fuse(f_tilde, r_tilde)
            f_in, r_in = m_tilde, m_tilde
        else:
            f_in, r_in = f_tilde, r_tilde
        f_next = self.norm_f(f + self.ffn_f(f_in))
        r_next = self.norm_r(r + self.ffn_r(r_in))
        return f_next, r_next

    def forward(self, f: Tensor, r: Tensor, entity_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 5-11: ``(F_l, R_l) -> (F_{l+1}, R_{l+1})``."""
        m = torch.cat([f, r], dim=-1)  # M_l = [F_l, R_l]: keys and values of both units
        f_tilde = self.feature_attn(m, entity_mask, query=f if self.own_queries else None)  # feature-level ECA
        r_tilde = self.relation_attn(m, entity_mask, query=r if self.own_queries else None)  # relation-level ECA
        return self.update(f, r, f_tilde, r_tilde)


# ---------------------------------------------------------------------------------------------
# SimSiam predictor
# ---------------------------------------------------------------------------------------------
class SimSiamPredictor(nn.Module):
    """MLP predictor of eq. 14: Linear(2d, p) -> norm -> ReLU -> Linear(p, 2d).

    Works on any ``[..., 2d]`` input; with ``norm="batch"`` the input must be ``[P, 2d]``
    (which is what :func:`simsiam_loss` passes: the valid pairs only)."""

    def __init__(self, dim: int, bottleneck: int, norm: Literal["layer", "batch", "none"] = "layer"):
        super().__init__()
        if norm == "layer":
            norm_layer: nn.Module = nn.LayerNorm(bottleneck)
        elif norm == "batch":
            norm_layer = nn.BatchNorm1d(bottleneck)
        else:
            norm_layer = nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(dim, bottleneck), norm_layer, nn.ReLU(), nn.Linear(bottleneck, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# whole module
# ---------------------------------------------------------------------------------------------
class InferenceModule(nn.Module):
    """N_I inference layers + classifier (eq. 12), with the relation matrix construction and the
    test-time iteration of Sec. 2.2.

    Attributes: ``emb`` (num_relations x d relation embeddings), ``layers``, ``classifier``
    (W_c, b_c of eq. 12) and ``predictor`` (the SimSiam MLP of eq. 14, unused by ``forward``)."""

    def __init__(self, cfg: InferenceConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.emb = nn.Embedding(cfg.num_relations, d)
        self.layers = nn.ModuleList(InferenceLayer(cfg) for _ in range(cfg.num_layers))
        self.classifier = nn.Linear(2 * d, cfg.num_relations)
        self.predictor = SimSiamPredictor(2 * d, cfg.predictor_dim or d, cfg.predictor_norm)

    @staticmethod
    def _pair_mask(mask: Tensor) -> Tensor:
        return pair_mask_from_entities(mask) if mask.dim() == 2 else mask.bool()

    def relation_matrix(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Relation matrix ``R_0 = [emb(.)]_{N x N}`` (Sec. 2.2, before eq. 5 and after eq. 12).

        ``x`` may be
        * float logits ``[B, N, N, C]``: ``"argmax"`` -> ``emb(argmax_c logits)``;
          ``"multihot"`` -> sum of ``emb(c)`` over every ``c >= 1`` whose logit exceeds class 0's,
          or ``emb(0)`` when there is none;
        * long label ids ``[B, N, N]``: ``emb(id)`` (one label is its own multi-hot set);
        * bool multi-hot label sets ``[B, N, N, C]``: ``"multihot"`` -> sum of the embeddings of the
          set (``emb(0)`` if it has no label >= 1); ``"argmax"`` -> ``emb`` of the smallest
          label >= 1 in the set (``emb(0)`` if none).

        ``mask`` (entity ``[B, N]`` or pair ``[B, N, N]``) zeroes the entries of non-pairs.
        The result carries no gradient to the logits (argmax / thresholding are discrete)."""
        c = self.cfg.num_relations
        if x.dtype == torch.bool:
            if x.shape[-1] != c:
                raise ValueError(f"label sets have {x.shape[-1]} classes, config says {c}")
            pos = x[..., 1:]
            none = ~pos.any(-1)
            if self.cfg.relation_matrix == "argmax":
                first = pos.long().argmax(-1) + 1  # argmax returns the first maximal index
                r = self.emb(torch.where(none, torch.zeros_like(first), first))
            else:
                hot = torch.cat([none[..., None], pos], dim=-1)
                r = hot.to(self.emb.weight.dtype) @ self.emb.weight
        elif not torch.is_floating_point(x):
            r = self.emb(x.long())
        else:
            if x.shape[-1] != c:
                raise ValueError(f"logits have {x.shape[-1]} classes, config says {c}")
            logits = x.detach()
            if self.cfg.relation_matrix == "argmax":
                r = self.emb(logits.argmax(-1))
            else:
                pos = logits[..., 1:] > logits[..., :1]
                hot = torch.cat([~pos.any(-1, keepdim=True), pos], dim=-1)
                r = hot.to(self.emb.weight.dtype) @ self.emb.weight
        if mask is not None:
            r = r * self._pair_mask(mask)[..., None].to(r.dtype)
        return r

    def classify(self, f: Tensor, r: Tensor) -> Tensor:
        """Classifier, eq. 12: logits ``W_c [F_NI, R_NI] + b_c`` (sigmoid left to loss/decoder)."""
        return self.classifier_logits(torch.cat([f, r], dim=-1))

    def classifier_logits(self, m: Tensor) -> Tensor:
        """Eq. 12 on a concatenated ``[F, R]``, in float32 whatever the autocast dtype: the next
        iteration's argmax and the decoder's threshold comparison must not flip on bf16 near-ties."""
        return linear_fp32(self.classifier, m)

    def forward(self, f: Tensor, r: Tensor, entity_mask: Tensor) -> tuple[Tensor, Tensor]:
        """One pass (one iteration k): N_I layers (eq. 5-11) then eq. 12.

        Returns ``(logits [B, N, N, num_relations], M_top = [F_NI, R_NI] [B, N, N, 2d])``."""
        for layer in self.layers:
            f, r = layer(f, r, entity_mask)
        return self.classify(f, r), torch.cat([f, r], dim=-1)

    def iterate(self, f0: Tensor, base_logits: Tensor, entity_mask: Tensor, k: int) -> list[Tensor]:
        """Test-time iterative inference (Sec. 2.2): ``R_0^(0)`` from the base module's logits,
        then for k = 0..K-1: ``P^(k+1) = module(F_0, R_0^(k))`` and ``R_0^(k+1) = emb(P^(k+1))``.

        ``F_0`` is the same tensor at every iteration. Returns the logits of iterations 1..K
        (``[]`` for K = 0); the paper's output is the last one, the release sums base + all."""
        outputs: list[Tensor] = []
        prev = base_logits
        for _ in range(k):
            r0 = self.relation_matrix(prev, entity_mask)
            logits, _ = self(f0, r0, entity_mask)
            outputs.append(logits)
            prev = logits
        return outputs
