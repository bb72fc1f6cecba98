"""DocRE-II: the base module, the inference module on top, their losses, checkpoints and prediction.

Data path: Document -> `encode_document` (Parquet row) -> `collate` (Batch) ->
`DocREModel` -> logits per iteration -> `Triple`s.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import nn

from ..data.batch import Batch, Example, collate, prediction_batches
from ..data.document import Document, RelationInventory
from .base import BaseHeadPlan, BaseModule, BaseOutput
from .encoder import WindowedEncoder, load_encoder
from .inference import ExtendedCrossAttention, InferenceConfig, InferenceModule, pair_mask_from_entities
from .losses import adaptive_threshold_loss, simclr_loss, simsiam_loss, threshold_decode
from .noise import inject_noise, inject_noise_predicted, inject_noise_release, sample_noise_rate
from .plan import InferencePlan


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved as config.json next to the weights.

    Defaults follow the paper; `output="sum"`, `relation_source="gold"` and
    `inference.relation_matrix="multihot"` are the authors' release variants,
    and `contrastive`, `inference.attention`, `inference.fusion` are ablations.
    """
    encoder: str | None = None  # Hugging Face id or path; None = offline MiniLM
    num_relations: int = 2
    feature_dim: int = 256  # d: size of F_0, R and the inference module
    emb_dim: int | None = None  # size of W_s / W_o outputs (eq. 2-3); None = encoder hidden size
    dropout: float = 0.1
    max_labels: int = 4  # cap on relations predicted per pair
    iterations: int = 3  # K at prediction time
    output: Literal["last", "sum"] = "last"  # paper: P^(K); release: sum of base + all iteration logits
    relation_source: Literal["predicted", "gold"] = "predicted"  # stage-2 R_0: base argmax (paper) / gold (release)
    # stage-2 noise on R_0 (Sec. 2.3), see inference.py: "candidate_pairs" r of all candidate entries;
    # "predicted_relations" r of the predicted relations + as many predicted-NA pairs; "release_gold" the
    # release's corruption of gold labels (its own rates; implies gold R_0)
    noise: Literal["candidate_pairs", "predicted_relations", "release_gold"] = "candidate_pairs"
    noise_low: float = 0.0
    noise_high: float = 0.4  # r ~ U(noise_low, noise_high)
    r0_dropout: bool = True  # stage-2 R_0 from the training forward F_0 comes from; False: a separate dropout-free one
    stage2_base_dropout: float | None = None  # dropout rate of the base's stage-2 training forward; None = `dropout`
    contrastive: Literal["simsiam", "simclr", "none"] = "simsiam"
    contrastive_weight: float = 1.0  # weight of L_C next to L_R ("paper" loss weights)
    loss_weights: Literal["paper", "release"] = "paper"  # release: (L_inf/10 + L_inf2/10 + L_base/10 + L_C) / 2
    stage2_base_loss: bool = True  # keep the adaptive-threshold loss on the base logits in stage 2 (False lost on CDR)
    base_head: Literal["fnn", "bilinear"] = "fnn"  # FNN of eq. 2-3 (paper) / ATLOP's group bilinear (release)
    bilinear_block: int = 64
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if isinstance(self.inference, dict):
            self.inference = InferenceConfig(**self.inference)
        self.inference.hidden = self.feature_dim
        self.inference.num_relations = self.num_relations

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        """A saved config. Keys it lacks take the value the code had before the key existed, so a
        checkpoint trained then loads as the variant it is (see `LEGACY`)."""
        known = {f.name for f in fields(ModelConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = {k: v for k, v in LEGACY.items() if k not in d} | d
        inference = dict(d.get("inference") or {})
        d["inference"] = {k: v for k, v in LEGACY_INFERENCE.items() if k not in inference} | inference
        return ModelConfig(**d)


@contextmanager
def dropout_rate(module: nn.Module, p: float | None):
    """Every nn.Dropout in `module` at rate `p` for the duration (None: unchanged).

    A probe of issue 12: on its own training documents the stage-1 base is far more often right
    than on unseen ones, so stage 2 shows the inference module inputs (F_0, R_0) more reliable
    than it meets at test time. A noisier base forward in stage 2 was meant to narrow that gap; at
    0.3 it lowered the base and gained nothing on CDR (docs/iterative-gain.md)."""
    if p is None:
        yield
        return
    layers = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    before = [m.p for m in layers]
    for m in layers:
        m.p = p
    try:
        yield
    finally:
        for m, q in zip(layers, before):
            m.p = q


# what a config saved before each key existed meant (the defaults then)
LEGACY = {"noise": "candidate_pairs", "r0_dropout": True}
LEGACY_INFERENCE = {"queries": "joint"}


@dataclass
class Triple:
    """One extracted fact, with names so it is readable without the source document."""
    doc_id: str
    head: int
    tail: int
    relation: str
    relation_name: str
    score: float  # sigmoid(logit_r - logit_TH): above 0.5 exactly when predicted
    iteration: int  # first iteration (0 = base module) from which this fact was predicted through K
    head_id: str | None = None
    tail_id: str | None = None
    head_name: str = ""
    tail_name: str = ""
    head_type: str = ""
    tail_type: str = ""


def restrict_to_candidates(logits: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """Non-candidate pairs (padding, the diagonal, type-filtered pairs) are forced to 'no relation'."""
    forced = torch.full_like(logits, -1e4)
    forced[..., 0] = 1e4
    return torch.where(candidate_mask[..., None], logits, forced)


class DocREModel(nn.Module):
    def __init__(self, config: ModelConfig, encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        windowed = WindowedEncoder(encoder, tokenizer.cls_token_id, tokenizer.sep_token_id,
                                   tokenizer.pad_token_id or 0)
        self.base = BaseModule(windowed, config.num_relations, config.feature_dim, config.emb_dim, config.dropout,
                               config.base_head, config.bilinear_block)
        self.inference = InferenceModule(config.inference)
        self.inventory: RelationInventory | None = None
        self.int8 = False  # set by `quantize_int8`: prediction only
        # prediction: document-iterations computed by the inference module (fixed points are not recomputed)
        self.iteration_stats = {"documents": 0}

    # ----------------------------------------------------------------- construction / checkpoints
    @staticmethod
    def create(config: ModelConfig, inventory: RelationInventory, pretrained: bool = True) -> "DocREModel":
        from ..data.pretrained import load_tokenizer
        config.num_relations = len(inventory)
        config.__post_init__()
        model = DocREModel(config, load_encoder(config.encoder, config_only=not pretrained),
                           load_tokenizer(config.encoder))
        model.inventory = inventory
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """A directory: model.safetensors, config.json, relations.json, encoder/ config, tokenizer/ files."""
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # clone: safetensors refuses tensors sharing memory (InferenceConfig.shared_ffn ties ffn_f/ffn_r)
        state = {k: v.detach().cpu().clone().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt", "docre": "1"})
        (path / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        (path / "relations.json").write_text(self.inventory.to_json() if self.inventory else "{}")
        self.base.encoder.model.config.save_pretrained(path / "encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")

    @staticmethod
    def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> "DocREModel":
        """Load a checkpoint directory; weights come from safetensors only, nothing is unpickled."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        path = Path(path)
        config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(path / "encoder"))
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", use_fast=True)
        tokenizer.model_max_length = 1 << 30
        model = DocREModel(config, encoder, tokenizer)
        missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        model.inventory = RelationInventory.from_json((path / "relations.json").read_text())
        return model.to(device).eval()

    # ----------------------------------------------------------------- forward passes
    def run_base(self, batch: Batch) -> BaseOutput:
        return self.base(batch.input_ids, batch.attention_mask, batch.mention_tokens, batch.mention_entity,
                         batch.mention_slot, batch.mention_valid, batch.entity_mask)

    def stage1_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """Stage 1 (Sec. 2.3): the base module alone, adaptive-threshold loss on candidate pairs."""
        out = self.run_base(batch)
        cand = batch.candidate_mask
        loss = adaptive_threshold_loss(out.logits[cand], batch.labels[cand])
        return loss, {"loss_base": loss.item()}

    def relation_ids(self, out: BaseOutput, batch: Batch) -> torch.Tensor:
        """Label ids [B, N, N] that R_0 is built from in stage 2: gold (release), or the base module's
        argmax. With `r0_dropout` (the default) the argmax is of the same training forward `out` that
        F_0 comes from, so R_0 is the base's decision on the very F_0 the inference module sees, as
        at test time. Without it, R_0 comes from a second, dropout-free forward and can disagree with
        F_0 where the dropout forward's decision would not; that reading lost on CDR and Re-DocRED
        (docs/iterative-gain.md)."""
        cfg = self.config
        if cfg.relation_source == "gold" or cfg.noise == "release_gold":
            ids = batch.labels.float().argmax(-1)  # first positive label; 0 when none
        else:
            logits = out.logits.detach()
            if not cfg.r0_dropout and self.base.training:
                with torch.no_grad():
                    self.base.eval()
                    try:
                        logits = self.run_base(batch).logits
                    finally:
                        self.base.train()
            ids = restrict_to_candidates(logits.float(), batch.candidate_mask).argmax(-1)
        return ids.masked_fill(~batch.candidate_mask, 0)

    def noisy_relations(self, ids: torch.Tensor, cand: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One noised copy of the stage-2 label ids (Sec. 2.3), by the configured `noise` variant."""
        cfg = self.config
        if cfg.noise == "release_gold":
            return inject_noise_release(ids, cand, cfg.num_relations, generator)
        rate = sample_noise_rate(generator, cfg.noise_low, cfg.noise_high)
        if cfg.noise == "predicted_relations":
            return inject_noise_predicted(ids, rate, cand, cfg.num_relations, generator)
        return inject_noise(ids, rate, cand, cfg.num_relations, generator)

    def stage2_loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Stage 2 (Sec. 2.3): one-pass correction of noised base predictions + contrastive loss (eq. 14).

        "paper" weights: L_inf + L_base + contrastive_weight x L_C. "release" weights, as the authors'
        code: (L_inf/10 + L_inf2/10 + L_base/10 + L_C)/2, L_inf2 being the threshold loss of the
        second (reversed) view."""
        cfg = self.config
        with dropout_rate(self.base, cfg.stage2_base_dropout):
            out = self.run_base(batch)  # F_0 once per batch: both views, R_0 and the base loss share it
        cand, labels, emask = batch.candidate_mask, batch.labels, out.entity_mask
        ids = self.relation_ids(out, batch)
        f0 = out.features
        B = f0.shape[0]
        r_bar = self.inference.relation_matrix(self.noisy_relations(ids, cand, generator), emask)
        if cfg.contrastive != "none":
            # both views in one pass of the inference module, stacked on the batch axis: the normal view
            # module(F_0, R_bar) and the reversed one module(R_hat, F_0) (Fig. 4, `losses.reversed_view`);
            # every document is computed independently, so this is the two calls' result in one
            r_hat = self.inference.relation_matrix(self.noisy_relations(ids, cand, generator), emask)
            logits_2, m_2 = self.inference(torch.cat([f0, r_hat]), torch.cat([r_bar, f0]), torch.cat([emask, emask]))
            logits_bar, m_bar = logits_2[:B], m_2[:B]
            d = m_2.shape[-1] // 2
            m_hat = torch.cat([m_2[B:, ..., d:], m_2[B:, ..., :d]], dim=-1)  # [X_r, X_f], as reversed_view
        else:
            logits_bar, m_bar = self.inference(f0, r_bar, emask)
        losses = {"loss_inference": adaptive_threshold_loss(logits_bar[cand], labels[cand])}
        if cfg.stage2_base_loss:
            losses["loss_base"] = adaptive_threshold_loss(out.logits[cand], labels[cand])
        if cfg.contrastive != "none":
            pair_mask = pair_mask_from_entities(emask)
            if cfg.contrastive == "simsiam":
                losses["loss_contrastive"] = simsiam_loss(self.inference.predictor, m_bar, m_hat, pair_mask)  # eq. 14
            else:
                losses["loss_contrastive"] = simclr_loss(m_bar, m_hat, pair_mask)
            if cfg.loss_weights == "release":
                logits_hat = self.inference.classifier_logits(m_hat)
                losses["loss_inference2"] = adaptive_threshold_loss(logits_hat[cand], labels[cand])
        if cfg.loss_weights == "release":
            loss = sum(v / 10 for k, v in losses.items() if k != "loss_contrastive")
            loss = (loss + losses.get("loss_contrastive", 0.0)) / 2
        else:
            loss = sum(v for k, v in losses.items() if k != "loss_contrastive")
            if "loss_contrastive" in losses:
                loss = loss + cfg.contrastive_weight * losses["loss_contrastive"]
        return loss, {k: v.item() for k, v in losses.items()}

    @torch.no_grad()
    def iteration_logits(self, batch: Batch, iterations: int | None = None) -> list[torch.Tensor]:
        """[base logits, P^(1), ..., P^(K)], each restricted to candidate pairs.

        Each iteration rebuilds R_0^(k) from the previous iteration's predictions
        while F_0 stays the base module's output (Sec. 2.2).
        """
        K = self.config.iterations if iterations is None else iterations
        out = self.run_base(batch)
        cand = batch.candidate_mask
        steps = [restrict_to_candidates(out.logits, cand)]
        for _ in range(K):
            r0 = self.inference.relation_matrix(steps[-1], out.entity_mask)
            logits, _ = self.inference(out.features, r0, out.entity_mask)
            steps.append(restrict_to_candidates(logits, cand))
        return steps

    def final_logits(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """P^(K) (paper) or the release's sum of base + all iterations, in float32 whatever the compute dtype."""
        if self.config.output == "sum" and len(steps) > 1:
            return torch.stack([s.float() for s in steps]).sum(0)
        return steps[-1].float()

    # ----------------------------------------------------------------- prediction
    def quantize_int8(self) -> "DocREModel":
        """int8 prediction on CPU: dynamic quantization (int8 weights, activations quantized on the fly)
        of the encoder's Linear layers here, and of the inference module's (and the base head's) in
        each prediction plan. Prediction only: the model cannot be trained or saved afterwards."""
        from torch.ao.quantization import quantize_dynamic
        if next(self.parameters()).device.type != "cpu":
            raise ValueError("int8 prediction (dynamic quantization) runs on the CPU only")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(self.base.encoder.model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        self.int8 = True
        return self.eval()

    def prediction_plans(self) -> tuple[BaseHeadPlan, InferencePlan]:
        """The base head and inference module in their prediction forms, from the current weights."""
        head, plan = BaseHeadPlan(self.base), InferencePlan(self.inference)
        if self.int8:
            from torch.ao.quantization import quantize_dynamic
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                head = quantize_dynamic(head, {nn.Linear}, dtype=torch.qint8)
                plan = quantize_dynamic(plan, {nn.Linear}, dtype=torch.qint8)
        return head, plan

    def prediction_logits(self, batch: Batch, iterations: int | None = None,
                          plans: tuple[BaseHeadPlan, InferencePlan] | None = None,
                          lap=None) -> list[torch.Tensor]:
        """`iteration_logits` for prediction: the same [base, P^(1), ..., P^(K)] (up to float rounding),
        batched over documents, with attention rows at mention markers only and F_0's share of the
        first inference layer computed once for all K iterations (see `InferencePlan`).

        Iterations stop early per document at a fixed point: P^(k+1) = module(F_0, R(P^(k))) with F_0
        fixed, so once a document's relation matrix R(P^(k)) equals R(P^(k-1)), P^(k+1) = P^(k) and
        every later iteration repeats it; only documents whose predictions still change are recomputed."""
        K = self.config.iterations if iterations is None else iterations
        head, plan = plans or self.prediction_plans()
        out = self.base.predict_forward(batch.input_ids, batch.attention_mask, batch.mention_tokens,
                                        batch.mention_entity, batch.mention_slot, batch.mention_valid,
                                        batch.entity_mask, head, lap)
        cand = batch.candidate_mask
        steps = [restrict_to_candidates(out.logits, cand)]
        if K == 0:
            return steps
        f0 = out.features
        f0_proj = plan.first_features(f0)
        masks = ExtendedCrossAttention.masks(out.entity_mask, f0.dtype)
        if lap:
            lap("inference_f0")
        B, N = out.entity_mask.shape
        previous = plan.relation_state(steps[0])
        active = torch.arange(B, device=f0.device)
        for k in range(K):
            if k > 0:
                state = plan.relation_state(steps[-1])
                active = (state != previous).flatten(1).any(1).nonzero().squeeze(1)
                previous = state
                if len(active) == 0:  # every document at its fixed point
                    steps.extend([steps[-1]] * (K - k))
                    for j in range(k, K):
                        if lap:
                            lap(f"inference_k{j + 1}")
                    break
            if len(active) == B:
                logits = plan(f0, f0_proj, steps[-1], out.entity_mask, masks)
            else:
                sub_masks = (masks[0].view(B, N, 1, 1, N)[active].view(-1, 1, 1, N), masks[1][active])
                logits = steps[-1].clone()
                logits[active] = plan(f0[active], f0_proj[active], steps[-1][active], out.entity_mask[active],
                                      sub_masks).to(logits.dtype)
            self.iteration_stats["documents"] += len(active)
            steps.append(restrict_to_candidates(logits, cand))
            if lap:
                lap(f"inference_k{k + 1}")
        return steps

    def predict_examples(self, examples: list[Example], iterations: int | None = None, batch_size: int = 8,
                         max_tokens: int | None = 8192, progress: bool = False,
                         profile: dict | None = None, max_padding: float = 0.1) -> dict[str, list[list[tuple]]]:
        """doc_id -> per K (0..K) a list of (head, tail, relation index, score) decisions.

        Batches come from `prediction_batches` (length and entity count, padding within
        `max_padding`); `profile`, when given, accumulates seconds per component
        (collate, encoder, attention, base_head, inference_f0, inference_k1.., decode)."""
        self.eval()
        device = next(self.parameters()).device
        K = self.config.iterations if iterations is None else iterations
        results: dict[str, list[list[tuple]]] = {}
        batches = prediction_batches(examples, batch_size, max_tokens, max_padding, pair_weight=0.1 + 0.25 * K)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="predict", unit="batch")
        lap = None
        if profile is not None:
            last = [time.perf_counter()]

            def lap(name: str) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                profile[name] = profile.get(name, 0.0) + now - last[0]
                last[0] = now
        with torch.inference_mode():
            plans = self.prediction_plans()
            for chunk in batches:
                if lap:
                    lap("other")
                batch = collate(chunk, self.inventory, self.tokenizer.pad_token_id or 0).to(device)
                if lap:
                    lap("collate")
                with precision_autocast(device):
                    steps = self.prediction_logits(batch, K, plans, lap)
                per_k = []
                for k in range(K + 1):
                    logits = (self.final_logits(steps[:k + 1]) if k > 0 else steps[0]).float()
                    per_k.append(self.decode_logits(logits, batch.candidate_mask))
                for b, doc_id in enumerate(batch.doc_ids):
                    results[doc_id] = [decisions[b] for decisions in per_k]
                if lap:
                    lap("decode")
        return results

    def decode_logits(self, logits: torch.Tensor, cand: torch.Tensor) -> list[list[tuple]]:
        B = logits.shape[0]
        out: list[list[tuple]] = [[] for _ in range(B)]
        idx = cand.nonzero()  # [P, 3] (b, h, t)
        if len(idx) == 0:
            return out
        pair_logits = logits[cand]
        hot = threshold_decode(pair_logits, self.config.max_labels)
        scores = torch.sigmoid(pair_logits - pair_logits[:, :1])
        p, r = hot[:, 1:].nonzero().unbind(1)
        r = r + 1
        # one conversion to Python for all decisions (not one .item() per triple)
        for (b, h, t), rel, score in zip(idx[p].tolist(), r.tolist(), scores[p, r].tolist()):
            out[b].append((h, t, rel, score))
        return out

    def predict(self, documents: Iterable[Document], iterations: int | None = None, batch_size: int = 8,
                progress: bool = False) -> list[Triple]:
        """Extract triples from documents (read by any docre reader), with scores and first iteration."""
        from ..data.tokenize import encode_document
        docs = list(documents)
        examples = [Example.from_row(encode_document(d, self.tokenizer, self.inventory, with_document=False))
                    for d in docs]
        return self.triples(docs, self.predict_examples(examples, iterations, batch_size, progress=progress))

    def triples(self, docs: list[Document], decisions: dict[str, list[list[tuple]]]) -> list[Triple]:
        out = []
        for doc in docs:
            per_k = decisions[doc.id]
            final = per_k[-1]
            sets = [{(h, t, r) for h, t, r, _ in ks} for ks in per_k]
            for h, t, r, score in final:
                first = len(sets) - 1
                while first > 0 and (h, t, r) in sets[first - 1]:
                    first -= 1
                rel = self.inventory.ids[r]
                eh, et = doc.entities[h], doc.entities[t]
                out.append(Triple(doc.id, h, t, rel, self.inventory.name(rel), round(score, 6), first,
                                  eh.kb_id, et.kb_id, eh.name, et.name, eh.type, et.type))
        return out


def precision_autocast(device: torch.device):
    """bf16 autocast on CUDA (the heads stay fp32 through linear_fp32); plain fp32 everywhere else."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)

