"""Tests for docre.model.inference, noise and the contrastive losses (paper Sec. 2.2-2.3). Tiny dims, CPU only."""
import math

import pytest
import torch

from docre.model.inference import (
    ExtendedCrossAttention,
    FullPairAttention,
    InferenceConfig,
    InferenceModule,
    SimSiamPredictor,
    entity_mask_from_counts,
    pair_mask_from_entities,
)
from docre.model.losses import reversed_view, simclr_loss, simsiam_loss
from docre.model.noise import inject_noise, noise_count, sample_noise_rate

D = 8
N = 5
C = 5
COUNTS = [5, 3]


def make(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = InferenceConfig(hidden=D, num_relations=C, **kw)
    return InferenceModule(cfg).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    em = entity_mask_from_counts(COUNTS, N)
    f = torch.randn(2, N, N, D, generator=g)
    r = torch.randn(2, N, N, D, generator=g)
    return f, r, em


def perturb_invalid(x, em, seed=7):
    """Overwrite every non-pair entry (padding and diagonal) with large random values."""
    g = torch.Generator().manual_seed(seed)
    pm = pair_mask_from_entities(em)
    noise = 100 * torch.randn(x.shape, generator=g)
    return torch.where(pm[..., None], x, noise)


def test_masks():
    em = entity_mask_from_counts(COUNTS, N)
    assert em.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    pm = pair_mask_from_entities(em)
    assert pm[0].sum() == 20 and pm[1].sum() == 6
    assert not pm[:, range(N), range(N)].any()
    assert not pm[1, 3:].any() and not pm[1, :, 3:].any()


@pytest.mark.parametrize(
    "kw", [{}, {"attention": "full"}, {"fusion": False}, {"shared_ffn": True}, {"relation_matrix": "multihot"}]
)
def test_shapes_and_padding_invariance(kw):
    m = make(**kw)
    f, r, em = inputs()
    logits, m_top = m(f, r, em)
    assert logits.shape == (2, N, N, C)
    assert m_top.shape == (2, N, N, 2 * D)
    assert torch.isfinite(logits).all() and torch.isfinite(m_top).all()
    logits2, m_top2 = m(perturb_invalid(f, em), perturb_invalid(r, em, seed=8), em)
    pm = pair_mask_from_entities(em)
    torch.testing.assert_close(logits2[pm], logits[pm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m_top2[pm], m_top[pm], rtol=1e-5, atol=1e-5)
    # documents are independent: dropping doc 1 does not change doc 0
    logits0, _ = m(f[:1], r[:1], em[:1])
    torch.testing.assert_close(logits0[0], logits[0], rtol=1e-5, atol=1e-5)


def test_variant_structure():
    fused = make().layers[0]
    assert fused.gate is not None and fused.ffn_f is not fused.ffn_r
    shared = make(shared_ffn=True).layers[0]
    assert shared.ffn_f is shared.ffn_r
    nofuse = make(fusion=False).layers[0]
    assert nofuse.gate is None
    full = make(attention="full").layers[0]
    assert isinstance(full.feature_attn, FullPairAttention)
    assert isinstance(make().layers[0].relation_attn, ExtendedCrossAttention)
    with pytest.raises(ValueError):
        InferenceConfig(hidden=6)
    # unset sizes follow the hidden size at build time (2d for the FNN, d for the predictor bottleneck)
    layer = InferenceModule(InferenceConfig(hidden=16, num_relations=3)).layers[0]
    assert layer.ffn_f.net[0].out_features == 32


def test_training_mode_backward():
    m = make(dropout=0.1).train()
    f, r, em = inputs()
    f.requires_grad_(True)
    logits, _ = m(f, r, em)
    logits[pair_mask_from_entities(em)].sum().backward()
    assert torch.isfinite(f.grad).all()
    assert f.grad[1, 3:].abs().sum() == 0  # padded inputs get no gradient


def test_no_nan_with_degenerate_documents():
    m = make()
    em = entity_mask_from_counts([1, 0], 3)
    f = torch.randn(2, 3, 3, D)
    r = torch.randn(2, 3, 3, D)
    logits, m_top = m(f, r, em)
    assert torch.isfinite(logits).all() and torch.isfinite(m_top).all()


# ---------------------------------------------------------------------------------------------
# ECA
# ---------------------------------------------------------------------------------------------
def naive_eca(eca: ExtendedCrossAttention, m: torch.Tensor, em: torch.Tensor, query: torch.Tensor | None = None,
              self_key: bool = False) -> torch.Tensor:
    """Per-pair loop reference of eq. 5-7 (slow, explicit key lists): queries from `query` (default m),
    keys/values from m's row s, column o, column s, row o, plus (self_key) the pair's own cell."""
    b_sz, n = m.shape[:2]
    dh = eca.head_dim
    q = eca.q_proj(m if query is None else query).view(b_sz, n, n, 4, dh)
    k = eca.k_proj(m).view(b_sz, n, n, 4, dh)
    v = eca.v_proj(m).view(b_sz, n, n, 4, dh)
    out = torch.zeros(b_sz, n, n, eca.hidden)
    for b in range(b_sz):
        ne = int(em[b].sum())
        for s in range(ne):
            for o in range(ne):
                if s == o:
                    continue
                heads = []
                for h, cells in enumerate(([(s, j) for j in range(ne)], [(j, o) for j in range(ne)],
                                           [(j, s) for j in range(ne)], [(o, j) for j in range(ne)])):
                    cells = [c for c in cells if c[0] != c[1]] + ([(s, o)] if self_key else [])
                    keys = torch.stack([k[b, x, y, h] for x, y in cells])
                    vals = torch.stack([v[b, x, y, h] for x, y in cells])
                    w = torch.softmax(keys @ q[b, s, o, h] / math.sqrt(dh), dim=0)
                    heads.append(w @ vals)
                out[b, s, o] = eca.o_proj(torch.cat(heads))
    return out


def test_axial_eca_matches_naive_reference():
    torch.manual_seed(0)
    eca = ExtendedCrossAttention(2 * D, D).eval()
    f, r, em = inputs()
    mm = torch.cat([f, r], dim=-1)
    with torch.no_grad():
        fast = eca(mm, em)
        ref = naive_eca(eca, mm, em)
        explicit, _ = eca(mm, em, return_weights=True)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, fast, rtol=1e-5, atol=1e-5)


def test_eca_heads_attend_only_their_line():
    torch.manual_seed(0)
    eca = ExtendedCrossAttention(2 * D, D).eval()
    f, r, em = inputs()
    with torch.no_grad():
        _, w = eca(torch.cat([f, r], dim=-1), em, return_weights=True)
    assert w.shape == (2, 4, N * N, N * N)
    pm = pair_mask_from_entities(em)
    for b in range(2):
        ne = COUNTS[b]
        for s in range(N):
            for o in range(N):
                row = w[b, :, s * N + o].view(4, N, N)  # [head, key s', key o']
                if not pm[b, s, o]:
                    assert row.abs().sum() == 0
                    continue
                allowed = torch.zeros(4, N, N, dtype=torch.bool)
                allowed[0, s, :ne] = True  # row s
                allowed[1, :ne, o] = True  # column o
                allowed[2, :ne, s] = True  # column s
                allowed[3, o, :ne] = True  # row o
                allowed[:, range(N), range(N)] = False  # never the diagonal
                assert (row[~allowed] == 0).all()
                assert (row[allowed] > 0).all()
                torch.testing.assert_close(row.sum(dim=(1, 2)), torch.ones(4))


def test_full_attention_weights_cover_all_valid_pairs():
    torch.manual_seed(0)
    att = FullPairAttention(2 * D, D).eval()
    f, r, em = inputs()
    with torch.no_grad():
        y, w = att(torch.cat([f, r], dim=-1), em, return_weights=True)
        y2 = att(torch.cat([f, r], dim=-1), em)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    pm = pair_mask_from_entities(em).view(2, N * N)
    q = 0 * N + 1  # pair (0, 1), valid in both docs
    for b in range(2):
        assert (w[b, :, q][:, pm[b]] > 0).all()
        assert (w[b, :, q][:, ~pm[b]] == 0).all()


def test_eca_memory_sanity_large_grid():
    torch.manual_seed(0)
    d = 32
    eca = ExtendedCrossAttention(2 * d, d).eval()
    n = 200
    em = torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad():
        y = eca(torch.randn(1, n, n, 2 * d), em)
    assert y.shape == (1, n, n, d)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------
# relation matrix and iteration
# ---------------------------------------------------------------------------------------------
def test_relation_matrix_argmax_and_multihot_hand_case():
    for mode in ("argmax", "multihot"):
        m = make(relation_matrix=mode)
        with torch.no_grad():
            m.emb.weight.copy_(torch.arange(C * D, dtype=torch.float).view(C, D))
        e = m.emb.weight.detach()
        logits = torch.zeros(1, 2, 2, C)
        logits[0, 0, 1] = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])  # beats TH: 1, 3, 4
        logits[0, 1, 0] = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0])  # none beats TH
        em = torch.ones(1, 2, dtype=torch.bool)
        r = m.relation_matrix(logits, em)
        if mode == "argmax":
            torch.testing.assert_close(r[0, 0, 1], e[3])
            torch.testing.assert_close(r[0, 1, 0], e[0])
        else:
            torch.testing.assert_close(r[0, 0, 1], e[1] + e[3] + e[4])
            torch.testing.assert_close(r[0, 1, 0], e[0])
        assert (r[0, 0, 0] == 0).all() and (r[0, 1, 1] == 0).all()  # diagonal masked
        ids = torch.tensor([[[0, 2], [4, 0]]])
        torch.testing.assert_close(m.relation_matrix(ids)[0, 0, 1], e[2])
        sets = torch.zeros(1, 2, 2, C, dtype=torch.bool)
        sets[0, 0, 1, 2] = sets[0, 0, 1, 4] = True
        rs = m.relation_matrix(sets, em)
        torch.testing.assert_close(rs[0, 0, 1], e[2] if mode == "argmax" else e[2] + e[4])
        torch.testing.assert_close(rs[0, 1, 0], e[0])


