"""The Prefect layer end to end, against real services on loopback.

* a real Prefect API (prefect_test_harness: temporary server + SQLite),
* a real S3 endpoint (moto's threaded server) reached through s3fs with dummy credentials,
* a real Dask LocalCluster with 2 worker processes.

The model is tiny (conftest's random BERT) so everything runs on a laptop CPU.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before Prefect is imported: its home (profiles, local storage) must not be the user's.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="docre-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
FAULT_DIR = tempfile.mkdtemp(prefix="docre-faults-")
os.environ["DOCRE_FAULT_INJECT_DIR"] = FAULT_DIR  # inherited by Dask worker processes started later

import pytest  # noqa: E402

from docre import extract as ex  # noqa: E402
from docre import store as model_store  # noqa: E402
from docre.data.document import cdr_inventory  # noqa: E402
from docre.data.io import read_documents  # noqa: E402

from test_extract import CDR, write_jsonl  # noqa: E402

BUCKET = "docre-test"


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1; s3fs finds it through the environment, as in production."""
    from moto.server import ThreadedMotoServer
    import fsspec
    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint,
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint  # fsspec read its env at import
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    yield fs
    server.stop()
    fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def dask_address(s3):
    """A 2-process cluster shared by several runs (started after the S3 env is set, so workers inherit it)."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def published(s3, tiny_encoder, tmp_path_factory):
    """A tiny DocRE-II checkpoint published to s3://docre-test/models (version v1, latest -> v1)."""
    import torch
    from docre.model.docre_ii import DocREModel, ModelConfig
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt")
    DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).save_pretrained(ckpt)
    url = model_store.publish_model(ckpt, f"s3://{BUCKET}/models", "v1")
    return {"store": f"s3://{BUCKET}/models", "url": url, "model": DocREModel.from_pretrained(ckpt)}


@pytest.fixture(scope="module")
def inputs(s3, tmp_path_factory):
    """s3://docre-test/inputs/: the CDR sample (3 documents) and a gzipped JSONL (3 good + 1 bad line)."""
    local = tmp_path_factory.mktemp("inputs")
    s3.put_file(CDR, f"{BUCKET}/inputs/cdr_sample.data")
    s3.put_file(str(write_jsonl(local / "docs.jsonl.gz")), f"{BUCKET}/inputs/docs.jsonl.gz")
    s3.pipe_file(f"{BUCKET}/inputs/_SUCCESS", b"")
    return f"s3://{BUCKET}/inputs/"


def listing(fs, prefix):
    fs.invalidate_cache()  # s3fs caches listings; other processes wrote
    return sorted(fs.find(prefix))


def expected_triples(model, inputs_url):
    docs = [d for url in ex.list_inputs(inputs_url) for d in read_documents(url, quarantine=[])]
    return sorted(model.predict(docs), key=lambda t: (t.doc_id, t.head, t.tail, t.relation))


def triple_keys(table):
    cols = ["doc_id", "head_entity", "tail_entity", "relation", "iteration", "head_id", "tail_id", "head_name",
            "tail_name", "head_type", "tail_type", "relation_name", "model_version"]
    return sorted(tuple(r[c] for c in cols) for r in table.select(cols).to_pylist())


def assert_matches_predict(out_url, model, inputs_url):
    got = ex.read_triples(out_url)
    want = expected_triples(model, inputs_url)
    assert len(want) > 0
    assert triple_keys(got) == sorted((t.doc_id, t.head, t.tail, t.relation, t.iteration, t.head_id, t.tail_id,
                                       t.head_name, t.tail_name, t.head_type, t.tail_type, t.relation_name, "v1")
                                      for t in want)
    scores = {(r["doc_id"], r["head_entity"], r["tail_entity"]): r["score"] for r in got.to_pylist()}
    for t in want:
        assert scores[(t.doc_id, t.head, t.tail)] == pytest.approx(t.score, abs=1e-4)
    return len(want)


