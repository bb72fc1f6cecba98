"""ONNX Runtime for the encoder at prediction time (issue 13): fp32 with ORT's BERT fusions, or int8.

`export_encoder` writes the Hugging Face BERT inside `WindowedEncoder.model` as an ONNX graph with
dynamic batch and sequence axes and two outputs: the last hidden state and the last layer's *input*
hidden state (``hidden_states[-2]``). ORT's transformer optimizer fuses embeddings + LayerNorm and
attention (MultiHeadAttention without a mask: MLAS flash attention, one unpadded sequence per call);
int8 is `quantize_dynamic` of that graph (int8 weights, activations quantized on the fly: MLAS u8 x s8
kernels, VNNI where the CPU has it).

The attention rows at mention markers are still computed in torch (`WindowedEncoder._encode_rows`):
q from the last layer's own query projection at those rows only and K over all tokens, both from the
last layer's input, with the same scale, mask and softmax as the torch path.

Graphs are cached under ``$DOCRE_CACHE/onnx`` (default ``~/.cache/docre/onnx``), keyed by a hash of
the encoder's config and weights, the mode and the library versions; nothing is written next to the
checkpoint and nothing is pickled. onnxruntime and onnx are an optional extra (``pip install
docre[onnx]``); nothing here is imported unless `--runtime onnx` asks for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODES = ("fp32", "int8")
FORMAT = "3"  # bump when the export or the optimisation recipe changes


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> Path:
    return Path(os.environ.get("DOCRE_CACHE") or Path.home() / ".cache" / "docre") / "onnx"


def encoder_key(model: nn.Module, mode: str) -> str:
    """Hash of everything the exported graph depends on: config, weights, mode, versions."""
    import onnxruntime
    import transformers
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "mode": mode, "ort": onnxruntime.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "config": model.config.to_dict()}, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class _TwoOutputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.last_hidden_state, out.hidden_states[-2]


def export_encoder(model: nn.Module, path: str | Path, opset: int = 17) -> None:
    """The HF encoder -> ONNX (TorchScript exporter; eager attention, the pattern ORT's fusions know)."""
    if not hasattr(model, "set_attn_implementation"):
        raise ValueError("ONNX export needs a transformers model with set_attn_implementation")
    if any(isinstance(m, nn.Module) and type(m).__module__.startswith("torch.ao") for m in model.modules()):
        raise ValueError("the encoder is already quantized with torch; export the fp32 encoder")
    before = model.config._attn_implementation
    ids = torch.arange(32, dtype=torch.long).view(2, 16) % model.config.vocab_size
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    axes = {0: "batch", 1: "sequence"}
    model.set_attn_implementation("eager")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TwoOutputs(model).eval(), (ids, mask), str(path), dynamo=False,
                              input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state", "last_layer_input"],
                              dynamic_axes={n: axes for n in ("input_ids", "attention_mask", "last_hidden_state",
                                                              "last_layer_input")},
                              opset_version=opset, do_constant_folding=True)
    finally:
        model.set_attn_implementation(before)


# ORT 1.32 on x86: its CPU SkipLayerNormalization kernel took 0.78 s where Add + LayerNormalization take 0.17 s
# (1 thread, 64 CDR documents), and BiasGelu 0.32 s where Add + Gelu take 0.22 s (int8: the bias is inside
# the quantized MatMul), so those two fusions stay off, also in the session's own graph optimizer.
DISABLED_FUSIONS = ["SkipLayerNormFusion", "BiasGeluFusion"]


def optimize(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict:
    """ORT's BERT fusions: EmbedLayerNormalization, and MultiHeadAttention *without a mask*, whose CPU kernel is
    MLAS flash attention (with a key padding mask it falls back to the unfused kernel); the graph is run one
    unpadded sequence at a time (`OnnxEncoder`), so no mask is needed. If the attention pattern is not
    recognised the graph keeps its attention_mask input and stays correct."""
    from onnxruntime.transformers.fusion_options import (
        AttentionMaskFormat,
        FusionOptions,
    )
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    options.attention_mask_format = AttentionMaskFormat.NoMask
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    options.enable_bias_gelu = False
    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         optimization_options=options, opt_level=0)
    opt.save_model_to_file(str(dst))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def add_key_output(path: Path) -> bool:
    """Expose the last layer's key projection (with its bias) as a third output, `last_layer_key`, so that
    torch need not project K again for the attention rows. Only when the last MultiHeadAttention node takes
    a separate key and the packed q/k/v bias (the layout `optimize` produces); otherwise nothing changes."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    inits = {t.name: t for t in graph.initializer}
    if not mha or len(mha[-1].input) < 4 or mha[-1].input[3] not in inits:
        return False
    key, bias = mha[-1].input[1], numpy_helper.to_array(inits[mha[-1].input[3]])
    d = bias.shape[0] // 3
    graph.initializer.append(numpy_helper.from_array(bias[d:2 * d].copy(), "docre_last_key_bias"))
    graph.node.append(helper.make_node("Add", [key, "docre_last_key_bias"], ["last_layer_key"], name="docre_last_key"))
    graph.output.append(helper.make_tensor_value_info("last_layer_key", onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return True


def quantize(src: Path, dst: Path, weight_type: str = "qint8") -> None:
    """Dynamic int8 quantization of the fused graph's MatMul and Attention weights."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice on every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type={"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[weight_type],
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    finally:
        logging.getLogger().setLevel(level)


