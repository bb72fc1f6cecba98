"""Scheduled retraining that cannot make production worse: the training flow on a real Prefect server.

A temporary Prefect server (prefect_test_harness), the tiny encoder, the 3-document CDR sample
used as train, dev and evaluation set, a local-filesystem model store. The champion sees only
the first training document (limit_train=1), the better challenger all three, the broken one
has learning rate 0; on this machine they score F1 61.54, 100 and 0 at K=2.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from conftest import FIXTURES
from docre.registry import store
from docre.cli import main as docre_cli

CDR = str(FIXTURES / "cdr_sample.data")

# prefect_api (a temporary Prefect server for the session): tests/conftest.py


@pytest.fixture(scope="module")
def dask_address():
    """One 1-process Dask cluster for the module's extraction runs (starting one per run costs ~10 s each)."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def config(encoder: str, stage1_epochs: int, lr: float, stage2_epochs: int = 1, limit_train: int | None = None
           ) -> dict:
    return {"limit_train": limit_train, "model": {"encoder": encoder, "feature_dim": 32, "iterations": 2}, "threads": 1, "max_tokens": None,
            "seed": 66, "eval_iterations": [0, 1, 2], "dropout_masks": "torch",  # the stream these tests were tuned on
            "stage1": {"epochs": stage1_epochs, "batch_size": 2, "lr_encoder": lr, "lr_head": 10 * lr},
            "stage2": {"epochs": stage2_epochs, "batch_size": 2, "lr_encoder": lr, "lr_head": 10 * lr}}


def train(model_store: str, work, cfg: dict, **kw):
    from flows.train import docre_train
    # fp32 whatever the CPU: with precision auto, CPUs with bf16 instructions would train in bf16
    return docre_train(CDR, CDR, model_store, work_dir=str(work), config=cfg, progress_every=1, return_state=True,
                       **({"precision": "fp32"} | kw))


def artifacts(flow_run_id) -> dict:
    """key -> latest artifact created by a task of the flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])), flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.ID_DESC, limit=100, offset=0)
    return {a.key: a for a in arts if a.key}


def wait_for_event(name: str, version: str, timeout: float = 30.0):
    """Events reach the server asynchronously (websocket, then the event persister): poll."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    deadline = time.time() + timeout
    while time.time() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50)
        found = [e for e in page.events if e.payload.get("version") == version]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no {name} event for {version} within {timeout} s")


