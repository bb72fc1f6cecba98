"""Data-parallel training (issue 27): 2 gloo processes x 1 thread under torchrun on a tiny model.

One stage-1 epoch of 2 ranks with batch 1 equals one process accumulating 2 batches of 1 (the same
global batch); rank 0 alone writes state, checkpoints and history; every rank steps the same number
of times; and the 2-process state resumes in 1 process. Dropout is off (encoder and heads), so the
comparison is exact up to float summation order.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_encoder
from docre.data.tokenize import TokenizeConfig, tokenize_to_parquet
from docre.data.document import cdr_inventory
from docre.model.docre_ii import DocREModel, ModelConfig
from docre.training.train import StageConfig, TrainConfig, choose_threads, train

FIXTURE = Path(__file__).parent / "fixtures" / "cdr_sample.data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    enc = build_tiny_encoder(root / "encoder")
    cfg = json.loads((enc / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (enc / "config.json").write_text(json.dumps(cfg))
    data = str(root / "data")
    tokenize_to_parquet([str(FIXTURE)], data, TokenizeConfig(encoder=str(enc), relations="cdr"), progress=False)
    return root, str(enc), data


def config(root: Path, enc: str, data: str, name: str, **kw) -> TrainConfig:
    base = dict(train_data=data, dev_data=data, out_dir=str(root / name), stages=[1], limit_train=2, limit_dev=1,
                stage1=StageConfig(epochs=1, batch_size=1, lr_encoder=1e-3, lr_head=1e-3),
                model=dict(encoder=enc, feature_dim=16, iterations=1, dropout=0.0,
                           inference=dict(num_layers=1, ffn_dim=32, predictor_dim=16)),
                device="cpu", progress=False, seed=3, threads=1, precision="fp32")
    return TrainConfig(**(base | kw))


def test_two_gloo_processes_equal_one_process_and_resume(setup, capfd):
    root, enc, data = setup
    ddp = config(root, enc, data, "ddp", nproc=2)
    records = []
    [result] = train(ddp, on_epoch=records.append)  # launches torchrun: 2 processes x 1 thread, gloo
    printed = [line for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # the epoch record is printed by rank 0 only
    assert [r["epoch"] for r in records] == [1] and records[0]["processes"] == 2
    assert records[0]["steps_per_rank"] == [1, 1]  # both ranks stepped once
    out = root / "ddp" / "stage1"
    history = json.loads((out / "history.json").read_text())
    assert history == result.history == records  # one record per epoch, written once
    assert not list((root / "ddp").rglob("*.tmp"))
    # 1 process, the same global batch as 2 accumulated micro-batches of 1
    single = config(root, enc, data, "single", stage1=StageConfig(epochs=1, batch_size=1, grad_accum=2,
                                                                   lr_encoder=1e-3, lr_head=1e-3))
    [one] = train(single)
    a = DocREModel.from_pretrained(out / "best").state_dict()
    b = DocREModel.from_pretrained(Path(one.best_dir)).state_dict()
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    torch.manual_seed(single.seed)  # the initial weights both runs started from: the step did move them
    initial = DocREModel.create(ModelConfig(**single.model), cdr_inventory()).state_dict()
    assert not torch.allclose(initial["base.classifier.weight"], a["base.classifier.weight"])
    assert json.loads((root / "single" / "stage1" / "last" / "state.json").read_text())["scheduler"]["last_epoch"] == 1
    # the 2-process state resumes in 1 process: epoch 2 continues from it
    resumed = config(root, enc, data, "ddp", stage1=StageConfig(epochs=2, batch_size=1, lr_encoder=1e-3,
                                                                 lr_head=1e-3))
    [again] = train(resumed)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert again.history[0] == history[0] and "processes" not in again.history[1]


def test_choose_threads_under_load():
    assert choose_threads(3) == 3  # an explicit setting wins
    quiet = choose_threads(None, 1, load=0.0)
    assert quiet >= 1
    assert choose_threads(None, 1, load=100.0) == 1
    assert choose_threads(None, 2, load=0.0) == max(1, quiet // 2)


def test_cli_train_options_reach_the_config(tmp_path, monkeypatch):
    """`docre train CONFIG --nproc 2 --threads 1`: both land in the TrainConfig that `train` gets."""
    import argparse

    import docre.cli.commands as commands
    import docre.training.train as training
    parser = argparse.ArgumentParser()
    commands.add_model_commands(parser.add_subparsers(dest="command"))
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"train_data": "t", "dev_data": "d", "out_dir": str(tmp_path / "o")}))
    seen = []
    monkeypatch.setattr(training, "train", lambda cfg: seen.append(cfg) or [])
    args = parser.parse_args(["train", str(path), "--nproc", "2", "--threads", "1"])
    args.func(args)
    assert (seen[0].nproc, seen[0].threads) == (2, 1)
    args = parser.parse_args(["train", str(path)])
    args.func(args)
    assert (seen[1].nproc, seen[1].threads) == (1, None)
