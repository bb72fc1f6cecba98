"""Prediction fast path (issue 13): cost-model batching, batched pooling, attention rows only at
mention markers, F_0's projections cached across iterations, int8 -- all against the reference path.

The reference is what prediction did before: length-only `bucketed_batches`, `collate`, the
training-time `iteration_logits` (per-document pooling, the full last-layer attention map, every
projection recomputed at every iteration) and the same decoder. The tiny encoder of conftest has
64 positions; the models here use 24-token windows, so the fixture documents also exercise the
windowed encoder.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from docre.data.atlop import read_atlop
from docre.data.batch import Example, bucketed_batches, collate, padding_stats, prediction_batches
from docre.data.docred import read_docred, read_rel_info
from docre.data.document import cdr_inventory
from docre.data.tokenize import encode_document
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.model.inference import InferenceConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures"


def cdr_docs():
    with open(FIXTURES / "cdr_sample.data") as f:
        return list(read_atlop(f, "cdr_sample.data"))


def docred_docs():
    inventory = read_rel_info((FIXTURES / "rel_info_sample.json").read_text())
    return list(read_docred((FIXTURES / "docred_sample.json").read_text(), "docred_sample.json", inventory)), inventory


def make_model(encoder: str, inventory, seed: int = 0, **kw) -> DocREModel:
    torch.manual_seed(seed)
    inference = InferenceConfig(**({"num_layers": 2, "ffn_dim": 32, "predictor_dim": 16} | kw.pop("inference", {})))
    cfg = ModelConfig(encoder=encoder, feature_dim=16, iterations=3, inference=inference, **kw)
    model = DocREModel.create(cfg, inventory).eval()
    # short windows, so that most fixture documents go through the windowed encoder
    model.base.encoder.max_length, model.base.encoder.overlap = 24, 8
    # a random classifier predicts nothing or everything; spread the logits so decoding is exercised
    with torch.no_grad():
        for classifier in (model.base.classifier, model.inference.classifier):
            classifier.weight.mul_(20.0)
            classifier.bias.zero_()
    return model


def examples_for(model: DocREModel, docs) -> list[Example]:
    return [Example.from_row(encode_document(d, model.tokenizer, model.inventory)) for d in docs]


def reference_decisions(model: DocREModel, examples: list[Example], K: int, batch_size: int = 3) -> dict:
    """What predict_examples did before issue 13: length buckets, iteration_logits, the same decoder."""
    out = {}
    for chunk in bucketed_batches(examples, batch_size, shuffle=False, max_tokens=8192):
        batch = collate(chunk, model.inventory, model.tokenizer.pad_token_id or 0)
        steps = model.iteration_logits(batch, K)
        per_k = [model.decode_logits((model.final_logits(steps[:k + 1]) if k > 0 else steps[0]).float(),
                               batch.candidate_mask) for k in range(K + 1)]
        for b, doc_id in enumerate(batch.doc_ids):
            out[doc_id] = [d[b] for d in per_k]
    return out


def assert_same_decisions(new: dict, old: dict) -> None:
    assert new.keys() == old.keys()
    for doc_id in old:
        for k, (a, b) in enumerate(zip(new[doc_id], old[doc_id])):
            assert [(h, t, r) for h, t, r, _ in a] == [(h, t, r) for h, t, r, _ in b], (doc_id, k)
            for (*_, sa), (*_, sb) in zip(a, b):
                assert sa == pytest.approx(sb, abs=1e-5)


# ------------------------------------------------------------------------------------------ batching

def fake_examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(20, 600)
        ents = rng.choice([1, 2, 3, 5, 8, 13, 20, 36])
        out.append(Example(f"d{i}", [1] * length, [[1]] * ents, ["X"] * ents, [], False))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prediction_batches_cover_everything_and_bound_padding(seed):
    examples = fake_examples(300, seed)
    for batch_size, max_tokens in ((8, 8192), (4, 1024), (1, None)):
        batches = prediction_batches(examples, batch_size, max_tokens, max_padding=0.1, pair_weight=0.85)
        ids = [e.doc_id for b in batches for e in b]
        assert sorted(ids) == sorted(e.doc_id for e in examples)  # every document exactly once
        for b in batches:
            assert 1 <= len(b) <= batch_size
            longest = max(len(e.input_ids) for e in b)
            assert len(b) == 1 or max_tokens is None or longest * len(b) <= max_tokens
            stats = padding_stats([b])
            assert stats["pair_cells_padded"] <= 1.1 * stats["pair_cells_exact"] + 1e-9
        assert padding_stats(batches)["pair_padding"] <= 0.1
    assert prediction_batches(examples[:5], 8) == prediction_batches(examples[:5], 8)  # deterministic
    assert prediction_batches([], 8) == []


def test_prediction_batches_beat_length_buckets_on_pair_padding():
    examples = fake_examples(400, 3)
    old = padding_stats(bucketed_batches(examples, 8, False, max_tokens=8192))
    new = padding_stats(prediction_batches(examples, 8, 8192, pair_weight=0.85))
    assert new["pair_padding"] <= 0.1 < old["pair_padding"]


def test_collate_candidate_mask_and_mention_tensors(tiny_encoder):
    docs, inventory = docred_docs()
    for model_docs, inv in ((cdr_docs(), cdr_inventory()), (docs, inventory)):
        model = make_model(tiny_encoder, inv)
        examples = examples_for(model, model_docs)
        batch = collate(examples, inv)
        for b, e in enumerate(examples):
            n = len(e.mention_pos)
            labelled = {(h, t) for h, t, _ in e.labels}
            for h in range(batch.candidate_mask.shape[1]):
                for t in range(batch.candidate_mask.shape[2]):
                    want = h < n and t < n and ((h != t and inv.is_candidate(e.entity_types[h], e.entity_types[t]))
                                                or (h, t) in labelled)
                    assert bool(batch.candidate_mask[b, h, t]) == want
            got = [(int(p), int(i), int(j)) for p, i, j, v in zip(batch.mention_tokens[b], batch.mention_entity[b],
                                                                 batch.mention_slot[b], batch.mention_valid[b]) if v]
            assert got == [(p, i, j) for i, ps in enumerate(e.mention_pos) for j, p in enumerate(ps)]


# ------------------------------------------------------------------------------------------ model path

def test_encode_rows_are_the_rows_of_the_full_attention_map(tiny_encoder):
    model = make_model(tiny_encoder, cdr_inventory())
    examples = examples_for(model, cdr_docs())
    batch = collate(examples, model.inventory)
    enc = model.base.encoder
    assert batch.input_ids.shape[1] > enc.max_length  # the windowed path
    with torch.inference_mode():
        for ids, mask, rows in ((batch.input_ids, batch.attention_mask, batch.mention_tokens),
                                (batch.input_ids[:, :20], batch.attention_mask[:, :20],
                                 batch.mention_tokens.clamp(max=19))):  # and the single-window path
            hidden, att = enc(ids, mask)
            hidden_r, rows_att = enc.encode_rows(ids, mask, rows)
            torch.testing.assert_close(hidden_r, hidden)
            want = att.gather(2, rows[:, None, :, None].expand(-1, att.shape[1], -1, att.shape[-1])).transpose(1, 2)
            valid = batch.mention_valid  # padding entries of the mention list are never read
            torch.testing.assert_close(rows_att[valid], want[valid], atol=1e-6, rtol=1e-5)


VARIANTS = {
    "paper": {},
    "multihot": {"inference": {"relation_matrix": "multihot"}},
    "full_attention": {"inference": {"attention": "full"}},
    "no_fusion": {"inference": {"fusion": False}},
    "sum_output": {"output": "sum"},
    "one_layer": {"inference": {"num_layers": 1}},
    "joint_queries": {"inference": {"queries": "joint"}},
    "self_key": {"inference": {"self_key": True}},
    "full_attention_own_queries": {"inference": {"attention": "full", "queries": "own"}},
    "bilinear_base": {"base_head": "bilinear", "emb_dim": 32, "bilinear_block": 8},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prediction_logits_equal_iteration_logits(tiny_encoder, name):
    model = make_model(tiny_encoder, cdr_inventory(), **{k: dict(v) if isinstance(v, dict) else v
                                                         for k, v in VARIANTS[name].items()})
    batch = collate(examples_for(model, cdr_docs()), model.inventory)
    with torch.inference_mode():
        ref = model.iteration_logits(batch, 3)
        new = model.prediction_logits(batch, 3)
    assert len(new) == len(ref) == 4
    for a, b in zip(new, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["cdr", "docred"])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_old_and_new_batching_give_the_same_triples(tiny_encoder, which, batch_size):
    if which == "cdr":
        docs, inventory = cdr_docs(), cdr_inventory()
    else:
        docs, inventory = docred_docs()
    model = make_model(tiny_encoder, inventory, seed=batch_size)
    examples = examples_for(model, docs)
    old = reference_decisions(model, examples, 3)
    new = model.predict_examples(examples, 3, batch_size=batch_size)
    assert any(d for per_k in old.values() for d in per_k)  # something is predicted
    assert_same_decisions(new, old)
    # and the Triple layer on top
    assert model.triples(docs, new) == model.triples(docs, old) or all(
        (a.doc_id, a.head, a.tail, a.relation, a.iteration) == (b.doc_id, b.head, b.tail, b.relation, b.iteration)
        for a, b in zip(model.triples(docs, new), model.triples(docs, old)))


def test_profile_reports_every_component(tiny_encoder):
    model = make_model(tiny_encoder, cdr_inventory())
    profile: dict = {}
    model.predict_examples(examples_for(model, cdr_docs()), 2, profile=profile)
    for name in ("collate", "encoder", "attention", "base_head", "inference_f0", "inference_k1", "inference_k2",
                 "decode"):
        assert profile[name] >= 0.0
    assert "inference_k3" not in profile


def test_int8_prediction_runs_and_mostly_agrees(tiny_encoder):
    model = make_model(tiny_encoder, cdr_inventory())
    examples = examples_for(model, cdr_docs())
    fp32 = model.predict_examples(examples, 3)
    model.quantize_int8()
    assert model.int8
    int8 = model.predict_examples(examples, 3)
    assert int8.keys() == fp32.keys()
    base_fp32 = {(d, h, t, r) for d, per_k in fp32.items() for h, t, r, _ in per_k[0]}
    base_int8 = {(d, h, t, r) for d, per_k in int8.items() for h, t, r, _ in per_k[0]}
    assert len(base_fp32 ^ base_int8) <= max(1, len(base_fp32) // 4)


def test_cli_prediction_options_parse():
    import argparse

    from docre.cli.commands import add_model_commands
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command"))
    for command in (["predict", "m", "in.pubtator", "out.jsonl"], ["evaluate", "m", "data"]):
        args = parser.parse_args(command + ["--batch-size", "4", "--threads", "2", "--int8"])
        assert (args.batch_size, args.threads, args.int8) == (4, 2, True)
        args = parser.parse_args(command)
        assert (args.batch_size, args.threads, args.int8) == (8, None, False)


# ------------------------------------------------------------------------------------------ fixed points
@pytest.mark.parametrize("relation_matrix", ["argmax", "multihot"])
def test_converged_documents_are_not_recomputed(tiny_encoder, relation_matrix, monkeypatch):
    """P^(k+1) = module(F_0, R(P^(k))): once R(P^(k)) = R(P^(k-1)) a document is at a fixed point, so
    prediction stops recomputing it, with the same logits as running every iteration. A document with
    one entity (no pair) is fixed from the start; the others go on in a sub-batch."""
    from docre.data.document import Document, Entity, Mention
    from docre.model.plan import InferencePlan
    docs, inventory = docred_docs()
    model = make_model(tiny_encoder, inventory, seed=1, inference={"relation_matrix": relation_matrix})
    alone = Document("one-entity", [["Lisbon", "is", "a", "city", "."]], [Entity([Mention(0, 0, 1, "Lisbon")], "LOC")],
                     [])
    examples = examples_for(model, docs + [alone])
    batch = collate(examples, model.inventory)
    sizes = []
    forward = InferencePlan.forward
    monkeypatch.setattr(InferencePlan, "forward", lambda self, f0, *a: sizes.append(f0.shape[0]) or forward(self, f0, *a))
    K = 6
    with torch.inference_mode():
        ref = model.iteration_logits(batch, K)
        model.iteration_stats["documents"] = 0
        new = model.prediction_logits(batch, K)
    B = len(examples)
    assert sizes[0] == B and B - 1 in sizes[1:]  # the one-entity document drops out after iteration 1
    assert model.iteration_stats["documents"] == sum(sizes) < K * B
    for a, b in zip(new, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
