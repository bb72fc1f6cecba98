"""Extraction tasks: thin Prefect wrappers over `docre.extract` (prepare, extract a part, summary, aggregate)."""
from __future__ import annotations

import os
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from docre import extract as lib
from docre.registry import store
from docre.extract import Part, PartResult, PrepareConfig
from docre.registry.storage import redact_url

# Fault injection for resilience tests and chaos drills, off unless set: when the
# directory named by this variable holds a file called `<part id>` or `any`, the
# first part to claim it (by deleting it) fails after writing its data files and
# before committing, exactly where a worker crash would hurt most. A file called
# `kill-<part id>` or `kill-any` kills the worker process there instead (SIGKILL).
FAULT_DIR_ENV = "DOCRE_FAULT_INJECT_DIR"


def _fault_hook():
    fault_dir = os.environ.get(FAULT_DIR_ENV)
    if not fault_dir:
        return None

    def claim(name: str) -> bool:
        try:
            os.remove(os.path.join(fault_dir, name))
            return True
        except FileNotFoundError:
            return False

    def hook(part: Part) -> None:
        if claim(f"kill-{part.part_id}") or claim("kill-any"):
            os.kill(os.getpid(), 9)
        if claim(part.part_id) or claim("any"):
            raise RuntimeError(f"injected fault in part {part.part_id} before commit ({FAULT_DIR_ENV})")
    return hook


def _model(checkpoint_url: str, version: str, device: str, cache_dir: str | None, threads: int):
    """The run's model, loaded once per worker process, with this worker's share of the cores."""
    import torch
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return store.load_model(checkpoint_url, version, device, cache_dir)


