"""Tokenization to Parquet: markers, labels, manifest, cache, quarantine, and the data CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, build_tiny_encoder
from docre.cli import main
from docre.data.atlop import read_atlop
from docre.data.document import DocumentError, Document, Entity, Fact, Mention, cdr_inventory
from docre.data.tokenize import TokenizeConfig, encode_document, read_manifest, read_parquet_rows, tokenize_to_parquet
from docre.data.pretrained import load_tokenizer

DATA = FIXTURES / "cdr_sample.data"


def _docs():
    with open(DATA) as f:
        return list(read_atlop(f, str(DATA)))


def test_markers_and_labels_survive(tiny_encoder, tmp_path):
    m = tokenize_to_parquet([str(DATA)], str(tmp_path / "ds"), TokenizeConfig(encoder=tiny_encoder, relations="cdr"),
                            progress=False)
    docs = {d.id: d for d in _docs()}
    rows = read_parquet_rows(str(tmp_path / "ds"))
    assert m.documents == len(rows) == len(docs)
    tok = load_tokenizer(tiny_encoder)
    star = tok.convert_tokens_to_ids("*")
    inv = cdr_inventory()
    for row in rows:
        doc = docs[row["doc_id"]]
        ids = row["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert len(row["mention_pos"]) == len(doc.entities)
        for ent, positions in zip(doc.entities, row["mention_pos"]):
            assert len(positions) == len(ent.mentions)
            for p in positions:
                assert ids[p] == star  # start marker
        # every mention is wrapped: as many '*' as two per distinct mention span
        spans = {(mm.sent_id, mm.start, mm.end) for e in doc.entities for mm in e.mentions}
        assert ids.count(star) == 2 * len(spans)
        got = sorted(zip(row["label_heads"], row["label_tails"], (inv.ids[r] for r in row["label_rels"])))
        assert got == sorted((f.head, f.tail, f.relation) for f in doc.facts)
        assert row["sent_starts"][0] == 1 and row["sent_starts"] == sorted(row["sent_starts"])
        assert Document.from_dict(json.loads(row["document"])) == doc
        # prediction straight from documents skips the JSON copy and nothing else
        bare = encode_document(doc, tok, inv, with_document=False)
        assert bare.pop("document") is None and bare == {k: v for k, v in row.items() if k != "document"}


def test_long_document_is_kept_whole(tiny_encoder):
    words = ("the patients were treated with zentrovir and renal failure was seen . " * 12).split()
    doc = Document("long", [words], [Entity([Mention(0, 5, 6, "zentrovir")], "Chemical", "C1"),
                                     Entity([Mention(0, 7, 9, "renal failure"), Mention(0, 127, 129, "renal failure")],
                                            "Disease", "D1")],
                   [Fact(0, 1, "CID")])
    row = encode_document(doc, load_tokenizer(tiny_encoder), cdr_inventory())
    assert row["num_tokens"] == len(words) + 2 + 6 > 64  # longer than the tiny encoder's 64 positions
    assert row["mention_pos"][1][1] > 64


def test_cache_reused_and_invalidated(tiny_encoder, tmp_path):
    src = tmp_path / "in.data"
    shutil.copy(DATA, src)
    out = str(tmp_path / "ds")
    cfg = TokenizeConfig(encoder=tiny_encoder, relations="cdr")
    first = tokenize_to_parquet([str(src)], out, cfg, progress=False)
    assert not first.reused
    second = tokenize_to_parquet([str(src)], out, cfg, progress=False)
    assert second.reused and second.cache_key == first.cache_key
    # input changed -> re-tokenized
    lines = src.read_text().splitlines(keepends=True)
    src.write_text("".join(lines[:1]))
    third = tokenize_to_parquet([str(src)], out, cfg, progress=False)
    assert not third.reused and third.input_checksum != first.input_checksum and third.documents == 1
    # tokenizer changed (different vocabulary) -> re-tokenized
    other = build_tiny_encoder(tmp_path / "other_encoder", extra_words=["extraword"])
    fourth = tokenize_to_parquet([str(src)], out, TokenizeConfig(encoder=str(other), relations="cdr"), progress=False)
    assert not fourth.reused and fourth.vocab_hash != third.vocab_hash
    assert read_manifest(out).cache_key == fourth.cache_key


def test_quarantine_counts_and_strict_mode(tiny_encoder, tmp_path):
    good = DATA.read_text().splitlines()[0]
    fields = good.split("\t")
    bad = "\t".join(["4242", fields[1]] + fields[2:-1])  # one field short: malformed record
    src = tmp_path / "mixed.data"
    src.write_text(good + "\n" + bad + "\n")
    out = str(tmp_path / "ds")
    m = tokenize_to_parquet([str(src)], out, TokenizeConfig(encoder=tiny_encoder, relations="cdr"), progress=False)
    assert (m.documents, m.quarantined) == (1, 1)
    q = [json.loads(line) for line in Path(out, "quarantine.jsonl").read_text().splitlines()]
    assert "4242" in q[0]["where"] and q[0]["reason"]
    with pytest.raises(DocumentError, match="4242"):
        tokenize_to_parquet([str(src)], str(tmp_path / "strict"), TokenizeConfig(encoder=tiny_encoder, relations="cdr"),
                            lenient=False, progress=False)


def test_cli_stats_and_tokenize(tiny_encoder, tmp_path, capsys):
    assert main(["data", "stats", str(DATA), "--relations", "cdr", "--encoder", tiny_encoder]) == 0
    out = capsys.readouterr().out
    docs = _docs()
    assert f"documents: {len(docs)}" in out
    assert f"facts: {sum(len(d.facts) for d in docs)}" in out
    assert "docs_over_512_subwords: 0" in out
    args = ["data", "tokenize", str(DATA), str(tmp_path / "ds"), "--encoder", tiny_encoder, "--relations", "cdr"]
    assert main(args) == 0
    assert "tokenized in" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused cached tokenization" in capsys.readouterr().out


def test_cli_reports_bad_input_with_location(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"title": "Doc A", "sents": [["a", "b"]],
                                "vertexSet": [[{"name": "a", "pos": [0, 1], "sent_id": 0, "type": "X"}]],
                                "labels": [{"h": 0, "t": 3, "r": "P1", "evidence": []}]}]))
    assert main(["data", "stats", str(bad), "--no-subwords"]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "Doc A" in err and "missing entity 3" in err
