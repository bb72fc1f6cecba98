"""Model commands of the CLI: train, evaluate, predict (and `data split`)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import fsspec


# ---------------------------------------------------------------- flags shared by every command that reads raw documents

def read_options(args: argparse.Namespace):
    """ReadOptions from the shared input flags (--passages, --concepts, --keep-unlinked, --all-entity-types)."""
    from ..data.io import ReadOptions
    return ReadOptions(passages=getattr(args, "passages", "title_abstract"),
                       unlinked="keep" if getattr(args, "keep_unlinked", False) else "drop",
                       concepts=getattr(args, "concepts", None),
                       entity_types="all" if getattr(args, "all_entity_types", False) else "model")


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The flags every command that reads raw documents shares."""
    from ..data.io import FORMATS
    p.add_argument("--format", choices=FORMATS, help="override format detection (name, then content)")
    p.add_argument("--passages", choices=["title_abstract", "all"], default="title_abstract",
                   help="BioC: title + abstract (default, what models are trained on) or all passages (PMC full text)")
    p.add_argument("--concepts", help="PubMed XML: entities from a bioconcepts2pubtator3 file (indexed by PMID once, "
                                      "cached in $DOCRE_CACHE) or an index from `docre data concepts`")
    p.add_argument("--keep-unlinked", action="store_true", help="keep mentions with id -, -1 or empty as entities")


def print_counts(counts: dict, quarantine: list, out=None, limit: int = 10) -> None:
    out = out or sys.stdout  # looked up per call: tests and callers may have replaced it
    for key, n in sorted(counts.items()):
        print(f"{'left out':>24}: {n:,} {key}", file=out)
    if quarantine:
        print(f"{'quarantined':>24}: {sum(q.count for q in quarantine):,}", file=out)
        for q in quarantine[:limit]:
            print(f"{'':>24}  {q.source}: {q.where}: {q.reason}", file=out)  # whole: the archive's name too


def _train(args: argparse.Namespace) -> None:
    import os
    # OpenMP threads spin briefly between parallel regions (libgomp's default, much faster in a VM than
    # passive waiting); under contention training drops to one thread (docre/training/cpu.py)
    from ..training.train import TrainConfig, train
    cfg = TrainConfig.from_yaml(args.config)
    updates = {k: v for k, v in {"out_dir": args.out_dir, "device": args.device, "nproc": args.nproc,
                                 "threads": args.threads}.items() if v}
    if args.stages:
        updates["stages"] = [int(s) for s in args.stages.split(",")]
    results = train(cfg.model_copy(update=updates))
    if int(os.environ.get("RANK", "0")) == 0:
        for r in results:
            print(f"stage {r.stage}: best dev F1 {r.best_f1 * 100:.2f} -> {r.best_dir}")


def load_model(model_url: str, device: str):
    """(model, version) from a checkpoint directory or a model store (its `latest`), local or remote."""
    from ..model.docre_ii import DocREModel
    from ..registry import store
    from ..training.train import resolve_device
    checkpoint, version = store.resolve_model(model_url)
    return DocREModel.from_pretrained(store.fetch_model(checkpoint), resolve_device(device)), version


def _evaluate(args: argparse.Namespace) -> None:
    from ..training.train import evaluate, load_split
    _set_threads(args)
    model, _ = load_model(args.model, args.device)
    if args.output:
        model.config.output = args.output
    model.predict_batch_size = args.batch_size
    _use_runtime(model, args)
    examples, docs = load_split(args.data)
    train_docs = load_split(args.train_data)[1] if args.train_data else None
    iterations = list(range(model.config.iterations + 1)) if args.iterations is None else \
        [int(k) for k in args.iterations.split(",")]
    scores = evaluate(model, examples, docs, iterations, train_docs, progress=True)
    print(f"{'K':>3} {'F1':>7} {'P':>7} {'R':>7} {'IgnF1':>7} {'Intra':>7} {'Inter':>7} {'Infer':>7}")
    for k in iterations:
        s = scores[f"K{k}"]
        # Ign F1 needs the training facts; without --train-data it is shown as absent, not as a copy of F1
        print(f"{k:>3} " + " ".join(f"{'—':>7}" if m == "ign_f1" and train_docs is None else f"{s[m] * 100:7.2f}"
                                    for m in ("f1", "precision", "recall", "ign_f1", "intra_f1", "inter_f1",
                                              "infer_f1")))
    if train_docs is None:
        print("IgnF1 not computed: pass --train-data (the tokenized training set) for it")
    if scores.get("unscoreable_gold"):
        print(f"{scores['unscoreable_gold']} gold facts are on entity pairs the model's inventory never proposes "
              f"(other types): counted as misses in recall")
    print(f"prediction: {scores['docs_per_s']} docs/s ({len(examples)} documents, {scores['seconds']} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(scores, f, indent=2)


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)


