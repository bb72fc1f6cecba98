"""docre-extract end to end against real services: a Prefect API, Dask clusters (local and started separately),
S3 on loopback. Inputs: a PubTator3-style BioC archive of several members and PubMed baseline + update files.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

FAULT_DIR = tempfile.mkdtemp(prefix="docre-faults-")
os.environ["DOCRE_FAULT_INJECT_DIR"] = FAULT_DIR  # inherited by Dask worker processes started later
READ_LOG = Path(tempfile.mkdtemp(prefix="docre-reads-")) / "reads.log"
os.environ["DOCRE_READ_LOG"] = str(READ_LOG)  # every raw-input read, from any process

from conftest import BUCKET  # noqa: E402
from docre import extract as ex  # noqa: E402
from docre.registry import store as model_store  # noqa: E402
from docre.data.document import cdr_inventory  # noqa: E402
from docre.data.io import ReadOptions, read_documents  # noqa: E402
from test_extract import write_corpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(s3, tmp_path_factory) -> dict[str, str]:
    local = write_corpus(tmp_path_factory.mktemp("corpus"))
    urls = {}
    for key, path in local.items():
        s3.put_file(path, f"{BUCKET}/corpus/{Path(path).name}")
        urls[key] = f"s3://{BUCKET}/corpus/{Path(path).name}"
    urls["inputs"] = ",".join(urls[k] for k in ("archive", "baseline", "update"))
    return urls


@pytest.fixture(scope="module")
def published(s3, tiny_encoder, tmp_path_factory):
    """A tiny checkpoint that knows Chemical and Disease, published to s3://docre-test/pt3-models (latest -> v1)."""
    import dataclasses
    import torch
    from docre.model.docre_ii import DocREModel, ModelConfig
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt")
    inventory = dataclasses.replace(cdr_inventory(), entity_types=["Chemical", "Disease"])
    model = DocREModel.create(ModelConfig(encoder=tiny_encoder), inventory, pretrained=True)
    with torch.no_grad():  # an untrained model that predicts triples: logits spread, relations favoured
        for classifier, bias in ((model.base.classifier, 0.0), (model.inference.classifier, 30.0)):
            classifier.weight.mul_(20.0)
            classifier.bias.copy_(torch.tensor([0.0, bias]))
    model.save_pretrained(ckpt)
    store = f"s3://{BUCKET}/pt3-models"
    model_store.publish_model(ckpt, store, "v1")
    return {"store": store, "model": DocREModel.from_pretrained(ckpt)}


def expected(model, corpus) -> list[tuple]:
    """What DocREModel.predict says on the same documents: the later citation version and deletions aside."""
    opts = ReadOptions(unknown_relations="ignore", concepts=corpus["concepts"])
    docs = [d for key in ("archive", "baseline", "update")
            for d in read_documents(corpus[key], inventory=model.inventory, quarantine=[], options=opts)]
    by_source = {}
    for key in ("archive", "baseline", "update"):
        for d in read_documents(corpus[key], inventory=model.inventory, quarantine=[], options=opts):
            by_source.setdefault(key, []).append(d)
    out = []
    for key, ds in by_source.items():
        out += [(corpus[key], t.doc_id, t.head, t.tail, t.relation, t.iteration) for t in model.predict(ds)]
    assert len(docs) == 14
    return sorted(out)


def got(out_url) -> list[tuple]:
    return sorted((r["source"], r["doc_id"], r["head_entity"], r["tail_entity"], r["relation"], r["iteration"])
                  for r in ex.read_triples(out_url).to_pylist())


def reads() -> list[str]:
    import json
    return [json.loads(line)["url"] for line in READ_LOG.read_text().splitlines()] if READ_LOG.exists() else []


def descendants() -> set[int]:
    """Child processes, without multiprocessing's resource tracker (one per parent, it ends with the parent)."""
    import psutil
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "multiprocessing.resource_tracker" not in " ".join(p.cmdline())}


def _artifacts(artifact_filter: dict) -> list[dict]:
    """Artifacts through the REST API: the client's read_artifacts sends an empty task-run filter, which joins
    on task runs and so hides artifacts made in a flow body (the progress artifact)."""
    from prefect import get_client
    with get_client(sync_client=True) as client:
        res = client._client.post("/artifacts/filter", json={"artifacts": artifact_filter, "sort": "ID_DESC",
                                                              "limit": 50, "offset": 0})
        res.raise_for_status()
        return res.json()


