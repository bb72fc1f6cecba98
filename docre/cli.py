"""The `docre` command line: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import json
import sys

from .data.document import DocumentError


def _data_stats(args: argparse.Namespace) -> None:
    from .data.io import Quarantined, load_inventory, read_documents
    from .data.stats import document_table, format_summary, summarize
    from .pretrained import load_tokenizer

    inventory = load_inventory(args.relations) if args.relations else None
    tokenizer = None if args.no_subwords else load_tokenizer(args.encoder)
    for path in args.paths:
        quarantine: list[Quarantined] = []
        docs = read_documents(path, args.format, inventory, quarantine if args.lenient else None)
        table, relations = document_table(docs, inventory, tokenizer)
        summary = summarize(table, relations)
        print(format_summary(summary, path))
        if quarantine:
            print(f"{'quarantined':>24}: {len(quarantine)}")
            for q in quarantine[:10]:
                print(f"{'':>24}  {q.where}: {q.reason}")
        if args.json:
            print(json.dumps(summary))


def _data_tokenize(args: argparse.Namespace) -> None:
    from .data.tokenize import TokenizeConfig, tokenize_to_parquet

    cfg = TokenizeConfig(encoder=args.encoder, relations=args.relations, format=args.format)
    m = tokenize_to_parquet(args.inputs, args.out, cfg, lenient=not args.strict)
    state = "reused cached tokenization" if m.reused else f"tokenized in {m.seconds:.1f} s"
    rate = f" ({m.documents / m.seconds:.1f} docs/s)" if not m.reused and m.seconds else ""
    print(f"{args.out}: {state}{rate}: {m.documents} documents, {m.quarantined} quarantined, "
          f"{m.subword_tokens:,} subword tokens, cache key {m.cache_key[:12]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docre", description="Document-level relation extraction (DocRE-II)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="read, check and tokenize datasets").add_subparsers(dest="data_cmd", required=True)

    stats = data.add_parser("stats", help="documents, entities, mentions, pairs, relations, subword lengths")
    stats.add_argument("paths", nargs="+")
    stats.add_argument("--format", choices=["docred", "pubtator", "atlop"])
    stats.add_argument("--relations", help="'cdr', or a rel_info.json / inventory URL (candidate pairs, checks)")
    stats.add_argument("--encoder", default=None, help="tokenizer for subword lengths (default: offline MiniLM)")
    stats.add_argument("--no-subwords", action="store_true", help="skip tokenization")
    stats.add_argument("--lenient", action="store_true", help="quarantine bad documents instead of failing")
    stats.add_argument("--json", action="store_true", help="also print the summary as JSON")
    stats.set_defaults(func=_data_stats)

    tok = data.add_parser("tokenize", help="tokenize documents into a Parquet dataset (cached)")
    tok.add_argument("inputs", nargs="+", help="input URLs (PubTator, DocRED JSON/JSONL, .data; gzip ok)")
    tok.add_argument("out", help="output dataset directory URL")
    tok.add_argument("--encoder", default=None)
    tok.add_argument("--relations", default=None)
    tok.add_argument("--format", choices=["docred", "pubtator", "atlop"])
    tok.add_argument("--strict", action="store_true", help="fail on the first bad document")
    tok.set_defaults(func=_data_tokenize)

    from .commands import add_data_commands, add_model_commands
    add_data_commands(data)
    add_model_commands(sub)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DocumentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
