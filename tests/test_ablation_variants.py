"""Issue 12's variants: noise readings, ECA query sources, clean stage-2 R_0, loss weights, float32
heads, the bilinear base, stage 2 from a shared stage-1 checkpoint, and old checkpoints loading as
the variant they were trained as."""
from __future__ import annotations

import json

import pytest
import torch

from docre.model.base import GroupBilinear
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.model.inference import ExtendedCrossAttention, InferenceConfig, InferenceLayer, pair_mask_from_entities
from docre.model.noise import inject_noise_predicted, inject_noise_release
from docre.training.report import classifier_weight_shares
from docre.training.train import stage2_start

from test_model import docs as docs_fixture  # noqa: F401  (module-scoped CDR documents)
from test_inference_module import naive_eca
from test_model import make_batch, make_model

docs = docs_fixture
pytestmark = pytest.mark.usefixtures("one_torch_thread")
D = 8


# ------------------------------------------------------------------------------------------ noise
def grid(ids: list[list[int]]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)[None]


def test_predicted_relations_noise_hand_case():
    # one document, 4 entities: 3 predicted CID pairs, 9 predicted NA candidate pairs (diagonal excluded)
    ids = grid([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    pm = pair_mask_from_entities(torch.ones(1, 4, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    out = inject_noise_predicted(ids, 0.5, pm, 2, g)  # round(0.5 * 3) = 2 relations out, 2 NA in
    assert int(((ids == 1) & (out == 0)).sum()) == 2
    assert int(((ids == 0) & (out == 1) & pm).sum()) == 2
    assert torch.equal(out[~pm], ids[~pm])  # the diagonal is never touched
    # no predicted relation: nothing to corrupt, the matrix is left as it is
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert torch.equal(inject_noise_predicted(empty, 0.4, pm, 2, g), empty)


def test_predicted_relations_noise_many_classes_draws_other_classes():
    C = 5
    ids = torch.zeros(1, 6, 6, dtype=torch.long)
    ids[0, 0, 1:] = 3  # 5 predicted relations of class 3
    pm = pair_mask_from_entities(torch.ones(1, 6, dtype=torch.bool))
    g = torch.Generator().manual_seed(1)
    seen_pos, seen_neg = set(), set()
    for _ in range(50):
        out = inject_noise_predicted(ids, 1.0, pm, C, g)
        changed_pos = (ids == 3) & (out != 3)
        assert int(changed_pos.sum()) == 5  # every predicted relation gets another class
        seen_pos |= set(out[changed_pos].tolist())
        new_rel = (ids == 0) & (out != 0) & pm
        assert int(new_rel.sum()) == 5  # and as many NA pairs get a relation
        seen_neg |= set(out[new_rel].tolist())
    assert seen_pos == {0, 1, 2, 4}  # any class but its own, NA included
    assert seen_neg == {1, 2, 3, 4}  # a relation, never NA


def test_release_noise_rates_on_gold():
    ids = torch.zeros(1, 12, 12, dtype=torch.long)
    ids[0, 0, 1:11] = 1  # 10 gold positives, 122 negatives
    pm = pair_mask_from_entities(torch.ones(1, 12, dtype=torch.bool))
    g = torch.Generator().manual_seed(2)
    pos_flips, neg_flips = set(), set()
    for _ in range(100):
        out = inject_noise_release(ids, pm, 2, g)
        p = int(((ids == 1) & (out == 0)).sum())
        n = int(((ids == 0) & (out == 1) & pm).sum())
        assert 2 <= p <= 5  # round(U(0.2, 0.5) x 10)
        assert 3 <= n <= 8  # round(U(0.05, 0.15) x 50 sampled negatives)
        pos_flips.add(p)
        neg_flips.add(n)
        assert torch.equal(out[~pm], ids[~pm])
    assert len(pos_flips) > 2 and len(neg_flips) > 2  # the rates are drawn, not fixed


def test_noise_variant_is_what_stage2_uses(tiny_encoder, docs, monkeypatch):
    import docre.model.docre_ii as dm
    called = []
    for name in ("inject_noise", "inject_noise_predicted", "inject_noise_release"):
        real = getattr(dm, name)
        monkeypatch.setattr(dm, name, lambda *a, _n=name, _r=real, **k: called.append(_n) or _r(*a, **k))
    for noise, want in (("candidate_pairs", "inject_noise"), ("predicted_relations", "inject_noise_predicted"),
                        ("release_gold", "inject_noise_release")):
        called.clear()
        m = make_model(tiny_encoder, num_layers=1, noise=noise)
        m.stage2_loss(make_batch(m, docs), torch.Generator().manual_seed(0))
        assert called == [want, want]  # two views


# ------------------------------------------------------------------------------------------ ECA queries
def grids(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    f, r = torch.randn(2, 5, 5, D, generator=g), torch.randn(2, 5, 5, D, generator=g)
    em = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return f, r, em


@pytest.mark.parametrize("self_key", [False, True])
def test_own_query_eca_matches_reference(self_key):
    torch.manual_seed(0)
    eca = ExtendedCrossAttention(2 * D, D, query_dim=D, self_key=self_key).eval()
    f, r, em = grids()
    m = torch.cat([f, r], -1)
    with torch.no_grad():
        got = eca(m, em, query=f)
        want = naive_eca(eca, m, em, query=f, self_key=self_key)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_own_queries_make_the_units_differ_in_inputs():
    """With own queries the feature unit's queries ignore R and the relation unit's ignore F; with joint
    queries both units read M. Checked through the projections' input sizes and a swap of R."""
    torch.manual_seed(0)
    own = InferenceLayer(InferenceConfig(hidden=D, num_relations=3)).eval()
    joint = InferenceLayer(InferenceConfig(hidden=D, num_relations=3, queries="joint")).eval()
    assert own.feature_attn.q_proj.in_features == D and own.relation_attn.q_proj.in_features == D
    assert joint.feature_attn.q_proj.in_features == 2 * D
    f, r, em = grids()
    m = torch.cat([f, r], -1)
    with torch.no_grad():
        # own queries: the feature unit's output equals attention with queries from F alone
        want = own.feature_attn.attend(own.feature_attn.q_proj(f), own.feature_attn.k_proj(m),
                                       own.feature_attn.v_proj(m), em)
        assert torch.equal(own.feature_attn(m, em, query=f), want)
    with pytest.raises(ValueError, match="queries"):
        InferenceConfig(hidden=D, queries="both")


# ------------------------------------------------------------------------------------------ stage 2
def test_clean_r0_comes_from_a_dropout_free_forward(tiny_encoder, docs):
    m = make_model(tiny_encoder, num_layers=1, r0_dropout=False)
    m.config.dropout = 0.0
    batch = make_batch(m, docs)
    with torch.no_grad():
        m.eval()
        want = m.relation_ids(m.run_base(batch), batch)
        m.train()
        for mod in m.base.modules():  # heavy dropout: a training forward would scramble the argmax
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.9
        noisy_out = m.run_base(batch)
        got = m.relation_ids(noisy_out, batch)
        assert m.base.training  # the base goes back to training mode
        assert torch.equal(got, want)
        m.config.r0_dropout = True  # the default: the decision of the forward F_0 comes from
        legacy = m.relation_ids(noisy_out, batch)
    from docre.model.docre_ii import restrict_to_candidates
    want_legacy = restrict_to_candidates(noisy_out.logits, batch.candidate_mask).argmax(-1)
    assert torch.equal(legacy, want_legacy.masked_fill(~batch.candidate_mask, 0))


def test_stage2_base_dropout_sets_the_rate_of_that_forward_only(tiny_encoder, docs):
    from docre.model.losses import adaptive_threshold_loss
    m = make_model(tiny_encoder, num_layers=1, stage2_base_dropout=0.0)
    batch = make_batch(m, docs)
    with torch.no_grad():
        m.eval()
        clean = m.run_base(batch).logits
        want = adaptive_threshold_loss(clean[batch.candidate_mask], batch.labels[batch.candidate_mask]).item()
        m.train()
        rates = [mod.p for mod in m.base.modules() if isinstance(mod, torch.nn.Dropout)]
        assert rates and max(rates) > 0  # the tiny encoder does use dropout
        _, parts = m.stage2_loss(batch, torch.Generator().manual_seed(0))
        assert parts["loss_base"] == pytest.approx(want, rel=1e-5)  # rate 0: the training forward is clean
        assert [mod.p for mod in m.base.modules() if isinstance(mod, torch.nn.Dropout)] == rates  # restored
        m.config.stage2_base_dropout = 0.9  # a noisy forward moves the base loss
        _, noisy = m.stage2_loss(batch, torch.Generator().manual_seed(0))
        assert noisy["loss_base"] != pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("weights", ["paper", "release"])
def test_loss_weights(tiny_encoder, docs, weights):
    m = make_model(tiny_encoder, num_layers=1, loss_weights=weights, contrastive_weight=2.0)
    m.train()
    loss, parts = m.stage2_loss(make_batch(m, docs), torch.Generator().manual_seed(0))
    if weights == "paper":
        assert "loss_inference2" not in parts
        want = parts["loss_inference"] + parts["loss_base"] + 2.0 * parts["loss_contrastive"]
    else:  # the release: (L_inf/10 + L_inf2/10 + L_base/10 + L_C) / 2, contrastive_weight unused
        want = (parts["loss_inference"] / 10 + parts["loss_inference2"] / 10 + parts["loss_base"] / 10
                + parts["loss_contrastive"]) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_heads_are_float32_under_bf16_autocast(tiny_encoder):
    """Under bf16 autocast (the GPU default) the layers run in bf16, but eq. 4 and eq. 12's classifiers,
    the argmax that builds the next R_0 and the summed output are float32."""
    from docre.model.base import BaseHeadPlan
    from docre.model.plan import InferencePlan
    m = make_model(tiny_encoder, num_layers=1, output="sum").eval()
    D_enc = m.base.encoder.hidden_size
    g = torch.Generator().manual_seed(0)
    ent, ctx = torch.randn(2, 4, D_enc, generator=g), torch.randn(2, 4, 4, D_enc, generator=g)
    em = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features, base_logits = BaseHeadPlan(m.base)(ent, ctx)
        logits, _ = m.inference(features, m.inference.relation_matrix(base_logits, em), em)
        plan = InferencePlan(m.inference)
        planned = plan(features, plan.first_features(features), base_logits, em,
                       m.inference.layers[0].feature_attn.masks(em, features.dtype))
        final = m.final_logits([base_logits.bfloat16(), logits.bfloat16()])
    assert features.dtype == torch.bfloat16  # the layers do run in bf16
    assert base_logits.dtype == logits.dtype == planned.dtype == final.dtype == torch.float32


# ------------------------------------------------------------------------------------------ bilinear base
def test_group_bilinear_is_blockwise_outer_product():
    torch.manual_seed(0)
    gb = GroupBilinear(emb_dim=6, feature_dim=4, block=3)
    zs, zo = torch.randn(6), torch.randn(6)
    blocks = [torch.outer(zs[i:i + 3], zo[i:i + 3]).reshape(-1) for i in (0, 3)]
    want = gb.proj(torch.cat(blocks))
    torch.testing.assert_close(gb(torch.cat([zs, zo])), want)
    with pytest.raises(ValueError, match="block"):
        GroupBilinear(emb_dim=10, feature_dim=4, block=3)


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_without_the_new_keys_loads_as_its_old_variant(tiny_encoder, docs, tmp_path):
    legacy = make_model(tiny_encoder, noise="candidate_pairs", r0_dropout=True,
                        inference={"queries": "joint"}).eval()
    legacy.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("noise", "r0_dropout", "loss_weights", "base_head", "bilinear_block"):
        del cfg[key]
    for key in ("queries", "self_key"):
        del cfg["inference"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    again = DocREModel.from_pretrained(tmp_path / "old")
    assert again.config.noise == "candidate_pairs" and again.config.r0_dropout is True
    assert again.config.inference.queries == "joint" and again.config.base_head == "fnn"
    batch = make_batch(again, docs)
    with torch.no_grad():
        for a, b in zip(legacy.iteration_logits(batch), again.iteration_logits(batch)):
            torch.testing.assert_close(a, b)
    # a config written now names every variant and loads as exactly that
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_stage2_start_shares_the_stage1_base(tiny_encoder, docs, tmp_path):
    stage1 = make_model(tiny_encoder)
    stage1.save_pretrained(tmp_path / "s1")
    same = stage2_start(tmp_path / "s1", {}, 0, torch.device("cpu"))
    assert same.config.to_dict() == stage1.config.to_dict()
    variant = stage2_start(tmp_path / "s1", {"noise": "release_gold", "inference": {"queries": "joint"}}, 0,
                           torch.device("cpu"))
    assert variant.config.noise == "release_gold" and variant.config.inference.queries == "joint"
    for (name, a), b in zip(stage1.base.state_dict().items(), variant.base.state_dict().values()):
        assert torch.equal(a, b), name
    assert variant.inference.layers[0].feature_attn.q_proj.in_features == 2 * stage1.config.feature_dim
    again = stage2_start(tmp_path / "s1", {"noise": "release_gold", "inference": {"queries": "joint"}}, 0,
                         torch.device("cpu"))
    for a, b in zip(variant.inference.parameters(), again.inference.parameters()):
        assert torch.equal(a, b)  # the fresh inference module is seeded
    with pytest.raises(ValueError, match="feature_dim"):
        stage2_start(tmp_path / "s1", {"feature_dim": 32}, 0, torch.device("cpu"))


def test_classifier_weight_shares(tiny_encoder):
    """Figure 5's measure: mean |W_c| over the feature half and over the relation half of eq. 12."""
    m = make_model(tiny_encoder)
    d = m.config.feature_dim
    with torch.no_grad():
        m.inference.classifier.weight.zero_()
        m.inference.classifier.weight[:, :d] = 0.5
        m.inference.classifier.weight[0, d:] = -0.2
    shares = classifier_weight_shares(m.inference)
    assert shares["feature"] == pytest.approx(0.5)
    assert shares["relation"] == pytest.approx(0.2 / m.config.num_relations)  # one row of C is -0.2


def test_stage2_start_fresh_inference_is_the_same_for_every_variant(tiny_encoder, tmp_path):
    stage1 = make_model(tiny_encoder)
    stage1.save_pretrained(tmp_path / "s1")
    unchanged = stage2_start(tmp_path / "s1", {}, 5, torch.device("cpu"), fresh_inference=True)
    changed = stage2_start(tmp_path / "s1", {"noise": "release_gold"}, 5, torch.device("cpu"))
    for a, b in zip(unchanged.inference.parameters(), changed.inference.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(unchanged.inference.emb.weight, stage1.inference.emb.weight)


# ------------------------------------------------------------------------------------------ reliance probe
def test_relation_reliance_sources():
    """bench/probes/relation_reliance.py: each probe source builds the R_0 label ids it names, and only on
    candidate pairs."""
    from conftest import load_bench
    probe = load_bench("probes/relation_reliance")
    cand = torch.tensor([[[False, True, True], [True, False, False], [False, False, False]]])
    logits = torch.zeros(1, 3, 3, 2)
    logits[0, 0, 1, 1] = 5.0  # base predicts a relation for (0, 1) only
    logits[0, 2, 0, 1] = 9.0  # ... and for a non-candidate pair, which must not show up
    labels = torch.zeros(1, 3, 3, 2)
    labels[..., 0] = 1
    labels[0, 0, 2] = torch.tensor([0.0, 1.0])  # gold relation on (0, 2)
    g = torch.Generator().manual_seed(0)
    ids = {s: probe.relation_ids(s, logits, labels, cand, g)[0].tolist() for s in probe.SOURCES}
    assert ids["base"] == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert ids["gold"] == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert ids["na"] == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert ids["flip"] == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
    shuffled = torch.tensor(ids["shuffle"])
    assert shuffled[cand[0]].sum() == 1 and shuffled[~cand[0]].sum() == 0


# ------------------------------------------------------------------------------------------ ranking probe
def test_threshold_free_scores_hand_case():
    """bench/probes/threshold_free.py on five ranked candidates, three of them gold, and one gold fact no
    candidate holds (n_gold = 4)."""
    from conftest import load_bench
    probe = load_bench("probes/threshold_free")
    margins = torch.tensor([-0.5, 2.0, -1.0, 1.0, 0.5])
    gold = torch.tensor([True, True, False, False, True])
    r = probe.ranking_scores(margins, gold, n_gold=4)
    assert r["f1"] == pytest.approx(2 * 2 / (3 + 4))  # margin > 0: 3 predicted, 2 right
    assert r["best"] == pytest.approx(2 * 3 / (4 + 4))  # cut below -0.5: 4 predicted, 3 right
    assert r["offset"] == pytest.approx(-0.75)  # between -0.5 and -1.0: the learned cut is too strict
    assert r["ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)


def test_threshold_free_cut_never_splits_ties():
    """Two candidates with one margin are predicted together or not at all, so the best F1 here is 2/3,
    not the 1.0 of taking only the gold one."""
    from conftest import load_bench
    probe = load_bench("probes/threshold_free")
    r = probe.ranking_scores(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), n_gold=1)
    assert r["best"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="gold"):
        probe.ranking_scores(torch.tensor([1.0]), torch.tensor([False]), n_gold=0)