def test_iterate_keeps_f0_and_updates_r():
    m = make()
    f, _, em = inputs()
    f_before = f.clone()
    with torch.no_grad():
        m.classifier.bias.copy_(torch.tensor([0.0, 0.0, 100.0, 0.0, 0.0]))
    base = torch.zeros(2, N, N, C)
    base[..., 0] = 1.0  # argmax 0 everywhere
    seen = []
    original = m.forward

    def recording_forward(f_in, r_in, mask):
        seen.append((f_in, r_in.clone()))
        return original(f_in, r_in, mask)

    m.forward = recording_forward
    with torch.no_grad():
        outs = m.iterate(f, base, em, 3)
    assert len(outs) == 3 and all(o.shape == (2, N, N, C) for o in outs)
    assert all(fi is f for fi, _ in seen)
    torch.testing.assert_close(f, f_before, rtol=0, atol=0)
    pm = pair_mask_from_entities(em)
    r1, r2 = seen[0][1], seen[1][1]
    torch.testing.assert_close(r1, m.relation_matrix(base, em))
    torch.testing.assert_close(r2, m.relation_matrix(outs[0], em))
    assert not torch.allclose(r1[pm], r2[pm])
    e = m.emb.weight.detach()
    torch.testing.assert_close(r2[0, 0, 1], e[2])
    assert m.iterate(f, base, em, 0) == []


