"""`docre-extract`: triples from a document collection, sharded over a Dask cluster.

    planning (this process)  ->  extract_shard x N (Dask workers)  ->  summary

By default a LocalCluster with `n_workers` processes (1 thread each) is started
for the run; `scheduler_address` uses an existing Dask scheduler instead, e.g.
one worker per GPU (infra/dask-gpu.md). Shards already committed under
`out_url` are skipped, so rerunning after a failure only does what is missing.
"""
from __future__ import annotations

import json
import os

from prefect import flow, get_run_logger, unmapped
from prefect.futures import wait
from prefect_dask import DaskTaskRunner

from docre.extract import ShardSpec, redact_url
from tasks.extract import extract_shard, pending_shards, plan_shards, resolve_model, summarize


def dask_task_runner(scheduler_address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    # one process per worker; split the machine's cores between them so torch does not oversubscribe
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None,
                                          "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}})


@flow(name="docre-extract-shards")
def extract_shards(pending: list[ShardSpec], out_url: str, checkpoint_url: str, model_version: str,
                   iterations: int | None = None, batch_size: int = 8, device: str = "auto",
                   model_cache_dir: str | None = None) -> dict:
    """Map extract_shard over `pending` on this flow's (Dask) task runner; failures are reported, not raised."""
    futures = extract_shard.map(pending, out_url=unmapped(out_url), checkpoint_url=unmapped(checkpoint_url),
                                model_version=unmapped(model_version), iterations=unmapped(iterations),
                                batch_size=unmapped(batch_size), device=unmapped(device),
                                model_cache_dir=unmapped(model_cache_dir))
    wait(futures)
    done, failed = [], []
    for spec, future in zip(pending, futures):
        state = future.state
        if state.is_completed():
            done.append(future.result())
        else:
            failed.append(spec.shard_id)
            get_run_logger().error("shard %s (%s records %d-%d) failed: %s", spec.shard_id,
                                   redact_url(spec.input_url), spec.start, spec.end, state.message)
    return {"done": done, "failed": failed}


@flow(name="docre-extract", log_prints=True)
def docre_extract(inputs: str, out_url: str, model_url: str, docs_per_shard: int = 100,
                  scheduler_address: str | None = None, n_workers: int = 2, format: str | None = None,
                  iterations: int | None = None, batch_size: int = 8, device: str = "auto",
                  model_cache_dir: str | None = None) -> dict:
    """Extract triples from `inputs` (file/dir/glob URLs, comma-separated) into `out_url`.

    model_url: a model store (its `latest` is followed once, at the start) or a
    checkpoint directory. `{model_version}` in out_url is replaced by the
    resolved version, so each model gets its own output and a rerun with the
    same model resumes. Returns the summary with exact counts; fails when a
    shard could not be committed (rerun to finish it).
    """
    checkpoint_url, version = resolve_model(model_url)
    out_url = out_url.replace("{model_version}", version)  # e.g. s3://bucket/triples/{model_version}
    specs = plan_shards(inputs, docs_per_shard, format, out_url)
    pending = pending_shards(specs, out_url, version)
    failed: list[str] = []
    if pending:
        runner = dask_task_runner(scheduler_address, n_workers)
        out = extract_shards.with_options(task_runner=runner)(
            pending, out_url, checkpoint_url, version, iterations, batch_size, device, model_cache_dir)
        failed = out["failed"]
    summary = summarize(specs, out_url, version, extra={"shards_run": len(pending) - len(failed),
                                                        "shards_skipped": len(specs) - len(pending),
                                                        "shards_failed": failed})
    print(json.dumps({k: v for k, v in summary.items() if k != "shards_missing"}
                     | {"shards_missing": len(summary["shards_missing"])}, indent=1))
    if not summary["complete"]:
        raise RuntimeError(f"extraction incomplete: {len(summary['shards_missing'])} shard(s) not committed, "
                           f"{len(summary['mismatched_files'])} file(s) with wrong counts; rerun to finish")
    return summary


if __name__ == "__main__":  # python -m flows.extract INPUTS OUT_URL MODEL_URL
    import sys
    docre_extract(*sys.argv[1:4])
