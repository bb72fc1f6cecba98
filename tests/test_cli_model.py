"""The model commands of the CLI end to end on the tiny encoder: train, evaluate, predict (JSONL, Parquet, result.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import FIXTURES
from docre.cli import main
from docre.data.atlop import read_atlop
from docre.training.metrics import read_docred_result
from docre.model.docre_ii import DocREModel

DATA = FIXTURES / "cdr_sample.data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "tokenize", str(DATA), str(root / "data"), "--encoder", tiny_encoder, "--relations", "cdr"]) == 0
    config = {"train_data": str(root / "data"), "dev_data": str(root / "data"), "out_dir": str(root / "run"),
              "stage1": {"epochs": 1, "batch_size": 2}, "stage2": {"epochs": 1, "batch_size": 2},
              "model": {"encoder": tiny_encoder, "feature_dim": 16, "iterations": 2,
                        "inference": {"num_layers": 1}},
              "progress": False, "precision": "fp32"}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "config.yaml")]) == 0
    return root


def test_train_writes_both_stages(trained, capsys):
    for stage in (1, 2):
        assert (trained / "run" / f"stage{stage}" / "best" / "model.safetensors").exists()
        history = json.loads((trained / "run" / f"stage{stage}" / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1]
    assert "K2" in history[0]["dev"]


def test_config_errors_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_data: a\ndev_data: b\nout_dir: c\nstage1: {epochs: 1, learning_rate: 3}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: invalid configuration: stage1.learning_rate: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(Exception, match="learning_rate"):  # --debug shows the real exception
        main(["train", str(bad), "--debug"])


def test_evaluate_prints_every_iteration(trained, capsys):
    out_json = trained / "scores.json"
    assert main(["evaluate", str(trained / "run" / "stage2" / "best"), str(trained / "data"), "--device", "cpu",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["0", "1", "2"]
    scores = json.loads(out_json.read_text())
    assert set(scores) >= {"K0", "K1", "K2", "docs_per_s"}


def test_predict_outputs_agree_with_the_api(trained, tmp_path, capsys):
    model_dir = trained / "run" / "stage1" / "best"  # its base module predicts facts on these documents
    with open(DATA) as f:
        docs = list(read_atlop(f, str(DATA)))
    expected = sorted((t.doc_id, t.head, t.tail, t.relation, t.iteration)
                      for t in DocREModel.from_pretrained(model_dir).predict(docs, iterations=0))
    jsonl, parquet, result = tmp_path / "t.jsonl", tmp_path / "t.parquet", tmp_path / "result.json"
    for out in (jsonl, parquet, result):
        assert main(["predict", str(model_dir), str(DATA), str(out), "--device", "cpu", "--iterations", "0"]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows and all(r["iteration"] == 0 for r in rows)
    assert sorted((r["doc_id"], r["head"], r["tail"], r["relation"], r["iteration"]) for r in rows) == expected
    assert all({"head_name", "tail_name", "score", "relation_name"} <= set(r) for r in rows)
    table = pq.read_table(parquet).to_pylist()
    assert sorted((r["doc_id"], r["head"], r["tail"], r["relation"], r["iteration"]) for r in table) == expected
    assert sorted(read_docred_result(result, docs)) == sorted(e[:4] for e in expected)
    assert f"{len(docs)} documents -> {len(rows)} triples" in capsys.readouterr().err


def test_checkpoint_records_the_entity_types_it_was_trained_on(trained):
    relations = json.loads((trained / "run" / "stage2" / "best" / "relations.json").read_text())
    assert relations["entity_types"] == ["Chemical", "Disease"]


def test_predict_pubtator3_bioc_with_foreign_labels_writes_bioc(trained, tmp_path, capsys):
    """Association labels and Gene/Species entities are not CDR's: ignored and counted, never fatal."""
    model_dir = trained / "run" / "stage1" / "best"
    src = FIXTURES / "pubtator3" / "bioc_sample.xml"
    out = tmp_path / "pred.xml"
    assert main(["predict", str(model_dir), str(src), str(out), "--device", "cpu", "--iterations", "0"]) == 0
    err = capsys.readouterr().err
    err = err[err.index("3 documents -> "):]  # after the progress bar
    assert "0 quarantined" in err
    assert "entities of type 'Species' left out" in err and "entities of type 'Gene' left out" in err
    assert "gold labels with relation 'Negative_Correlation' ignored" in err
    import bioc
    with open(out) as f:
        coll = bioc.biocxml.load(f)
    assert [d.id for d in coll.documents] == ["31000001", "31000002", "31000003"]
    rels = [r for d in coll.documents for r in d.relations]
    n_triples = int(err.split(" -> ")[1].split()[0])
    assert len(rels) == n_triples
    for r in rels:
        assert r.infons["type"] == "CID" and r.infons["model_version"] == "best" and 0.5 <= float(r.infons["score"])
        assert r.infons["role1"].startswith("Chemical|") and r.infons["role2"].startswith("Disease|")
    # the same through BioC JSON, and it reads back with our reader
    js = tmp_path / "pred.bioc.json"
    assert main(["predict", str(model_dir), str(src), str(js), "--device", "cpu", "--iterations", "0"]) == 0
    assert len(json.loads(js.read_text())["documents"]) == 3


def test_evaluate_without_training_data_shows_no_ign_f1(trained, capsys):
    assert main(["evaluate", str(trained / "run" / "stage2" / "best"), str(trained / "data"), "--device", "cpu",
                 "--iterations", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[4] == "IgnF1" and out[1].split()[4] == "—"
    assert "IgnF1 not computed: pass --train-data" in "\n".join(out)
    assert main(["evaluate", str(trained / "run" / "stage2" / "best"), str(trained / "data"), "--device", "cpu",
                 "--iterations", "0", "--train-data", str(trained / "data")]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[4] != "—" and float(row[4]) >= 0


def test_train_refuses_impossible_values_naming_the_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train_data: a\ndev_data: b\nout_dir: c\nstage1: {epochs: -1}\nstage2: {lr_head: -0.1}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "stage1.epochs" in err and "stage2.lr_head" in err and not (tmp_path / "c").exists()


def test_version_and_model_arguments_that_accept_a_store(tmp_path, capsys, tiny_encoder):
    import torch
    from docre.data.document import cdr_inventory
    from docre.model.docre_ii import DocREModel, ModelConfig
    from docre.registry import store
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("docre 0.1.0")
    with pytest.raises(SystemExit) as e:
        main(["model", "list", str(tmp_path / "no-store")])
    assert e.value.code == 2 and "no model store there" in capsys.readouterr().err
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).save_pretrained(ckpt)
    store.publish_model(ckpt, str(tmp_path / "models"), "v3")
    for model in (str(tmp_path / "models"), str(ckpt)):  # the store's latest, or the checkpoint itself
        out = tmp_path / f"{len(model)}.jsonl"
        assert main(["predict", model, str(FIXTURES / "cdr_sample.data"), str(out), "--threads", "1"]) == 0
        assert out.exists()
