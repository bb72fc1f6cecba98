"""Two-stage training (docre.training.train): checkpoints, exact resume, learning-rate schedule, gradient accumulation.

Trains the tiny random BERT of conftest on the three documents of the ``.data`` fixture; every run is a few
optimizer steps.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch

from docre.data.batch import collate, training_batches
from docre.data.document import cdr_inventory
from docre.data.tokenize import TokenizeConfig, read_parquet_rows, tokenize_to_parquet
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.training.train import (StageConfig, TrainConfig, evaluate, linear_schedule, load_split, load_state, param_groups,
                         save_state, stage2_start, train, train_stage)

FIXTURE = Path(__file__).parent / "fixtures" / "cdr_sample.data"
MODEL = dict(feature_dim=16, iterations=2, inference=dict(num_layers=1, ffn_dim=32, predictor_dim=16))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tiny_encoder, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "cdr_sample")
    manifest = tokenize_to_parquet([str(FIXTURE)], out, TokenizeConfig(encoder=tiny_encoder, relations="cdr"),
                                   progress=False)
    assert manifest.documents == 3 and manifest.quarantined == 0  # the repeated identical line is skipped
    assert [r["doc_id"] for r in read_parquet_rows(out, ["doc_id"])] == ["9000001", "9000002", "9000003"]
    return out


def config(dataset: str, tiny_encoder: str, out_dir: Path, **kw) -> TrainConfig:
    base = dict(train_data=dataset, dev_data=dataset, out_dir=str(out_dir),
                stage1=StageConfig(epochs=2, batch_size=2, lr_encoder=1e-3, lr_head=1e-3),
                stage2=StageConfig(epochs=1, batch_size=2, lr_encoder=1e-4, lr_head=1e-3),
                model=dict(MODEL, encoder=tiny_encoder), eval_iterations=[0, 1, 2], device="cpu",
                progress=False, seed=7, threads=1, precision="fp32")
    return TrainConfig(**(base | kw))


def fresh_model(cfg: TrainConfig, seed: int = 0) -> DocREModel:
    torch.manual_seed(seed)
    return DocREModel.create(ModelConfig(**cfg.model), cdr_inventory())


def assert_same_weights(a: DocREModel, b: DocREModel, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------------------ full run

def test_two_stage_training_writes_checkpoints_and_history(dataset, tiny_encoder, tmp_path):
    cfg = config(dataset, tiny_encoder, tmp_path / "run")
    epochs = []
    results = train(cfg, on_epoch=epochs.append)
    assert [r.stage for r in results] == [1, 2]
    assert [(r["stage"], r["epoch"]) for r in epochs] == [(1, 1), (1, 2), (2, 1)]
    out = tmp_path / "run"
    assert json.loads((out / "train_config.json").read_text())["seed"] == 7
    for stage, n_epochs, keys in ((1, 2, {"K0"}), (2, 1, {"K0", "K1", "K2"})):
        best, last = out / f"stage{stage}" / "best", out / f"stage{stage}" / "last"
        for name in ("model.safetensors", "config.json", "relations.json"):
            assert (best / name).is_file(), (stage, name)
        assert (last / "state.safetensors").is_file() and (last / "state.json").is_file()
        assert not list(out.rglob("*.tmp"))
        history = json.loads((out / f"stage{stage}" / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, n_epochs + 1))
        assert all(h["stage"] == stage and h["loss"] > 0 for h in history)
        assert all(keys <= set(h["dev"]) for h in history)
        assert results[stage - 1].history == history
        assert results[stage - 1].best_dir == str(best)
        assert results[stage - 1].best_f1 == max(h["dev"][f"K{0 if stage == 1 else 2}"]["f1"] for h in history)
        assert json.loads((last / "state.json").read_text())["epoch"] == n_epochs - 1
    # the best checkpoint is a working model
    model = DocREModel.from_pretrained(out / "stage2" / "best")
    examples, docs = load_split(dataset)
    decisions = model.predict_examples(examples)
    assert set(decisions) == {d.id for d in docs} and all(len(v) == 3 for v in decisions.values())


def test_stage2_needs_stage1_checkpoint(dataset, tiny_encoder, tmp_path):
    cfg = config(dataset, tiny_encoder, tmp_path / "run", stages=[2])
    with pytest.raises(FileNotFoundError, match="stage 1"):
        train(cfg)


def test_frozen_base_stage2_trains_only_the_inference_module(dataset, tiny_encoder, tmp_path):
    """Ablation "w/ freeze base module": stage 2 leaves every base weight as stage 1 left it, so K0 is
    the stage-1 base's score, while the inference module does learn."""
    cfg = config(dataset, tiny_encoder, tmp_path / "run", stages=[1])
    [stage1] = train(cfg)
    frozen = config(dataset, tiny_encoder, tmp_path / "frozen", stages=[2], init_from=stage1.best_dir,
                    stage2=StageConfig(epochs=1, batch_size=2, lr_encoder=1e-2, lr_head=1e-2, freeze_base=True))
    [stage2] = train(frozen)
    before, after = DocREModel.from_pretrained(stage1.best_dir), DocREModel.from_pretrained(stage2.best_dir)
    assert_same_weights(before.base, after.base)
    start = stage2_start(Path(stage1.best_dir), frozen.model, frozen.seed, torch.device("cpu"), fresh_inference=True)
    moved = [k for k, v in after.inference.state_dict().items() if not torch.equal(v, start.inference.state_dict()[k])]
    assert "classifier.weight" in moved
    assert stage2.history[0]["dev"]["K0"]["f1"] == max(h["dev"]["K0"]["f1"] for h in stage1.history)


