"""WindowedEncoder (docre.model.encoder): manual last-layer attention and windowing of long inputs.

Uses the tiny random BERT of conftest (hidden 32, 4 heads, 64 positions); never the real encoder.
"""
from __future__ import annotations

import pytest
import torch

from docre.model.encoder import WindowedEncoder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLS, SEP, PAD = 2, 3, 0


@pytest.fixture(scope="module")
def bert(tiny_encoder):
    """The tiny BERT as it is loaded for training (default attention implementation)."""
    from transformers import AutoModel
    return AutoModel.from_pretrained(tiny_encoder).eval()


@pytest.fixture(scope="module")
def bert_eager(tiny_encoder):
    """The same weights on the eager path, whose `output_attentions` is the reference."""
    from transformers import AutoModel
    return AutoModel.from_pretrained(tiny_encoder, attn_implementation="eager").eval()


def make_ids(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] random words [SEP] per document, right-padded: (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(6, 100, (n,), generator=g)
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        mask[b, :n] = 1
    return ids, mask


def windowed(model, **kw) -> WindowedEncoder:
    return WindowedEncoder(model, CLS, SEP, PAD, **kw)


@torch.no_grad()
def test_manual_last_layer_attention_equals_eager_attention(bert, bert_eager):
    enc = windowed(bert)
    assert enc._manual  # BERT layout: the last layer's attention is recomputed, not requested
    ids, mask = make_ids([20, 13, 7])
    hidden, att = enc(ids, mask)
    ref = bert_eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert att.shape == ref.attentions[-1].shape == (3, 4, 20, 20)
    torch.testing.assert_close(att, ref.attentions[-1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(hidden, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    # padded keys get exactly no attention
    assert att[1, :, :, 13:].abs().max() == 0 and att[2, :, :, 7:].abs().max() == 0


@torch.no_grad()
def test_document_that_fits_is_one_plain_pass(bert, bert_eager):
    enc = windowed(bert, max_length=16, overlap=4)
    assert enc.windows(16) == [(0, 16)] and enc.windows(9) == [(0, 9)]
    ids, mask = make_ids([16, 9], seed=1)
    hidden, att = enc(ids, mask)
    ref = bert_eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(hidden, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att, ref.attentions[-1], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_max_length_above_the_document_gives_the_plain_model_output(bert, bert_eager):
    enc = windowed(bert)  # limit = max_position_embeddings = 64 > 40
    assert enc.max_length == 64
    assert windowed(bert, max_length=1000).max_length == 64  # never above the position limit
    ids, mask = make_ids([40], seed=2)
    hidden, att = enc(ids, mask)
    ref = bert_eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(hidden, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att, ref.attentions[-1], atol=1e-6, rtol=1e-5)


def test_windows_cover_every_content_position(bert):
    enc = windowed(bert, max_length=16, overlap=4)
    assert enc.windows(40) == [(1, 15), (11, 25), (21, 35), (25, 39)]
    for length in range(17, 120):
        wins = enc.windows(length)
        covered = set()
        for a, b in wins:
            assert 1 <= a < b <= length - 1  # content only: never [CLS] (0) nor [SEP] (length-1)
            assert b - a == 14  # max_length minus [CLS] and [SEP]
            covered.update(range(a, b))
        assert covered == set(range(1, length - 1)), length
        assert wins[0][0] == 1 and wins[-1][1] == length - 1
        starts = [a for a, _ in wins]
        assert starts == sorted(set(starts))
        for (a1, b1), (a2, _) in zip(wins, wins[1:]):
            assert b1 - a2 >= 4  # consecutive windows overlap by at least `overlap`


@torch.no_grad()
def test_long_document_is_windowed(bert):
    enc = windowed(bert, max_length=16, overlap=4)
    ids, mask = make_ids([40, 30, 10], seed=3)
    hidden, att = enc(ids, mask)
    assert hidden.shape == (3, 40, 32) and att.shape == (3, 4, 40, 40)
    for b, n in enumerate([40, 30, 10]):
        # every real position has a hidden state, padding stays zero
        assert (hidden[b, :n].abs().sum(-1) > 0).all(), b
        assert hidden[b, n:].abs().sum() == 0
        # every real position's attention row is a distribution over the real positions
        torch.testing.assert_close(att[b, :, :n].sum(-1), torch.ones(4, n), atol=1e-5, rtol=0)
        assert (att[b] >= 0).all()
        assert att[b, :, :, n:].abs().sum() == 0 and att[b, :, n:].abs().sum() == 0
    # attention stays local to the windows: position 2 (only in window [1, 15)) never sees position 30
    assert att[0, :, 2, 15:].abs().max() == 0


@torch.no_grad()
def test_window_states_are_placed_and_averaged(bert):
    """Position p of the document is position p - a + 1 of window [a, b); overlaps are averaged."""
    enc = windowed(bert, max_length=16, overlap=4)
    ids, mask = make_ids([40], seed=4)
    hidden, _ = enc(ids, mask)

    def window_states(a: int, b: int) -> torch.Tensor:
        piece = torch.cat([torch.tensor([CLS]), ids[0, a:b], torch.tensor([SEP])])[None]
        return bert(input_ids=piece, attention_mask=torch.ones_like(piece)).last_hidden_state[0]

    w1, w2 = window_states(1, 15), window_states(11, 25)
    w3, w4 = window_states(21, 35), window_states(25, 39)
    torch.testing.assert_close(hidden[0, 5], w1[5], atol=1e-5, rtol=1e-5)  # only in window 1
    torch.testing.assert_close(hidden[0, 12], (w1[12] + w2[2]) / 2, atol=1e-5, rtol=1e-5)  # windows 1 and 2
    torch.testing.assert_close(hidden[0, 30], (w3[10] + w4[6]) / 2, atol=1e-5, rtol=1e-5)  # windows 3 and 4
    torch.testing.assert_close(hidden[0, 0], w1[0], atol=1e-5, rtol=1e-5)  # [CLS] from the first window
    torch.testing.assert_close(hidden[0, 39], w4[15], atol=1e-5, rtol=1e-5)  # [SEP] from the last window


@torch.no_grad()
def test_short_document_in_a_windowed_batch_equals_its_own_pass(bert):
    enc = windowed(bert, max_length=16, overlap=4)
    ids, mask = make_ids([40, 12], seed=5)
    hidden, att = enc(ids, mask)
    alone_h, alone_a = enc(ids[1:, :12], mask[1:, :12])
    torch.testing.assert_close(hidden[1, :12], alone_h[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att[1, :, :12, :12], alone_a[0], atol=1e-6, rtol=1e-5)


def test_windowed_encoding_backpropagates(bert):
    enc = windowed(bert, max_length=16, overlap=4)
    ids, mask = make_ids([40], seed=6)
    hidden, att = enc(ids, mask)
    (hidden.sum() + att[:, :, 5].sum()).backward()
    word_emb = bert.embeddings.word_embeddings.weight
    assert word_emb.grad is not None and torch.isfinite(word_emb.grad).all()
    bert.zero_grad(set_to_none=True)