def _use_runtime(model, args: argparse.Namespace) -> None:
    """--int8 and --runtime: torch int8, or the encoder in ONNX Runtime (fp32, or int8 with --int8)."""
    if getattr(args, "runtime", "torch") == "onnx":
        from ..model.onnx_encoder import use_onnx_encoder
        use_onnx_encoder(model, int8=args.int8, threads=getattr(args, "threads", None))
    elif args.int8:
        model.quantize_int8()


def _prediction_options(p: argparse.ArgumentParser) -> None:
    """--batch-size, --threads, --int8 and --runtime, the same for every command that predicts."""
    p.add_argument("--batch-size", type=int, default=8, help="documents per batch (default 8)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--int8", action="store_true",
                   help="CPU only: int8 dynamic quantization of the encoder, base head and inference module")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="CPU only: run the encoder in ONNX Runtime (fused kernels; int8 with --int8), exported once "
                        "and cached in $DOCRE_CACHE/onnx; needs pip install 'docre[onnx]'")


def _predict(args: argparse.Namespace) -> None:
    from ..data.io import Quarantined, read_documents
    _set_threads(args)
    model, version = load_model(args.model, args.device)
    _use_runtime(model, args)
    quarantine: list[Quarantined] = []
    counts: dict = {}
    # gold labels outside the model's inventory are ignored (counted); other entity types are left out
    options = read_options(args)
    options.unknown_relations = "ignore"
    docs = list(read_documents(args.input, args.format, model.inventory, quarantine, options, counts))
    triples = model.predict(docs, args.iterations, batch_size=args.batch_size, progress=True)
    rows = [asdict(t) for t in triples]
    out_name = args.output.lower().removesuffix(".gz")
    if out_name.endswith((".xml", ".bioc.json")):  # BioC with predicted <relation>s, for PubTator tools
        from ..data.bioc import write_bioc_json, write_bioc_xml
        with fsspec.open(args.output, "wt", compression="infer", encoding="utf-8") as f:
            if out_name.endswith(".xml"):
                for chunk in write_bioc_xml(docs, rows, version):
                    f.write(chunk)
            else:
                f.write(write_bioc_json(docs, rows, version))
    elif args.output.endswith(".json"):  # DocRED CodaLab submission: [{title, h_idx, t_idx, r}]
        from ..training.metrics import write_docred_result
        write_docred_result(docs, [(t.doc_id, t.head, t.tail, t.relation) for t in triples], args.output)
    elif args.output.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), args.output)
    else:
        with open(args.output, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(docs)} documents -> {len(rows)} triples in {args.output}; "
          f"{sum(q.count for q in quarantine)} quarantined", file=sys.stderr)
    print_counts(counts, quarantine, out=sys.stderr)


def _aggregate(args: argparse.Namespace) -> None:
    """Rebuild the knowledge graph of an extraction output (latest citation versions, deletions applied)."""
    from ..extract import aggregate, load_plan
    parts, deletions = load_plan(args.out_url)
    s = aggregate(args.out_url, parts, deletions, examples=args.examples, max_graph_loss=args.max_graph_loss)
    print(f"{s['graph_url']}: {s['facts']:,} facts from {s['documents_with_facts']:,} documents; "
          f"{s['triples_kept']:,} of {s['triples_in']:,} triples live ({s['documents_superseded']:,} superseded and "
          f"{s['documents_deleted']:,} deleted citations)")
    print(f"{'relation':>28} {'facts':>8} {'documents':>10} {'doc-facts':>10}")
    for r in s["relations"][:args.top]:
        print(f"{r['relation']:>28} {r['facts']:>8,} {r['documents']:>10,} {r['document_facts']:>10,}")