def test_no_pretraining_ablation_starts_stage2_from_the_raw_encoder(dataset, tiny_encoder, tmp_path):
    """Ablation "w/o pre-training": stage 2 runs without any stage-1 checkpoint."""
    cfg = config(dataset, tiny_encoder, tmp_path / "run", stages=[2], pretrain=False)
    [result] = train(cfg)
    assert result.stage == 2 and not (tmp_path / "run" / "stage1").exists()
    assert {"K0", "K1", "K2"} <= set(result.history[0]["dev"])


# ------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("stage", [1, 2])
def test_resume_matches_an_uninterrupted_run(dataset, tiny_encoder, tmp_path, stage):
    """Stop after epoch 1, start again from the saved state: weights and losses equal a straight 2-epoch run.

    Dropout stays on, so this also checks that the torch RNG (and stage 2's noise stream) is restored."""
    stages = dict(stage1=StageConfig(epochs=2, batch_size=2, lr_encoder=1e-3, lr_head=1e-3),
                  stage2=StageConfig(epochs=2, batch_size=2, lr_encoder=1e-4, lr_head=1e-3))
    split = load_split(dataset)

    straight_cfg = config(dataset, tiny_encoder, tmp_path / "straight", **stages)
    straight = fresh_model(straight_cfg)
    full = train_stage(straight_cfg, stage, straight, split, split)

    cfg = config(dataset, tiny_encoder, tmp_path / "resumed", **stages)
    first = train_stage(cfg, stage, fresh_model(cfg), split, split, stop_after_epochs=1)
    assert len(first.history) == 1
    state = json.loads((tmp_path / "resumed" / f"stage{stage}" / "last" / "state.json").read_text())
    assert state["epoch"] == 0
    torch.manual_seed(12345)  # a different process state: nothing may depend on it
    resumed_model = fresh_model(cfg, seed=99)  # different initial weights: they must come from the state
    second = train_stage(cfg, stage, resumed_model, split, split)

    assert [h["epoch"] for h in second.history] == [1, 2]
    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history]
    assert [h["dev"]["K0"] for h in second.history] == [h["dev"]["K0"] for h in full.history]
    assert second.best_f1 == full.best_f1
    assert_same_weights(resumed_model, straight)
    # 3 documents in batches of at most 2 whose padding stays within 10%: the fixture's lengths differ
    # by more, so 3 batches, 3 optimizer steps per epoch
    state = json.loads((tmp_path / "resumed" / f"stage{stage}" / "last" / "state.json").read_text())
    assert len(training_batches(split[0], 2, True, seed=1, max_tokens=cfg.max_tokens, max_padding=0.1)) == 3
    assert state["scheduler"]["last_epoch"] == 6
    # a finished stage resumes to nothing
    again = train_stage(cfg, stage, resumed_model, split, split)
    assert again.history == second.history
    assert_same_weights(resumed_model, straight)


