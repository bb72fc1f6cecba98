"""Bulk extraction at PubMed scale: plan, prepare once, extract parts, aggregate. Orchestrator-free.

    inputs --prepare (each raw file streamed once)--> tokenized parts --extract (one task per part)-->
    triples with provenance --aggregate--> a knowledge graph (one row per head id, relation, tail id)

An output (`out_url`) is a growing, ordered set of inputs: a PubMed baseline in one run, then an update
file a day. Its `_plan.json` lists them in rank order; every count and the graph cover all of them.

* `plan` lists inputs, keeps the output's ordered set (`new_inputs`, `extend_plan`: inputs out of
  number order, or another preparation, are refused) and turns prepare manifests into `Part`s: O(parts).
* `prepare` streams one input into Parquet parts of `part_docs` documents (resumable, idempotent), and
  `entity_coverage` says whether the model can score the inputs' entity types at all.
* `run` extracts and commits one part; `summarize` gives exact totals (documents in = out + quarantined).
* `aggregate` applies PubMed revisions and deletions, marks which triples are live, builds the graph.

The Prefect tasks in ``tasks/extract.py`` call these functions; so can a plain script or a test.
Models are published and loaded by `docre.registry.store`; storage helpers live in `docre.registry.storage`.

May import `docre.data`, `docre.model`, `docre.training` and `docre.registry`; imported by `docre.cli`.
No Prefect.
"""
from __future__ import annotations

from ..registry.storage import redact_url, write_bytes_atomic
from .aggregate import (DOCUMENTS_FILE, GRAPH_FILE, GraphShrinkError, aggregate, document_status, read_graph,
                        read_live_triples)
from .plan import (Part, PlanConflict, PrepareConfig, extend_plan, input_fingerprint, list_inputs, load_plan,
                   new_inputs, plan_parts, read_input_manifest, read_plan, write_plan)
from .prepare import NoScoreableEntities, entity_coverage, prepare_input, tokenization_id
from .run import (QUARANTINE_SCHEMA, TRIPLE_SCHEMA, PartResult, extract_part, pending_parts, read_committed,
                  read_quarantine, read_triples, summarize)

__all__ = ["DOCUMENTS_FILE", "GRAPH_FILE", "GraphShrinkError", "NoScoreableEntities", "Part", "PartResult",
           "PlanConflict", "PrepareConfig", "QUARANTINE_SCHEMA", "TRIPLE_SCHEMA", "aggregate", "document_status",
           "entity_coverage", "extend_plan", "extract_part", "input_fingerprint", "list_inputs", "load_plan",
           "new_inputs", "pending_parts", "plan_parts", "prepare_input", "read_committed", "read_graph",
           "read_input_manifest", "read_live_triples", "read_plan", "read_quarantine", "read_triples", "redact_url",
           "summarize", "tokenization_id", "write_bytes_atomic", "write_plan"]
