"""`docre-train`: tokenize -> stage 1 -> stage 2 -> evaluate -> publish.

Each run trains in its own directory `<work_dir>/train/<flow run>` (a retried
flow run resumes there from the last finished epoch); tokenized datasets live
in `<data_url>/{train,dev}` and are reused while their inputs and tokenizer are
unchanged (the manifest cache of docre.data.tokenize).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from docre.train import TrainConfig
from tasks.data import tokenize
from tasks.training import evaluate, publish_model, train_stage

_NESTED = ("stage1", "stage2", "model")


def merge_config(base: dict, override: dict | None) -> dict:
    """`override` on top of `base`; stage1/stage2/model are merged key by key."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = {**out.get(k, {}), **v} if k in _NESTED and isinstance(v, dict) else v
    return out


@flow(name="docre-train", log_prints=True)
def docre_train(train_inputs: str, dev_inputs: str, model_store_url: str, work_dir: str = "runs/prefect",
                data_url: str | None = None, config_file: str | None = None, config: dict[str, Any] | None = None,
                relations: str | None = "cdr", format: str | None = None, version: str | None = None) -> dict:
    """Train DocRE-II on `train_inputs`, select on `dev_inputs`, publish to `model_store_url`.

    config_file: a TrainConfig YAML (e.g. configs/cdr.yaml); `config` overrides
    its fields (TrainConfig names; train_data, dev_data and out_dir are set by
    the flow). work_dir must be local; data_url and model_store_url may be any
    fsspec URL.
    """
    raw: dict = {"progress": False}
    if config_file:
        import fsspec
        import yaml
        with fsspec.open(config_file, "rt") as f:
            raw = merge_config(raw, yaml.safe_load(f) or {})
    raw = merge_config(raw, config)
    data_url = (data_url or f"{work_dir}/data").rstrip("/")
    encoder = (raw.get("model") or {}).get("encoder")
    train_ds = tokenize(train_inputs, f"{data_url}/train", encoder, relations, format)
    dev_ds = tokenize(dev_inputs, f"{data_url}/dev", encoder, relations, format)
    run_dir = f"{work_dir}/train/{flow_run.get_name() or 'local'}-{str(flow_run.get_id() or '')[:8]}"
    cfg = TrainConfig.model_validate(raw | {"train_data": train_ds["url"], "dev_data": dev_ds["url"],
                                            "out_dir": run_dir})
    results = [train_stage(cfg, stage) for stage in cfg.stages]
    best_dir = results[-1].best_dir
    report = evaluate(cfg, best_dir, [r.history for r in results], f"{run_dir}/report")
    published = publish_model(best_dir, model_store_url, version,
                              extra_files={f"report/{Path(path).name}": path for path in report["files"].values()} | {
                                  "report/history.json": _write_history(run_dir, results)})
    summary = {"version": published["version"], "model_url": published["url"], "run_dir": run_dir,
               "best_f1": {r.stage: r.best_f1 for r in results}, "dev": report["rows"],
               "train_docs": train_ds["documents"], "dev_docs": dev_ds["documents"]}
    print(summary)
    return summary


def _write_history(run_dir: str, results) -> str:
    import json
    path = Path(run_dir) / "report" / "history.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.history for r in results], indent=1))
    return str(path)
