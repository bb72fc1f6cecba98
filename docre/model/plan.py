"""Prediction-time form of the inference module: the same equations (5-12) with less work per iteration.

Training and the reference path use :class:`~docre.model.inference.InferenceModule`; prediction
(``DocREModel.predict``) builds an :class:`InferencePlan` from its weights once and runs the K test-time
iterations through it. Tests hold the two to the same logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from .inference import InferenceLayer, InferenceModule, linear_fp32


def _fused_qkv(layer: InferenceLayer, d: int) -> tuple[Tensor, Tensor]:
    """Q, K, V of both attention units of a layer as one ``[6d, 2d]`` map of ``M = [F, R]`` (and its bias).
    Queries from the unit's own matrix become maps of M that are zero on the other half."""
    weights, biases = [], []
    for unit, half in ((layer.feature_attn, 0), (layer.relation_attn, 1)):
        q = unit.q_proj.weight
        if q.shape[1] == d:  # own queries: F (half 0) or R (half 1)
            z = torch.zeros_like(q)
            q = torch.cat([q, z] if half == 0 else [z, q], dim=1)
        weights += [q, unit.k_proj.weight, unit.v_proj.weight]
        biases += [unit.q_proj.bias, unit.k_proj.bias, unit.v_proj.bias]
    return torch.cat(weights), torch.cat(biases)


class InferencePlan(nn.Module):
    """Prediction-time form of an :class:`InferenceModule` (eval only; same math, less work).

    Across the K test-time iterations F_0 never changes, so the first layer's projections of M_0 =
    [F_0, R_0] are split by linearity, ``W [F_0, R_0] + b = (W_F F_0 + b) + W_R R_0``: the feature
    half is computed once per batch (:meth:`first_features`), and with the paper's argmax relation
    matrix ``W_R R_0 = (W_R emb)[argmax]`` is a row lookup in a precomputed ``[C, 6d]`` table. The
    Q, K and V maps of both attention units of a layer run as one fused matmul. The layers' own
    ``attend`` (eq. 6-7), ``update`` (eq. 8-11) and the module's ``classify`` (eq. 12) do the rest.
    Built from the module's current weights; build a new plan after the weights change."""

    def __init__(self, module: InferenceModule):
        super().__init__()
        d = module.cfg.hidden
        self.d = d
        self.argmax = module.cfg.relation_matrix == "argmax"
        self.layers = module.layers
        self.classifier = module.classifier
        self.emb = module.emb
        self.module_cfg = module.cfg
        with torch.no_grad():
            w, bias = _fused_qkv(module.layers[0], d)  # [6d, 2d], [6d]
            self.first_f = nn.Linear(d, 6 * d).to(w)
            self.first_f.weight.copy_(w[:, :d])
            self.first_f.bias.copy_(bias)
            self.first_r = nn.Linear(d, 6 * d, bias=False).to(w)
            self.first_r.weight.copy_(w[:, d:])
            self.register_buffer("table", module.emb.weight @ w[:, d:].t(), persistent=False)  # [C, 6d]
            self.qkv = nn.ModuleList()
            for layer in module.layers[1:]:
                lw, lb = _fused_qkv(layer, d)
                fused = nn.Linear(2 * d, 6 * d).to(w)
                fused.weight.copy_(lw)
                fused.bias.copy_(lb)
                self.qkv.append(fused)

    def first_features(self, f0: Tensor) -> Tensor:
        """``W_F F_0 + b`` for the Q, K, V of both attention units of layer 1: ``[B, N, N, 6d]``."""
        return self.first_f(f0)

    def relation_state(self, logits: Tensor) -> Tensor:
        """What R_0 is built from: the argmax ids ``[B, N, N]`` (or the multi-hot sets ``[B, N, N, C-1]``);
        equal states give equal relation matrices, hence equal next predictions."""
        if self.argmax:
            return logits.argmax(-1)
        return logits[..., 1:] > logits[..., :1]

    def relation_input(self, prev_logits: Tensor, pair_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(R_0 = emb(.) of the previous iteration's logits, masked; its projection ``W_R R_0``)."""
        pm = pair_mask[..., None].to(self.table.dtype)
        if self.argmax:
            ids = prev_logits.argmax(-1)
            return Fn.embedding(ids, self.emb.weight) * pm, Fn.embedding(ids, self.table) * pm
        pos = prev_logits[..., 1:] > prev_logits[..., :1]
        hot = torch.cat([~pos.any(-1, keepdim=True), pos], dim=-1)
        r0 = (hot.to(self.emb.weight.dtype) @ self.emb.weight) * pm
        return r0, self.first_r(r0)

    def forward(self, f0: Tensor, f0_proj: Tensor, prev_logits: Tensor, entity_mask: Tensor,
                masks: tuple[Tensor, Tensor]) -> Tensor:
        """One iteration: logits ``P^(k+1)`` from F_0 (and its cached projection) and ``P^(k)``."""
        d = self.d
        r, r_proj = self.relation_input(prev_logits, masks[1][..., 0])
        f = f0
        for i, layer in enumerate(self.layers):
            proj = f0_proj + r_proj if i == 0 else self.qkv[i - 1](torch.cat([f, r], dim=-1))
            qf, kf, vf, qr, kr, vr = proj.split(d, dim=-1)
            f_tilde = layer.feature_attn.attend(qf, kf, vf, entity_mask, masks)
            r_tilde = layer.relation_attn.attend(qr, kr, vr, entity_mask, masks)
            f, r = layer.update(f, r, f_tilde, r_tilde)
        return linear_fp32(self.classifier, torch.cat([f, r], dim=-1))
