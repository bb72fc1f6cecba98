"""Fast dropout masks (docre.model.dropout): the bit stream, the masks' statistics, the dropout and
attention functions against hand-computed forms, and the switch into and out of a Hugging Face encoder."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from docre.model import dropout as D


def test_the_mask_stream_is_sfc64s_raw_output_in_16_bit_quarters():
    """Element i of a mask is the 16-bit quarter (i mod 4) of SFC64(seed)'s draw i // 4, as a signed
    integer, dropped below the rate's threshold."""
    seed, n, p = 4242, 1001, 0.3
    mask = D.drop_mask((n,), p, seed).tolist()
    draws = [int(v) for v in np.random.SFC64(seed).random_raw((n + 3) // 4)]
    for i in (0, 1, 2, 3, 4, 500, 999, 1000):
        quarter = (draws[i // 4] >> 16 * (i % 4)) & 0xFFFF  # little-endian quarters
        signed = quarter - 65536 if quarter >= 32768 else quarter
        assert mask[i] == (signed < -32768 + round(p * 65536)), i


def test_masks_of_nearby_seeds_are_not_shifted_copies():
    """Nearby seeds give unrelated streams, not shifted copies of one stream."""
    n, q = 1 << 16, D.effective_rate(0.5)
    base = D.drop_mask((n,), 0.5, seed=1000)
    for d in (1, 2, 3, 17):
        other = D.drop_mask((n,), 0.5, seed=1000 + d)
        for shift in (0, 1, 4 * d):  # aligned, and shifted by whole draws
            agree = (base[shift:] == other[:n - shift]).double().mean().item()
            assert abs(agree - (q * q + (1 - q) * (1 - q))) < 0.02, (d, shift)  # as for independent masks


def test_rates_near_one_stay_below_one_and_one_is_refused():
    assert D.effective_rate(1 - 2**-17) == 65535 / 65536
    mask = D.drop_mask((1 << 16,), 1 - 2**-17, seed=1)
    assert mask.double().mean().item() > 0.99
    y = D.fast_dropout(torch.ones(1000), 1 - 2**-17)  # no division by zero
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="rate"):
        D.drop_mask((4,), 1.0, seed=1)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_masks_drop_at_the_rate_independently_of_neighbours(p):
    n = 1 << 21
    mask = D.drop_mask((n,), p, seed=12345).double()
    q = D.effective_rate(p)
    assert abs(q - p) <= 2**-17
    sigma = math.sqrt(q * (1 - q) / n)
    assert abs(mask.mean().item() - q) < 5 * sigma
    # quarters of one draw (4i, 4i+1), (4i+1, 4i+3) and neighbours across draws (4i+3, 4i+4): P(both) = q^2
    for a, b in [(mask[0::4], mask[1::4]), (mask[1::4], mask[3::4]), (mask[3:-1:4], mask[4::4])]:
        both = (a * b).mean().item()
        assert abs(both - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / len(a))
    # 2x2 blocks of a [T, T] attention map: the row below is as independent as the next element
    grid = D.drop_mask((1024, 1024), p, seed=7).double()
    both = (grid[:-1] * grid[1:]).mean().item()
    assert abs(both - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / grid[1:].numel())


def test_masks_are_fixed_by_the_seed_and_differ_between_seeds():
    a = D.drop_mask((64, 33), 0.1, seed=5)
    assert torch.equal(a, D.drop_mask((64, 33), 0.1, seed=5))
    assert not torch.equal(a, D.drop_mask((64, 33), 0.1, seed=6))
    assert a.shape == (64, 33) and a.dtype == torch.bool  # odd element count: the last draw is partly used
    with pytest.raises(ValueError, match="seed"):
        D.drop_mask((4,), 0.1, seed=-1)


def test_fast_dropout_zeroes_the_mask_scales_the_rest_and_follows_manual_seed():
    x = torch.randn(3, 50, 40, requires_grad=True)
    torch.manual_seed(11)
    seed = D.next_seed()
    torch.manual_seed(11)
    y = D.fast_dropout(x, 0.1)
    dropped = D.drop_mask(x.shape, 0.1, seed)
    scale = 1 / (1 - D.effective_rate(0.1))
    torch.testing.assert_close(y, torch.where(dropped, 0.0, x * scale))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, torch.full_like(x, scale)))
    torch.manual_seed(11)
    assert torch.equal(D.fast_dropout(x, 0.1), y)  # torch.manual_seed fixes the mask
    assert D.fast_dropout(x, 0.1, training=False) is x and D.fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(D.fast_dropout(x, 1.0)) == 0
    big = torch.ones(1 << 20)
    assert abs(D.fast_dropout(big, 0.3).mean().item() - 1.0) < 0.01  # unbiased: E[dropout(x)] = x


def eager_attention(q, k, v, keep_mask, bias, scale_p):
    """The eager attention of BERT with a given drop mask: softmax(qk^T/sqrt(d) + bias) masked, / (1 - p), @ v."""
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias).softmax(-1)
    return (torch.where(keep_mask, probs, 0.0) / (1 - scale_p) @ v).transpose(1, 2)


