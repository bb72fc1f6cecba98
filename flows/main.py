"""The README's main job: the whole pipeline on the embedded default, in about ten minutes on 2 cores.

Local Prefect (an ephemeral API unless PREFECT_API_URL points at a server),
the local filesystem as object store (`outputs/`), the offline encoder and the
project's own invented example documents (`examples/`):

    docre-train   tokenize -> stage 1 -> stage 2 -> evaluate (artifacts) -> champion/challenger -> store
                  (versioned; `latest` moves only if the new model is not worse; a rerun on the same
                  data skips training unless --force)
    docre-extract shard examples/extract.jsonl -> 2 Dask workers -> triples Parquet + manifest

then a summary table, and where the outputs and the UI are.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# short schedule for the demo; the synthetic documents are small and regular
DEMO_CONFIG = {
    "stage1": {"epochs": 20, "batch_size": 4, "lr_encoder": 1e-4, "lr_head": 1e-3},
    "stage2": {"epochs": 8, "batch_size": 4, "lr_encoder": 1e-5, "lr_head": 1e-3},
    "model": {"encoder": None, "feature_dim": 128, "iterations": 3, "max_labels": 4},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "outputs"), help="object store root (any fsspec URL)")
    ap.add_argument("--epochs", type=int, nargs=2, metavar=("STAGE1", "STAGE2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="train even if the data is the current model's")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from flows.extract import docre_extract
    from flows.train import docre_train

    config = {k: dict(v) if isinstance(v, dict) else v for k, v in DEMO_CONFIG.items()}
    if args.epochs:
        config["stage1"]["epochs"], config["stage2"]["epochs"] = args.epochs
    out = args.out.rstrip("/")
    trained = docre_train(train_inputs=str(EXAMPLES / "train.json"), dev_inputs=str(EXAMPLES / "dev.json"),
                          model_store_url=f"{out}/models", work_dir=str(ROOT / "runs" / "demo"),
                          data_url=f"{out}/data", config=config, relations=str(EXAMPLES / "rel_info.json"),
                          force=args.force)
    # its own output: the deployment's (outputs/triples/<version>) is prepared in parts of 10,000 documents,
    # and an output keeps one part size
    extracted = docre_extract(inputs=str(EXAMPLES / "extract.jsonl"), out_url=f"{out}/triples/demo/{{model_version}}",
                              model_url=f"{out}/models", part_docs=15, n_workers=args.workers)
    print(summary_table(trained, extracted, out))
    return 0


def summary_table(trained: dict, extracted: dict, out: str) -> str:
    lines = ["", "## DocRE-II demo run", ""]
    if trained.get("skipped"):
        lines += [trained["reason"], "", f"extraction used model {trained['latest']}"]
    else:
        verdict = "promoted to latest" if trained["promoted"] else f"NOT promoted ({trained['decision']['reason']})"
        lines += [f"model version {trained['version']} -> {trained['model_url']}: {verdict}", ""]
        lines += _dev_rows(trained)
    return "\n".join(lines + _extraction_lines(trained, extracted, out))


def _dev_rows(trained: dict) -> list[str]:
    lines = ["| K | dev F1 | precision | recall | Ign F1 | Intra F1 | Inter F1 | Infer F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in trained["dev"]:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in
                                       ("K", "f1", "precision", "recall", "ign_f1", "intra_f1", "inter_f1",
                                        "infer_f1")) + " |")
    return lines


def _extraction_lines(trained: dict, extracted: dict, out: str) -> list[str]:
    counts = extracted.get("totals", extracted)
    lines = ["", "| extraction | value |", "|---|---|"]
    for key in ("docs_in", "docs_out", "quarantined", "triples"):
        if key in counts:
            lines.append(f"| {key} | {counts[key]} |")
    lines += ["", f"triples:   {extracted.get('out_url', out + '/triples')}"]
    if trained.get("run_dir"):
        lines.append(f"report:    {trained['run_dir']}/report/report.md")
    lines.append(f"models:    {out}/models (latest -> {trained['latest']}; `docre model list {out}/models`)")
    api = os.environ.get("PREFECT_API_URL")
    lines.append(f"Prefect UI: {api.removesuffix('/api')}" if api else
                 "Prefect UI: this run used an ephemeral API; to watch runs, start `prefect server start` "
                 "(UI on http://127.0.0.1:4200), `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` "
                 "and run again")
    return lines


if __name__ == "__main__":
    sys.exit(main())