def test_extract_flow_matches_predict_and_quarantines(prefect_api, s3, published, inputs):
    """(a) triples equal DocREModel.predict; (d) the bad document is quarantined with its reason."""
    from flows.extract import docre_extract
    out = f"s3://{BUCKET}/out/a"
    summary = docre_extract(inputs, out, published["store"], docs_per_shard=2, n_workers=2)  # own LocalCluster
    n = assert_matches_predict(out, published["model"], inputs)
    assert summary["complete"] and summary["shards"] == 4 and summary["shards_run"] == 4
    assert (summary["docs_in"], summary["docs_out"], summary["quarantined"], summary["triples"]) == (7, 6, 1, n)
    assert summary["docs_in"] == summary["docs_out"] + summary["quarantined"]
    [q] = ex.read_quarantine(out).to_pylist()
    assert q["source"].endswith("docs.jsonl.gz") and q["where"].startswith("line 2 ('bad-mention')")
    assert "outside sentence 0" in q["reason"] and q["stage"] == "read"
    for r in ex.read_committed(out).values():
        assert r.docs_in == r.docs_out + r.quarantined
    assert s3.exists(f"{BUCKET}/out/a/manifest.json")


def test_rerun_adds_no_rows(prefect_api, s3, published, inputs, dask_address):
    """(b) a second run skips every shard; a shard whose commit was lost is redone in place, no duplicates."""
    from flows.extract import docre_extract
    out = f"s3://{BUCKET}/out/b"
    first = docre_extract(inputs, out, published["store"], docs_per_shard=2, scheduler_address=dask_address)
    files = listing(s3, f"{BUCKET}/out/b/triples")
    second = docre_extract(inputs, out, published["store"], docs_per_shard=2, scheduler_address=dask_address)
    assert (second["shards_run"], second["shards_skipped"]) == (0, 4)
    assert listing(s3, f"{BUCKET}/out/b/triples") == files
    # lose one commit marker (a crash after writing data): only that shard runs again, same rows
    s3.rm(listing(s3, f"{BUCKET}/out/b/_committed")[0])
    third = docre_extract(inputs, out, published["store"], docs_per_shard=2, scheduler_address=dask_address)
    assert third["shards_run"] == 1
    for k in ("docs_in", "docs_out", "quarantined", "triples"):
        assert first[k] == second[k] == third[k]
    assert ex.read_triples(out).num_rows == first["triples"] == assert_matches_predict(out, published["model"], inputs)
    assert listing(s3, f"{BUCKET}/out/b/triples") == files


def test_injected_failure_is_retried(prefect_api, s3, published, inputs, dask_address):
    """(c) one shard fails after writing its data, before committing; the retry completes it, counts exact."""
    from distributed import Client
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter,
                                                TaskRunFilterFlowRunId)
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from flows.extract import docre_extract

    flag = Path(FAULT_DIR) / "any"
    flag.write_text("fail once")
    out = f"s3://{BUCKET}/out/c"
    state = docre_extract(inputs, out, published["store"], docs_per_shard=2, scheduler_address=dask_address,
                          return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert not flag.exists()  # the fault fired
    n = assert_matches_predict(out, published["model"], inputs)
    assert (summary["docs_in"], summary["docs_out"], summary["quarantined"], summary["triples"]) == (7, 6, 1, n)
    with get_client(sync_client=True) as client:
        # limit and sort spelled out: this client version sends null for them otherwise, which the API refuses
        [sub] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])),
            sort=FlowRunSort.START_TIME_ASC, limit=10)
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[sub.id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)
    assert len(runs) == 4 and all(r.state.is_completed() for r in runs)
    assert sorted(r.run_count for r in runs) == [1, 1, 1, 2]
    # the model was loaded once per worker process, not once per shard (this cluster ran several flows)
    with Client(dask_address) as client:
        infos = client.run(model_store.model_cache_info)
    loads = [k for info in infos.values() for k in info["loads"]]
    assert 1 <= len(loads) <= len(infos) == 2