def test_fast_attention_is_the_eager_path_with_a_fast_mask(monkeypatch):
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 9, 4
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    attend = torch.ones(B, 1, T, T, dtype=torch.bool)
    attend[1, :, :, 6:] = False  # the second document is padded after 6 tokens
    module = nn.Module().train()
    monkeypatch.setattr(D, "next_seed", lambda: 99)
    out, weights = D.fast_attention(module, q, k, v, attend, scaling=d ** -0.5, dropout=0.25)
    assert weights is None and out.shape == (B, T, H, d)
    keep = ~D.drop_mask((B, H, T, T), 0.25, 99)
    bias = torch.zeros(B, 1, T, T).masked_fill(~attend, torch.finfo(torch.float32).min)
    expected = eager_attention(q, k, v, keep, bias, D.effective_rate(0.25))
    torch.testing.assert_close(out, expected)
    g_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g_out)
    want = torch.autograd.grad(expected, (q, k, v), g_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # evaluation (or rate 0) is the library's fused attention: no mask at all
    module.eval()
    out_eval, _ = D.fast_attention(module, q, k, v, attend, scaling=d ** -0.5, dropout=0.25)
    no_drop = eager_attention(q, k, v, torch.ones(B, H, T, T, dtype=torch.bool), bias, 0.0)
    torch.testing.assert_close(out_eval, no_drop, atol=1e-5, rtol=1e-5)


def tiny_bert(dropout: float) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, hidden_dropout_prob=dropout,
                                attention_probs_dropout_prob=dropout, attn_implementation="sdpa"))


def test_an_encoder_inside_fast_dropout_in_trains_with_fast_masks_and_is_restored():
    model = tiny_bert(0.1)
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    model.eval()
    reference = model(input_ids=ids, attention_mask=mask).last_hidden_state
    originals = [m for m in model.modules() if type(m) is nn.Dropout]
    with D.fast_dropout_in(model) as switched:
        assert switched and model.config._attn_implementation == D.ATTENTION_IMPLEMENTATION
        fast = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        assert len(fast) == len(originals) and all(isinstance(m, D.FastDropout) for m in fast)
        assert all(not m.training for m in fast)  # the model's mode carries over
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state, reference)
        model.train()
        calls = []
        original = D.drop_mask
        D.drop_mask = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
        try:
            torch.manual_seed(3)
            a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            D.drop_mask = original
        # per layer: the attention map [B, H, T, T], then two hidden-state masks; plus the embeddings'
        assert (2, 4, 12, 12) in calls and len(calls) == 1 + 2 * 3
        torch.manual_seed(3)
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.manual_seed(4)
        c = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(a, b) and not torch.allclose(a, c)
        a.sum().backward()
        assert model.encoder.layer[0].attention.self.query.weight.grad is not None
    assert model.config._attn_implementation == "sdpa"
    assert [m for m in model.modules() if isinstance(m, nn.Dropout)] == originals
    assert all(type(m) is nn.Dropout and m.training for m in originals)
    model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state, reference)


def test_with_dropout_off_the_fast_training_forward_is_the_plain_one():
    model = tiny_bert(0.0).train()
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 7:] = 0
    plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with D.fast_dropout_in(model):
        fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_the_encoder_is_restored_when_training_raises():
    model = tiny_bert(0.1)
    originals = [m for m in model.modules() if type(m) is nn.Dropout]
    with pytest.raises(RuntimeError, match="inside"):
        with D.fast_dropout_in(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    assert [m for m in model.modules() if isinstance(m, nn.Dropout)] == originals


@pytest.mark.parametrize("padded", [True, False])
def test_the_fast_training_attention_with_nothing_dropped_is_the_evaluation_forward(monkeypatch, padded):
    """Attention dropout on, but every mask keeps everything: the fast path (its own softmax over the
    library's mask, or no mask for an unpadded batch) must give what evaluation's sdpa gives."""
    model = tiny_bert(0.0)
    for layer in model.encoder.layer:
        layer.attention.self.dropout.p = 0.2  # attention dropout only
    ids = torch.randint(0, 50, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    if padded:
        mask[1, 6:] = 0
    model.eval()
    reference = model(input_ids=ids, attention_mask=mask).last_hidden_state
    calls = []
    monkeypatch.setattr(D, "drop_mask", lambda shape, p, seed, device="cpu": calls.append(p) or
                        torch.zeros(shape, dtype=torch.bool))
    monkeypatch.setattr(D, "effective_rate", lambda p: 0.0)
    with D.fast_dropout_in(model):
        model.train()
        fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert calls == [0.2, 0.2]  # the fast path ran, once per layer
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
