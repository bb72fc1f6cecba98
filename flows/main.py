"""The README's main job on the embedded default (until the full pipeline lands: the data stage).

Tokenizes the project's example documents to Parquet (reusing the cache on a
second run) and prints their statistics.
"""
from __future__ import annotations

import sys
from pathlib import Path

from docre.data.io import read_documents, load_inventory
from docre.data.stats import document_table, format_summary, summarize
from docre.data.tokenize import TokenizeConfig, tokenize_to_parquet
from docre.pretrained import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def main(out_dir: str = str(ROOT / "outputs")) -> int:
    cfg = TokenizeConfig(relations=str(EXAMPLES / "rel_info.json"))
    inventory = load_inventory(cfg.relations)
    for split in ("train.json", "dev.json", "extract.jsonl"):
        src = str(EXAMPLES / split)
        table, rels = document_table(read_documents(src, inventory=inventory), inventory, load_tokenizer(None))
        print(format_summary(summarize(table, rels), src))
        m = tokenize_to_parquet([src], f"{out_dir}/data/{split.split('.')[0]}", cfg, progress=False)
        print(f"-> {out_dir}/data/{split.split('.')[0]}: {'reused cache' if m.reused else 'tokenized'}, "
              f"{m.documents} documents, {m.quarantined} quarantined\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
