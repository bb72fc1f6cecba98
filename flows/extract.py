"""`docre-extract`: triples from a document collection at PubMed scale, on a Dask cluster.

    resolve model -> list inputs -> prepare (each input streamed once, in parallel over files)
      -> plan parts (from the prepare manifests) -> extract parts (bounded number in flight)
      -> summary -> aggregate (knowledge graph) -> artifacts

By default a LocalCluster of `n_workers` processes is started for the run (1 torch thread each unless
`threads_per_worker` says otherwise; workers x threads should not exceed the cores); `scheduler_address`
uses a cluster started separately (`dask scheduler`, `dask worker --nthreads 1`, one worker per GPU, see
infra/dask-gpu.md). Task runs on the workers report to this flow's Prefect API: its URL travels with every
task (and is set in the LocalCluster's environment), so no worker starts a temporary server of its own.
Parts committed under `out_url` are skipped, so rerunning after any failure only does what is missing.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.states import Failed
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect_dask import DaskTaskRunner

from docre.registry import store
from docre.extract import (GraphShrinkError, NoScoreableEntities, Part, PlanConflict, PrepareConfig, entity_coverage,
                           extend_plan, new_inputs, pending_parts, plan_parts)
from docre.registry.storage import join, redact_url
from tasks.extract import aggregate, extract_part, list_inputs, prepare_input, publish_report, resolve_model, summarize

InputFormat = Literal["docred", "pubtator", "atlop", "bioc_xml", "bioc_json", "pubmed"]
Device = Literal["auto", "cpu", "cuda"]


class _DropDashboardLink(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Dask dashboard is available" not in record.getMessage()


class ClusterRunner(DaskTaskRunner):
    """DaskTaskRunner that links the Dask dashboard only when the scheduler really serves one."""

    @property
    def client(self):
        first = self._client is None
        quiet = _DropDashboardLink()
        self.logger.addFilter(quiet)
        try:
            client = super().client  # created on first use
        finally:
            self.logger.removeFilter(quiet)
        if first and dashboard_running(client):
            self.logger.info("Dask dashboard: %s", client.dashboard_link)
        return client


def _scheduler_has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


def dashboard_running(client) -> bool:
    """The scheduler serves HTTP *and* can render the dashboard (bokeh); without bokeh /status is a 404."""
    if not client.scheduler_info().get("services", {}).get("dashboard"):
        return False
    try:
        return bool(client.run_on_scheduler(_scheduler_has_bokeh))
    except Exception:  # noqa: BLE001 - an old or locked-down scheduler: do not claim a dashboard
        return False


def _patient_nanny():
    """A Nanny that gives its worker process 20 s to exit when the cluster closes, not 5.

    A worker with a model loaded, on a loaded machine, can take more than 4 s to exit cleanly (flushing its
    Prefect logs and events, freeing memory); distributed's default then kills it and logs "still alive".
    """
    from distributed import Nanny

    class PatientNanny(Nanny):
        async def close(self, timeout: float = 20, reason: str = "nanny-close"):
            return await super().close(timeout=timeout, reason=reason)
    return PatientNanny


def cluster_runner(scheduler_address: str | None, n_workers: int, threads_per_worker: int,
                   api_url: str | None, dashboard_address: str | None = None) -> ClusterRunner:
    if scheduler_address:
        return ClusterRunner(address=scheduler_address)
    threads = str(threads_per_worker)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return ClusterRunner(cluster_class="distributed.LocalCluster",
                         cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                         # ":0": any free port for the scheduler's HTTP endpoint, never a clash
                                         "dashboard_address": dashboard_address or ":0", "env": env,
                                         "worker_class": _patient_nanny()})


def flow_api_url() -> str | None:
    """This flow's API URL, also when Prefect runs a temporary server (the setting is then empty)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def _in_window(task, items: list, max_in_flight: int, on_done, **kwargs) -> tuple[list, list]:
    """Submit `task` for each item with at most `max_in_flight` runs pending; returns (results, failed items).

    The Prefect server then never holds more than `max_in_flight` scheduled runs of this flow, however many
    parts there are.
    """
    from distributed import wait as dask_wait
    results, failed, running = [], [], {}
    items = list(items)
    while items or running:
        while items and len(running) < max_in_flight:
            item = items.pop(0)
            running[task.submit(item, **kwargs)] = item
        wrapped = [f.wrapped_future for f in running]
        with wrapped[0].client.as_current():
            dask_wait(wrapped, return_when="FIRST_COMPLETED")
        for future in [f for f in running if f.wrapped_future.done()]:
            item = running.pop(future)
            future.wait()
            state = future.state
            if state.is_completed():
                results.append(future.result())
            else:
                failed.append(item)
                get_run_logger().error("%s failed: %s", getattr(item, "part_id", item), state.message)
            on_done(len(results) + len(failed))
    return results, failed