def artifacts(flow_run_id) -> dict:
    return {a["key"]: a for a in _artifacts({"flow_run_id": {"any_": [str(flow_run_id)]}})}


def latest_artifact(key: str) -> dict:
    return _artifacts({"key": {"any_": [key]}})[0]


def test_prepare_extract_aggregate_on_a_local_cluster(prefect_api, s3, corpus, published):
    from flows.extract import docre_extract
    before = descendants()
    n_reads = len(reads())
    out = f"s3://{BUCKET}/pt3-out/local/{{model_version}}"
    state = docre_extract(corpus["inputs"], out, published["store"], part_docs=4, n_workers=2,
                          concepts=corpus["concepts"], return_state=True)
    assert state.is_completed(), state.message
    s = state.result()
    out_v1 = out.replace("{model_version}", "v1")
    # archive: 11 records (10 documents, 1 quarantined) in 3 parts; baseline 3 documents; update 1: 5 parts
    assert (s["parts"], s["parts_run"], s["docs_in"], s["docs_out"], s["quarantined"]) == (5, 5, 15, 14, 1)
    assert s["complete"] and s["triples"] == len(expected(published["model"], corpus)) > 0
    assert got(out_v1) == expected(published["model"], corpus)
    assert sorted(reads()[n_reads:]) == sorted(corpus[k] for k in ("archive", "baseline", "update"))  # once each
    # provenance and the graph
    row = ex.read_triples(out_v1).to_pylist()[0]
    assert row["model_version"] == "v1" and row["code_version"].startswith("docre ") and row["part_id"]
    assert s["graph"]["facts"] == ex.read_graph(out_v1).height > 0
    arts = artifacts(state.state_details.flow_run_id)
    assert {"docre-extract-report", "docre-extract-top-relations"} <= set(arts)
    assert "15 in = 14 extracted + 1 quarantined" in arts["docre-extract-report"]["data"]
    assert arts["docre-extract-top-relations"]["type"] == "table"
    progress = arts["docre-extract-progress"]  # on the run the user started, updated as parts finish
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    # a second run reads nothing and runs nothing
    again = docre_extract(corpus["inputs"], out, published["store"], part_docs=4, n_workers=2,
                          concepts=corpus["concepts"])
    assert (again["parts_run"], again["parts_skipped"], again["triples"]) == (0, 5, s["triples"])
    assert len(reads()) == n_reads + 3
    # the cluster and its workers are gone: no process left behind (no worker ran a Prefect server of its own)
    deadline = time.time() + 20
    while (left := descendants() - before) and time.time() < deadline:
        time.sleep(0.5)
    import psutil
    assert not left, [" ".join(psutil.Process(p).cmdline())[:200] for p in left if psutil.pid_exists(p)]


def test_baseline_then_update_in_two_runs_and_a_model_that_sees_nothing(prefect_api, s3, corpus, published,
                                                                        tiny_encoder, tmp_path):
    """The daily path: the archive and the baseline in one run, the update file alone in the next, into one
    output: the same graph and live triples as one run over all three (the first test's output). A model
    for other entity types fails at once, by name, instead of ending green with zero triples."""
    from flows.extract import docre_extract
    one = f"s3://{BUCKET}/pt3-out/local/v1"  # test_prepare_extract_aggregate_on_a_local_cluster's output
    two = f"s3://{BUCKET}/pt3-out/daily/{{model_version}}"
    kw = dict(part_docs=4, n_workers=1, concepts=corpus["concepts"])
    first = docre_extract(f"{corpus['archive']},{corpus['baseline']}", two, published["store"], **kw)
    second = docre_extract(f"{corpus['archive']},{corpus['update']}", two, published["store"], **kw)
    assert (first["inputs"], second["inputs"], second["inputs_new"]) == (2, 3, 1)
    two = two.replace("{model_version}", "v1")
    keys = ["head_key", "relation", "tail_key"]
    assert ex.read_graph(two).drop("examples").sort(keys).equals(ex.read_graph(one).drop("examples").sort(keys))
    live = [ex.read_live_triples(u).drop("part_id").sort(["doc_id", "head_entity", "tail_entity"]) for u in (one, two)]
    assert live[0].equals(live[1]) and "2003" not in live[1]["doc_id"].to_list()

    import dataclasses
    import torch
    from docre.model.docre_ii import DocREModel, ModelConfig
    people = dataclasses.replace(cdr_inventory(), entity_types=["PER", "ORG", "LOC"])
    torch.manual_seed(0)
    DocREModel.create(ModelConfig(encoder=tiny_encoder), people, pretrained=True).save_pretrained(tmp_path / "m")
    state = docre_extract(corpus["archive"], str(tmp_path / "out"), str(tmp_path / "m"), part_docs=4, n_workers=1,
                          return_state=True)
    assert state.is_failed() and "every one of the inputs' 30 entities is of another type" in state.message
    assert "Chemical: 10, Disease: 10, Species: 10" in state.message
    assert not (tmp_path / "out" / "_plan.json").exists()  # nothing joined the output


