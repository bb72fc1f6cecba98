"""Training, evaluation, champion/challenger comparison and model publishing tasks."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from docre import extract as lib
from docre.registry import store
from docre.registry.promotion import (DriftReference, PromotionDecision, PromotionPolicy, ScoredModel,
                                     comparison_markdown, judge, percent_by_k, resolve_drift_reference)
from docre.training.train import StageResult, TrainConfig, load_split, resolve_device, train, train_precision
from docre.training.train import evaluate as evaluate_model

# Fault injection for the resume test and chaos drills, off unless set (the same variable as
# tasks/extract.py): when the directory holds a file `train-stage<s>-epoch<e>`, the stage deletes it
# after epoch e has been saved to the work URL, deletes its local run directory (a pod whose disk
# dies with it) and fails.
FAULT_DIR_ENV = "DOCRE_FAULT_INJECT_DIR"


def _inject_fault(stage: int, epoch: int, run_dir: str) -> None:
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if not fault_dir:
        return
    try:
        os.remove(os.path.join(fault_dir, f"train-stage{stage}-epoch{epoch}"))
    except FileNotFoundError:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    raise RuntimeError(f"injected fault after stage {stage} epoch {epoch}; local run directory removed "
                       f"({FAULT_DIR_ENV})")


@task(name="train-stage", task_run_name="train-stage-{stage}", cache_policy=NO_CACHE)
def train_stage(cfg: TrainConfig, stage: int, work_url: str | None = None, progress_every: int = 20,
                nproc: int | None = None) -> StageResult:
    """One DocRE-II stage via `docre.training.train.train`, resuming from saved state.

    The state lives in cfg.out_dir/stage<n> (local) and, with `work_url`, is
    pushed to `work_url/stage<n>` after every epoch and pulled from there
    first when it is ahead of the local disk, so a retry on a fresh pod (the
    local disk gone) resumes at the last finished epoch instead of starting
    over. Progress: a progress artifact updated every `progress_every` batches
    (epoch, step, loss, docs/s) and one log line per epoch. The device follows
    cfg.device ("auto": CUDA when this worker has a GPU).

    Data parallel: `nproc` (or cfg.nproc) > 1 runs the stage as that many torchrun processes on
    this worker, one GPU each with NCCL (gloo on CPU); rank 0 writes the state, so pushing it and
    the per-epoch reporting work as with one process (per-step progress stays in the processes'
    own log lines). infra/k8s-multi-gpu-job-template.json is a work-pool job template for such a
    worker.
    """
    logger = get_run_logger()
    if nproc:
        cfg = cfg.model_copy(update={"nproc": nproc})
    sc = cfg.stage1 if stage == 1 else cfg.stage2
    stage_dir = Path(cfg.out_dir) / f"stage{stage}"
    stage_url = f"{work_url.rstrip('/')}/stage{stage}" if work_url else None
    if stage_url:
        restored = store.pull_stage_state(stage_url, stage_dir)
        if restored is not None:
            logger.info("stage %d: resumed from %s after epoch %d", stage, lib.redact_url(stage_url), restored + 1)
    device = resolve_device(cfg.device)
    logger.info("stage %d: %d epochs on %s (precision %s, %d process%s), output %s", stage, sc.epochs, device,
                train_precision(device, cfg.precision), cfg.nproc, "" if cfg.nproc == 1 else "es", cfg.out_dir)
    progress_id = create_progress_artifact(0.0, key=f"docre-train-stage-{stage}",
                                           description=f"DocRE-II stage {stage}: starting")
    best_file = stage_dir / "best" / "model.safetensors"
    seen = {"best_mtime": best_file.stat().st_mtime_ns if best_file.exists() else None}

    def on_step(p: dict) -> None:
        done = (p["epoch"] - 1 + p["batch"] / p["batches"]) / max(1, p["epochs"])
        update_progress_artifact(progress_id, 100.0 * done,
                                 description=f"stage {stage} epoch {p['epoch']}/{p['epochs']} step "
                                             f"{p['batch']}/{p['batches']}: loss {p['loss']:.4f}, "
                                             f"{p['docs_per_s']:.1f} docs/s")

    def on_epoch(record: dict) -> None:
        ks = sorted(k for k in record["dev"] if k.startswith("K"))
        f1 = {k: round(100 * record["dev"][k]["f1"], 2) for k in ks}
        if stage_url:
            mtime = best_file.stat().st_mtime_ns if best_file.exists() else None
            store.push_stage_state(stage_dir, stage_url, record["epoch"] - 1, mtime != seen["best_mtime"])
            seen["best_mtime"] = mtime
        update_progress_artifact(progress_id, 100.0 * record["epoch"] / max(1, sc.epochs),
                                 description=f"stage {stage} epoch {record['epoch']}/{sc.epochs}: "
                                             f"loss {record['loss']:.4f}, dev F1 {f1}, "
                                             f"{record['train_docs_per_s']:.1f} docs/s")
        # the only per-epoch log line: docre.training.train prints its JSON record only when no callback reports it
        logger.info("stage %d epoch %d/%d: loss %.4f, dev F1 %s, %.1f docs/s", stage, record["epoch"], sc.epochs,
                    record["loss"], f1, record["train_docs_per_s"])
        _inject_fault(stage, record["epoch"], cfg.out_dir)

    [result] = train(cfg.model_copy(update={"stages": [stage]}), on_epoch=on_epoch, on_step=on_step,
                     step_every=max(0, progress_every))
    update_progress_artifact(progress_id, 100.0, description=f"stage {stage} done: best dev F1 "
                                                            f"{100 * result.best_f1:.2f}")
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: TrainConfig, best_dir: str, histories: list[list[dict]], report_dir: str) -> dict:
    """Dev scores at every K in cfg.eval_iterations, as a table artifact and a markdown report with plots.

    Also returns `per_doc` (K -> doc id -> (correct, submitted, gold)), so the
    champion/challenger bootstrap can reuse this scoring of the challenger.
    """
    from docre.model.docre_ii import DocREModel
    from docre.training.report import build_report, per_relation_rows

    model = DocREModel.from_pretrained(best_dir, resolve_device(cfg.device))
    examples, docs = load_split(cfg.dev_data, cfg.limit_dev)
    metrics = evaluate_model(model, examples, docs, cfg.eval_iterations, per_doc=True)
    per_doc = metrics.pop("per_doc")
    final_k = max(cfg.eval_iterations)
    per_relation, relation_table = per_relation_rows(model, examples, docs, final_k)
    report = build_report(metrics, per_relation, relation_table, histories, report_dir)
    create_table_artifact(report.rows, key="docre-dev-scores",
                          description=f"Dev scores (%) per inference iteration K; model {best_dir}")
    create_markdown_artifact(report.markdown, key="docre-eval-report",
                             description=f"Evaluation report; plots saved in {report_dir}")
    get_run_logger().info("dev F1 by K: %s", {r["K"]: r["f1"] for r in report.rows})
    return {"metrics": metrics, "rows": report.rows, "per_relation": report.per_relation, "files": report.files,
            "per_doc": per_doc}


def _score(checkpoint_dir: str, data_url: str, iterations: list[int], compare_k: int, device: str,
           relations: bool = True) -> dict:
    """{"by_k", "per_relation", "per_doc"} of one model on one tokenized set; per_doc at compare_k only."""
    from docre.model.docre_ii import DocREModel
    from docre.training.report import per_relation_rows
    model = DocREModel.from_pretrained(checkpoint_dir, resolve_device(device))
    examples, docs = load_split(data_url)
    metrics = evaluate_model(model, examples, docs, iterations, per_doc=True)
    per_doc = metrics.pop("per_doc")[f"K{compare_k}"]
    rows = per_relation_rows(model, examples, docs, compare_k)[0] if relations else []
    return {"by_k": percent_by_k(metrics), "per_relation": rows, "per_doc": per_doc}


@task(name="champion-challenger", cache_policy=NO_CACHE)
def compare_with_champion(challenger_dir: str, challenger_eval_url: str, champion: dict | None,
                          champion_eval_url: str | None, iterations: list[int], compare_k: int,
                          policy: PromotionPolicy, device: str, eval_name: str, challenger_scores: dict | None = None,
                          best: dict | None = None) -> dict:
    """Score the challenger and the current champion on the same evaluation set at the same K, and decide.

    `champion` is {"version", "checkpoint"} (a local directory) or None for an
    empty store. The eval set is tokenized once per tokenizer (each model reads
    it with its own). `challenger_scores` ({"by_k", "per_relation", "per_doc"})
    skips re-scoring the challenger when the evaluate task already scored it on
    the same set at the same K. `best` is the drift budget's reference:
    {"recorded": DriftReference as recorded (docre.registry.promotion.best_promoted),
    "checkpoint", "eval_url"}; with a checkpoint (the model is still in the
    store and is not the champion) it is re-scored here on today's set, else
    its recorded F1 is used. Writes the markdown artifact
    `docre-champion-challenger` (scores side by side, the interval, the drift
    check, the rule) and returns the decision with the score sets.
    """
    logger = get_run_logger()
    challenger = challenger_scores or _score(challenger_dir, challenger_eval_url, iterations, compare_k, device)
    champ = _score(champion["checkpoint"], champion_eval_url, iterations, compare_k, device) if champion else None
    key = f"K{compare_k}"
    champ_today = (DriftReference(champion["version"], champ["by_k"][key]["f1"], "scored today", compare_k,
                                  "the champion") if champ else None)
    recorded: DriftReference | None = (best or {}).get("recorded")

    def rescore(version: str) -> float | None:
        if not (best or {}).get("checkpoint") or version != recorded.version:
            return None  # no longer in the store: its recorded F1 stands
        f1 = _score(best["checkpoint"], best["eval_url"], [compare_k], compare_k, device,
                    relations=False)["by_k"][key]["f1"]
        logger.info("best promoted model %s re-scored on today's evaluation set: F1 %.2f (recorded %.2f)",
                    version, f1, recorded.f1)
        return f1

    reference = resolve_drift_reference(recorded, champ_today, rescore, compare_k)
    decision = judge(ScoredModel("challenger", challenger["by_k"][key]["f1"], challenger.get("per_doc")),
                     ScoredModel(champion["version"], champ["by_k"][key]["f1"], champ["per_doc"]) if champ else None,
                     reference, policy, compare_k)
    markdown = comparison_markdown(decision, challenger["by_k"], champ["by_k"] if champ else None,
                                   challenger["per_relation"], champ["per_relation"] if champ else None,
                                   "this run", champion["version"] if champion else None, eval_name)
    create_markdown_artifact(markdown, key="docre-champion-challenger",
                             description="challenger vs champion: " + ("promoted" if decision.promote else
                                                                       "NOT promoted"))
    logger.info("champion/challenger: %s", decision.reason)
    return {"decision": decision.to_dict(), "challenger": challenger, "champion": champ, "markdown": markdown}


@task(name="publish-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def publish_model(local_dir: str, store_url: str, version: str | None = None,
                  extra_files: dict[str, str] | None = None, lineage: dict | None = None,
                  make_latest: bool = True, reason: str = "published") -> dict:
    """Copy the checkpoint to `store_url/<version>/`; with make_latest, then move `store_url/latest` to it."""
    version = version or store.make_version(local_dir)
    url = store.publish_model(local_dir, store_url, version, {k: Path(v) for k, v in (extra_files or {}).items()},
                              lineage=lineage, make_latest=make_latest, reason=reason)
    where = lib.redact_url(store_url)
    latest = (f"- `{where}/latest` -> `{version}`\n" if make_latest else
              f"- stored as a candidate; `{where}/latest` unchanged (`docre model promote {where} {version}` "
              f"to promote it by hand)\n")
    create_markdown_artifact(f"# DocRE-II model {version}\n\n- location: `{lib.redact_url(url)}`\n" + latest,
                             key="docre-model-published" if make_latest else "docre-model-candidate",
                             description=f"{'published' if make_latest else 'candidate'} model {version}")
    get_run_logger().info("%s %s", "published as latest:" if make_latest else "stored as candidate (not latest):",
                          lib.redact_url(url))
    return {"version": version, "url": url}


def emit_model_event(decision: PromotionDecision | dict, store_url: str, version: str,
                     champion_version: str | None, flow_run_id: str | None = None) -> None:
    """`docre.model.promoted` or `docre.model.rejected`, for automations (notify people, trigger extraction).

    The resource is the model version in its store (URL redacted); the payload
    carries both F1 values, the interval, the drift check and the reason, so a
    notification can say why.
    """
    d = decision if isinstance(decision, dict) else decision.to_dict()
    where = lib.redact_url(store_url)
    related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}] \
        if flow_run_id else []
    emit_event(event="docre.model.promoted" if d["promote"] else "docre.model.rejected",
               resource={"prefect.resource.id": f"docre.model.{where}/{version}", "prefect.resource.name": version,
                         "docre.store": where},
               related=related,
               payload={"version": version, "store": where, "champion": champion_version,
                        "challenger_f1": d["challenger_f1"], "champion_f1": d["champion_f1"],
                        "compare_k": d["compare_k"], "tolerance": d["tolerance"], "floor": d["floor"],
                        "drift_budget": d.get("drift_budget"), "interval": d.get("interval"),
                        "drift": d.get("drift"), "reason": d["reason"]})