@flow(name="docre-extract-on-cluster")
def extract_on_cluster(urls: list[str], out_url: str, work_url: str, checkpoint_url: str, version: str,
                       code_version: str, cfg: PrepareConfig, iterations: int | None, batch_size: int, device: str,
                       model_cache_dir: str | None, threads: int, max_in_flight: int,
                       extra_formats: list[str] = (), progress_id: UUID | None = None) -> dict:
    """Prepare this run's new inputs, add them to the output's ordered set, then extract every pending part
    of the whole set, on this flow's Dask task runner."""
    logger = get_run_logger()
    common = dict(device=device, model_cache_dir=model_cache_dir, threads=threads)
    prepared, failed_inputs = _in_window(
        prepare_input, urls, max_in_flight, lambda n: None, work_url=work_url, checkpoint_url=checkpoint_url,
        version=version, cfg=cfg, **common)
    by_url = {m["input_url"]: m for m in prepared}
    # inputs join the output in order: one that failed to prepare holds back the ones after it until a rerun
    in_order = list(itertools.takewhile(lambda u: u in by_url, urls))
    held_back = len(by_url) - len(in_order)
    coverage = entity_coverage([by_url[u] for u in in_order])  # raises when the model can score nothing
    t0 = time.time()
    manifests = extend_plan(out_url, [by_url[u] for u in in_order], cfg)
    parts = plan_parts(manifests)
    pending, done = pending_parts(parts, out_url, version)
    logger.info("planned %d parts of %d inputs in %.3f s: %d already committed, %d to run%s", len(parts),
                len(manifests), time.time() - t0, len(done), len(pending),
                f"; {held_back} prepared input(s) wait for an earlier one that failed" if held_back else "")

    def on_done(n: int) -> None:
        if progress_id is not None:
            update_progress_artifact(progress_id, 100.0 * (len(done) + n) / max(len(parts), 1))

    on_done(0)
    results, failed = _in_window(extract_part, pending, max_in_flight, on_done, out_url=out_url,
                                 checkpoint_url=checkpoint_url, model_version=version, code_version=code_version,
                                 iterations=iterations, batch_size=batch_size, extra_formats=list(extra_formats),
                                 **common)
    return {"manifests": manifests, "parts": parts, "run": len(results), "skipped": len(done),
            "failed_parts": [p.part_id for p in failed], "failed_inputs": failed_inputs,
            "held_back_inputs": held_back, "entity_coverage": coverage}