@task(name="resolve-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def resolve_model(model_url: str) -> tuple[str, str]:
    """Pin the model for the whole run: (checkpoint URL, version), following `latest` once."""
    checkpoint, version = store.resolve_model(model_url)
    get_run_logger().info("model %s version %s", redact_url(checkpoint), version)
    return checkpoint, version


@task(name="list-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def list_inputs(inputs: str, format: str | None = None) -> list[str]:
    urls = lib.list_inputs(inputs, format)
    get_run_logger().info("%d input file(s)", len(urls))
    return urls


@task(name="prepare-input", task_run_name="prepare-{url}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prepare_input(url: str, work_url: str, checkpoint_url: str, version: str, cfg: PrepareConfig,
                  device: str = "auto", model_cache_dir: str | None = None, threads: int = 1) -> dict:
    """Stream one input once into tokenized parts (reused when already prepared); returns its manifest."""
    logger = get_run_logger()
    model = _model(checkpoint_url, version, device, model_cache_dir, threads)
    t0 = time.time()

    def on_part(part: dict) -> None:
        logger.info("%s: part %s: %d documents, %d quarantined (%.1f docs/s so far)", redact_url(url),
                    part["file"], part["docs"], part["quarantined"], part["end_record"] / max(time.time() - t0, 1e-9))

    m = lib.prepare_input(url, work_url, model.tokenizer, model.inventory, cfg, model.config.encoder, on_part)
    logger.info("%s: %s: %d parts, %d documents, %d quarantined, %d deletions%s", redact_url(url),
                "already prepared" if m.get("reused") else f"prepared in {m['seconds']:.1f} s", len(m["parts"]),
                m["docs"], m["quarantined"], len(m["deleted"]),
                f"; left out: {m['left_out']}" if m["left_out"] else "")
    return m


@task(name="extract-part", task_run_name="extract-{part.part_id}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=2)
def extract_part(part: Part, out_url: str, checkpoint_url: str, model_version: str, code_version: str,
                 iterations: int | None = None, batch_size: int = 8, device: str = "auto",
                 model_cache_dir: str | None = None, threads: int = 1, extra_formats: list[str] = ()) -> PartResult:
    """Extract and commit one part (skipped when already committed)."""
    model = _model(checkpoint_url, model_version, device, model_cache_dir, threads)
    r = lib.extract_part(model, part, out_url, model_version, iterations, batch_size, code_version,
                         before_commit=_fault_hook(), extra_formats=extra_formats)
    get_run_logger().info("part %s (%s records %d-%d): %d in, %d out, %d quarantined, %d triples, %.1f docs/s%s",
                          part.part_id, redact_url(part.input_url), part.first_record, part.end_record, r.docs_in,
                          r.docs_out, r.quarantined, r.triples, r.docs_per_s,
                          " (already committed)" if r.skipped else "")
    return r


@task(name="summarize", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def summarize(parts: list[Part], out_url: str, model_version: str, extra: dict | None = None) -> dict:
    """Exact totals from the commit markers (Parquet row counts verified); writes out_url/manifest.json."""
    return lib.summarize(parts, out_url, model_version, verify=True, extra=extra)


def _retry_unless_refused(task, task_run, state) -> bool:
    """Retry what may pass next time (storage hiccups), not a graph the guard refused."""
    try:
        state.result()
    except lib.GraphShrinkError:
        return False
    except Exception:  # noqa: BLE001 - anything else is worth another try
        return True
    return False


@task(name="aggregate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=_retry_unless_refused)
def aggregate(out_url: str, parts: list[Part], deletions: dict[int, list[str]], max_graph_loss: float = 0.2) -> dict:
    """The knowledge graph of every input of the output (latest version of each document, deletions applied),
    which triples are live, and a top-relations table."""
    summary = lib.aggregate(out_url, parts, deletions, max_graph_loss=max_graph_loss)
    create_table_artifact([{"relation": r["relation"], "facts": r["facts"], "documents": r["documents"],
                            "document-fact pairs": r["document_facts"]} for r in summary["relations"][:20]],
                          key="docre-extract-top-relations",
                          description="relations by facts, distinct documents, and document-fact pairs")
    return summary


def report(summary: dict, graph: dict, inputs: list[str], wall_seconds: float) -> str:
    """The run's markdown summary artifact: what went in, what came out, how fast."""
    lines = [f"# Extraction {'complete' if summary['complete'] else 'INCOMPLETE'}", "",
             f"- output: `{redact_url(summary['out_url'])}` (model `{summary['model_version']}`)",
             f"- inputs: {summary['inputs']} file(s) in the output, {summary.get('inputs_new', len(inputs))} new "
             f"in this run: " + ", ".join(f"`{redact_url(u)}`" for u in inputs[:10])
             + (" ..." if len(inputs) > 10 else ""),
             f"- parts: {summary['parts_committed']}/{summary['parts']} committed "
             f"({summary.get('parts_run', 0)} run now, {summary.get('parts_skipped', 0)} already done)",
             f"- documents: {summary['docs_in']:,} in = {summary['docs_out']:,} extracted + "
             f"{summary['quarantined']:,} quarantined",
             f"- triples: {summary['triples']:,}; graph: {graph.get('facts', 0):,} facts from "
             f"{graph.get('documents_with_facts', 0):,} documents "
             f"({graph.get('triples_dropped_superseded_or_deleted', 0):,} triples of revised or deleted citations "
             f"dropped)",
             *([f"- **entities**: {summary['entity_coverage']['warning']}"]
               if summary.get("entity_coverage", {}).get("warning") else []),
             f"- wall time: {wall_seconds:.1f} s"
             + (f" ({summary['docs_out'] / wall_seconds:.1f} docs/s overall)" if wall_seconds > 0 else ""), "",
             "| worker | parts | documents | docs/s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for w, s in sorted(summary["workers"].items()):
        lines.append(f"| {w} | {s['parts']} | {s['docs']:,} | {s['docs_per_s']} | {s['peak_rss_mb']:.0f} |")
    if summary["parts_missing"]:
        lines.append(f"\nmissing parts: {summary['parts_missing'][:20]}")
    return "\n".join(lines) + "\n"


@task(name="report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_report(summary: dict, graph: dict, inputs: list[str], wall_seconds: float) -> None:
    create_markdown_artifact(report(summary, graph, inputs, wall_seconds), key="docre-extract-report",
                             description="extraction summary")