def test_a_killed_worker_changes_nothing(prefect_api, s3, corpus, published):
    from flows.extract import docre_extract
    before = descendants()
    (Path(FAULT_DIR) / "kill-any").write_text("kill the first worker that reaches a commit")
    out = f"s3://{BUCKET}/pt3-out/killed"
    work = f"s3://{BUCKET}/pt3-out/local/v1/_prepared"  # prepared by the previous test: nothing is read again
    n_reads = len(reads())
    state = docre_extract(corpus["inputs"], out, published["store"], part_docs=4, n_workers=2, work_url=work,
                          concepts=corpus["concepts"], return_state=True)
    assert not (Path(FAULT_DIR) / "kill-any").exists()  # a worker died
    if not state.is_completed():  # the flow may give up on the killed run: a rerun finishes the rest
        state = docre_extract(corpus["inputs"], out, published["store"], part_docs=4, n_workers=2, work_url=work,
                              concepts=corpus["concepts"], return_state=True)
    assert state.is_completed(), state.message
    s = state.result()
    assert (s["docs_in"], s["docs_out"], s["quarantined"]) == (15, 14, 1)
    assert got(out) == expected(published["model"], corpus)  # none lost, none duplicated
    assert len(reads()) == n_reads
    deadline = time.time() + 20
    while (left := descendants() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left  # the killed worker's replacement and the cluster are gone too


def test_a_cluster_started_separately(prefect_api, s3, corpus, published, tmp_path):
    """`dask scheduler` and `dask worker --nthreads 1` as their own processes; the flow only connects.
    (The same cluster through the deployment, as production runs it: test_flows.py.)"""
    from conftest import dask_processes
    from flows.extract import docre_extract
    with dask_processes(tmp_path) as (address, procs):
        out = f"s3://{BUCKET}/pt3-out/external"
        s = docre_extract(corpus["inputs"], out, published["store"], part_docs=4, scheduler_address=address,
                          work_url=f"s3://{BUCKET}/pt3-out/local/v1/_prepared", concepts=corpus["concepts"])
        assert s["complete"] and got(out) == expected(published["model"], corpus)
        import psutil
        worker_tree = psutil.Process(procs[1].pid).children(recursive=True)
        assert not [p for p in worker_tree if "prefect" in " ".join(p.cmdline())]  # no server of its own


def test_workers_report_to_the_flows_temporary_api(tmp_path, tiny_encoder):
    """Without PREFECT_API_URL Prefect starts one temporary server for the flow; workers must use it, not start
    their own (a subprocess, so this test's own Prefect settings do not leak in)."""
    import torch
    from docre.model.docre_ii import DocREModel, ModelConfig
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).save_pretrained(ckpt)
    code = ("from flows.extract import docre_extract; "
            f"s = docre_extract({str(Path(__file__).parent / 'fixtures' / 'cdr_sample.pubtator')!r}, "
            f"{str(tmp_path / 'out')!r}, {str(ckpt)!r}, part_docs=2, n_workers=2); print('DOCS_OUT', s['docs_out'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "AWS_", "FSSPEC_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400,
                         cwd=tmp_path)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-3000:]
    assert "DOCS_OUT 3" in logs
    assert logs.count("Starting temporary server") == 1, logs[-3000:]
    assert "Dask dashboard" not in logs  # none is running (no bokeh here), so none is linked
    assert "still alive after" not in logs  # the cluster shut down cleanly


def test_missing_s3_credentials_fail_in_one_named_line(prefect_api, monkeypatch, tmp_path):
    from flows.extract import docre_extract
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    state = docre_extract("s3://nowhere/in.xml", "s3://nowhere/out", "s3://nowhere/models", return_state=True)
    assert state.is_failed()
    assert state.message.startswith("s3://nowhere/in.xml: no S3 credentials; set AWS_ACCESS_KEY_ID")
    assert "\n" not in state.message