def _split(args: argparse.Namespace) -> None:
    """Deterministic split by document index (e.g. Re-DocRED dev into 400 train / 100 validation)."""
    from ..data.docred import write_docred
    from ..data.io import read_documents
    docs = list(read_documents(args.input, args.format))
    head, tail = docs[:args.first], docs[args.first:]
    for docs_out, path in ((head, args.out_first), (tail, args.out_rest)):
        with open(path, "w") as f:
            f.write(write_docred(docs_out))
        print(f"{path}: {len(docs_out)} documents")


def _synthesize(args: argparse.Namespace) -> None:
    from ..data.docred import write_docred
    from ..data.synthetic import RELATIONS, synthesize
    docs = synthesize(args.docs, args.seed)
    with open(args.out, "w") as f:
        f.write(write_docred(docs, jsonl=args.out.endswith(".jsonl")))
    if args.rel_info:
        with open(args.rel_info, "w") as f:
            json.dump(RELATIONS, f, indent=1)
    print(f"{args.out}: {len(docs)} invented documents, {sum(len(d.facts) for d in docs)} facts")


MODEL_HELP = "a checkpoint directory, or a model store (its latest version); local, file:// or s3://"


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="two-stage training from a YAML config")
    p.add_argument("config")
    p.add_argument("--out-dir")
    p.add_argument("--stages", help="e.g. 1 or 1,2 (default: from the config)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--nproc", type=int, help="data-parallel processes on this machine, launched with torchrun "
                                             "(gloo on CPU, NCCL with one GPU each); `torchrun ... -m docre.cli "
                                             "train` works too")
    p.add_argument("--threads", type=int, help="torch threads per process (default: the CPUs available, "
                                               "split among processes, fewer when other work keeps cores busy)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="F1 / Ign F1 / intra / inter / infer at each iteration K")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("data", help="tokenized dataset directory (docre data tokenize)")
    p.add_argument("--train-data", help="tokenized training set, for Ign F1")
    p.add_argument("--iterations", help="comma-separated K values (default 0..K)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the scores here")
    p.add_argument("--output", choices=["last", "sum"],
                   help="override how iterations combine: P^(K) (paper) or summed logits (authors' release)")
    _prediction_options(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="extract triples from documents")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", help="documents: PubTator, DocRED JSON/JSONL, .data (any fsspec URL, gzip ok)")
    p.add_argument("output", help="*.jsonl or *.parquet (triples with names, scores, iteration), "
                                  "*.xml / *.bioc.json (BioC documents with predicted relations), or "
                                  "*.json (DocRED result.json submission)")
    add_input_flags(p)
    p.add_argument("--all-entity-types", action="store_true",
                   help="keep entities of types the model was not trained on (left out by default)")
    p.add_argument("--iterations", type=int, help="K (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    _prediction_options(p)
    p.set_defaults(func=_predict)


def add_extract_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="knowledge graph of an extraction output: one row per (head, relation, tail)")
    p.add_argument("out_url", help="the extraction output URL (docre-extract's out_url)")
    p.add_argument("--examples", type=int, default=5, help="example documents with evidence per fact")
    p.add_argument("--top", type=int, default=20, help="relations to print")
    p.add_argument("--max-graph-loss", type=float, default=0.2,
                   help="refuse to write a graph that loses more than this share of the current one's facts "
                        "(1.0: allow any)")
    p.set_defaults(func=_aggregate)


def add_data_commands(data: argparse._SubParsersAction) -> None:
    p = data.add_parser("split", help="split a dataset by document index into two DocRED JSON files")
    p.add_argument("input")
    p.add_argument("out_first")
    p.add_argument("out_rest")
    p.add_argument("--first", type=int, required=True, help="documents in the first part")
    p.add_argument("--format", choices=["docred", "pubtator", "atlop", "bioc_xml", "bioc_json", "pubmed"])
    p.set_defaults(func=_split)

    p = data.add_parser("synthesize", help="write invented DocRED-style documents (demo and smoke data)")
    p.add_argument("out", help="*.json or *.jsonl")
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rel-info", help="also write the relation inventory (rel_info.json format) here")
    p.set_defaults(func=_synthesize)