def build(model: nn.Module, mode: str = "fp32", cache: str | Path | None = None) -> Path:
    """The cached ONNX graph of `model` (a HF BERT-style encoder) for `mode`, built on first use."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    root = Path(cache) if cache else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"encoder-{encoder_key(model, mode)}-{mode}.onnx"
    if target.exists():
        return target
    cfg = model.config
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        tmp = Path(tmp)
        export_encoder(model, tmp / "raw.onnx")
        optimize(tmp / "raw.onnx", tmp / "fused.onnx", cfg.num_attention_heads, cfg.hidden_size)
        final = tmp / "fused.onnx"
        if mode == "int8":
            quantize(final, tmp / "int8.onnx")
            final = tmp / "int8.onnx"
        add_key_output(final)
        os.replace(final, target)  # atomic: concurrent builders write the same bytes
    return target


class OnnxEncoder:
    """An ORT session over the exported encoder: (ids, mask) -> (last hidden, last layer's input, last layer's
    keys or None), torch fp32.

    Each sequence runs on its own, cut to its length (no padding: the fused attention has no mask, and
    flash attention needs none); rows are right-padded and positions past a row's length come back as zeros
    (the attention rows give them zero weight, and nothing else reads them)."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # threads spin between the ops of a run, but not after it: torch runs between encoder calls on the
        # same cores, and spinning ORT threads slowed its share down ~2x (measured, 2 threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        so.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=DISABLED_FUSIONS)
        self.with_mask = "attention_mask" in {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        ids = input_ids.cpu().numpy().astype(np.int64, copy=False)
        lengths = attention_mask.sum(1).tolist()
        out: list[np.ndarray] = []
        for i, n in enumerate(lengths):
            feed = {"input_ids": np.ascontiguousarray(ids[i:i + 1, :n])}
            if self.with_mask:
                feed["attention_mask"] = np.ones((1, n), dtype=np.int64)
            got = self.session.run(self.outputs, feed)
            if not out:
                out = [np.zeros((len(lengths), ids.shape[1], g.shape[-1]), dtype=np.float32) for g in got]
            for buf, g in zip(out, got):
                buf[i, :n] = g[0]
        hidden, last_input, *key = (torch.from_numpy(o) for o in out)
        return hidden, last_input, (key[0] if key else None)


def onnx_encoder(model: nn.Module, mode: str = "fp32", threads: int | None = None,
                 cache: str | Path | None = None) -> OnnxEncoder:
    if not available():
        raise ImportError("--runtime onnx needs onnxruntime and onnx: pip install 'docre[onnx]'")
    return OnnxEncoder(build(model, mode, cache), threads)


def use_onnx_encoder(model, int8: bool = False, threads: int | None = None, cache: str | Path | None = None):
    """Predict with `model`'s (a DocREModel) encoder in ONNX Runtime: fp32 with fused kernels, or int8 with
    `int8`, which also quantizes the base head and inference module with torch, as `quantize_int8` does.

    Prediction only, on CPU; the torch encoder stays (its last layer's query/key projections give the
    attention rows). Call instead of, not after, `quantize_int8`."""
    encoder = model.base.encoder
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("the ONNX Runtime encoder runs on the CPU only")
    if model.int8 or not encoder._manual:
        raise ValueError("the ONNX Runtime encoder needs an fp32 BERT-style encoder (not after quantize_int8)")
    encoder.runtime = onnx_encoder(encoder.model, "int8" if int8 else "fp32", threads, cache)
    model.int8 = int8  # the torch int8 base head and inference module plans (`prediction_plans`)
    return model.eval()
