"""The training flow and the deployments, against real services on loopback (extraction: test_extract_flow.py).

* a real Prefect API (prefect_test_harness: temporary server + SQLite),
* a real S3 endpoint (moto's threaded server) reached through s3fs with dummy credentials.

The model is tiny (conftest's random BERT) so everything runs on a laptop CPU.
"""
from __future__ import annotations

import os
from pathlib import Path


from conftest import BUCKET, dask_processes
from docre import extract as ex
from docre.registry import store as model_store
from docre.data.document import cdr_inventory
from test_extract import CDR


# prefect_api and s3 fixtures: tests/conftest.py


def test_train_flow_artifacts_and_model_store(prefect_api, s3, tiny_encoder, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort
    from flows.train import docre_train

    config = {"model": {"encoder": tiny_encoder, "feature_dim": 32}, "threads": 1, "max_tokens": None,
              "stage1": {"epochs": 1, "batch_size": 2}, "stage2": {"epochs": 1, "batch_size": 2}}
    store = f"s3://{BUCKET}/trained"
    # floor 0: this 1-epoch random model may score F1 0, and this test is about the artifacts and the store
    # (promotion rules: tests/test_champion.py)
    state = docre_train(CDR, CDR, store, work_dir=str(tmp_path / "work"), config=config, floor=0.0,
                        precision="fp32", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    version = result["version"]
    assert s3.cat_file(f"{BUCKET}/trained/latest").decode().strip() == version
    assert model_store.resolve_model(store) == (f"{store}/{version}", version)
    for name in ("config.json", "model.safetensors", "version.json", "report/f1_by_iteration.png",
                 "report/learning_curves.png", "report/per_relation_f1.png", "report/metrics.json"):
        assert s3.exists(f"{BUCKET}/trained/{version}/{name}"), name
    assert [r["K"] for r in result["dev"]] == [0, 1, 2, 3]
    # the model is stored: the run's local checkpoints are gone, its report stays
    run_dir = Path(result["run_dir"])
    assert not list(run_dir.glob("stage*")) and (run_dir / "report" / "report.md").exists()
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
    """prefect.yaml as the README deploys it: pools, `prefect deploy --all`, a process worker running docre-extract
    on a Dask cluster started separately, outside the checkout and without it on its path (production's path:
    the cluster's processes import the flow and its tasks by package name, as installed)."""
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
    # the schedule is deployed inactive (README: how to turn it on); defaults are local stores
    assert [(s.schedule.cron, s.active) for s in train.schedules] == [("0 3 * * 1", False)] and not extract.schedules
    assert train.work_pool_name == extract.work_pool_name == "docre-process"
    assert train.parameters["model_store_url"] == extract.parameters["model_url"] == "outputs/models"
    assert train.parameters["train_inputs"] == "examples/train.json" and train.parameters["tolerance"] == 0.5
    # the demo schedule is a config file, so a run's `config` overrides single fields of it (see below)
    assert (train.parameters["config_file"], train.parameters["config"]) == ("configs/demo.yaml", {})
    limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).save_pretrained(ckpt)
    model_store.publish_model(ckpt, str(tmp_path / "models"), "v7")
    cluster_dir = tmp_path / "cluster"
    cluster_dir.mkdir()
    with dask_processes(cluster_dir) as (address, _):
        out = cli("deployment", "run", "docre-extract/docre-extract", "--param", f"inputs={CDR}",
                  "--param", f"out_url={tmp_path}/triples/{{model_version}}", "--param", f"model_url={tmp_path}/models",
                  "--param", "part_docs=2", "--param", f"scheduler_address={address}")
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
    assert "ModuleNotFoundError" not in logs, logs[-3000:]
    out_v7 = str(tmp_path / "triples" / "v7")
    summary = ex.summarize(ex.load_plan(out_v7)[0], out_v7)
    assert summary["complete"] and summary["docs_in"] == 3 and summary["parts"] == 2


def test_config_overrides_merge_field_by_field_and_bad_values_stop_the_run(prefect_api, tmp_path):
    """`--param config=...` on the deployment changes single fields of its config file (configs/demo.yaml);
    an impossible value fails the run at once, naming the field, before any tokenization or training."""
    import yaml
    from flows.train import docre_train, merge_config
    root = Path(__file__).resolve().parent.parent
    demo = yaml.safe_load((root / "configs" / "demo.yaml").read_text())
    merged = merge_config(demo, {"stage1": {"epochs": 2}, "model": {"iterations": 1}})
    assert merged["stage1"] == demo["stage1"] | {"epochs": 2}
    assert merged["model"] == demo["model"] | {"iterations": 1} and merged["model"]["feature_dim"] == 128
    state = docre_train(CDR, CDR, str(tmp_path / "models"), work_dir=str(tmp_path / "work"),
                        config_file=str(root / "configs" / "demo.yaml"), config={"stage1": {"epochs": -1}},
                        return_state=True)
    assert state.is_failed() and "stage1.epochs" in state.message and "greater than or equal to 1" in state.message
    assert not (tmp_path / "work" / "data").exists()  # nothing was tokenized


def test_the_temporary_server_gets_time_to_start_on_a_busy_machine(tmp_path):
    """Prefect waits 20 s for its temporary server by default; a loaded 2-core machine needs more. The project
    sets 180 s in prefect.toml (processes started here) and in flows/__init__.py (anywhere else)."""
    import subprocess
    import sys
    code = ("import flows\nfrom prefect.settings import get_current_settings\n"
            "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    root = Path(__file__).resolve().parent.parent
    for cwd, prelude in ((tmp_path, code), (root, code.replace("import flows\n", ""))):
        out = subprocess.run([sys.executable, "-c", prelude], cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.stdout.strip() == "180", (cwd, out.stderr[-2000:])


def test_a_run_whose_process_is_killed_is_marked_crashed(prefect_api, tmp_path):
    """infra/automations/crash-zombie-runs.yaml on a real Prefect API: a flow's process is SIGKILLed while
    Running; its heartbeats stop, and the automation marks the run Crashed (which frees a concurrency slot).
    The automation's window is shortened from 300 s to 35 s so the test does not wait five minutes."""
    import signal
    import subprocess
    import sys
    import time
    import yaml
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL
    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / "infra" / "automations" / "crash-zombie-runs.yaml").read_text())
    assert spec["trigger"]["within"] == 300 and spec["actions"][0]["state"] == "CRASHED"
    spec["trigger"]["within"] = 35
    with get_client(sync_client=True) as client:
        automation_id = client.create_automation(AutomationCore.model_validate(spec))
    script = ("import time\nfrom prefect import flow\n@flow(name='docre-zombie')\ndef long():\n"
              "    print('RUNNING', flush=True)\n    time.sleep(600)\nlong()\n")
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        while "RUNNING" not in (line := proc.stdout.readline()):
            assert line or proc.poll() is None, "the flow did not start"
        time.sleep(5)  # its first heartbeat is out
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with get_client(sync_client=True) as client:
            from prefect.client.schemas.filters import FlowFilter, FlowFilterName
            [run] = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["docre-zombie"])))
            assert run.state.is_running()  # killed: nothing told the server
            deadline = time.time() + 150
            while not (state := client.read_flow_run(run.id).state).is_final() and time.time() < deadline:
                time.sleep(3)
            assert state.type.value == "CRASHED" and "heartbeat" in (state.message or ""), state
    finally:
        if proc.poll() is None:
            proc.kill()
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)
