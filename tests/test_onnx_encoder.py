"""The encoder in ONNX Runtime (issue 13, `--runtime onnx`): same triples as the torch path in fp32, valid
output in int8, a cache keyed by the weights, and a clear error without onnxruntime.

The tiny encoder of conftest has 64 positions; the models here use 24-token windows, so the fixture
documents also go through the windowed encoder (several windows per document, rows summed and
renormalised)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from docre.data.batch import Example, collate
from docre.data.document import cdr_inventory
from docre.data.tokenize import encode_document
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.model.inference import InferenceConfig

from test_predict_speed import cdr_docs, docred_docs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures"


def needs_ort():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


def make_model(encoder: str, inventory, seed: int = 0, window: int | None = 24) -> DocREModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder=encoder, feature_dim=16, iterations=3,
                      inference=InferenceConfig(num_layers=2, ffn_dim=32, predictor_dim=16))
    model = DocREModel.create(cfg, inventory).eval()
    if window:
        model.base.encoder.max_length, model.base.encoder.overlap = window, 8
    with torch.no_grad():  # spread the logits so that decoding is exercised
        for classifier in (model.base.classifier, model.inference.classifier):
            classifier.weight.mul_(20.0)
            classifier.bias.zero_()
    return model


def examples_for(model: DocREModel, docs) -> list[Example]:
    return [Example.from_row(encode_document(d, model.tokenizer, model.inventory)) for d in docs]


def test_encode_rows_match_the_torch_path(tiny_encoder, tmp_path):
    needs_ort()
    from docre.model.onnx_encoder import onnx_encoder
    model = make_model(tiny_encoder, cdr_inventory())
    batch = collate(examples_for(model, cdr_docs()), model.inventory)
    enc = model.base.encoder
    assert batch.input_ids.shape[1] > enc.max_length  # the windowed path
    valid = batch.mention_valid
    with torch.inference_mode():
        cases = [(batch.input_ids, batch.attention_mask, batch.mention_tokens),
                 (batch.input_ids[:, :20], batch.attention_mask[:, :20], batch.mention_tokens.clamp(max=19))]
        want = [enc.encode_rows(*case) for case in cases]
        enc.runtime = onnx_encoder(enc.model, "fp32", threads=1, cache=tmp_path)
        got = [enc.encode_rows(*case) for case in cases]
    for (ids, mask, _), (h_t, a_t), (h_o, a_o) in zip(cases, want, got):
        real = mask.bool()  # padding positions are never read
        torch.testing.assert_close(h_o[real], h_t[real], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a_o[valid], a_t[valid], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["cdr", "docred"])
def test_onnx_fp32_gives_the_same_triples(tiny_encoder, tmp_path, which):
    needs_ort()
    from docre.model.onnx_encoder import use_onnx_encoder
    docs, inventory = (cdr_docs(), cdr_inventory()) if which == "cdr" else docred_docs()
    model = make_model(tiny_encoder, inventory, seed=1)
    examples = examples_for(model, docs)
    want = model.predict_examples(examples, 3, batch_size=3)
    use_onnx_encoder(model, threads=1, cache=tmp_path)
    assert not model.int8
    got = model.predict_examples(examples, 3, batch_size=3)
    assert any(d for per_k in want.values() for d in per_k)  # something is predicted
    assert got.keys() == want.keys()
    for doc_id in want:
        for k, (a, b) in enumerate(zip(got[doc_id], want[doc_id])):
            assert [(h, t, r) for h, t, r, _ in a] == [(h, t, r) for h, t, r, _ in b], (doc_id, k)
            for (*_, sa), (*_, sb) in zip(a, b):
                assert sa == pytest.approx(sb, abs=1e-4)


def test_onnx_int8_runs_and_mostly_agrees(tiny_encoder, tmp_path):
    needs_ort()
    from docre.model.onnx_encoder import use_onnx_encoder
    model = make_model(tiny_encoder, cdr_inventory())
    examples = examples_for(model, cdr_docs())
    fp32 = model.predict_examples(examples, 3)
    use_onnx_encoder(model, int8=True, threads=1, cache=tmp_path)
    assert model.int8  # the base head and inference module plans are torch int8 too
    assert model.base.encoder.runtime.path.name.endswith("-int8.onnx")
    int8 = model.predict_examples(examples, 3)
    assert int8.keys() == fp32.keys()
    for per_k in int8.values():
        assert len(per_k) == 4
        for decisions in per_k:
            assert all(0.5 <= score <= 1.0 for *_, score in decisions)  # predicted: above the threshold class
    base_fp32 = {(d, h, t, r) for d, per_k in fp32.items() for h, t, r, _ in per_k[0]}
    base_int8 = {(d, h, t, r) for d, per_k in int8.items() for h, t, r, _ in per_k[0]}
    assert len(base_fp32 ^ base_int8) <= max(1, len(base_fp32) // 4)


def test_graphs_are_cached_by_weights_and_mode(tiny_encoder, tmp_path):
    needs_ort()
    from docre.model.onnx_encoder import build
    model = make_model(tiny_encoder, cdr_inventory())
    bert = model.base.encoder.model
    first = build(bert, "fp32", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build(bert, "fp32", tmp_path) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert build(bert, "int8", tmp_path) != first
    with torch.no_grad():
        bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1.0
    assert build(bert, "fp32", tmp_path) != first  # other weights, other graph
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".onnx"] * 3  # no leftovers, nothing pickled
    import onnx
    graph = onnx.load(str(first)).graph
    # fused: flash-attention MultiHeadAttention without a mask (one unpadded sequence per call)
    assert [i.name for i in graph.input] == ["input_ids"]
    assert {"MultiHeadAttention", "EmbedLayerNormalization"} <= {n.op_type for n in graph.node}
    assert [o.name for o in graph.output] == ["last_hidden_state", "last_layer_input", "last_layer_key"]


def test_a_torch_quantized_encoder_is_refused(tiny_encoder, tmp_path):
    needs_ort()
    from docre.model.onnx_encoder import use_onnx_encoder
    model = make_model(tiny_encoder, cdr_inventory())
    model.quantize_int8()
    with pytest.raises(ValueError, match="fp32"):
        use_onnx_encoder(model, cache=tmp_path)


def test_without_onnxruntime_the_error_says_what_to_install(tiny_encoder, monkeypatch):
    from docre.model import onnx_encoder
    monkeypatch.setattr(onnx_encoder, "available", lambda: False)
    model = make_model(tiny_encoder, cdr_inventory())
    with pytest.raises(ImportError, match=r"docre\[onnx\]"):
        onnx_encoder.use_onnx_encoder(model)
    assert model.base.encoder.runtime is None


def test_cli_runtime_onnx(tiny_encoder, tmp_path):
    needs_ort()
    from docre.cli import main
    model = make_model(tiny_encoder, cdr_inventory(), window=None)
    model.save_pretrained(tmp_path / "model")
    outs = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.jsonl"
        assert main(["predict", str(tmp_path / "model"), str(FIXTURES / "cdr_sample.data"), str(out), "--device",
                     "cpu", "--iterations", "2", "--threads", "1", "--runtime", runtime]) == 0
        outs[runtime] = [json.loads(line) for line in out.read_text().splitlines()]
    assert outs["torch"], "the fixture model predicts something"
    key = ("doc_id", "head", "tail", "relation", "iteration")
    assert [[r[k] for k in key] for r in outs["onnx"]] == [[r[k] for k in key] for r in outs["torch"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(outs["onnx"], outs["torch"])) <= 1e-4
    assert not any(p.suffix == ".onnx" for p in (tmp_path / "model").rglob("*"))  # the checkpoint is untouched


def test_cli_runtime_option_parses():
    import argparse

    from docre.cli.commands import add_model_commands
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command"))
    for command in (["predict", "m", "in.pubtator", "out.jsonl"], ["evaluate", "m", "data"]):
        assert parser.parse_args(command).runtime == "torch"
        args = parser.parse_args(command + ["--runtime", "onnx", "--int8"])
        assert (args.runtime, args.int8) == ("onnx", True)
