"""docre.extract without any orchestrator: shards, commits, quarantine, reruns, the model store."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from docre import extract as ex
from docre import store as model_store
from docre.data.docred import write_docred
from docre.data.document import cdr_inventory
from docre.data.io import read_documents

FIXTURES = Path(__file__).parent / "fixtures"
CDR = str(FIXTURES / "cdr_sample.data")

BAD_LINE = json.dumps({"title": "bad-mention", "sents": [["Zentrovir", "caused", "pain", "."]],
                       "vertexSet": [[{"name": "Zentrovir", "pos": [0, 1], "sent_id": 0, "type": "Chemical"}],
                                     [{"name": "pain", "pos": [7, 9], "sent_id": 0, "type": "Disease"}]]})


def cdr_docs():
    return list(read_documents(CDR, inventory=cdr_inventory(), quarantine=[]))


def write_jsonl(path: Path, bad_at: int = 1) -> Path:
    """The CDR sample as DocRED JSON lines (ids prefixed 'j'), with one bad document at line `bad_at` + 1."""
    docs = cdr_docs()
    for d in docs:
        d.id = d.title = f"j{d.id}"
    lines = write_docred(docs, jsonl=True).splitlines(keepends=True)
    lines.insert(bad_at, BAD_LINE + "\n")
    data = "".join(lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture(scope="module")
def model(tiny_encoder):
    import torch
    from docre.model.docre_ii import DocREModel, ModelConfig
    torch.manual_seed(0)
    return DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).eval()


def test_list_inputs_and_deterministic_plan(tmp_path):
    (tmp_path / "in").mkdir()
    jsonl = write_jsonl(tmp_path / "in" / "b.jsonl.gz")
    (tmp_path / "in" / "a.data").write_text(Path(CDR).read_text())
    (tmp_path / "in" / "_SUCCESS").write_text("")
    (tmp_path / "in" / "README.md").write_text("not an input")
    urls = ex.list_inputs(str(tmp_path / "in"))
    assert urls == [str(tmp_path / "in" / "a.data"), str(jsonl)]
    assert ex.list_inputs(str(tmp_path / "in" / "*.jsonl.gz")) == [str(jsonl)]
    with pytest.raises(FileNotFoundError):
        ex.list_inputs(str(tmp_path / "nothing-*.jsonl"))
    plan = ex.plan_shards(urls, 2)
    assert [(s.start, s.end) for s in plan] == [(0, 2), (2, 3), (0, 2), (2, 4)]  # 3 docs; 3 docs + 1 bad
    assert plan == ex.plan_shards(urls, 2)  # same ids on a rerun
    assert len({s.shard_id for s in plan}) == 4


def test_extract_commit_quarantine_and_rerun(tmp_path, model):
    src = write_jsonl(tmp_path / "docs.jsonl")
    out = str(tmp_path / "out")
    specs = ex.plan_shards([str(src)], 3)
    results = [ex.extract_shard(model, s, out, "v1") for s in specs]
    assert sum(r.docs_in for r in results) == 4
    assert all(r.balanced for r in results)
    q = ex.read_quarantine(out).to_pylist()
    assert len(q) == 1 and q[0]["stage"] == "read" and "outside sentence 0" in q[0]["reason"]
    assert q[0]["where"].startswith("line 2")
    triples = ex.read_triples(out)
    expected = model.predict([d for d in read_documents(str(src), quarantine=[])])
    assert sorted(triples.column("doc_id").to_pylist()) == sorted(t.doc_id for t in expected)
    # rerun: every shard is skipped, nothing is written twice
    pending, done = ex.pending_shards(specs, out, "v1")
    assert pending == [] and set(done) == {s.shard_id for s in specs}
    again = ex.extract_shard(model, specs[0], out, "v1")
    assert again.skipped and ex.read_triples(out).num_rows == triples.num_rows
    summary = ex.summarize(specs, out, "v1")
    assert summary["complete"] and summary["docs_in"] == 4 and summary["quarantined"] == 1
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["triples"] == triples.num_rows
    # a different shard size over the same output would duplicate: refused
    with pytest.raises(ValueError, match="overlaps"):
        ex.pending_shards(ex.plan_shards([str(src)], 2), out, "v1")
    with pytest.raises(ValueError, match="model version"):
        ex.pending_shards(specs, out, "v2")


def test_failure_before_commit_is_redone_without_duplicates(tmp_path, model):
    out = str(tmp_path / "out")
    [spec] = ex.plan_shards([CDR], 10)

    def crash(_):
        raise RuntimeError("worker died")
    with pytest.raises(RuntimeError):
        ex.extract_shard(model, spec, out, "v1", before_commit=crash)
    assert ex.read_committed(out) == {} and ex.read_triples(out).num_rows == 0  # data files are not trusted
    r = ex.extract_shard(model, spec, out, "v1")
    assert ex.read_triples(out).num_rows == r.triples == len(model.predict(cdr_docs()))


def test_document_crashing_the_model_is_quarantined(tmp_path, model):
    class Flaky:
        inventory = model.inventory

        def predict(self, docs, iterations=None, batch_size=8):
            if any(d.id == "9000002" for d in docs):
                raise RuntimeError("CUDA error: boom")
            return model.predict(docs, iterations, batch_size=batch_size)

    [spec] = ex.plan_shards([CDR], 10)
    r = ex.extract_shard(Flaky(), spec, str(tmp_path), "v1")
    assert (r.docs_in, r.docs_out, r.quarantined) == (3, 2, 1)
    [q] = ex.read_quarantine(str(tmp_path)).to_pylist()
    assert q["stage"] == "predict" and "CUDA error: boom" in q["reason"] and "9000002" in q["where"]

    class Broken(Flaky):
        def predict(self, docs, iterations=None, batch_size=8):
            raise MemoryError("out of memory")
    [spec2] = ex.plan_shards([CDR], 10)
    with pytest.raises(MemoryError):  # every document fails: the shard is retried, not quarantined
        ex.extract_shard(Broken(), replace(spec2, shard_id="other"), str(tmp_path / "b"), "v1")


def test_publish_resolve_and_cached_load(tmp_path, model):
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    store = str(tmp_path / "store")
    url = model_store.publish_model(ckpt, store, "v1")
    assert (tmp_path / "store" / "latest").read_text().strip() == "v1"
    assert model_store.resolve_model(store) == (url, "v1") and model_store.resolve_model(url) == (url, "v1")
    model_store.publish_model(ckpt, store, "v1")  # same content again: idempotent
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + " ")
    with pytest.raises(FileExistsError):
        model_store.publish_model(ckpt, store, "v1")
    m1 = model_store.load_model(url, "v1", "cpu")
    assert model_store.load_model(url, "v1", "cpu") is m1
    assert model_store.model_cache_info()["loads"].count([url, "v1", "cpu"]) == 1


def test_record_counts_are_cached_by_fingerprint(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl")
    cache = str(tmp_path / "out" / "_plan" / "counts.json")
    assert ex.count_inputs([str(src)], cache_url=cache) == {str(src): 4}
    monkeypatch.setattr(ex, "count_records", lambda *a, **k: pytest.fail("recounted an unchanged input"))
    assert ex.count_inputs([str(src)], cache_url=cache) == {str(src): 4}
    monkeypatch.undo()
    src.write_text(src.read_text() + BAD_LINE.replace("bad-mention", "bad-2") + "\n")  # input changed
    assert ex.count_inputs([str(src)], cache_url=cache) == {str(src): 5}


def test_extraction_reads_a_pubtator3_archive_with_foreign_labels_and_types(model, tmp_path):
    """PubTator3 BioC in a tar.gz: Association labels are not CDR's, Gene/Species are not CDR types; neither is
    fatal. Every document comes out, none is quarantined, and triples only join Chemical -> Disease."""
    import io
    import tarfile
    from dataclasses import replace as dc_replace

    xml = (FIXTURES / "pubtator3" / "bioc_sample.xml").read_bytes()
    archive = tmp_path / "in" / "BioCXML.0.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("output/BioCXML/1.BioC.XML")
        info.size = len(xml)
        tar.addfile(info, io.BytesIO(xml))
    inv = dc_replace(cdr_inventory(), entity_types=["Chemical", "Disease"])
    cdr_model = model
    old_inventory, cdr_model.inventory = cdr_model.inventory, inv
    try:
        assert ex.list_inputs(str(tmp_path / "in")) == [str(archive)]
        specs = ex.plan_shards([str(archive)], 2)
        out = str(tmp_path / "out")
        results = [ex.extract_shard(cdr_model, s, out, "v1") for s in specs]
    finally:
        cdr_model.inventory = old_inventory
    assert sum(r.docs_in for r in results) == 3 and sum(r.docs_out for r in results) == 3
    assert sum(r.quarantined for r in results) == 0
    triples = ex.read_triples(out).to_pylist()
    assert {(t["head_type"], t["tail_type"]) for t in triples} <= {("Chemical", "Disease")}
    assert not {t["head_id"] for t in triples} & {"5562", "9606"}  # Gene / Species never reach the model