def test_reversed_view_alignment():
    m = make()
    f, r, em = inputs()
    with torch.no_grad():
        _, top = m(r, f, em)
        m_hat = reversed_view(m, f, r, em)
    torch.testing.assert_close(m_hat[..., :D], top[..., D:])
    torch.testing.assert_close(m_hat[..., D:], top[..., :D])


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
def test_inject_noise_counts_and_wrong_labels():
    g = torch.Generator().manual_seed(3)
    em = entity_mask_from_counts(COUNTS, N)
    pm = pair_mask_from_entities(em)
    labels = torch.randint(0, C, (2, N, N), generator=g)
    for rate in (0.0, 0.25, 0.5, 1.0):
        noisy = inject_noise(labels, rate, pm, C, generator=g)
        changed = noisy != labels
        assert not changed[~pm].any()
        for b, n_valid in enumerate([20, 6]):
            assert changed[b].sum().item() == noise_count(rate, n_valid)
        assert ((noisy >= 0) & (noisy < C)).all()
    assert noise_count(0.25, 6) == 2 and noise_count(0.5, 20) == 10  # 1.5 rounds up
    # two classes: a corrupted entry must flip; many draws reach every other class
    flip = inject_noise(torch.zeros(2, N, N, dtype=torch.long), 1.0, pm, 2, generator=g)
    assert (flip[pm] == 1).all() and (flip[~pm] == 0).all()
    many = torch.cat([inject_noise(labels, 1.0, pm, C, generator=g)[pm] for _ in range(20)])
    src = labels[pm].repeat(20)
    assert (many != src).all()
    assert set(many[src == 0].tolist()) == {1, 2, 3, 4}
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(inject_noise(labels, 0.3, pm, C, g1), inject_noise(labels, 0.3, pm, C, g2))


