"""CDR (PubTator) -> BioC XML / BioC JSON -> read back: identical documents, entities, mentions and facts?

    python bench/bioc_roundtrip.py [PUBTATOR ...]   (default: the shared CDR development and training sets)

Prints one line per file and format and writes bench/results/bioc_roundtrip.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from docre.data.bioc import write_bioc_json, write_bioc_xml
from docre.data.io import read_documents

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cdr"


def main(paths: list[str]) -> None:
    paths = paths or [str(SHARED / "CDR_DevelopmentSet.PubTator.txt"), str(SHARED / "CDR_TrainingSet.PubTator.txt")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            docs = list(read_documents(path))
            for fmt, name, write in (("BioC XML", "x.xml", lambda d: "".join(write_bioc_xml(d))),
                                     ("BioC JSON", "x.bioc.json", write_bioc_json)):
                out = Path(tmp) / name
                out.write_text(write(docs))
                t0 = time.perf_counter()
                back = list(read_documents(str(out)))
                seconds = time.perf_counter() - t0
                same = back == docs
                diff = [a.id for a, b in zip(docs, back) if a != b][:5]
                r = {"input": Path(path).name, "format": fmt, "documents": len(docs), "read_back": len(back),
                     "identical": same, "first_differences": diff, "mentions": sum(len(e.mentions) for d in docs
                                                                                    for e in d.entities),
                     "facts": sum(len(d.facts) for d in docs), "read_seconds": round(seconds, 2)}
                results.append(r)
                print(f"{r['input']:40} {fmt:9} {r['documents']} docs, {r['mentions']} mentions, {r['facts']} facts: "
                      f"{'identical' if same else 'DIFFERENT ' + str(diff)} (read back in {seconds:.2f} s)")
    out = Path(__file__).parent / "results" / "bioc_roundtrip.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
