"""The `docre` command line: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .commands import (add_data_commands, add_extract_commands, add_input_flags, add_model_commands, print_counts,
                       read_options)


def _data_stats(args: argparse.Namespace) -> None:
    from ..data.io import Quarantined, load_inventory, read_documents
    from ..data.stats import document_table, format_summary, summarize
    from ..data.pretrained import load_tokenizer

    inventory = load_inventory(args.relations) if args.relations else None
    tokenizer = None if args.no_subwords else load_tokenizer(args.encoder)
    for path in args.paths:
        quarantine: list[Quarantined] = []
        counts: dict = {}
        docs = read_documents(path, args.format, inventory, quarantine if args.lenient else None,
                              read_options(args), counts)
        table, relations = document_table(docs, inventory, tokenizer)
        summary = summarize(table, relations)
        print(format_summary(summary, path))
        print_counts(counts, [])
        if quarantine:  # whole sources: a member's line names its archive too, never cut at the last "/"
            print(f"{'quarantined':>24}: {sum(q.count for q in quarantine):,}")
            for q in quarantine[:10]:
                print(f"{'':>24}  {q.source}: {q.where}: {q.reason}")
        if args.json:
            print(json.dumps(summary | {"left_out": counts, "quarantined": sum(q.count for q in quarantine)}))


def _data_tokenize(args: argparse.Namespace) -> None:
    from ..data.tokenize import TokenizeConfig, tokenize_to_parquet

    cfg = TokenizeConfig(encoder=args.encoder, relations=args.relations, format=args.format,
                         passages=args.passages, concepts=args.concepts,
                         unlinked="keep" if args.keep_unlinked else "drop")
    try:
        m = tokenize_to_parquet(args.inputs, args.out, cfg, lenient=not args.strict)
    except (NotADirectoryError, PermissionError, IsADirectoryError) as e:
        if not os.path.abspath(str(e.filename or "")).startswith(os.path.abspath(args.out)):
            raise  # an input's problem: its own message names it
        raise OSError(f"{args.out}: cannot write the tokenized dataset there ({e.strerror})") from None
    state = "reused cached tokenization" if m.reused else f"tokenized in {m.seconds:.1f} s"
    rate = f" ({m.documents / m.seconds:.1f} docs/s)" if not m.reused and m.seconds else ""
    print(f"{args.out}: {state}{rate}: {m.documents} documents, {m.quarantined} quarantined, "
          f"{m.subword_tokens:,} subword tokens, cache key {m.cache_key[:12]}")


def _data_concepts(args: argparse.Namespace) -> None:
    from ..data.pubmed import build_concept_index
    m = build_concept_index(args.concepts, args.index, run_rows=args.run_rows)
    print(f"{args.index}: {m['rows']:,} concept rows in {len(m['runs'])} sorted runs, {m['bad_lines']} bad lines "
          f"skipped, {m['seconds']:.1f} s")


def error_line(e: BaseException, args: argparse.Namespace | None) -> str:
    """One line, `<file or url>: <problem>`, for any failure a user can cause or fix."""
    from ..data.document import DocumentError
    if isinstance(e, DocumentError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        name = e.filename or (e.args[0] if e.args else "")
        return f"{name}: no such file or object" if name else f"file not found: {e}"
    if isinstance(e, IsADirectoryError):
        return f"{e.filename}: is a directory"
    if isinstance(e, PermissionError):
        return f"{e.filename or _urls(args)}: permission denied"
    if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return f"{_urls(args, 's3://')}: no object-store credentials (set AWS_ACCESS_KEY_ID and " \
               f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an IAM role)"
    if type(e).__name__ == "ValidationError" and hasattr(e, "errors"):  # pydantic: every bad field on one line
        bad = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return f"{_urls(args)}: invalid configuration: {bad}"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, (ValueError, KeyError, OSError)) and ": " in text:
        return text  # our ValueErrors already start with the file they are about
    return f"{_urls(args)}: {type(e).__name__}: {text}"


def _urls(args: argparse.Namespace | None, prefix: str = "") -> str:
    """The input/output URLs named on the command line (those with `prefix`), for messages that lack one."""
    if args is None:
        return "docre"
    found = []
    for key in ("paths", "inputs", "input", "out", "output", "model", "data", "config", "store", "index", "concepts",
                "out_url"):
        v = getattr(args, key, None)
        for u in v if isinstance(v, list) else [v]:
            if isinstance(u, str) and u.startswith(prefix):
                found.append(u)
    return ", ".join(found) or "docre"


def _version() -> str:
    """docre's package version and, where known, the commit (a checkout's git, or the image's baked one)."""
    from ..registry.store import code_version
    code = code_version()
    commit = f" (git {code['git_commit'][:12]}{'-dirty' if code.get('git_dirty') else ''})" \
        if code.get("git_commit") else ""
    return f"docre {code.get('package') or 'unknown'}{commit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docre", description="Document-level relation extraction (DocRE-II)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="read, check and tokenize datasets").add_subparsers(dest="data_cmd", required=True)

    stats = data.add_parser("stats", help="documents, entities, mentions, pairs, relations, subword lengths")
    stats.add_argument("paths", nargs="+", help="files or tar archives (any fsspec URL; gzip ok)")
    add_input_flags(stats)
    stats.add_argument("--relations", help="'cdr', or a rel_info.json / inventory URL (candidate pairs, checks)")
    stats.add_argument("--encoder", default=None, help="tokenizer for subword lengths (default: offline MiniLM)")
    stats.add_argument("--no-subwords", action="store_true", help="skip tokenization")
    stats.add_argument("--lenient", action="store_true", help="quarantine bad documents instead of failing")
    stats.add_argument("--json", action="store_true", help="also print the summary as JSON")
    stats.set_defaults(func=_data_stats)

    tok = data.add_parser("tokenize", help="tokenize documents into a Parquet dataset (cached)")
    tok.add_argument("inputs", nargs="+", help="input URLs (PubTator, DocRED JSON/JSONL, .data, BioC XML/JSON, "
                                                "PubMed XML, tar archives of them; gzip ok)")
    tok.add_argument("out", help="output dataset directory URL")
    tok.add_argument("--encoder", default=None)
    tok.add_argument("--relations", default=None)
    add_input_flags(tok)
    tok.add_argument("--strict", action="store_true", help="fail on the first bad document")
    tok.set_defaults(func=_data_tokenize)

    conc = data.add_parser("concepts", help="index a bioconcepts2pubtator3 file by PMID (once), for PubMed XML")
    conc.add_argument("concepts", help="bioconcepts2pubtator3(.gz) URL: PMID, type, concept id, mentions, resource")
    conc.add_argument("index", help="output index directory URL")
    conc.add_argument("--run-rows", type=int, default=1_000_000, help="rows sorted in memory per run (memory bound)")
    conc.set_defaults(func=_data_concepts)

    add_data_commands(data)
    add_model_commands(sub)
    add_extract_commands(sub)
    from .model_store import add_store_commands; add_store_commands(sub)  # noqa: E702 (docre model ...)

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns failures into one line
        if args.debug:
            raise
        print(f"error: {error_line(e, args)}", file=sys.stderr)
        return 2
    return 0