def test_sample_noise_rate_range():
    g = torch.Generator().manual_seed(0)
    rates = [sample_noise_rate(g) for _ in range(200)]
    assert all(0.0 <= x <= 0.4 for x in rates) and max(rates) > 0.3 and min(rates) < 0.1
    assert 0.2 <= sample_noise_rate(g, 0.2, 0.5) <= 0.5


# ---------------------------------------------------------------------------------------------
# contrastive losses
# ---------------------------------------------------------------------------------------------
def test_simsiam_hand_values():
    em = entity_mask_from_counts([3], 3)
    pm = pair_mask_from_entities(em)
    x = torch.randn(1, 3, 3, 4)
    ident = torch.nn.Identity()
    assert abs(simsiam_loss(ident, x, x.clone(), pm).item()) < 1e-6
    e1 = torch.zeros(1, 3, 3, 4)
    e1[..., 0] = 1.0
    e2 = torch.zeros(1, 3, 3, 4)
    e2[..., 1] = 1.0
    e2[0, 0, 0] = e1[0, 0, 0]  # diagonal (masked) entry would give 0
    assert abs(simsiam_loss(ident, e1, e2, pm).item() - 2.0) < 1e-6
    assert abs(simsiam_loss(ident, e1, -e1, pm).item() - 4.0) < 1e-6


def test_simsiam_stop_gradient():
    pm = pair_mask_from_entities(entity_mask_from_counts([3], 3))
    x = torch.randn(1, 3, 3, 4, requires_grad=True)
    y = torch.randn(1, 3, 3, 4, requires_grad=True)
    w = torch.ones(4, requires_grad=True)
    # the predictor cuts its own input, so x and y only reach the loss through the SG targets
    loss = simsiam_loss(lambda z: w * z.detach(), x, y, pm)
    loss.backward()
    assert x.grad is None and y.grad is None
    assert w.grad is not None and w.grad.abs().sum() > 0
    # with a real predictor, gradient flows through the predictor branch
    x2 = torch.randn(1, 3, 3, 4, requires_grad=True)
    pred = SimSiamPredictor(4, 3)
    simsiam_loss(pred, x2, torch.randn(1, 3, 3, 4), pm).backward()
    assert x2.grad is not None and x2.grad.abs().sum() > 0
    assert x2.grad[0, 0, 0].abs().sum() == 0  # diagonal ignored


def test_predictor_norms():
    for norm in ("layer", "batch", "none"):
        p = SimSiamPredictor(2 * D, 4, norm)
        assert p(torch.randn(6, 2 * D)).shape == (6, 2 * D)
    m = make()
    f, r, em = inputs()
    _, m_bar = m(f, r, em)
    m_hat = reversed_view(m, f, m.relation_matrix(torch.randint(0, C, (2, N, N)), em), em)
    loss = simsiam_loss(m.predictor, m_bar, m_hat, pair_mask_from_entities(em))
    assert torch.isfinite(loss) and 0.0 <= loss.item() <= 4.0


def test_simclr_loss():
    em = entity_mask_from_counts(COUNTS, N)
    pm = pair_mask_from_entities(em)
    torch.manual_seed(0)
    z = torch.randn(2, N, N, 16, requires_grad=True)
    same = simclr_loss(z, z, pm)
    other = simclr_loss(z, torch.randn(2, N, N, 16), pm)
    assert torch.isfinite(same) and same.item() < other.item()
    other.backward()
    assert z.grad[~pm].abs().sum() == 0 and z.grad[pm].abs().sum() > 0
    # one pair per view in a 2-entity doc: positives are the only non-self entries
    pm2 = pair_mask_from_entities(entity_mask_from_counts([2], 2))
    z2 = torch.randn(1, 2, 2, 4)
    v = simclr_loss(z2, z2, pm2, temperature=0.5)
    assert v.item() >= 0.0
