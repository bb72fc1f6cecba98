"""Two-stage training (DocRE-II Sec. 2.3), evaluation and resumable checkpoints.

Stage 1 trains the base module alone; stage 2 trains the whole model, the base
at a small learning rate and the inference module at a larger one. Each stage
saves, after every epoch, a resumable state (weights, optimiser, scheduler,
RNG, epoch: safetensors + JSON, never pickle) and the best model on the
validation split as a `save_pretrained` directory.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data.batch import Example, collate, training_batches
from ..data.document import Document
from ..data.tokenize import read_parquet_rows
from .metrics import docred_doc_counts, docred_scores
from ..model.docre_ii import DocREModel, ModelConfig
from ..model.dropout import fast_dropout_in
from .cpu import ThreadGovernor, available_cpus, choose_threads, retain_freed_memory


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
    max_padding: float = Field(0.1, ge=0)  # a training batch's padded tokens stay within (1 + this) x its real tokens
    seed: int = 66
    device: str = "auto"
    # training autocast; auto: bf16 on CUDA and on CPUs with bf16 dot-product instructions, else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # dropout masks: fast (docre.model.dropout, numpy's SFC64 bits, several times cheaper on CPU),
    # torch (its own generator); auto: fast on CPU, torch on CUDA ("hash", the former name, reads as fast)
    dropout_masks: Literal["auto", "fast", "torch"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch threads per process; None: from the CPUs available (choose_threads)
    adapt_threads: bool = True  # CPU: one thread while other work competes for the cores (cpu.ThreadGovernor)
    retain_memory: bool = True  # CPU, glibc: keep freed memory for reuse, no page faults per step (cpu.retain_freed_memory)
    nproc: int = Field(1, ge=1)  # data-parallel processes on this node (torchrun; gloo on CPU, NCCL on GPU, one GPU each)
    eval_iterations: list[int] = [0, 1, 2, 3]
    limit_train: int | None = None  # use only the first n training documents (smoke runs)
    limit_dev: int | None = None
    progress: bool = True  # a bar on a terminal, else a log line every progress_seconds
    progress_seconds: float = 60.0

    @field_validator("dropout_masks", mode="before")
    @classmethod
    def _former_mask_name(cls, value):
        return "fast" if value == "hash" else value

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
        s = docred_scores(docs, preds, train_docs, inventory=model.inventory)
        out[f"K{k}"] = {"f1": s.f1, "precision": s.precision, "recall": s.recall, "ign_f1": s.ign_f1,
                        "intra_f1": s.intra_f1, "inter_f1": s.inter_f1, "infer_f1": s.infer_f1}
        # gold facts on pairs the model's inventory never proposes: misses in recall, counted apart
        out["unscoreable_gold"] = s.counts.get("unscoreable_gold", 0)
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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX): there bf16 matmuls run several
    times faster than fp32 (BENCHMARKS.md); elsewhere oneDNN emulates them and fp32 is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train_precision(device: torch.device, precision: str) -> str:
    """The autocast dtype a run trains in: `precision` itself, or for auto bf16 on CUDA and on CPUs
    with native bf16, fp32 elsewhere. Master weights, optimiser state and the heads' logits stay fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"


def _train_autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_precision(device, precision) == "bf16")


def _dropout_masks(model: DocREModel, device: torch.device, masks: str) -> contextlib.AbstractContextManager:
    """Fast dropout masks for the training batches of an epoch (a no-op context with torch's)."""
    if masks == "fast" or (masks == "auto" and device.type == "cpu"):
        return fast_dropout_in(model, encoder=model.base.encoder.model)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------ ranks
@dataclass
class Ranks:
    """This process's place in a data-parallel run (torchrun's environment; 1 process without it)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @staticmethod
    def from_env() -> "Ranks":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        return Ranks(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                     int(env.get("LOCAL_WORLD_SIZE", str(world))))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _ranks() -> Ranks:
    """The running process group's ranks (1 process when none is initialised)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        r = Ranks.from_env()
        return Ranks(dist.get_rank(), dist.get_world_size(), r.local_rank, r.local_world)
    return Ranks()


