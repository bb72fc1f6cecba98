"""A pretrained Transformer that returns hidden states and last-layer attention for any length.

Documents longer than the encoder's position limit are cut into overlapping
windows, each encoded as ``[CLS] window [SEP]``; hidden states are averaged
where windows overlap and attention rows are summed and renormalised, so every
mention keeps a representation and a context distribution however long the
document is.

Only the last layer's attention is needed (localized context pooling, eq. 1).
Asking Hugging Face for ``output_attentions`` switches every layer to the slow
eager path, so for BERT/RoBERTa-style encoders we instead take the last layer's
input hidden state and recompute that one layer's softmax(QK^T/sqrt(d)) from
its own query/key projections; other architectures fall back to
``output_attentions=True``.

Training and prediction (`encode_rows`) need attention rows only at the mention
start markers: forward hooks capture the last layer's own query/key projections
while the encoder runs (nothing is projected twice), and softmax(q K^T) is
computed for those rows only, as `[B, M, H, T]` instead of `[B, H, T, T]`.
Windows are cut by one gather and stitched back by `index_add` / `scatter_add`
with index maps built once per batch (`window_plan`), so the backward pass does
not allocate a full-size gradient per window slice (issue 27). `forward`, the
full `[B, H, T, T]` map stitched slice by slice, is the reference the tests
compare against.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.pretrained import resolve_encoder


def load_encoder(name: str | None, config_only: bool = False, config_overrides: dict | None = None) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    path = resolve_encoder(name)
    if config_only:
        cfg = AutoConfig.from_pretrained(path, **(config_overrides or {}))
        return AutoModel.from_config(cfg)
    # weights may be stored in half precision (e.g. a carried fp16 copy); training wants fp32 masters
    try:
        return AutoModel.from_pretrained(path, dtype=torch.float32, **(config_overrides or {}))
    except TypeError:  # transformers < 4.56 names it torch_dtype
        return AutoModel.from_pretrained(path, torch_dtype=torch.float32, **(config_overrides or {}))


class WindowedEncoder(nn.Module):
    def __init__(self, model: nn.Module, cls_id: int, sep_id: int, pad_id: int = 0,
                 max_length: int | None = None, overlap: int = 128):
        super().__init__()
        self.model = model
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        limit = getattr(model.config, "max_position_embeddings", 512)
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa reserves two positions for the padding offset
        self.max_length = min(max_length or limit, limit)
        self.overlap = overlap
        self._manual = self._last_attention is not None
        # prediction only: a callable (ids, mask) -> (last hidden, last layer's input, its key projection
        # or None) that replaces the torch forward pass in `encode_rows`, e.g. an ONNX Runtime session
        # (`onnx_encoder.OnnxEncoder`)
        self.runtime = None

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def _last_attention(self):
        """The last layer's self-attention (query/key projections), or None if the layout is unknown."""
        try:
            attn = self.model.encoder.layer[-1].attention.self
            attn.query, attn.key  # noqa: B018 - checks the structure
            return attn
        except AttributeError:
            return None

    def windows(self, length: int) -> list[tuple[int, int]]:
        """Content windows [a, b) over positions 1..length-2 (the ids between [CLS] and [SEP])."""
        if length <= self.max_length:
            return [(0, length)]
        width = self.max_length - 2
        stride = max(1, width - self.overlap)
        starts = list(range(1, length - 1 - width, stride)) + [length - 1 - width]
        return [(a, a + width) for a in starts]

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over <= max_length tokens: (hidden [B,T,D], last-layer attention [B,H,T,T])."""
        if not self._manual:
            out = self.model(input_ids=ids, attention_mask=mask, output_attentions=True)
            return out.last_hidden_state, out.attentions[-1]
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        x = out.hidden_states[-2]
        attn = self._last_attention
        heads = self.model.config.num_attention_heads
        b, t, d = x.shape
        q = attn.query(x).view(b, t, heads, d // heads).transpose(1, 2)
        k = attn.key(x).view(b, t, heads, d // heads).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        return out.last_hidden_state, scores.softmax(-1)

    def _encode_rows(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                     lap=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over <= max_length tokens: (hidden [B,T,D], attention rows [B,M,H,T]).

        rows [B, M]: the token positions whose last-layer attention distribution is wanted."""
        b, t = ids.shape
        d = self.hidden_size
        index = rows[..., None].expand(-1, -1, d)
        if self._manual and self.runtime is not None:
            hidden, x, k_all = self.runtime(ids, mask)
            if lap:
                lap("encoder")
            attn = self._last_attention
            # q at the requested rows only, K over all tokens, both from the last layer's input
            q_rows = attn.query(x.gather(1, index))
            if k_all is None:
                k_all = attn.key(x)
            return hidden, self._rows_softmax(q_rows, k_all, mask)
        if self._manual:
            attn = self._last_attention
            captured: dict[str, torch.Tensor] = {}
            handles = [attn.query.register_forward_hook(lambda mod, i, o: captured.__setitem__("q", o)),
                       attn.key.register_forward_hook(lambda mod, i, o: captured.__setitem__("k", o))]
            try:
                out = self.model(input_ids=ids, attention_mask=mask)
            finally:
                for h in handles:
                    h.remove()
            if lap:
                lap("encoder")
            if "q" in captured and "k" in captured and captured["k"].shape == (b, t, d):
                q_all, k_all = captured["q"], captured["k"]
            else:  # the layer did not call its projections as expected: project its input again
                out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                x = out.hidden_states[-2]
                q_all, k_all = attn.query(x), attn.key(x)
            return out.last_hidden_state, self._rows_softmax(q_all.gather(1, index), k_all, mask)
        out = self.model(input_ids=ids, attention_mask=mask, output_attentions=True)
        if lap:
            lap("encoder")
        att = out.attentions[-1]  # [B, H, T, T]
        rows_att = att.gather(2, rows[:, None, :, None].expand(-1, att.shape[1], -1, t))
        return out.last_hidden_state, rows_att.transpose(1, 2)

    def _rows_softmax(self, q_rows: torch.Tensor, k_all: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax(q K^T / sqrt(d_h)) over unmasked keys: q_rows [B, M, D], k_all [B, T, D] -> [B, M, H, T]."""
        b, t, d = k_all.shape
        heads = self.model.config.num_attention_heads
        q = q_rows.reshape(b, -1, heads, d // heads).transpose(1, 2)  # [B, H, M, dh]
        k = k_all.view(b, t, heads, d // heads).transpose(1, 2)  # [B, H, T, dh]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)  # [B, H, M, T]
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        return scores.softmax(-1).transpose(1, 2)

    def window_plan(self, lengths: list[int], rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Index maps (plain integers, built once per batch, no autograd) that cut documents into windows
        and stitch the windows' outputs back, for `encode_rows`.

        lengths: each document's length; rows: each document's requested row positions (padding
        included). Returns, for P windows of at most `width` tokens and at most `m_w` rows each:
        `doc` [P] and `start` [P] (the document and its first content position, 0 for a whole
        document), `ids_pos` [P, width] (the document position each window token reads, -1 for
        [CLS]/[SEP]/padding), `pos` [P, width] (the document cell (b * T + t) each window position
        adds to, or a dump cell), `local_rows` [P, m_w] (window positions of the rows), `row_dst`
        [P, m_w] (the document row (b * M + r) each window row adds to, or a dump row)."""
        T, M = max(lengths), len(rows[0]) if rows else 0
        B = len(lengths)
        owners = []
        for i, n in enumerate(lengths):
            for a, b in self.windows(n):
                whole = (a, b) == (0, n)
                mine = [(r, p if whole else p - a + 1) for r, p in enumerate(rows[i]) if a <= p < b]
                owners.append((i, a, b, n, whole, mine))
        width = max((n if whole else b - a + 2) for i, a, b, n, whole, _ in owners)
        m_w = max(1, max(len(o[5]) for o in owners))
        P = len(owners)
        ids_pos = torch.full((P, width), -1, dtype=torch.long)
        pos = torch.full((P, width), B * T, dtype=torch.long)  # B * T: the dump cell
        local_rows = torch.zeros((P, m_w), dtype=torch.long)
        row_dst = torch.full((P, m_w), B * M, dtype=torch.long)  # B * M: the dump row
        special = torch.zeros((P, width), dtype=torch.long)  # 1: [CLS], 2: [SEP] of a cut window
        for j, (i, a, b, n, whole, mine) in enumerate(owners):
            if whole:
                ids_pos[j, :n] = torch.arange(n)
                pos[j, :n] = i * T + torch.arange(n)
            else:
                w = b - a
                ids_pos[j, 1:w + 1] = torch.arange(a, b)
                pos[j, 1:w + 1] = i * T + torch.arange(a, b)
                special[j, 0], special[j, w + 1] = 1, 2
                # a window's [CLS]/[SEP] states count for the document's own [CLS]/[SEP] only where the
                # window touches that end, so every row stays a distribution and content keeps its [CLS] mass
                if a == 1:
                    pos[j, 0] = i * T
                if b == n - 1:
                    pos[j, w + 1] = i * T + n - 1
            if mine:
                local_rows[j, :len(mine)] = torch.as_tensor([lp for _, lp in mine])
                row_dst[j, :len(mine)] = torch.as_tensor([i * M + r for r, _ in mine])
        return {"ids_pos": ids_pos, "pos": pos, "local_rows": local_rows, "row_dst": row_dst,
                "special": special, "doc": torch.as_tensor([o[0] for o in owners], dtype=torch.long)}

    def encode_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                    lap=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `forward`, but the attention only at `rows` [B, M] (token positions, e.g. mention markers).

        Returns hidden [B, T, D] and attention rows [B, M, H, T]; for a windowed document a row is
        the sum of its windows' rows, renormalised, exactly as `forward` builds the full map.
        Differentiable, and the training path too: windows are cut by one gather and stitched back
        by one `index_add` (hidden states) and one `scatter_add` + `index_add` (attention rows), so
        the backward pass allocates each full-size gradient once, not once per window slice."""
        lengths = attention_mask.sum(1).tolist()
        if max(lengths) <= self.max_length:
            hidden, att = self._encode_rows(input_ids, attention_mask, rows, lap)
            if lap:
                lap("attention")
            return hidden, att
        device = input_ids.device
        B, T = input_ids.shape
        M = rows.shape[1]
        plan = {k: v.to(device) for k, v in self.window_plan(lengths, rows.tolist()).items()}
        P, width = plan["pos"].shape
        # the windows' token ids: one gather from the documents, then [CLS]/[SEP]/padding ids
        src = input_ids[plan["doc"][:, None], plan["ids_pos"].clamp(min=0)]
        special = plan["special"]
        ids = torch.where(plan["ids_pos"] >= 0, src, torch.full_like(src, self.pad_id))
        ids = torch.where(special == 1, torch.full_like(ids, self.cls_id), ids)
        ids = torch.where(special == 2, torch.full_like(ids, self.sep_id), ids)
        mask = ((plan["ids_pos"] >= 0) | (special > 0)).to(attention_mask.dtype)
        hidden_w, att_w = self._encode_rows(ids, mask, plan["local_rows"], lap)  # [P, width, D], [P, m_w, H, width]
        D, H, m_w = hidden_w.shape[-1], att_w.shape[2], att_w.shape[1]
        # hidden: every window position adds to its document cell; overlaps are averaged
        flat_pos = plan["pos"].view(-1)
        hidden = hidden_w.new_zeros(B * T + 1, D).index_add(0, flat_pos, hidden_w.reshape(P * width, D))
        count = torch.bincount(flat_pos, minlength=B * T + 1).to(hidden_w.dtype)
        hidden = (hidden[:B * T] / count[:B * T].clamp(min=1)[:, None]).view(B, T, D)
        # attention rows: columns to document positions (per window), then rows to document rows
        col = (plan["pos"] - plan["doc"][:, None] * T).clamp(max=T)  # T: the dump column
        cols = att_w.new_zeros(P, m_w, H, T + 1).scatter_add(
            3, col[:, None, None, :].expand(P, m_w, H, width), att_w)
        att = att_w.new_zeros(B * M + 1, H, T + 1).index_add(0, plan["row_dst"].view(-1),
                                                              cols.view(P * m_w, H, T + 1))
        att = att[:B * M, :, :T].view(B, M, H, T)
        att = att / (att.sum(-1, keepdim=True) + 1e-10)
        if lap:
            lap("attention")
        return hidden, att

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, T] with [CLS] ... [SEP] and right padding -> hidden [B,T,D], attention [B,H,T,T]."""
        lengths = attention_mask.sum(1).tolist()
        if max(lengths) <= self.max_length:
            return self._encode(input_ids, attention_mask)
        # gather every window of every document into one batch
        pieces, owners = [], []
        for i, n in enumerate(lengths):
            for a, b in self.windows(n):
                if (a, b) == (0, n):
                    piece = input_ids[i, :n]
                else:
                    piece = torch.cat([input_ids.new_tensor([self.cls_id]), input_ids[i, a:b],
                                       input_ids.new_tensor([self.sep_id])])
                pieces.append(piece)
                owners.append((i, a, b, n))
        width = max(len(p) for p in pieces)
        ids = input_ids.new_full((len(pieces), width), self.pad_id)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(pieces):
            ids[j, :len(p)] = p
            mask[j, :len(p)] = 1
        hidden_w, att_w = self._encode(ids, mask)
        B, T = input_ids.shape
        H = att_w.shape[1]
        hidden = hidden_w.new_zeros(B, T, hidden_w.shape[-1])
        count = hidden_w.new_zeros(B, T, 1)
        att = att_w.new_zeros(B, H, T, T)
        for j, (i, a, b, n) in enumerate(owners):
            if (a, b) == (0, n):
                hidden[i, :n] += hidden_w[j, :n]
                count[i, :n] += 1
                att[i, :, :n, :n] += att_w[j, :, :n, :n]
                continue
            w = b - a
            # content positions map 1:1; [CLS]/[SEP] states go to the document's own [CLS]/[SEP]
            hidden[i, a:b] += hidden_w[j, 1:w + 1]
            count[i, a:b] += 1
            att[i, :, a:b, a:b] += att_w[j, :, 1:w + 1, 1:w + 1]
            if a == 1:
                hidden[i, 0] += hidden_w[j, 0]
                count[i, 0] += 1
                # the [CLS] row/column too, so its row is a distribution and content keeps its [CLS] mass
                att[i, :, 0, 0] += att_w[j, :, 0, 0]
                att[i, :, 0, a:b] += att_w[j, :, 0, 1:w + 1]
                att[i, :, a:b, 0] += att_w[j, :, 1:w + 1, 0]
            if b == n - 1:
                hidden[i, n - 1] += hidden_w[j, w + 1]
                count[i, n - 1] += 1
                att[i, :, n - 1, n - 1] += att_w[j, :, w + 1, w + 1]
                att[i, :, n - 1, a:b] += att_w[j, :, w + 1, 1:w + 1]
                att[i, :, a:b, n - 1] += att_w[j, :, 1:w + 1, w + 1]
        hidden = hidden / count.clamp(min=1)
        att = att / (att.sum(-1, keepdim=True) + 1e-10)
        return hidden, att