def test_save_and_load_state_round_trip_with_tied_weights(dataset, tiny_encoder, tmp_path):
    """Weights (shared_ffn ties two FNNs), AdamW moments, scheduler position and RNG streams survive."""
    cfg = config(dataset, tiny_encoder, tmp_path / "run",
                 model=dict(MODEL, encoder=tiny_encoder, inference=dict(MODEL["inference"], shared_ffn=True)))
    model = fresh_model(cfg)
    examples, docs = load_split(dataset)

    def parts(m):
        opt = torch.optim.AdamW(param_groups(m, 2, cfg.stage2, 0.01))
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(10, 0.2))

    opt, sched = parts(model)
    loss, _ = model.stage2_loss(collate(examples, model.inventory), torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    sched.step()
    rng = random.Random(5)
    rng.random()
    torch.manual_seed(42)
    save_state(tmp_path / "state", model, opt, sched, epoch=3, best=0.25, history=[{"loss": 1.5}], rng=rng)
    expected_torch, expected_py = torch.rand(3), rng.random()

    other = fresh_model(cfg, seed=1)
    opt2, sched2 = parts(other)
    rng2 = random.Random(0)
    meta = load_state(tmp_path / "state", other, opt2, sched2, rng2)
    assert (meta["epoch"], meta["best"], meta["history"]) == (3, 0.25, [{"loss": 1.5}])
    assert_same_weights(other, model)
    layer = other.inference.layers[0]
    assert layer.ffn_r is layer.ffn_f
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["state"].keys() == s2["state"].keys()
    for pid in s1["state"]:
        for name, value in s1["state"][pid].items():
            torch.testing.assert_close(torch.as_tensor(s2["state"][pid][name]), torch.as_tensor(value))
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert sched2.last_epoch == sched.last_epoch == 1
    assert torch.equal(torch.rand(3), expected_torch) and rng2.random() == expected_py
    # the restored scheduler keeps following the same schedule
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert not list((tmp_path / "state").glob("*.tmp"))


# ------------------------------------------------------------------------------------------ schedule

def test_linear_schedule_warmup_then_decay_to_zero():
    f = linear_schedule(100, 0.06)
    assert [f(s) for s in range(6)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert f(6) == pytest.approx(1.0)
    decay = [f(s) for s in range(6, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing after the warm-up
    assert f(50) == pytest.approx(50 / 94)
    assert f(99) == pytest.approx(1 / 94) and f(100) == 0.0 and f(150) == 0.0
    assert max(f(s) for s in range(200)) == pytest.approx(1.0)
    # as LambdaLR applies it: the lr of optimizer step i is base_lr * f(i)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 6) and lrs[5] == pytest.approx(0.1) and lrs[-1] > 0
    assert opt.param_groups[0]["lr"] == 0.0
    assert linear_schedule(10, 0.0)(0) == 1.0  # no warm-up


# ------------------------------------------------------------------------------------------ accumulation

def run_recording_grads(cfg: TrainConfig, split, monkeypatch) -> tuple[DocREModel, list[dict]]:
    """One stage-1 epoch without dropout; returns the model and the gradient seen at each optimizer step."""
    model = fresh_model(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[dict] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kw):
        params = list(params)
        seen.append({names[id(p)]: p.grad.clone() for p in params if p.grad is not None})
        return clip(params, max_norm, *args, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    train_stage(cfg, 1, model, split, (split[0][:1], split[1][:1]))
    monkeypatch.undo()
    return model, seen


def test_gradient_accumulation_equals_a_larger_batch(dataset, tiny_encoder, tmp_path, monkeypatch):
    """grad_accum=2 over batches of 1 gives the same step as one batch of 2.

    Exact only because the two training documents have the same number of candidate pairs (4 each): the
    loss of a batch is the mean over its pairs, and accumulation averages per-batch means."""
    examples, docs = load_split(dataset, limit=2)
    inventory = cdr_inventory()
    assert [len(inventory.candidate_pairs(d)) for d in docs] == [4, 4]
    split = (examples, docs)
    big = dict(stage1=StageConfig(epochs=1, batch_size=2, grad_accum=1, lr_encoder=1e-3, lr_head=1e-3))
    small = dict(stage1=StageConfig(epochs=1, batch_size=1, grad_accum=2, lr_encoder=1e-3, lr_head=1e-3))
    # max_padding: the two documents' lengths differ by more than 10%; this test wants them in one batch
    model_a, grads_a = run_recording_grads(config(dataset, tiny_encoder, tmp_path / "a", max_padding=10.0, **big),
                                           split, monkeypatch)
    model_b, grads_b = run_recording_grads(config(dataset, tiny_encoder, tmp_path / "b", **small), split,
                                           monkeypatch)
    assert len(grads_a) == len(grads_b) == 1  # one optimizer step each
    assert grads_a[0].keys() == grads_b[0].keys() and len(grads_a[0]) > 0
    for k in grads_a[0]:
        torch.testing.assert_close(grads_b[0][k], grads_a[0][k], atol=1e-6, rtol=1e-4,
                                   msg=lambda m, k=k: f"{k}: {m}")
    # Adam divides by sqrt(v): float noise in near-zero gradients shows up at ~1e-6 of a 1e-3 step
    assert_same_weights(model_a, model_b, atol=2e-5)


def test_incomplete_accumulation_group_is_not_scaled_down(dataset, tiny_encoder, tmp_path, monkeypatch):
    """Three batches with grad_accum=2: the second optimizer step holds one batch and must get its full gradient."""
    examples, docs = load_split(dataset, limit=3)
    split = (examples, docs)
    accum = dict(stage1=StageConfig(epochs=1, batch_size=1, grad_accum=2, lr_encoder=0.0, lr_head=0.0))
    single = dict(stage1=StageConfig(epochs=1, batch_size=1, grad_accum=1, lr_encoder=0.0, lr_head=0.0))
    # lr 0: weights never move, so every step's gradient is the plain gradient of its own batches
    _, grads_accum = run_recording_grads(config(dataset, tiny_encoder, tmp_path / "a", **accum), split, monkeypatch)
    _, grads_single = run_recording_grads(config(dataset, tiny_encoder, tmp_path / "b", **single), split,
                                          monkeypatch)
    assert len(grads_accum) == 2 and len(grads_single) == 3
    # the lone last batch of the accumulated run is one of the single-batch steps, unscaled
    last = grads_accum[-1]
    assert any(all(torch.allclose(last[k], g[k], atol=1e-6, rtol=1e-4) for k in last) for g in grads_single)


# ------------------------------------------------------------------------------------------ ablation runner
def test_ablation_runner_shares_one_stage1(dataset, tiny_encoder, tmp_path):
    """bench/ablation.py: stage-2 variants start from the one stage-1 checkpoint, rerunning skips
    finished runs, and the report has one row per variant with F1 at every K."""
    import subprocess
    import sys

    import yaml
    root = Path(__file__).parent.parent
    cfg = config(dataset, tiny_encoder, tmp_path / "abl", stages=[1])
    train(cfg)
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    cmd = [sys.executable, str(root / "bench" / "ablation.py")]
    subprocess.run(cmd + ["run", str(path), "default", "before"], check=True, cwd=root)
    for name, r0_dropout, queries in (("default", True, "own"), ("before", True, "joint")):
        saved = json.loads((tmp_path / "abl" / f"{name}-s7" / "stage2" / "best" / "config.json").read_text())
        assert (saved["r0_dropout"], saved["inference"]["queries"]) == (r0_dropout, queries)
        run_cfg = yaml.safe_load((tmp_path / "abl" / f"{name}-s7" / "ablation_config.yaml").read_text())
        assert run_cfg["init_from"] == str(tmp_path / "abl" / "stage1" / "best") and run_cfg["stages"] == [2]
    again = subprocess.run(cmd + ["run", str(path), "default"], check=True, cwd=root, capture_output=True, text=True)
    assert "default seed 7: done" in again.stdout
    out = subprocess.run(cmd + ["report", str(path), "--json", str(tmp_path / "r.json")], check=True, cwd=root,
                         capture_output=True, text=True).stdout
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["variant"] for r in rows] == ["stage 1 (shared base)", "default", "before"]
    assert all({"K0", "K1", "K2", "gain", "w_feature", "w_relation"} <= set(r) for r in rows[1:])
    assert "| default | 7 | 1 |" in out


def test_ablation_plan_stage2_overrides(tmp_path):
    """A variant that changes stage-2 optimisation (not the model) changes only its own run's stage 2."""
    from conftest import load_bench
    ablation = load_bench("ablation")
    config = {"out_dir": str(tmp_path), "stage1": {"epochs": 8, "lr_head": 2e-4},
              "stage2": {"epochs": 2, "lr_head": 2e-4, "lr_encoder": 5e-6}, "model": {}}
    [probe] = ablation.plan(config, "inference_lr_x5", 66)
    [plain] = ablation.plan(config, "default", 66)
    assert probe["stage2"] == {"epochs": 2, "lr_head": 1e-3, "lr_encoder": 5e-6}
    assert plain["stage2"] == config["stage2"] and probe["model"] == plain["model"] | {"r0_dropout": False}
    assert probe["init_from"] == plain["init_from"] == str(tmp_path / "stage1" / "best")
    [long] = ablation.plan(config, "long_stage2", 66)
    assert long["stage2"] == {"epochs": 10, "lr_head": 2e-4, "lr_encoder": 5e-6}
    assert long["model"] == plain["model"] and long["init_from"] == plain["init_from"]
    # the variants run against the old reference keep its clean R_0, so a rerun reproduces them
    [clean_long] = ablation.plan(config, "clean_r0_long_stage2", 66)
    assert clean_long["stage2"] == long["stage2"] and clean_long["model"] == plain["model"] | {"r0_dropout": False}
    assert plain["model"]["r0_dropout"] is True
    assert ablation.plan(config, "simclr", 66)[0]["model"]["r0_dropout"] is False
    [probe_default] = ablation.plan(config, "inference_lr_x5_default", 66)
    assert probe_default["stage2"] == probe["stage2"] and probe_default["model"] == plain["model"]
    [frozen] = ablation.plan(config, "freeze_base", 66)
    assert frozen["stage2"] == config["stage2"] | {"freeze_base": True} and frozen["model"] == plain["model"]
    [base_lr] = ablation.plan(config, "base_lr_x2_default", 66)
    assert base_lr["stage2"] == config["stage2"] | {"lr_encoder": 1e-5} and base_lr["model"] == plain["model"]
    [noise_b] = ablation.plan(config, "noise_predicted_relations_default", 66)
    assert noise_b["stage2"] == config["stage2"]
    assert noise_b["model"] == plain["model"] | {"noise": "predicted_relations"}
    [no_base_loss] = ablation.plan(config, "no_base_loss", 66)
    assert no_base_loss["stage2"] == config["stage2"]
    assert no_base_loss["model"] == plain["model"] | {"stage2_base_loss": False}


def test_train_dev_gap_probe(dataset, tiny_encoder, tmp_path):
    """bench/probes/train_dev_gap.py: F1 per split is what `evaluate` gives on that split, and the gap is
    train minus dev."""
    import pyarrow.parquet as pq
    from conftest import load_bench
    probe = load_bench("probes/train_dev_gap")
    dev = tmp_path / "dev"
    dev.mkdir()
    pq.write_table(pq.read_table(Path(dataset) / "data.parquet").slice(0, 1), dev / "data.parquet")
    cfg = config(dataset, tiny_encoder, tmp_path)
    model = fresh_model(cfg, seed=3).eval()
    model.save_pretrained(tmp_path / "ckpt")
    row = probe.gap(str(tmp_path / "ckpt"), {"train": load_split(dataset), "dev": load_split(str(dev))}, [0, 1])
    on_train = evaluate(model, *load_split(dataset), [0, 1])
    on_dev = evaluate(model, *load_split(str(dev)), [0, 1])
    for k in (0, 1):
        assert row[f"train_K{k}"] == round(on_train[f"K{k}"]["f1"] * 100, 2)
        assert row[f"dev_K{k}"] == round(on_dev[f"K{k}"]["f1"] * 100, 2)
        assert row[f"gap_K{k}"] == round(row[f"train_K{k}"] - row[f"dev_K{k}"], 2)
    assert (row["train_K0"], row["train_K1"]) != (row["dev_K0"], row["dev_K1"])  # the splits differ here
    shown = probe.table([{"checkpoint": "a", "train_K0": 86.76, "dev_K0": 53.18, "gap_K0": 33.58}], [0])
    assert shown.splitlines()[-1] == "| a | 86.76 | 53.18 | 33.58 |"


def test_output_modes_probe(dataset, tiny_encoder, tmp_path):
    """bench/probes/output_modes.py: "last" is P^(K), "sum" the release's sum of base and iteration logits,
    each as `evaluate` scores the model with that output; K0 is the base in both."""
    from conftest import load_bench
    probe = load_bench("probes/output_modes")
    cfg = config(dataset, tiny_encoder, tmp_path)
    model = fresh_model(cfg, seed=3).eval()
    model.save_pretrained(tmp_path / "ckpt")
    examples, docs = load_split(dataset)
    row = probe.output_modes(str(tmp_path / "ckpt"), examples, docs)
    for mode in ("last", "sum"):
        model.config.output = mode
        scores = evaluate(model, examples, docs, [0, 1, 2, 3])
        assert row[mode] == [round(scores[f"K{k}"]["f1"] * 100, 2) for k in range(4)]
    assert row["last"][0] == row["sum"][0]
    assert row["last"][1:] != row["sum"][1:]  # this model's iterations disagree with its base
    shown = probe.table([{"checkpoint": "a", "last": [53.17, 53.35, 53.35, 53.35], "sum": [53.17, 52.94, 53.37, 53.35]}])
    assert shown.splitlines()[-1] == "| a | 53.17 / 53.35 / 53.35 / 53.35 | 53.17 / 52.94 / 53.37 / 53.35 | 0.0 |"


def test_threshold_free_probe(dataset, tiny_encoder, tmp_path):
    """bench/probes/threshold_free.py: its F1 at the learned threshold is the F1 `evaluate` reports at each K
    (one relation, so no `max_labels` cap applies), and no cut or ranking score is out of range."""
    from conftest import load_bench
    probe = load_bench("probes/threshold_free")
    cfg = config(dataset, tiny_encoder, tmp_path)
    model = fresh_model(cfg, seed=3).eval()
    model.save_pretrained(tmp_path / "ckpt")
    row = probe.probe(str(tmp_path / "ckpt"), dataset, iterations=2)
    scores = evaluate(model, *load_split(dataset), [0, 1, 2])
    assert scores["unscoreable_gold"] == 0  # reported; on CDR every gold pair is Chemical -> Disease
    for k in range(3):
        assert row[f"K{k}"]["f1"] == pytest.approx(scores[f"K{k}"]["f1"], abs=1e-9)
        assert row[f"K{k}"]["f1"] <= row[f"K{k}"]["best"] <= 1.0 and 0.0 < row[f"K{k}"]["ap"] <= 1.0
    assert 0 < row["gold_in_candidates"]["found"] <= row["gold_in_candidates"]["all"]


def test_probe_rows_merge_by_checkpoint(tmp_path):
    """bench/probes/result_rows.py: probing a checkpoint again replaces its row; other rows stay, in order."""
    from conftest import load_bench
    merge_rows = load_bench("probes/result_rows").merge_rows
    path = tmp_path / "rows.json"
    merge_rows(path, [{"checkpoint": "a", "f1": 1}, {"checkpoint": "b", "f1": 2}])
    merge_rows(path, [{"checkpoint": "a", "f1": 3}, {"checkpoint": "c", "f1": 4}])
    assert json.loads(path.read_text()) == [{"checkpoint": "b", "f1": 2}, {"checkpoint": "a", "f1": 3},
                                            {"checkpoint": "c", "f1": 4}]


# ------------------------------------------------------------------------------ precision and dropout masks

def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    import docre.training.train as T
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    assert T.train_precision(torch.device("cpu"), "auto") == "bf16"
    assert T.train_precision(torch.device("cuda"), "auto") == "bf16"
    assert T.train_precision(torch.device("cpu"), "fp32") == "fp32"
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    assert T.train_precision(torch.device("cpu"), "auto") == "fp32"
    assert T.train_precision(torch.device("cpu"), "bf16") == "bf16"


def stage1_weights(dataset: str, tiny_encoder: str, out: Path, **kw) -> tuple[DocREModel, list[dict]]:
    cfg = config(dataset, tiny_encoder, out, stages=[1], stage1=StageConfig(epochs=1, batch_size=2,
                                                                             lr_encoder=1e-3, lr_head=1e-3), **kw)
    model = fresh_model(cfg)
    examples, docs = load_split(dataset)
    result = train_stage(cfg, 1, model, (examples, docs), (examples, docs), on_epoch=lambda r: None)
    return model, result.history


def test_bf16_training_on_cpu_runs_and_records_its_precision(dataset, tiny_encoder, tmp_path):
    """The batched pooling once mixed a bf16 attention row into an fp32 index_add: bf16 training crashed."""
    model, history = stage1_weights(dataset, tiny_encoder, tmp_path / "bf16", precision="bf16")
    assert history[0]["precision"] == "bf16" and math.isfinite(history[0]["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 masters under autocast


def test_fast_dropout_masks_are_reproducible_and_are_the_ones_used(dataset, tiny_encoder, tmp_path):
    """The tiny encoder has dropout 0.1: a seed fixes the fast masks (same weights twice), and they are
    not torch's (other weights than with torch's masks)."""
    a, _ = stage1_weights(dataset, tiny_encoder, tmp_path / "a", dropout_masks="fast")
    b, _ = stage1_weights(dataset, tiny_encoder, tmp_path / "b", dropout_masks="fast")
    c, _ = stage1_weights(dataset, tiny_encoder, tmp_path / "c", dropout_masks="torch")
    h, _ = stage1_weights(dataset, tiny_encoder, tmp_path / "h", dropout_masks="hash")  # the former name
    assert_same_weights(a, b)
    assert_same_weights(a, h)
    with pytest.raises(AssertionError):
        assert_same_weights(a, c, atol=1e-7)
    # the encoder is handed back with torch's dropout and sdpa attention for evaluation and saving
    assert a.base.encoder.model.config._attn_implementation == "sdpa"
    assert all(type(m) is torch.nn.Dropout for m in a.base.encoder.model.modules() if isinstance(m, torch.nn.Dropout))


PRE27 = FIXTURE.parent / "pre27_run"  # written by the code before issue 27 (tests/fixtures/make_pre27_run.py)


def test_a_checkpoint_and_state_written_before_the_training_speed_pass_load_and_resume(dataset, tiny_encoder,
                                                                                       tmp_path):
    examples, docs = load_split(dataset)
    old = DocREModel.from_pretrained(PRE27 / "stage1" / "best")
    decisions = old.predict_examples(examples, iterations=0)
    assert set(decisions) == {d.id for d in docs}
    run = tmp_path / "run"
    shutil.copytree(PRE27, run)
    cfg = config(dataset, tiny_encoder, run, stages=[1])  # the fixture's settings: 2 epochs, it stopped after 1
    model = fresh_model(cfg, seed=99)  # other initial weights: the state must bring the old ones
    result = train_stage(cfg, 1, model, (examples, docs), (examples, docs), on_epoch=lambda r: None)
    old_history = json.loads((PRE27 / "stage1" / "history.json").read_text())
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[0] == old_history[0]
    assert result.history[1]["loss"] < old_history[0]["loss"]  # it went on learning from where it stopped
    assert DocREModel.from_pretrained(run / "stage1" / "best").config == old.config


def test_a_training_stage_under_contention_drops_to_one_thread_records_it_and_hands_the_threads_back(
        dataset, tiny_encoder, tmp_path, monkeypatch):
    """The governor as train_stage drives it, on made-up readings: our threads wait 5 s between any two
    looks, so it drops to one thread at its first look and no core is ever idle to bring it back; the
    epoch record says when, and the stage ends with the thread count it started with."""
    import functools
    import docre.training.train as T
    waited = iter(range(0, 10_000, 5))
    seen = []
    monkeypatch.setattr(T, "ThreadGovernor", functools.partial(
        T.ThreadGovernor, every=0.0, waiting=lambda: next(waited), idle=lambda: 0.0,
        set_threads=lambda n: (seen.append(n), torch.set_num_threads(n))))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, history = stage1_weights(dataset, tiny_encoder, tmp_path / "run")
        assert [n for _, n in history[0]["thread_changes"]] == [1]
        assert seen == [1, 2] and torch.get_num_threads() == 2
        _, fixed = stage1_weights(dataset, tiny_encoder, tmp_path / "fixed", adapt_threads=False)
        assert "thread_changes" not in fixed[0] and seen == [1, 2]
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)
