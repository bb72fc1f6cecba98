"""Two-stage training (DocRE-II Sec. 2.3), evaluation and resumable checkpoints.

Stage 1 trains the base module alone; stage 2 trains the whole model, the base
at a small learning rate and the inference module at a larger one. Each stage
saves, after every epoch, a resumable state (weights, optimiser, scheduler,
RNG, epoch: safetensors + JSON, never pickle) and the best model on the
validation split as a `save_pretrained` directory.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data.batch import Example, bucketed_batches, collate
from ..data.document import Document
from ..data.tokenize import read_parquet_rows
from .metrics import docred_doc_counts, docred_scores
from ..model.docre_ii import DocREModel, ModelConfig, precision_autocast


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    lr_encoder: float = Field(5e-5, ge=0)  # stage 1: encoder; stage 2: the whole base module
    lr_head: float = Field(1e-4, ge=0)  # stage 1: base classifier layers; stage 2: the inference module
    grad_accum: int = Field(1, ge=1)
    freeze_base: bool = False  # ablation "w/ freeze base module" (stage 2)


class TrainConfig(BaseModel):
    """A training run; YAML files validate into this (see configs/)."""
    model_config = ConfigDict(extra="forbid")
    train_data: str  # tokenized dataset directory (docre data tokenize)
    dev_data: str
    out_dir: str
    stages: list[Literal[1, 2]] = [1, 2]
    pretrain: bool = True  # False: ablation "w/o pre-training" (stage 2 starts from the raw encoder)
    init_from: str | None = None  # stage 2 starts from this checkpoint instead of out_dir/stage1/best
    stage1: StageConfig = StageConfig(epochs=20, batch_size=4, lr_encoder=1e-5, lr_head=5e-5)
    stage2: StageConfig = StageConfig(epochs=10, batch_size=4, lr_encoder=1e-6, lr_head=5e-5)
    model: dict = Field(default_factory=dict)  # ModelConfig fields
    warmup_ratio: float = Field(0.06, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_tokens: int | None = 4096  # cap on batch_size x longest document per batch
    seed: int = 66
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # training autocast; auto: bf16 on CUDA, fp32 on CPU
    threads: int | None = Field(None, ge=1)
    eval_iterations: list[int] = [0, 1, 2, 3]
    limit_train: int | None = None  # use only the first n training documents (smoke runs)
    limit_dev: int | None = None
    progress: bool = True

    @staticmethod
    def from_yaml(path: str) -> "TrainConfig":
        import yaml
        with open(path) as f:
            return TrainConfig.model_validate(yaml.safe_load(f))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_split(url: str, limit: int | None = None) -> tuple[list[Example], list[Document]]:
    rows = read_parquet_rows(url)[:limit]
    return [Example.from_row(r) for r in rows], [Document.from_dict(json.loads(r["document"])) for r in rows]


def evaluate(model: DocREModel, examples: list[Example], docs: list[Document], iterations: list[int],
             train_docs: list[Document] | None = None, progress: bool = False, per_doc: bool = False) -> dict:
    """Scores at each K in `iterations` (K = 0 is the base module), from one forward pass per batch.

    With `per_doc`, also ``out["per_doc"]["K<k>"]``: doc id -> (correct, submitted, gold facts)
    (docred_doc_counts) from the same predictions, so a paired bootstrap over documents
    (docre.registry.promotion) can compare two models without predicting again. The other
    keys are the same either way.
    """
    t0 = time.time()
    decisions = model.predict_examples(examples, max(iterations), progress=progress)
    seconds = time.time() - t0
    out = {"docs_per_s": round(len(examples) / max(seconds, 1e-9), 2), "seconds": round(seconds, 2)}
    for k in iterations:
        preds = [(doc_id, h, t, model.inventory.ids[r]) for doc_id, per_k in decisions.items()
                 for h, t, r, _ in per_k[k]]
        s = docred_scores(docs, preds, train_docs)
        out[f"K{k}"] = {"f1": s.f1, "precision": s.precision, "recall": s.recall, "ign_f1": s.ign_f1,
                        "intra_f1": s.intra_f1, "inter_f1": s.inter_f1, "infer_f1": s.infer_f1}
        if per_doc:
            out.setdefault("per_doc", {})[f"K{k}"] = docred_doc_counts(docs, preds)
    return out


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over the first `warmup_ratio` of steps, then linear decay to 0 (Sec. 3.2)."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


def param_groups(model: DocREModel, stage: int, sc: StageConfig, weight_decay: float) -> list[dict]:
    encoder = list(model.base.encoder.parameters())
    enc_ids = {id(p) for p in encoder}
    base_rest = [p for p in model.base.parameters() if id(p) not in enc_ids]
    if stage == 1:
        groups = [{"params": encoder, "lr": sc.lr_encoder}, {"params": base_rest, "lr": sc.lr_head}]
    else:
        groups = [{"params": list(model.inference.parameters()), "lr": sc.lr_head}]
        if not sc.freeze_base:
            groups.insert(0, {"params": encoder + base_rest, "lr": sc.lr_encoder})
        else:
            for p in model.base.parameters():
                p.requires_grad_(False)
    for g in groups:
        g["weight_decay"] = weight_decay
    return groups


# ------------------------------------------------------------------------------ resumable state
def save_state(path: Path, model: DocREModel, optimizer, scheduler, epoch: int, best: float,
               history: list[dict], rng: random.Random) -> None:
    """Everything needed to continue after an interruption, as safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous()  # clone: shared_ffn ties tensors
               for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tmp = path / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    meta = {"epoch": epoch, "best": best, "history": history, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(), "python_rng": list(rng.getstate()[1]),
            "python_rng_version": rng.getstate()[0], "python_rng_gauss": rng.getstate()[2]}
    meta["scheduler"].pop("lr_lambdas", None)
    (path / "state.json.tmp").write_text(json.dumps(meta))
    tmp.replace(path / "state.safetensors")
    (path / "state.json.tmp").replace(path / "state.json")