def run_logs(flow_run_id, until: str, timeout: float = 30.0) -> list[str]:
    """The flow run's log messages from the server, once the line containing `until` has arrived (logs are batched)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    deadline = time.time() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200, offset=0, sort=LogSort.TIMESTAMP_ASC)
        messages = [log.message for log in logs]
        if any(until in m for m in messages) or time.time() > deadline:
            return messages
        time.sleep(0.5)


def extract_version(model_store: str, out_root, scheduler_address: str) -> str:
    """Run the extraction flow on the sample; the model version it resolved names its output directory."""
    from flows.extract import docre_extract
    docre_extract(str(FIXTURES / "cdr_sample.pubtator"), f"{out_root}/{{model_version}}", model_store,
                  scheduler_address=scheduler_address)
    [version] = [p.name for p in out_root.iterdir()]
    return version


def cli(*args: str) -> tuple[int, str, str]:
    """`docre ...` in this process; output captured without capsys (Prefect's log handlers keep the stream
    they first saw, and capsys closes its streams at the end of the test)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = docre_cli(list(args))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_broken_challenger_is_rejected_better_one_promoted_rollback_restores(prefect_api, dask_address, tiny_encoder,
                                                                              tmp_path):
    model_store, work = str(tmp_path / "models"), tmp_path / "work"

    # 1. the first model into an empty store: only the floor applies
    first = train(model_store, work, config(tiny_encoder, 2, 2e-3, stage2_epochs=2, limit_train=1))
    assert first.is_completed() and first.name == "Completed", first.message
    champion = first.result()
    assert champion["promoted"] and store.read_latest(model_store) == champion["version"]
    lineage = store.read_version_meta(model_store, champion["version"])["lineage"]
    for key in ("train_data", "dev_data", "config", "code", "encoder", "metrics", "hardware", "wall_time_s",
                "compared_with", "decision"):
        assert key in lineage, key
    assert lineage["compared_with"] is None and lineage["encoder"] == tiny_encoder
    assert lineage["config"]["limit_train"] == 1 and lineage["code"].get("git_commit")
    assert lineage["train_data"]["cache_key"] and lineage["metrics"]["K2"]["f1"] >= 1.0
    assert lineage["wall_time_s"]["training"] > 0 and lineage["hardware"]["cpu_count"] >= 1
    first_decision = lineage["decision"]  # no champion, nothing promoted before: no interval, no drift reference
    assert first_decision["interval"] is None and first_decision["drift"]["reference_version"] is None
    assert first_decision["rule"].startswith("Promote only if") and first_decision["drift_budget"] == 1.0

    # 2. a broken challenger (learning rate 0): stored, not promoted, reported, announced
    broken = train(model_store, work, config(tiny_encoder, 1, 0.0), force=True)
    assert broken.is_completed() and broken.name == "NotPromoted"
    rejected = broken.result()
    assert not rejected["promoted"] and rejected["champion"] == champion["version"]
    assert store.read_latest(model_store) == champion["version"]  # latest did not move
    meta = store.read_version_meta(model_store, rejected["version"])["lineage"]
    assert meta["compared_with"] == champion["version"] and meta["decision"]["promote"] is False
    assert meta["decision"]["challenger_f1"] < meta["decision"]["champion_f1"] - 0.5
    interval = meta["decision"]["interval"]  # paired bootstrap over the 3 evaluation documents
    assert interval["documents"] == 3 and interval["resamples"] == 1000 and interval["seed"] == 0
    assert interval["low"] <= interval["observed"] <= interval["high"] <= 0  # F1 0 on every resample
    drift = meta["decision"]["drift"]  # the best promoted model is the champion, scored in this run
    assert (drift["reference_version"], drift["source"]) == (champion["version"], "scored today")
    assert drift["reference_f1"] == meta["decision"]["champion_f1"] and drift["passed"] is False
    arts = artifacts(broken.state_details.flow_run_id)
    report = arts["docre-champion-challenger"].data
    assert "NOT PROMOTED" in report and champion["version"] in report and "| CID" in report
    assert "- rule: Promote only if" in report and "| interval | challenger - champion:" in report
    assert f"| drift | challenger F1 {meta['decision']['challenger_f1']:.2f}; best promoted F1" in report
    assert "docre-model-candidate" in arts and "docre-model-published" not in arts
    assert {"docre-train-stage-1", "docre-train-stage-2"} <= set(arts)
    event = wait_for_event("docre.model.rejected", rejected["version"])
    assert event.payload["champion"] == champion["version"] and "challenger F1" in event.payload["reason"]
    assert event.payload["interval"]["high"] == interval["high"]

    # the extraction that follows uses the champion
    assert extract_version(model_store, tmp_path / "triples-after-reject", dask_address) == champion["version"]

    # 3. a better challenger is promoted
    better = train(model_store, work, config(tiny_encoder, 2, 2e-3), force=True)
    assert better.is_completed() and better.name == "Completed", better.message
    promoted = better.result()
    d = promoted["decision"]
    assert promoted["promoted"] and d["challenger_f1"] > d["champion_f1"]
    assert d["interval"]["low"] >= -0.5
    assert d["drift"]["passed"] and d["drift"]["reference_version"] == champion["version"]
    assert store.read_latest(model_store) == promoted["version"]
    wait_for_event("docre.model.promoted", promoted["version"])
    assert extract_version(model_store, tmp_path / "triples-after-promote", dask_address) == promoted["version"]

    # docre model list shows all three, which is latest and which was rejected
    code, out, _ = cli("model", "list", model_store)
    assert code == 0
    listing = {line.lstrip("* ").split()[0]: line for line in out.splitlines() if line.lstrip("* ")[:2] == "20"}
    assert listing[promoted["version"]].startswith("*") and "latest" in listing[promoted["version"]]
    assert "rejected" in listing[rejected["version"]] and "promoted" in listing[champion["version"]]
    shown = f"{d['interval']['observed']:+.2f} [{d['interval']['low']:+.2f}, {d['interval']['high']:+.2f}]"
    assert shown in listing[promoted["version"]]  # each decision's interval
    assert len(listing) == 3

    # 4. rollback: back to the champion, and extraction follows it
    code, out, _ = cli("model", "rollback", model_store)
    assert code == 0 and f"latest {promoted['version']} -> {champion['version']}" in out
    assert store.read_latest(model_store) == champion["version"]
    history = store.promotion_history(model_store)
    assert [(e["action"], e["version"]) for e in history] == [
        ("promote", champion["version"]), ("promote", promoted["version"]), ("rollback", champion["version"])]
    assert extract_version(model_store, tmp_path / "triples-after-rollback", dask_address) == champion["version"]

    # 5. a scheduled run on the champion's training data skips training
    skipped = train(model_store, work, config(tiny_encoder, 2, 2e-3))
    assert skipped.is_completed() and skipped.name == "Skipped" and "force" in skipped.message
    # created in the flow body, not in a task: the task-run join of read_artifacts misses it, read it by key
    from prefect.artifacts import Artifact
    note = Artifact.get("docre-train-skipped")
    assert note.flow_run_id == skipped.state_details.flow_run_id and "unchanged" not in note.data
    assert note.data.startswith("Skipped: the training data") and "\n" not in note.data
    assert store.read_latest(model_store) == champion["version"] and len(store.list_versions(model_store)) == 3

    # 6. drift: the better model is put back by hand and then the first champion too (no rollback: neither is
    # withdrawn), so the best model ever promoted is not the champion. A retrain identical to the champion
    # (same config, same data, deterministic training) ties with it, but is rejected: the best model, re-scored
    # on today's evaluation set, is far more than the drift budget above it.
    store.promote(model_store, promoted["version"], "back after review")
    store.promote(model_store, champion["version"], "hand-picked")
    again = train(model_store, work, config(tiny_encoder, 2, 2e-3, stage2_epochs=2, limit_train=1), force=True)
    assert again.is_completed() and again.name == "NotPromoted", again.message
    d = again.result()["decision"]
    assert d["interval"]["low"] == d["interval"]["high"] == 0.0  # the same predictions as the champion
    assert [c["passed"] for c in d["checks"]] == [True, True, False]
    drift = d["drift"]
    assert (drift["reference_version"], drift["source"]) == (promoted["version"], "re-scored today")
    assert drift["reference_f1"] == promoted["decision"]["challenger_f1"]  # same set, same score as recorded
    assert "drift budget 1.00 below the best promoted F1" in d["reason"]
    assert store.read_latest(model_store) == champion["version"]


