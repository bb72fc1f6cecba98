"""Extraction tasks: planning, one shard, the summary."""
from __future__ import annotations

import os

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from docre import extract as lib
from docre import store
from docre.extract import ShardResult, ShardSpec

# Fault injection for resilience tests and chaos drills, off unless set: when the
# directory named by this variable holds a file called `<shard id>` or `any`, the
# first shard to claim it (by deleting it) fails after writing its data files and
# before committing, exactly where a worker crash would hurt most.
FAULT_DIR_ENV = "DOCRE_FAULT_INJECT_DIR"


def _fault_hook():
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if not fault_dir:
        return None

    def hook(spec: ShardSpec) -> None:
        for name in (spec.shard_id, "any"):
            try:
                os.remove(os.path.join(fault_dir, name))
            except FileNotFoundError:
                continue
            raise RuntimeError(f"injected fault in shard {spec.shard_id} before commit ({FAULT_DIR_ENV})")
    return hook


@task(name="resolve-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def resolve_model(model_url: str) -> tuple[str, str]:
    """Pin the model for the whole run: (checkpoint URL, version), following `latest` once."""
    checkpoint, version = store.resolve_model(model_url)
    get_run_logger().info("model %s version %s", lib.redact_url(checkpoint), version)
    return checkpoint, version


@task(name="plan-shards", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def plan_shards(inputs: str, docs_per_shard: int, format: str | None = None,
                out_url: str | None = None) -> list[ShardSpec]:
    """Deterministic shards; record counts of unchanged inputs are reused from out_url/_plan/counts.json."""
    urls = lib.list_inputs(inputs, format)
    cache = f"{out_url.rstrip('/')}/_plan/counts.json" if out_url else None
    specs = lib.plan_shards(urls, docs_per_shard, format, counts=lib.count_inputs(urls, format, cache))
    get_run_logger().info("%d input file(s), %d records, %d shard(s) of up to %d", len(urls),
                          sum(s.size for s in specs), len(specs), docs_per_shard)
    return specs


@task(name="find-pending", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def pending_shards(specs: list[ShardSpec], out_url: str, model_version: str) -> list[ShardSpec]:
    pending, done = lib.pending_shards(specs, out_url, model_version)
    get_run_logger().info("%d shard(s) already committed, %d to run", len(done), len(pending))
    return pending


@task(name="extract-shard", task_run_name="extract-shard-{spec.shard_id}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=2)
def extract_shard(spec: ShardSpec, out_url: str, checkpoint_url: str, model_version: str,
                  iterations: int | None = None, batch_size: int = 8, device: str = "auto",
                  model_cache_dir: str | None = None) -> ShardResult:
    """Extract and commit one shard. The model is loaded once per worker process (docre.store.load_model)."""
    model = store.load_model(checkpoint_url, model_version, device, model_cache_dir)
    result = lib.extract_shard(model, spec, out_url, model_version, iterations, batch_size,
                               before_commit=_fault_hook())
    get_run_logger().info("shard %s (%s records %d-%d): %d in, %d out, %d quarantined, %d triples%s",
                          spec.shard_id, lib.redact_url(spec.input_url), spec.start, spec.end, result.docs_in,
                          result.docs_out, result.quarantined, result.triples,
                          " (already committed)" if result.skipped else "")
    return result


@task(name="summarize", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def summarize(specs: list[ShardSpec], out_url: str, model_version: str, extra: dict | None = None) -> dict:
    """Exact totals from the commit markers (Parquet row counts verified); writes out_url/manifest.json."""
    summary = lib.summarize(specs, out_url, model_version, verify=True, extra=extra)
    keys = ("shards", "shards_committed", "docs_in", "docs_out", "quarantined", "triples")
    create_table_artifact([{k: summary[k] for k in keys} | {"complete": summary["complete"]}],
                          key="docre-extract-summary", description=f"extraction into {lib.redact_url(out_url)}")
    create_markdown_artifact(
        f"# Extraction {'complete' if summary['complete'] else 'INCOMPLETE'}\n\n"
        f"- output: `{lib.redact_url(out_url)}` (model `{model_version}`)\n"
        f"- shards: {summary['shards_committed']}/{summary['shards']} committed"
        f" ({(extra or {}).get('shards_run', 0)} run now)\n"
        f"- documents: {summary['docs_in']} in = {summary['docs_out']} extracted + "
        f"{summary['quarantined']} quarantined\n- triples: {summary['triples']}\n"
        + (f"- missing shards: {summary['shards_missing'][:20]}\n" if summary["shards_missing"] else ""),
        key="docre-extract-report", description="extraction summary")
    return summary