def _broadcast_json(obj, device: torch.device):
    """Rank 0's JSON-able `obj` on every rank, as UTF-8 bytes in a tensor (no pickling)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    data = json.dumps(obj).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data
           else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def _per_rank(value: int, device: torch.device) -> list[int]:
    """Every rank's `value`, in rank order ([value] with one process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    slots = [0.0] * dist.get_world_size()
    slots[dist.get_rank()] = float(value)
    return [int(v) for v in _all_sum(slots, device)]


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (the values themselves with one process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _StageLoss(torch.nn.Module):
    """The stage loss as a module's forward, so DistributedDataParallel can wrap it (its gradient
    hooks fire on the backward of what its forward returned)."""

    def __init__(self, model: DocREModel, stage: int):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return self.model.stage1_loss(batch) if self.stage == 1 else self.model.stage2_loss(batch, generator)


class _Progress:
    """Progress within an epoch: a tqdm bar on an interactive terminal, otherwise one log line
    every `every` seconds (a long epoch on a batch system is not silent for minutes)."""

    def __init__(self, enabled: bool, every: float, desc: str, total: int):
        self.bar = None
        self.every, self.desc, self.total = every, desc, total
        self.enabled = enabled
        self.t0 = self.last = time.time()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="batch", mininterval=2)

    def update(self, done: int, docs: float, loss: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.time()
        if self.every > 0 and (now - self.last >= self.every or done == self.total):
            self.last = now
            print(f"{self.desc}: batch {done}/{self.total}, loss {loss:.4f}, "
                  f"{docs / max(now - self.t0, 1e-9):.2f} docs/s, {now - self.t0:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_stage(cfg: TrainConfig, stage: int, model: DocREModel, train: tuple, dev: tuple,
                on_epoch: Callable[[dict], None] | None = None, stop_after_epochs: int | None = None,
                on_step: Callable[[dict], None] | None = None, step_every: int = 0) -> StageResult:
    """Train one stage with resume; returns where the best checkpoint is and the per-epoch history.

    on_epoch gets each epoch's record (the caller then reports it; without a
    callback the record is printed as a JSON line). on_step, when step_every
    > 0, gets {stage, epoch, epochs, batch, batches, loss (mean so far this
    epoch), docs_per_s} every step_every batches, so long epochs show progress.

    Under torchrun (a process group initialised by `train`) every rank runs this: each epoch's
    batches (`training_batches`, grouped by length bucket) are dealt out so every rank steps the
    same number of times, gradients are averaged by DistributedDataParallel, and rank 0 alone
    evaluates and writes checkpoints, state and history (callbacks run on rank 0 only). The
    state is the same whatever the number of ranks, so a run resumes on any number.
    """
    sc = cfg.stage1 if stage == 1 else cfg.stage2
    ranks = _ranks()
    W = ranks.world
    device = next(model.parameters()).device
    out = Path(cfg.out_dir) / f"stage{stage}"
    state_dir, best_dir = out / "last", out / "best"
    train_ex, train_docs = train
    dev_ex, dev_docs = dev
    rng = random.Random(cfg.seed + stage)

    def plan(shuffle: bool, seed: int = 0) -> list:
        return training_batches(train_ex, sc.batch_size, shuffle, seed=seed, max_tokens=cfg.max_tokens,
                                max_padding=cfg.max_padding, world_size=W)
    steps_per_epoch = math.ceil(len(plan(False)) / W / sc.grad_accum)
    total = max(1, steps_per_epoch * sc.epochs)
    # the fused kernel matters on CPU: the unfused step over MiniLM's 11.7M-entry embedding matrix costs
    # as much as a forward+backward pass of a small batch
    optimizer = torch.optim.AdamW(param_groups(model, stage, sc, cfg.weight_decay), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, cfg.warmup_ratio))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    start_epoch, best, history = 0, -1.0, []
    if (state_dir / "state.json").exists():
        meta = load_state(state_dir, model, optimizer, scheduler, rng)
        start_epoch, best, history = meta["epoch"] + 1, meta["best"], meta["history"]
    generator = torch.Generator()
    step_module: torch.nn.Module = _StageLoss(model, stage)
    if W > 1:
        from torch.nn.parallel import DistributedDataParallel
        # find_unused_parameters: which parameters a step reaches depends on the stage and the variant
        # (stage 1 never touches the inference module; no SimSiam predictor without L_C)
        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True, broadcast_buffers=False)
    eval_k = [0] if stage == 1 else cfg.eval_iterations
    select_k = 0 if stage == 1 else model.config.iterations
    governor = None
    if device.type == "cpu":
        if cfg.retain_memory:
            retain_freed_memory()
        if cfg.adapt_threads and torch.get_num_threads() > 1:
            governor = ThreadGovernor(torch.get_num_threads())
    for epoch in range(start_epoch, sc.epochs):
        if stop_after_epochs is not None and epoch >= start_epoch + stop_after_epochs:
            break
        # resumable noise stream; with several ranks each draws its own noise and dropout masks
        generator.manual_seed(cfg.seed * 1000 + stage * 100 + epoch + 1_000_003 * ranks.rank)
        if W > 1:
            torch.manual_seed(cfg.seed * 1000 + stage * 100 + epoch + 7919 * (ranks.rank + 1))
        model.train()
        everything = plan(True, rng.randrange(1 << 30))
        batches = everything[ranks.rank::W]  # every rank the same count; a group of W is one length bucket
        t0, n_docs, n_steps, losses = time.time(), 0, 0, []
        changes_before = len(governor.changes) if governor is not None else 0
        progress = _Progress(cfg.progress and ranks.main, cfg.progress_seconds,
                             f"stage {stage} epoch {epoch + 1}/{sc.epochs}", len(batches))
        optimizer.zero_grad(set_to_none=True)
        with _dropout_masks(model, device, cfg.dropout_masks):  # restored before evaluation and saving
            for i, chunk in enumerate(batches):
                batch = collate(chunk, model.inventory, model.tokenizer.pad_token_id or 0).to(device)
                boundary = (i + 1) % sc.grad_accum == 0 or i + 1 == len(batches)
                # average over the micro-batches of this optimizer step (the last group may be shorter)
                group = min(sc.grad_accum, len(batches) - (i // sc.grad_accum) * sc.grad_accum)
                with contextlib.ExitStack() as ctx:
                    if W > 1 and not boundary:
                        ctx.enter_context(step_module.no_sync())  # gradients are averaged over ranks once per step
                    with _train_autocast(device, cfg.precision):
                        loss, parts = step_module(batch, generator)
                    (loss / group).backward()
                losses.append(loss.item())
                n_docs += len(chunk)
                if boundary:
                    n_steps += 1
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if governor is not None:
                    governor.tick()
                progress.update(i + 1, n_docs * W, sum(losses) / len(losses))
                if on_step and ranks.main and step_every > 0 and ((i + 1) % step_every == 0 or i + 1 == len(batches)):
                    on_step({"stage": stage, "epoch": epoch + 1, "epochs": sc.epochs, "batch": i + 1,
                             "batches": len(batches), "loss": sum(losses) / len(losses),
                             "docs_per_s": round(n_docs * W / max(time.time() - t0, 1e-9), 2)})
        progress.close()
        loss_sum, loss_count, docs_all = _all_sum([sum(losses), len(losses), n_docs], device)
        rank_steps = _per_rank(n_steps, device)
        train_seconds = time.time() - t0
        record = None
        if ranks.main:  # evaluation runs once, on rank 0; the others wait for its record
            scores = evaluate(model, dev_ex, dev_docs, eval_k, train_docs, progress=False)
            record = {"stage": stage, "epoch": epoch + 1, "loss": loss_sum / max(1, loss_count),
                      "train_seconds": round(train_seconds, 1),
                      "train_docs_per_s": round(docs_all / train_seconds, 2),
                      "dev": scores, "peak_memory_mb": _peak_memory_mb(device),
                      "precision": train_precision(device, cfg.precision)}
            if W > 1:
                record["processes"], record["steps_per_rank"] = W, rank_steps
            if governor is not None and len(governor.changes) > changes_before:
                # [seconds since the stage started, threads] whenever other work came or went
                record["thread_changes"] = governor.changes[changes_before:]
            history.append(record)
            f1 = scores[f"K{select_k}"]["f1"]
            if f1 > best:
                best = f1
                model.save_pretrained(best_dir)
            save_state(state_dir, model, optimizer, scheduler, epoch, best, history, rng)
            (out / "history.json").write_text(json.dumps(history, indent=2))
        record = _broadcast_json(record, device)
        if not ranks.main:
            history.append(record)
            best = max(best, record["dev"][f"K{select_k}"]["f1"])
            continue
        if on_epoch:
            on_epoch(record)
        else:
            print(json.dumps({k: v for k, v in record.items() if k != "dev"} |
                             {f"dev_f1_K{k}": round(scores[f'K{k}']['f1'] * 100, 2) for k in eval_k}), flush=True)
    if governor is not None:
        governor.close()  # the next stage starts from the same count (train() restores it on errors)
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


def _launch(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None) -> list[StageResult]:
    """`cfg.nproc` data-parallel processes under torchrun, each running `docre train` on this config,
    from a process that is not one of them (the CLI's `--nproc`, the Prefect training task).

    The children get their share of the threads (OMP_NUM_THREADS) before torch loads.
    While they run, epoch records that rank 0 writes to each stage's history.json are passed to
    `on_epoch` as they appear (per-step callbacks stay in the children)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_config.launch.json"
    path.write_text(cfg.model_copy(update={"nproc": 1}).model_dump_json(indent=2))
    threads = cfg.threads or max(1, available_cpus() // cfg.nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
           "-m", "docre.cli", "train", str(path)]
    seen = {stage: len(_read_history(out / f"stage{stage}")) for stage in cfg.stages}
    proc = subprocess.Popen(cmd, env=env)

    def report() -> None:
        for stage in cfg.stages:
            history = _read_history(out / f"stage{stage}")
            for record in history[seen[stage]:]:
                if on_epoch:
                    on_epoch(record)
            seen[stage] = max(seen[stage], len(history))
    while proc.poll() is None:
        time.sleep(2.0)
        report()
    report()
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {proc.returncode}): {' '.join(cmd)}")
    results = []
    for stage in cfg.stages:
        meta = json.loads((out / f"stage{stage}" / "last" / "state.json").read_text())
        results.append(StageResult(stage, str(out / f"stage{stage}" / "best"), meta["best"], meta["history"]))
    return results


def _read_history(stage_dir: Path) -> list[dict]:
    try:
        return json.loads((stage_dir / "history.json").read_text())
    except (OSError, ValueError):
        return []


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
          on_step: Callable[[dict], None] | None = None, step_every: int = 0) -> list[StageResult]:
    """Run the configured stages; stage 2 starts from stage 1's best checkpoint (unless pretrain=False).

    With `cfg.nproc` > 1 outside torchrun this launches torchrun with that many processes (`_launch`).
    Under torchrun (WORLD_SIZE > 1) it joins the process group, gloo on CPU and NCCL on GPU (one
    GPU per process, by LOCAL_RANK), and every rank trains its share of each step. Torch threads:
    `choose_threads` (restored on return)."""
    ranks = Ranks.from_env()
    if ranks.world == 1 and cfg.nproc > 1:
        return _launch(cfg, on_epoch)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(choose_threads(cfg.threads, ranks.local_world))
    device = resolve_device(cfg.device)
    created = False
    if ranks.world > 1:
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # rank 0 evaluates alone while the others wait in a collective: allow a long evaluation
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=4))
            created = True
    try:
        return _train_stages(cfg, device, ranks, on_epoch, on_step, step_every)
    finally:
        torch.set_num_threads(threads_before)
        if created:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train_stages(cfg: TrainConfig, device: torch.device, ranks: Ranks, on_epoch, on_step,
                  step_every: int) -> list[StageResult]:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    train_split = load_split(cfg.train_data, cfg.limit_train)
    dev_split = load_split(cfg.dev_data, cfg.limit_dev)
    from ..data.tokenize import read_manifest
    inventory = read_manifest(cfg.train_data).relation_inventory
    if ranks.main:
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
