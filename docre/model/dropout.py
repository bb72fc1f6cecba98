"""Fast dropout masks: training dropout at a fraction of its CPU cost.

On a CPU, torch draws a dropout mask element by element from a Mersenne Twister stream: for
MiniLM's attention probabilities ([B, H, T, T], about 6M values per batch of 4 CDR abstracts,
six layers) the masks took 29% of a bf16 training step. Here every element's 16 random bits
come straight from the raw output of numpy's SFC64 generator (64 bits per draw, four elements
each, generated outside the GIL), seeded per mask; the element is dropped when its bits fall
below the rate's threshold. That gives the same Bernoulli(1 - p) masks in distribution at a few
bytes' memory traffic per element: 2-4x cheaper than torch's masks on the CPUs of
BENCHMARKS.md, and about 2x cheaper than the counter hash (nine integer passes over the map)
this module used before. Seeds are drawn from torch's default generator, so `torch.manual_seed`
still fixes every mask. The model, the rates and where dropout applies are unchanged; only the
random stream differs from torch's.

`fast_dropout_in` swaps every dropout layer of the model for `FastDropout` while it trains.
The attention-probability dropout sits inside Hugging Face's attention function, so it also
registers `fast_attention` as the encoder's attention for the duration: with dropout on it
computes softmax(QK^T / sqrt(d) + mask) with a fast mask and multiplies by V (the mathematics
of the eager path); in evaluation, or at rate 0, it is the library's fused scaled-dot-product
attention. On CUDA torch's own dropout is cheap (Philox in the fused kernels) and this module
is not used (`TrainConfig.dropout_masks`).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

ATTENTION_IMPLEMENTATION = "docre_fast_dropout"  # the name fast_attention is registered under
_SEED_RANGE = 1 << 30


def random_bits(n: int, seed: int) -> torch.Tensor:
    """n signed 16-bit draws (int16, uniform over [-32768, 32767]): SFC64's raw 64-bit output for
    `seed`, read as four 16-bit halves each (little-endian order on the usual CPUs)."""
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)
    return torch.from_numpy(raw.view(np.int16)[:n])


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of `shape`, True where an element is dropped, each independently with the
    probability `effective_rate(p)` (p rounded to a multiple of 2^-16, below 1)."""
    n = 1
    for s in shape:
        n *= int(s)
    if not 0 <= seed < _SEED_RANGE:
        raise ValueError(f"drop_mask: seed must be in [0, 2^30), got {seed}")
    if not 0 <= p < 1:
        raise ValueError(f"drop_mask: the rate must be in [0, 1), got {p}")
    return (random_bits(n, seed) < (-32768 + _threshold(p))).view(shape).to(device)


def _threshold(p: float) -> int:
    return min(round(p * 65536), 65535)


def effective_rate(p: float) -> float:
    """The drop probability a fast mask realises for rate `p` (a multiple of 2^-16, at most 1 - 2^-16)."""
    return _threshold(p) / 65536


def next_seed() -> int:
    """A mask seed from torch's default generator, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(0, _SEED_RANGE, (1,)))


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout` with a fast mask: zeros where dropped, the rest scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return x
    if p >= 1:
        return x * 0
    q = effective_rate(p)
    return torch.where(drop_mask(x.shape, p, next_seed(), x.device), 0, x).mul_(1 / (1 - q))


class FastDropout(nn.Dropout):
    """An `nn.Dropout` (same rate, same place; `dropout_rate` still finds it) drawing fast masks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def fast_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                   **kwargs) -> tuple[torch.Tensor, None]:
    """A Hugging Face attention function: q, k, v [B, H, T, d_h] -> ([B, T, H, d_h], None).

    With dropout: softmax(q k^T * scaling + mask), a fast mask on the probabilities, times v,
    with 1 / (1 - p) applied to the [B, H, T, d_h] output rather than the [B, H, T, T] map. Without
    dropout (evaluation), and for what this path does not cover (causal or sliding-window
    attention, soft-capping, grouped key/value heads, rate 1), the library's scaled-dot-product
    attention with torch's own dropout."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    special = (getattr(module, "is_causal", False) or kwargs.get("is_causal") or kwargs.get("sliding_window")
               or kwargs.get("softcap") or key.shape[1] != query.shape[1] or dropout >= 1)
    if dropout == 0 or not module.training or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout if module.training else 0.0, scaling=scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # scaled on [B, H, T, d], not [B, H, T, T]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend (the sdpa mask convention)
            # an additive bias is ~4x cheaper than masked_fill on the [B, H, T, T] scores
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device
                                         ).masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask
    probs = scores.softmax(-1)
    probs = torch.where(drop_mask(probs.shape, dropout, next_seed(), probs.device), 0, probs)
    out = torch.matmul(probs.to(value.dtype), value).mul_(1 / (1 - effective_rate(dropout)))
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, fast_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)  # the masks sdpa gets


@contextmanager
def fast_dropout_in(model: nn.Module, encoder: nn.Module | None = None) -> Iterator[bool]:
    """For the duration: every `nn.Dropout` in `model` draws fast masks, and the attention of
    `encoder` (a Hugging Face model inside it, or `model` itself) runs through `fast_attention`.
    Yields whether the attention could be switched (a model not on sdpa, or a transformers version
    without registered attention functions, keeps its own attention and still gets fast dropout
    elsewhere). Everything is restored on exit, also when the body raises."""
    encoder = model if encoder is None else encoder
    with ExitStack() as undo:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
                    undo.callback(_put_back, parent, name, child)
        before = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
        attention = False
        if before == "sdpa" and hasattr(encoder, "set_attn_implementation"):
            try:
                _register()
                encoder.set_attn_implementation(ATTENTION_IMPLEMENTATION)
                attention = True
                undo.callback(encoder.set_attn_implementation, before)
            except (ImportError, ValueError, NotImplementedError):  # no registered attention here
                pass
        yield attention


def _put_back(parent: nn.Module, name: str, original: nn.Dropout) -> None:
    current = getattr(parent, name)
    original.p = current.p  # a rate or mode changed meanwhile stays changed
    original.train(current.training)
    setattr(parent, name, original)