@flow(name="docre-extract", log_prints=True)
def docre_extract(inputs: str, out_url: str, model_url: str, part_docs: int = 10_000, work_url: str | None = None,
                  scheduler_address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                  format: InputFormat | None = None, passages: Literal["title_abstract", "all"] = "title_abstract",
                  concepts: str | None = None, iterations: int | None = None, batch_size: int = 8,
                  device: Device = "auto", model_cache_dir: str | None = None, max_in_flight: int = 200,
                  dashboard_address: str | None = None,
                  extra_formats: list[Literal["jsonl", "bioc_xml", "bioc_json"]] | None = None,
                  max_graph_loss: float = 0.2) -> dict:
    """Add `inputs` to the output at `out_url` and extract them; the knowledge graph covers every input the
    output holds (a baseline run, then one update file a day).

    Args:
        inputs: input URLs: files, directories or globs, comma-separated (PubTator3 `BioCXML.N.tar.gz`, PubMed
            `pubmedNNnXXXX.xml.gz`, BioC JSON, PubTator, DocRED JSON/JSONL; gzip and s3:// fine). Inputs the
            output already holds are skipped; new ones are appended in order, and later inputs supersede
            earlier ones for the same document id (PubMed update files are numbered after the baseline: a file
            numbered before one the output holds is refused).
        out_url: where triples, quarantine, manifest.json and aggregate/ (graph.parquet, documents.parquet: which
            triples are live) go; `{model_version}` is replaced by the model's version, so each model gets its
            own output and a rerun resumes. An output keeps the part size and reading options it was made
            with: a run with others is refused.
        model_url: a model store (its `latest` is followed once, at the start) or a checkpoint directory.
        part_docs: documents per prepared part = per extraction task run (36M abstracts / 10,000 = 3,600 runs).
        work_url: where prepared parts go (default `<out_url>/_prepared`); share it between runs and models
            with the same tokenizer to prepare each input only once.
        scheduler_address: an existing Dask scheduler (tcp://host:8786); by default a LocalCluster is started.
        n_workers: worker processes of the LocalCluster.
        threads_per_worker: torch threads per worker process (keep workers x threads <= cores).
        format: input format, when names and content cannot tell.
        passages: BioC documents: title + abstract (what models are trained on) or all passages.
        concepts: PubMed XML: a bioconcepts2pubtator3 file (indexed once) or index, for entities.
        iterations: inference iterations K (default: the model's).
        batch_size: documents per forward pass.
        device: auto (GPU when the worker has one), cpu or cuda.
        model_cache_dir: local directory for downloaded checkpoints on the workers.
        max_in_flight: most task runs pending at once, so the Prefect server never holds thousands.
        dashboard_address: where the LocalCluster serves its Dask dashboard (e.g. ":8787"; needs bokeh on
            the scheduler); the logs link it only when it is really served.
        extra_formats: also write each part's triples as JSONL or BioC (documents with predicted relations,
            for PubTator tools), next to the Parquet files.
        max_graph_loss: the run fails, leaving the graph as it was, when the new graph would have lost more than
            this share of the current graph's facts (a wrong or partial input set); 1.0 allows any loss.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t_start = time.time()
    try:  # missing object-store credentials: one named line, not a traceback per retry
        for url in (*inputs.split(","), out_url, model_url, work_url, concepts):
            if url:
                store.check_store_access(url.strip())
    except store.StoreAccessError as e:
        get_run_logger().error("%s", e)
        return Failed(message=str(e))
    logger = get_run_logger()
    checkpoint_url, version = resolve_model(model_url)
    out_url = out_url.replace("{model_version}", version)  # e.g. s3://bucket/triples/{model_version}
    work_url = work_url or join(out_url, "_prepared")
    urls = list_inputs(inputs, format)
    cfg = PrepareConfig(part_docs=part_docs, format=format, passages=passages, concepts=concepts)
    try:  # before any work: an input out of order, or other settings than the output's
        fresh = new_inputs(out_url, urls, cfg)
    except PlanConflict as e:
        logger.error("%s", e)
        return Failed(message=str(e))
    if len(fresh) < len(urls):
        logger.info("%d of %d input(s) already in %s: skipped", len(urls) - len(fresh), len(urls),
                    redact_url(out_url))
    code = store.code_version()
    code_version = f"docre {code.get('package')}" + (f" git {code['git_commit'][:12]}" if code.get("git_commit") else "") \
        + ("-dirty" if code.get("git_dirty") else "")
    api_url = flow_api_url()
    runner = cluster_runner(scheduler_address, n_workers, threads_per_worker, api_url, dashboard_address)
    progress = create_progress_artifact(0.0, key="docre-extract-progress",  # on the run the user started
                                        description="parts of the output committed")
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):  # travels with every task to the workers
            run = extract_on_cluster.with_options(task_runner=runner)(
                fresh, out_url, work_url, checkpoint_url, version, code_version, cfg, iterations, batch_size,
                device, model_cache_dir, threads_per_worker, max_in_flight, extra_formats or [], progress)
    except NoScoreableEntities as e:
        logger.error("%s", e)
        return Failed(message=str(e))
    coverage = run["entity_coverage"]
    if coverage["warning"]:
        logger.warning("%s", coverage["warning"])
    parts: list[Part] = run["parts"]
    summary = summarize(parts, out_url, version, extra={
        "parts_run": run["run"], "parts_skipped": run["skipped"], "parts_failed": run["failed_parts"],
        "inputs_failed": run["failed_inputs"], "inputs_held_back": run["held_back_inputs"],
        "inputs_new": len(fresh), "code_version": code_version, "entity_coverage": coverage})
    graph = {}
    if summary["complete"] and not run["failed_inputs"]:
        deletions = {rank: m["deleted"] for rank, m in enumerate(run["manifests"]) if m["deleted"]}
        try:
            graph = aggregate(out_url, parts, deletions, max_graph_loss)
        except GraphShrinkError as e:
            logger.error("%s", e)
            return Failed(message=str(e))
    wall = time.time() - t_start
    publish_report(summary, graph, fresh, wall)
    print(f"{redact_url(out_url)}: {summary['inputs']} input(s), {len(fresh)} new; {summary['docs_in']:,} documents "
          f"in = {summary['docs_out']:,} out + {summary['quarantined']:,} quarantined; {summary['triples']:,} "
          f"triples; {graph.get('facts', 0):,} graph facts; {wall:.1f} s")
    if run["failed_inputs"] or not summary["complete"]:
        raise RuntimeError(f"extraction incomplete: {len(run['failed_inputs'])} input(s) not prepared, "
                           f"{len(summary['parts_missing'])} part(s) not committed, "
                           f"{len(summary['mismatched_files'])} file(s) with wrong counts; rerun to finish")
    return summary | {"graph": graph}


if __name__ == "__main__":  # python -m flows.extract INPUTS OUT_URL MODEL_URL
    import sys
    docre_extract(*sys.argv[1:4])
