"""Base module (eq. 1-4), the full DocRE-II model, its stage losses, variants, checkpoints and prediction.

Everything runs on the tiny random BERT of conftest; feature size 16, so a forward pass takes milliseconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from docre.data.atlop import read_atlop
from docre.data.batch import Example, collate
from docre.data.document import Document, Entity, Mention, cdr_inventory
from docre.data.tokenize import encode_document
from docre.model.base import entity_embeddings, localized_context
from docre.model.docre_ii import DocREModel, ModelConfig, Triple, restrict_to_candidates
from docre.model.inference import FullPairAttention, InferenceConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FIXTURE = Path(__file__).parent / "fixtures" / "cdr_sample.data"
K = 2


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    with open(FIXTURE) as f:
        return list(read_atlop(f, str(FIXTURE)))


def make_model(encoder: str, seed: int = 0, num_layers: int = 2, inference: dict | None = None,
               **kw) -> DocREModel:
    torch.manual_seed(seed)
    inf = InferenceConfig(num_layers=num_layers, ffn_dim=32, predictor_dim=16, **(inference or {}))
    cfg = ModelConfig(encoder=encoder, feature_dim=16, iterations=K, inference=inf, **kw)
    return DocREModel.create(cfg, cdr_inventory())


def make_batch(model: DocREModel, documents: list[Document]):
    examples = [Example.from_row(encode_document(d, model.tokenizer, model.inventory)) for d in documents]
    return collate(examples, model.inventory, model.tokenizer.pad_token_id or 0)


@pytest.fixture(scope="module")
def model(tiny_encoder) -> DocREModel:
    return make_model(tiny_encoder).eval()


def new_document() -> Document:
    """An unlabelled document built by hand, with a Gene that CDR never pairs."""
    sents = [["lithium", "induced", "renal", "failure", "in", "rats", "."],
             ["clonidine", "caused", "hypotension", "and", "GENEX", "damage", "."]]
    ents = [Entity([Mention(0, 0, 1, "lithium")], "Chemical", "D008094"),
            Entity([Mention(0, 2, 4, "renal failure")], "Disease", "D051437"),
            Entity([Mention(1, 0, 1, "clonidine")], "Chemical", "D003000"),
            Entity([Mention(1, 2, 3, "hypotension")], "Disease", "D007022"),
            Entity([Mention(1, 4, 5, "GENEX")], "Gene", "1234")]
    return Document("new-1", sents, ents, None)


# ------------------------------------------------------------------------------------------ base module

def test_base_output_shapes_and_entity_mask(model, docs):
    batch = make_batch(model, [docs[0], docs[2]])  # 4 and 2 entities
    with torch.no_grad():
        out = model.run_base(batch)
    assert out.features.shape == (2, 4, 4, 16)
    assert out.logits.shape == (2, 4, 4, 2)
    assert out.entity_mask.tolist() == [[True] * 4, [True, True, False, False]]
    # CDR candidates: Chemical -> Disease only (doc 0: chemicals 0, 3; diseases 1, 2)
    assert batch.candidate_mask[0].nonzero().tolist() == [[0, 1], [0, 2], [3, 1], [3, 2]]
    assert batch.candidate_mask[1].nonzero().tolist() == [[0, 1]]
    assert torch.isfinite(out.features).all() and torch.isfinite(out.logits).all()


def test_localized_context_is_eq1_by_loops():
    g = torch.Generator().manual_seed(0)
    T, D, N, H = 7, 3, 3, 2
    hidden = torch.randn(T, D, generator=g)
    att = torch.rand(N, H, T, generator=g)
    att = att / att.sum(-1, keepdim=True)
    ctx = localized_context(hidden, att)
    assert ctx.shape == (N, N, D)
    for s in range(N):
        for o in range(N):
            # a[t] = mean over heads of A_s[h, t] * A_o[h, t];  c_so = sum_t a[t] H[t] / sum_t a[t]
            a = [sum(att[s, h, t].item() * att[o, h, t].item() for h in range(H)) / H for t in range(T)]
            total = sum(a)
            for d in range(D):
                want = sum(a[t] * hidden[t, d].item() for t in range(T)) / (total + 1e-5)
                assert ctx[s, o, d].item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_entity_embedding_is_logsumexp_of_mention_markers():
    g = torch.Generator().manual_seed(1)
    T, D, H = 9, 4, 2
    hidden = torch.randn(T, D, generator=g)
    att = torch.rand(H, T, T, generator=g)
    mentions = [[1, 5], [3], [2, 6, 7]]
    ents, ent_att = entity_embeddings(hidden, att, mentions, n_max=5)
    assert ents.shape == (5, D) and ent_att.shape == (5, H, T)
    for e, pos in enumerate(mentions):
        for d in range(D):
            want = math.log(sum(math.exp(hidden[p, d].item()) for p in pos))
            assert ents[e, d].item() == pytest.approx(want, rel=1e-5)
        torch.testing.assert_close(ent_att[e], att[:, pos].mean(1))
    assert ents[3:].abs().sum() == 0 and ent_att[3:].abs().sum() == 0  # padding entities


def test_mention_positions_are_start_markers(model, docs):
    marker = model.tokenizer.convert_tokens_to_ids("*")
    for doc in docs:
        ex = Example.from_row(encode_document(doc, model.tokenizer, model.inventory))
        assert len(ex.mention_pos) == len(doc.entities)
        for ent, positions in zip(doc.entities, ex.mention_pos):
            assert len(positions) == len(ent.mentions)
            assert all(ex.input_ids[p] == marker for p in positions)


def test_pair_features_follow_eq2_to_eq4(model, docs):
    """Recompute F_{s,o} and its logits for one pair from the encoder outputs, by the equations."""
    batch = make_batch(model, [docs[0], docs[2]])
    base = model.base
    with torch.no_grad():
        out = model.run_base(batch)
        hidden, att = base.encoder(batch.input_ids, batch.attention_mask)
        b, s, o = 0, 3, 1
        pos_s, pos_o = batch.mention_pos[b][s], batch.mention_pos[b][o]
        h_s = torch.logsumexp(hidden[b, pos_s], 0)
        h_o = torch.logsumexp(hidden[b, pos_o], 0)
        a = (att[b][:, pos_s].mean(1) * att[b][:, pos_o].mean(1)).mean(0)  # eq. 1
        c = (a / (a.sum() + 1e-5)) @ hidden[b]
        z_s = torch.tanh(base.head_extractor(torch.cat([h_s, c])))  # eq. 2
        z_o = torch.tanh(base.tail_extractor(torch.cat([h_o, c])))  # eq. 3
        f = base.pair_fnn(torch.cat([z_s, z_o]))
        torch.testing.assert_close(out.features[b, s, o], f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[b, s, o], base.classifier(f), atol=1e-5, rtol=1e-5)  # eq. 4
        # the second document's padded entities do not change its real pair
        alone = model.run_base(make_batch(model, [docs[2]]))
        torch.testing.assert_close(out.logits[1, 0, 1], alone.logits[0, 0, 1], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ losses

def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


def test_stage1_loss_trains_the_base_module_only(tiny_encoder, docs):
    m = make_model(tiny_encoder).train()
    loss, parts = m.stage1_loss(make_batch(m, docs))
    assert torch.isfinite(loss) and loss.item() > 0
    assert parts == {"loss_base": pytest.approx(loss.item())}
    loss.backward()
    base = grads(m.base)
    assert all(g is not None and torch.isfinite(g).all() for g in base.values() if g is not None)
    assert base["classifier.weight"].abs().sum() > 0
    assert base["encoder.model.embeddings.word_embeddings.weight"].abs().sum() > 0
    assert all(g is None for g in grads(m.inference).values())


def test_stage2_loss_trains_everything(tiny_encoder, docs):
    m = make_model(tiny_encoder).train()
    loss, parts = m.stage2_loss(make_batch(m, docs), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert set(parts) == {"loss_inference", "loss_base", "loss_contrastive"}
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    loss.backward()
    missing = [n for n, g in grads(m.inference).items() if g is None]
    assert missing == []  # every inference parameter, the SimSiam predictor included, gets a gradient
    assert all(torch.isfinite(g).all() for g in grads(m.inference).values())
    assert m.base.classifier.weight.grad is not None
    assert m.base.encoder.model.embeddings.word_embeddings.weight.grad is not None


def test_stage2_without_contrastive_leaves_the_predictor_alone(tiny_encoder, docs):
    m = make_model(tiny_encoder, contrastive="none").train()
    loss, parts = m.stage2_loss(make_batch(m, docs), torch.Generator().manual_seed(0))
    assert "loss_contrastive" not in parts
    loss.backward()
    g = grads(m.inference)
    assert all(v is None for n, v in g.items() if n.startswith("predictor."))
    assert all(v is not None for n, v in g.items() if not n.startswith("predictor."))


def test_stage2_noise_is_reproducible_with_a_generator(tiny_encoder, docs):
    m = make_model(tiny_encoder)
    m.eval()  # no dropout: differences could only come from the noise
    batch = make_batch(m, docs)
    with torch.no_grad():
        a = m.stage2_loss(batch, torch.Generator().manual_seed(3))[1]
        b = m.stage2_loss(batch, torch.Generator().manual_seed(3))[1]
    assert a == b


VARIANTS = {
    "paper": ({}, {}),
    "attention_full": ({}, {"attention": "full"}),
    "no_fusion": ({}, {"fusion": False}),
    "simclr": ({"contrastive": "simclr"}, {}),
    "no_contrastive": ({"contrastive": "none"}, {}),
    "multihot": ({}, {"relation_matrix": "multihot"}),
    "output_sum": ({"output": "sum"}, {}),
    "gold_relations": ({"relation_source": "gold"}, {}),
    "no_stage2_base_loss": ({"stage2_base_loss": False}, {}),
    "shared_ffn": ({}, {"shared_ffn": True}),
    "batchnorm_predictor": ({}, {"predictor_norm": "batch"}),
    "joint_queries": ({}, {"queries": "joint"}),
    "self_key": ({}, {"self_key": True}),
    "noise_predicted_relations": ({"noise": "predicted_relations"}, {}),
    "legacy_variant": ({"noise": "candidate_pairs", "r0_dropout": True}, {"queries": "joint"}),
    "clean_r0": ({"r0_dropout": False}, {}),
    "noisy_base_forward": ({"stage2_base_dropout": 0.3}, {}),
    "noise_release_gold": ({"noise": "release_gold"}, {}),
    "release_loss_weights": ({"loss_weights": "release"}, {}),
    "bilinear_base": ({"base_head": "bilinear", "emb_dim": 32, "bilinear_block": 8}, {}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_iterates_and_reloads(tiny_encoder, docs, tmp_path, name):
    model_kw, inf_kw = VARIANTS[name]
    m = make_model(tiny_encoder, num_layers=1, inference=inf_kw, **model_kw)
    batch = make_batch(m, docs)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m.train()
    loss, parts = m.stage2_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert ("loss_contrastive" in parts) == (m.config.contrastive != "none")
    assert ("loss_base" in parts) == m.config.stage2_base_loss
    loss.backward()
    opt.step()
    m.eval()
    steps = m.iteration_logits(batch)
    assert len(steps) == K + 1
    assert all(s.shape == (3, 4, 4, 2) and torch.isfinite(s).all() for s in steps)
    final = m.final_logits(steps)
    if m.config.output == "sum":
        torch.testing.assert_close(final, sum(steps))
    else:
        assert final is steps[-1]
    layer = m.inference.layers[0]
    assert isinstance(layer.feature_attn, FullPairAttention) == (inf_kw.get("attention") == "full")
    assert (layer.gate is None) == (inf_kw.get("fusion") is False)
    assert (layer.ffn_r is layer.ffn_f) == bool(inf_kw.get("shared_ffn"))
    # every variant's checkpoint reloads to the same network
    m.save_pretrained(tmp_path / name)
    again = DocREModel.from_pretrained(tmp_path / name)
    assert again.config.to_dict() == m.config.to_dict()
    for a, b in zip(steps, again.iteration_logits(batch)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_relation_source(tiny_encoder, docs):
    batch = make_batch(make_model(tiny_encoder), docs)
    for source in ("predicted", "gold"):
        m = make_model(tiny_encoder, relation_source=source).eval()
        with torch.no_grad():
            out = m.run_base(batch)
        ids = m.relation_ids(out, batch)
        if source == "gold":
            want = torch.zeros_like(ids)
            want[0, 0, 1] = want[0, 0, 2] = want[1, 0, 1] = want[1, 0, 3] = 1  # the fixture's CID facts
        else:
            want = restrict_to_candidates(out.logits, batch.candidate_mask).argmax(-1)
        assert torch.equal(ids, want)
        assert (ids[~batch.candidate_mask] == 0).all()


# ------------------------------------------------------------------------------------------ iterations

def test_iteration_logits_reuse_f0(model, docs, monkeypatch):
    batch = make_batch(model, docs)
    calls = []
    original = model.inference.forward

    def recording(f, r, entity_mask):
        calls.append((f, f.clone(), r.clone()))
        return original(f, r, entity_mask)

    monkeypatch.setattr(model.inference, "forward", recording)
    steps = model.iteration_logits(batch, iterations=3)
    assert len(steps) == 4 and len(calls) == 3
    with torch.no_grad():
        base = model.run_base(batch)
    cand = batch.candidate_mask
    torch.testing.assert_close(steps[0], restrict_to_candidates(base.logits, cand))
    for k, (f, f_values, r) in enumerate(calls):
        assert f is calls[0][0]  # the very same F_0 tensor every iteration
        torch.testing.assert_close(f_values, base.features)
        # R_0^(k) is rebuilt from the previous iteration's predictions
        torch.testing.assert_close(r, model.inference.relation_matrix(steps[k], base.entity_mask))
    # non-candidate pairs are forced to "no relation" at every iteration
    for s in steps:
        assert (s[~cand][:, 0] > s[~cand][:, 1]).all()
    monkeypatch.undo()
    assert len(model.iteration_logits(batch, iterations=0)) == 1
    assert len(model.iteration_logits(batch)) == K + 1


# ------------------------------------------------------------------------------------------ checkpoints

def force(model: DocREModel, base_positive: bool, inference_positive: bool) -> DocREModel:
    """Make the base / inference classifiers predict CID for every candidate pair, or for none."""
    with torch.no_grad():
        model.base.classifier.bias.copy_(torch.tensor([-20.0, 20.0] if base_positive else [20.0, -20.0]))
        model.inference.classifier.bias.copy_(torch.tensor([-20.0, 20.0] if inference_positive else [20.0, -20.0]))
    return model


def test_save_and_load_round_trip(tiny_encoder, docs, tmp_path):
    m = force(make_model(tiny_encoder, seed=5), base_positive=False, inference_positive=True).eval()
    m.save_pretrained(tmp_path / "ckpt")
    names = {p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*")}
    assert {"model.safetensors", "config.json", "relations.json", "tokenizer", "encoder",
            "encoder/config.json"} <= names
    assert (tmp_path / "ckpt" / "tokenizer").is_dir() and any((tmp_path / "ckpt" / "tokenizer").iterdir())
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert pickles == []
    assert not any(n.startswith("encoder/") and n.endswith(".safetensors") for n in names)  # weights live once
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["encoder"] == tiny_encoder

    loaded = DocREModel.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.inventory == m.inventory
    assert loaded.config.to_dict() == m.config.to_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    docs_all = docs + [new_document()]
    before, after = m.predict(docs_all), loaded.predict(docs_all)
    assert before == after and len(before) > 0
    batch = make_batch(m, docs_all)
    for a, b in zip(m.iteration_logits(batch), loaded.iteration_logits(batch)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_checkpoint_missing_a_weight_is_refused(model, tmp_path):
    from safetensors.torch import load_file, save_file
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    del state["inference.classifier.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing .*inference\.classifier\.weight"):
        DocREModel.from_pretrained(tmp_path / "ckpt")
    state["inference.classifier.weight"] = torch.zeros(2, 32)
    state["something.extra"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"unexpected .*something\.extra"):
        DocREModel.from_pretrained(tmp_path / "ckpt")


# ------------------------------------------------------------------------------------------ prediction

def test_predict_returns_named_triples(tiny_encoder, docs):
    m = force(make_model(tiny_encoder, seed=1), base_positive=False, inference_positive=True)
    documents = docs + [new_document()]
    triples = m.predict(documents, batch_size=2)
    assert all(isinstance(t, Triple) for t in triples)
    by_doc = {d.id: d for d in documents}
    inventory = cdr_inventory()
    want_pairs = {(d.id, h, t) for d in documents for h, t in inventory.candidate_pairs(d)}
    assert {(t.doc_id, t.head, t.tail) for t in triples} == want_pairs  # every candidate, nothing else
    for t in triples:
        doc = by_doc[t.doc_id]
        head, tail = doc.entities[t.head], doc.entities[t.tail]
        assert (t.relation, t.relation_name) == ("CID", "chemical induces disease")
        assert (t.head_name, t.tail_name) == (head.name, tail.name)
        assert (t.head_id, t.tail_id) == (head.kb_id, tail.kb_id)
        assert (t.head_type, t.tail_type) == ("Chemical", "Disease")
        assert 0.5 < t.score <= 1.0
        assert t.iteration == 1  # the base module predicted nothing; the first inference pass added it
    assert not any(t.head_type == "Gene" or t.tail_type == "Gene" for t in triples)


def test_predict_iteration_zero_and_iteration_override(tiny_encoder, docs):
    m = force(make_model(tiny_encoder, seed=2), base_positive=True, inference_positive=True)
    triples = m.predict(docs)
    assert triples and all(t.iteration == 0 for t in triples)
    assert all(0 <= t.iteration <= K for t in triples)
    # K = 0: the base module alone
    assert {(t.doc_id, t.head, t.tail) for t in m.predict(docs, iterations=0)} == \
        {(t.doc_id, t.head, t.tail) for t in triples}
    # the inference module removes what the base module proposed: the paper's output P^(K) has nothing
    force(m, base_positive=True, inference_positive=False)
    assert m.predict(docs) == []
    assert len(m.predict(docs, iterations=0)) == len(triples)


def test_predict_examples_decisions_per_iteration(tiny_encoder, docs):
    m = force(make_model(tiny_encoder, seed=3), base_positive=False, inference_positive=True)
    examples = [Example.from_row(encode_document(d, m.tokenizer, m.inventory)) for d in docs]
    decisions = m.predict_examples(examples, iterations=3)
    assert set(decisions) == {d.id for d in docs}
    for doc in docs:
        per_k = decisions[doc.id]
        assert len(per_k) == 4
        assert per_k[0] == []
        for k in range(1, 4):
            assert sorted((h, t) for h, t, _, _ in per_k[k]) == sorted(m.inventory.candidate_pairs(doc))
            assert all(r == 1 for _, _, r, _ in per_k[k])