def test_killed_run_resumes_through_the_flow_to_the_same_model(prefect_api, tiny_encoder, tmp_path, monkeypatch):
    """The run dies after stage 1 epoch 1 with its local disk; the flow retry resumes from work_url."""
    import torch
    from prefect import get_client
    from flows.train import docre_train
    cfg = config(tiny_encoder, 2, 2e-3, stage2_epochs=2)
    straight = train(str(tmp_path / "a" / "models"), tmp_path / "a" / "work", cfg)
    assert straight.is_completed(), straight.message

    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "train-stage1-epoch1").write_text("die once")
    monkeypatch.setenv("DOCRE_FAULT_INJECT_DIR", str(faults))
    work_url = str(tmp_path / "b" / "object-store-work")
    resumed = docre_train.with_options(retries=1, retry_delay_seconds=0)(
        CDR, CDR, str(tmp_path / "b" / "models"), work_dir=str(tmp_path / "b" / "work"), work_url=work_url,
        config=cfg, precision="fp32", return_state=True)
    assert resumed.is_completed(), resumed.message
    assert not (faults / "train-stage1-epoch1").exists()  # the fault fired
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(resumed.state_details.flow_run_id)
    assert run.run_count == 2
    history = json.loads(open(f"{resumed.result()['run_dir']}/report/history.json").read())[0]  # stage 1
    assert [r["epoch"] for r in history] == [1, 2]
    # epoch 1 ran once (before the fault) and came back from the work URL; each epoch line is logged once
    lines = run_logs(resumed.state_details.flow_run_id, until="published as latest")
    assert sum("stage 1 epoch 1/2" in m for m in lines) == 1 and sum("stage 1 epoch 2/2" in m for m in lines) == 1
    assert any("stage 1: resumed from" in m and "after epoch 1" in m for m in lines)

    def weights(result) -> dict:
        from safetensors.torch import load_file
        return load_file(f"{result['model_url']}/model.safetensors")
    # tensors, not file hashes: safetensors writes its metadata map in no fixed order
    a, b = weights(resumed.result()), weights(straight.result())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not os.listdir(work_url)  # the finished run's state was removed


def test_missing_s3_credentials_fail_in_one_named_line(prefect_api, tmp_path, monkeypatch):
    from flows.train import docre_train
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    state = docre_train(CDR, CDR, "s3://docre-models/cdr", work_dir=str(tmp_path), return_state=True)
    assert state.is_failed() and "\n" not in state.message
    assert state.message.startswith("s3://docre-models/cdr: no S3 credentials") and "AWS_ACCESS_KEY_ID" in state.message
    code, _, err = cli("model", "list", "s3://docre-models/cdr")
    err = err.strip()
    assert code == 2 and err.startswith("error: StoreAccessError: s3://docre-models/cdr: no S3 credentials") and "\n" not in err


def test_bad_promotion_parameters_fail_before_training(prefect_api, tmp_path):
    from flows.train import docre_train
    state = docre_train(CDR, CDR, str(tmp_path / "models"), work_dir=str(tmp_path / "work"), drift_budget=-1.0,
                        return_state=True)
    assert state.is_failed() and state.message == "tolerance and drift_budget must be >= 0 F1 points, got 0.5 and -1.0"
    assert not (tmp_path / "work").exists()  # nothing tokenized, nothing trained