def load_state(path: Path, model: DocREModel, optimizer, scheduler, rng: random.Random) -> dict:
    from safetensors.torch import load_file
    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # save_state drops lr_lambdas (the schedule is a closure, rebuilt by the caller); LambdaLR.load_state_dict
    # requires the key, so give it the "plain function, nothing to restore" value
    scheduler.load_state_dict({"lr_lambdas": [None] * len(scheduler.lr_lambdas)} | meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    rng.setstate((meta["python_rng_version"], tuple(meta["python_rng"]), meta["python_rng_gauss"]))
    return meta


# ------------------------------------------------------------------------------ the loop
@dataclass
class StageResult:
    stage: int
    best_dir: str
    best_f1: float
    history: list[dict] = field(default_factory=list)


def _train_autocast(device: torch.device, precision: str):
    if precision == "auto":
        return precision_autocast(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_stage(cfg: TrainConfig, stage: int, model: DocREModel, train: tuple, dev: tuple,
                on_epoch: Callable[[dict], None] | None = None, stop_after_epochs: int | None = None,
                on_step: Callable[[dict], None] | None = None, step_every: int = 0) -> StageResult:
    """Train one stage with resume; returns where the best checkpoint is and the per-epoch history.

    on_epoch gets each epoch's record (the caller then reports it; without a
    callback the record is printed as a JSON line). on_step, when step_every
    > 0, gets {stage, epoch, epochs, batch, batches, loss (mean so far this
    epoch), docs_per_s} every step_every batches, so long epochs show progress.
    """
    sc = cfg.stage1 if stage == 1 else cfg.stage2
    device = next(model.parameters()).device
    out = Path(cfg.out_dir) / f"stage{stage}"
    state_dir, best_dir = out / "last", out / "best"
    train_ex, train_docs = train
    dev_ex, dev_docs = dev
    rng = random.Random(cfg.seed + stage)
    steps_per_epoch = math.ceil(len(bucketed_batches(train_ex, sc.batch_size, False, max_tokens=cfg.max_tokens))
                                / sc.grad_accum)
    total = max(1, steps_per_epoch * sc.epochs)
    # the fused kernel matters on CPU: the unfused step over MiniLM's 11.7M-entry embedding matrix costs
    # as much as a forward+backward pass of a small batch
    optimizer = torch.optim.AdamW(param_groups(model, stage, sc, cfg.weight_decay), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, cfg.warmup_ratio))
    start_epoch, best, history = 0, -1.0, []
    if (state_dir / "state.json").exists():
        meta = load_state(state_dir, model, optimizer, scheduler, rng)
        start_epoch, best, history = meta["epoch"] + 1, meta["best"], meta["history"]
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + stage)
    eval_k = [0] if stage == 1 else cfg.eval_iterations
    select_k = 0 if stage == 1 else model.config.iterations
    for epoch in range(start_epoch, sc.epochs):
        if stop_after_epochs is not None and epoch >= start_epoch + stop_after_epochs:
            break
        generator.manual_seed(cfg.seed * 1000 + stage * 100 + epoch)  # resumable noise stream
        model.train()
        batches = bucketed_batches(train_ex, sc.batch_size, True, seed=rng.randrange(1 << 30),
                                   max_tokens=cfg.max_tokens)
        t0, n_docs, losses = time.time(), 0, []
        it = batches
        if cfg.progress:
            from tqdm import tqdm
            it = tqdm(batches, desc=f"stage {stage} epoch {epoch + 1}/{sc.epochs}", unit="batch", mininterval=2)
        optimizer.zero_grad(set_to_none=True)
        for i, chunk in enumerate(it):
            batch = collate(chunk, model.inventory, model.tokenizer.pad_token_id or 0).to(device)
            with _train_autocast(device, cfg.precision):
                loss, parts = model.stage1_loss(batch) if stage == 1 else model.stage2_loss(batch, generator)
            # average over the micro-batches of this optimizer step (the last group may be shorter)
            group = min(sc.grad_accum, len(batches) - (i // sc.grad_accum) * sc.grad_accum)
            (loss / group).backward()
            losses.append(loss.item())
            n_docs += len(chunk)
            if (i + 1) % sc.grad_accum == 0 or i + 1 == len(batches):
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if on_step and step_every > 0 and ((i + 1) % step_every == 0 or i + 1 == len(batches)):
                on_step({"stage": stage, "epoch": epoch + 1, "epochs": sc.epochs, "batch": i + 1,
                         "batches": len(batches), "loss": sum(losses) / len(losses),
                         "docs_per_s": round(n_docs / max(time.time() - t0, 1e-9), 2)})
        train_seconds = time.time() - t0
        scores = evaluate(model, dev_ex, dev_docs, eval_k, train_docs, progress=False)
        f1 = scores[f"K{select_k}"]["f1"]
        record = {"stage": stage, "epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)),
                  "train_seconds": round(train_seconds, 1), "train_docs_per_s": round(n_docs / train_seconds, 2),
                  "dev": scores, "peak_memory_mb": _peak_memory_mb(device)}
        history.append(record)
        if f1 > best:
            best = f1
            model.save_pretrained(best_dir)
        save_state(state_dir, model, optimizer, scheduler, epoch, best, history, rng)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        if on_epoch:
            on_epoch(record)
        else:
            print(json.dumps({k: v for k, v in record.items() if k != "dev"} |
                             {f"dev_f1_K{k}": round(scores[f'K{k}']['f1'] * 100, 2) for k in eval_k}), flush=True)
    return StageResult(stage, str(best_dir), best, history)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# model settings that shape or train the base module: stage 2 cannot change them on a stage-1 checkpoint
BASE_KEYS = ("encoder", "num_relations", "feature_dim", "emb_dim", "base_head", "bilinear_block")


def stage2_start(source: Path, overrides: dict, seed: int, device: torch.device,
                 fresh_inference: bool = False) -> DocREModel:
    """The model stage 2 starts from: the stage-1 checkpoint at `source`, with the stage-2 settings of
    `overrides` (noise, queries, losses...). When they change the model (or `fresh_inference`), the base
    module's weights are kept and the inference module starts afresh, seeded by `seed`, so several
    stage-2 variants can share one stage-1 run and start from the same initialisation."""
    model = DocREModel.from_pretrained(source, device)
    current = model.config.to_dict()
    merged = current | {k: v for k, v in overrides.items() if k != "inference"}
    merged["inference"] = current["inference"] | dict(overrides.get("inference") or {})
    if merged == current and not fresh_inference:
        return model
    changed = [k for k in BASE_KEYS if merged[k] != current[k]]
    if changed:
        raise ValueError(f"stage 2 cannot change the base module of {source}: {changed} differ")
    torch.manual_seed(seed + 2)
    config = ModelConfig.from_dict(merged)
    fresh = DocREModel(config, model.base.encoder.model, model.tokenizer)
    fresh.base.load_state_dict(model.base.state_dict())
    fresh.inventory = model.inventory
    return fresh.to(device)


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
          on_step: Callable[[dict], None] | None = None, step_every: int = 0) -> list[StageResult]:
    """Run the configured stages; stage 2 starts from stage 1's best checkpoint (unless pretrain=False)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    train_split = load_split(cfg.train_data, cfg.limit_train)
    dev_split = load_split(cfg.dev_data, cfg.limit_dev)
    from ..data.tokenize import read_manifest
    inventory = read_manifest(cfg.train_data).relation_inventory
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    results = []
    model = None
    stage1_best = Path(cfg.out_dir) / "stage1" / "best"
    for stage in cfg.stages:
        if stage == 2 and cfg.pretrain:
            source = Path(cfg.init_from) if cfg.init_from else stage1_best
            if not (source / "config.json").exists():
                raise FileNotFoundError(f"stage 2 starts from stage 1's best checkpoint, and {source} has "
                                        f"none: run stage 1 first, or set pretrain: false (ablation)")
            model = stage2_start(source, cfg.model, cfg.seed, device, fresh_inference=cfg.init_from is not None)
        elif model is None:
            model = DocREModel.create(ModelConfig(**cfg.model), inventory).to(device)
        results.append(train_stage(cfg, stage, model, train_split, dev_split, on_epoch,
                                   on_step=on_step, step_every=step_every))
    return results
