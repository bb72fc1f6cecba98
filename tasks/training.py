"""Training, evaluation and model publishing tasks."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE

from docre import extract as lib
from docre import store
from docre.train import StageResult, TrainConfig, load_split, resolve_device, train
from docre.train import evaluate as evaluate_model


@task(name="train-stage", task_run_name="train-stage-{stage}", cache_policy=NO_CACHE)
def train_stage(cfg: TrainConfig, stage: int) -> StageResult:
    """One DocRE-II stage via `docre.train.train` (resumes from the stage's saved state if there is one).

    The device follows cfg.device ("auto": CUDA when this worker has a GPU).
    Progress is a Prefect progress artifact updated after every epoch.
    """
    logger = get_run_logger()
    sc = cfg.stage1 if stage == 1 else cfg.stage2
    logger.info("stage %d: %d epochs on %s, output %s", stage, sc.epochs, resolve_device(cfg.device),
                cfg.out_dir)
    progress_id = create_progress_artifact(0.0, key=f"docre-train-stage-{stage}",
                                           description=f"DocRE-II stage {stage}: epochs done")

    def on_epoch(record: dict) -> None:
        ks = sorted(k for k in record["dev"] if k.startswith("K"))
        f1 = {k: round(100 * record["dev"][k]["f1"], 2) for k in ks}
        update_progress_artifact(progress_id, 100.0 * record["epoch"] / max(1, sc.epochs),
                                 description=f"stage {stage} epoch {record['epoch']}/{sc.epochs}: "
                                             f"loss {record['loss']:.4f}, dev F1 {f1}")
        logger.info("stage %d epoch %d/%d: loss %.4f, dev F1 %s, %.1f docs/s", stage, record["epoch"], sc.epochs,
                    record["loss"], f1, record["train_docs_per_s"])

    [result] = train(cfg.model_copy(update={"stages": [stage]}), on_epoch=on_epoch)
    update_progress_artifact(progress_id, 100.0, description=f"stage {stage} done: best dev F1 "
                                                            f"{100 * result.best_f1:.2f} ({result.best_dir})")
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: TrainConfig, best_dir: str, histories: list[list[dict]], report_dir: str) -> dict:
    """Dev scores at every K in cfg.eval_iterations, as a table artifact and a markdown report with plots."""
    from docre.model.docre_ii import DocREModel
    from docre.report import build_report, per_relation_rows

    model = DocREModel.from_pretrained(best_dir, resolve_device(cfg.device))
    examples, docs = load_split(cfg.dev_data, cfg.limit_dev)
    metrics = evaluate_model(model, examples, docs, cfg.eval_iterations)
    final_k = max(cfg.eval_iterations)
    per_relation, relation_table = per_relation_rows(model, examples, docs, final_k)
    report = build_report(metrics, per_relation, relation_table, histories, report_dir)
    create_table_artifact(report.rows, key="docre-dev-scores",
                          description=f"Dev scores (%) per inference iteration K; model {best_dir}")
    create_markdown_artifact(report.markdown, key="docre-eval-report",
                             description=f"Evaluation report; plots saved in {report_dir}")
    get_run_logger().info("dev F1 by K: %s", {r["K"]: r["f1"] for r in report.rows})
    return {"metrics": metrics, "rows": report.rows, "per_relation": report.per_relation, "files": report.files}


@task(name="publish-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def publish_model(local_dir: str, store_url: str, version: str | None = None,
                  extra_files: dict[str, str] | None = None) -> dict:
    """Copy the checkpoint to `store_url/<version>/` and then move `store_url/latest` to it."""
    version = version or store.make_version(local_dir)
    url = store.publish_model(local_dir, store_url, version, {k: Path(v) for k, v in (extra_files or {}).items()})
    create_markdown_artifact(f"# DocRE-II model {version}\n\n- location: `{lib.redact_url(url)}`\n"
                             f"- `{lib.redact_url(store_url)}/latest` -> `{version}`\n",
                             key="docre-model-published", description=f"published model {version}")
    get_run_logger().info("published %s as latest", lib.redact_url(url))
    return {"version": version, "url": url}