def test_train_flow_artifacts_and_model_store(prefect_api, s3, tiny_encoder, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort
    from flows.train import docre_train

    config = {"model": {"encoder": tiny_encoder, "feature_dim": 32}, "threads": 1, "max_tokens": None,
              "stage1": {"epochs": 1, "batch_size": 2}, "stage2": {"epochs": 1, "batch_size": 2}}
    store = f"s3://{BUCKET}/trained"
    state = docre_train(CDR, CDR, store, work_dir=str(tmp_path / "work"), config=config, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    version = result["version"]
    assert s3.cat_file(f"{BUCKET}/trained/latest").decode().strip() == version
    assert model_store.resolve_model(store) == (f"{store}/{version}", version)
    for name in ("config.json", "model.safetensors", "version.json", "report/f1_by_iteration.png",
                 "report/learning_curves.png", "report/per_relation_f1.png", "report/metrics.json"):
        assert s3.exists(f"{BUCKET}/trained/{version}/{name}"), name
    assert [r["K"] for r in result["dev"]] == [0, 1, 2, 3]
    with get_client(sync_client=True) as client:
        # every argument spelled out: this client version sends null for missing ones, which the API refuses
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.ID_DESC, limit=50, offset=0)
    by_key = {a.key: a for a in arts}
    assert {"docre-dev-scores", "docre-eval-report", "docre-train-stage-1", "docre-train-stage-2",
            "docre-model-published"} <= set(by_key)
    assert by_key["docre-dev-scores"].type == "table" and by_key["docre-eval-report"].type == "markdown"
    assert "data:image/png;base64," in by_key["docre-eval-report"].data
    assert by_key["docre-train-stage-2"].type == "progress" and float(by_key["docre-train-stage-2"].data) == 100.0


def test_deploy_all_and_run_extract_through_a_process_worker(prefect_api, tiny_encoder, tmp_path):
    """prefect.yaml as the README deploys it: pools, `prefect deploy --all`, a worker running docre-extract."""
    import subprocess
    import sys
    import time
    import torch
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL
    from docre.model.docre_ii import DocREModel, ModelConfig

    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "DOCRE_PROJECT_DIR": str(root),
                        "PREFECT_CLI_PROMPT": "false"}
    prefect = [str(Path(sys.executable).parent / "prefect"), "--no-prompt"]

    def cli(*args, timeout=300):
        # needs fastapi < 0.151 (pyproject): newer ones reject the null limit/offset Prefect 3.8's client sends
        res = subprocess.run(prefect + list(args), cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    cli("work-pool", "create", "docre-process", "--type", "process")
    cli("work-pool", "create", "docre-gpu", "--type", "kubernetes", "--base-job-template",
        str(root / "infra" / "k8s-gpu-job-template.json"))
    cli("deploy", "--all")
    with get_client(sync_client=True) as client:
        train = client.read_deployment_by_name("docre-train/docre-train")
        extract = client.read_deployment_by_name("docre-extract/docre-extract")
        pool = client.read_work_pool("docre-gpu")
    assert [s.schedule.cron for s in train.schedules] == ["0 3 * * 1"] and not extract.schedules
    assert train.work_pool_name == extract.work_pool_name == "docre-process"
    assert train.parameters["config_file"] == "configs/cdr.yaml"
    limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).save_pretrained(ckpt)
    model_store.publish_model(ckpt, str(tmp_path / "models"), "v7")
    out = cli("deployment", "run", "docre-extract/docre-extract", "--param", f"inputs={CDR}",
              "--param", f"out_url={tmp_path}/triples/{{model_version}}", "--param", f"model_url={tmp_path}/models",
              "--param", "docs_per_shard=2", "--param", "n_workers=1")
    run_id = [line.split()[-1] for line in out.splitlines() if "UUID" in line][0]
    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "docre-process", "--run-once"], cwd=root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        logs, _ = worker.communicate(timeout=400)
    finally:
        if worker.poll() is None:
            worker.kill()
    with get_client(sync_client=True) as client:
        deadline = time.time() + 60
        while not (state := client.read_flow_run(run_id).state).is_final() and time.time() < deadline:
            time.sleep(2)
    assert state.is_completed(), logs[-3000:]
    summary = ex.summarize(ex.plan_shards([CDR], 2), str(tmp_path / "triples" / "v7"), write_manifest=False)
    assert summary["complete"] and summary["docs_in"] == 3 and summary["shards"] == 2
