"""docre.extract without any orchestrator: prepare once, parts, commits, provenance, aggregate, the model store."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from docre import extract as ex
from docre.registry import store as model_store
from docre.data.docred import write_docred
from docre.data.document import RelationInventory, cdr_inventory
from docre.data.io import read_documents
from docre.model.docre_ii import DocREModel

FIXTURES = Path(__file__).parent / "fixtures"
CDR = str(FIXTURES / "cdr_sample.data")

BAD_LINE = json.dumps({"title": "bad-mention", "sents": [["Zentrovir", "caused", "pain", "."]],
                       "vertexSet": [[{"name": "Zentrovir", "pos": [0, 1], "sent_id": 0, "type": "Chemical"}],
                                     [{"name": "pain", "pos": [7, 9], "sent_id": 0, "type": "Disease"}]]})
CHEM_DIS = RelationInventory(["CID"], {"CID": "chemical induces disease"}, [("Chemical", "Disease")],
                             entity_types=["Chemical", "Disease"])


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


# ---------------------------------------------------------------- a small PubTator3 + PubMed corpus

PAIRS = [("haloperidol", "MESH:D006220", "dyskinesia", "MESH:D004409"),
         ("cisplatin", "MESH:D002945", "nephrotoxicity", "MESH:D007674"),
         ("lithium", "MESH:D008094", "tremor", "MESH:D014202")]


def bioc_doc(pmid: int, pair: int, extra: str = "") -> str:
    chem, chem_id, dis, dis_id = PAIRS[pair]
    title = f"{chem.capitalize()} and {dis}."
    abstract = f"Patients given {chem} developed {dis}. The {dis} resolved.{extra}"
    o = len(title) + 1

    def ann(i, text, typ, kb, passage, off):
        start = off + passage.index(text)
        return (f'<annotation id="{i}"><infon key="type">{typ}</infon><infon key="identifier">{kb}</infon>'
                f'<location offset="{start}" length="{len(text)}"/><text>{text}</text></annotation>')
    return (f"<document><id>{pmid}</id>"
            f'<passage><infon key="type">title</infon><offset>0</offset><text>{title}</text>'
            f"{ann(1, chem.capitalize(), 'Chemical', chem_id, title, 0)}{ann(2, dis, 'Disease', dis_id, title, 0)}"
            f"</passage>"
            f'<passage><infon key="type">abstract</infon><offset>{o}</offset><text>{abstract}</text>'
            f"{ann(3, chem, 'Chemical', chem_id, abstract, o)}{ann(4, 'Patients', 'Species', '9606', abstract, o)}"
            f"</passage></document>\n")


def bioc_collection(docs: list[str]) -> bytes:
    return ("<?xml version='1.0' encoding='UTF-8'?><collection><source>PubTator</source>"
            + "".join(docs) + "</collection>\n").encode()


def write_corpus(root: Path) -> dict[str, str]:
    """A BioCXML.0.tar.gz of 3 members (10 documents + 1 bad one), a PubMed baseline and an update file."""
    root.mkdir(parents=True, exist_ok=True)
    members = {
        "output/BioCXML/0.BioC.XML": bioc_collection([bioc_doc(1000 + i, i % 3) for i in range(4)]),
        "output/BioCXML/1.BioC.XML": bioc_collection([bioc_doc(1004, 0), "<document><id>1005</id></document>\n",
                                                      bioc_doc(1006, 1), bioc_doc(1007, 2)]),
        "output/BioCXML/2.BioC.XML": bioc_collection([bioc_doc(1008 + i, 0) for i in range(3)]),
    }
    archive = root / "BioCXML.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    def article(pmid, title, abstract):
        return (f'<PubmedArticle><MedlineCitation><PMID Version="1">{pmid}</PMID><Article><ArticleTitle>{title}'
                f"</ArticleTitle><Abstract><AbstractText>{abstract}</AbstractText></Abstract></Article>"
                f"</MedlineCitation></PubmedArticle>\n")
    baseline = root / "pubmed26n0001.xml.gz"
    baseline.write_bytes(gzip.compress((
        "<PubmedArticleSet>\n"
        + article(2001, "Haloperidol and dyskinesia.", "Haloperidol caused dyskinesia.")
        + article(2002, "Cisplatin and nephrotoxicity.", "Cisplatin caused nephrotoxicity.")
        + article(2003, "Lithium and tremor.", "Lithium caused tremor.")
        + "</PubmedArticleSet>\n").encode()))
    update = root / "pubmed26n1400.xml.gz"
    update.write_bytes(gzip.compress((
        "<PubmedArticleSet>\n"
        + article(2002, "Cisplatin and tremor, revised.", "Cisplatin caused tremor.")
        + '<DeleteCitation><PMID Version="1">2003</PMID></DeleteCitation>\n</PubmedArticleSet>\n').encode()))
    concepts = root / "bioconcepts2pubtator3.gz"
    lines = []
    for pmid, (chem, cid, dis, did) in ((2001, PAIRS[0]), (2002, PAIRS[1]), (2003, PAIRS[2])):
        lines += [f"{pmid}\tChemical\t{cid}\t{chem.capitalize()}|{chem}\tMeSH", f"{pmid}\tDisease\t{did}\t{dis}\tMeSH"]
    lines.append(f"2002\tDisease\t{PAIRS[2][3]}\ttremor\tMeSH")
    concepts.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return {"archive": str(archive), "baseline": str(baseline), "update": str(update), "concepts": str(concepts)}


class ChemDisModel:
    """A stand-in with the model's interface: every Chemical -> Disease candidate is CID, score 0.9 (0.8 at K=1).

    Deterministic, so aggregate counts can be asserted exactly; `triples` is DocREModel's own.
    """
    triples = DocREModel.triples

    def __init__(self, tokenizer):
        self.tokenizer, self.inventory = tokenizer, CHEM_DIS
        self.config = type("Cfg", (), {"encoder": "stub"})()
        self.calls = 0

    def predict_examples(self, examples, iterations=None, batch_size=8, **kw):
        self.calls += 1
        out = {}
        for ex_ in examples:
            pairs = [(h, t) for h, th in enumerate(ex_.entity_types) for t, tt in enumerate(ex_.entity_types)
                     if (th, tt) == ("Chemical", "Disease")]
            out[ex_.doc_id] = [[], [(h, t, 1, 0.9) for h, t in pairs]]  # first predicted at K=1
        return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def stub(tiny_encoder):
    from docre.data.pretrained import load_tokenizer
    return ChemDisModel(load_tokenizer(tiny_encoder))


@pytest.fixture(scope="module")
def model(tiny_encoder):
    import torch
    from docre.model.docre_ii import ModelConfig
    torch.manual_seed(0)
    return DocREModel.create(ModelConfig(encoder=tiny_encoder), cdr_inventory(), pretrained=True).eval()


def prepare_all(urls, work, model, part_docs=4, **kw):
    cfg = ex.PrepareConfig(part_docs=part_docs, **kw)
    return [ex.prepare_input(u, work, model.tokenizer, model.inventory, cfg) for u in urls]


# ---------------------------------------------------------------- inputs and prepare

def test_list_inputs_keeps_archives_and_order(tmp_path, corpus):
    d = Path(corpus["archive"]).parent
    (d / "_SUCCESS").write_text("")
    (d / "README.md").write_text("not an input")
    urls = ex.list_inputs(str(d))
    assert [Path(u).name for u in urls] == ["BioCXML.0.tar.gz", "pubmed26n0001.xml.gz", "pubmed26n1400.xml.gz"]
    # explicit files keep the order given: later ones supersede earlier ones
    assert ex.list_inputs(f"{corpus['update']},{corpus['baseline']}") == [corpus["update"], corpus["baseline"]]
    with pytest.raises(FileNotFoundError):
        ex.list_inputs(str(tmp_path / "nothing-*.jsonl"))


def test_prepare_streams_each_input_once_into_fixed_parts(tmp_path, corpus, stub, monkeypatch):
    log = tmp_path / "reads.log"
    monkeypatch.setenv("DOCRE_READ_LOG", str(log))
    work = str(tmp_path / "work")
    [m] = prepare_all([corpus["archive"]], work, stub)
    # 11 records: 10 documents and 1 without passages; 4 documents per part
    assert (m["records"], m["docs"], m["quarantined"]) == (11, 10, 1)
    assert [(p["first_record"], p["end_record"], p["docs"], p["quarantined"]) for p in m["parts"]] == [
        (0, 4, 4, 0), (4, 9, 4, 1), (9, 11, 2, 0)]
    assert m["left_out"] == {"entities of type 'Species' left out": 10}
    assert len(log.read_text().splitlines()) == 1
    again = prepare_all([corpus["archive"]], work, stub)[0]
    assert again["reused"] and again["parts"] == m["parts"]
    assert len(log.read_text().splitlines()) == 1  # not read again
    # another part size is another preparation
    assert [p["docs"] for p in prepare_all([corpus["archive"]], work, stub, part_docs=10)[0]["parts"]] == [10]


def test_prepare_resumes_after_an_interruption(tmp_path, corpus, stub):
    work = str(tmp_path / "work")
    cfg = ex.PrepareConfig(part_docs=4)

    def crash_after_first(part):
        raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        ex.prepare_input(corpus["archive"], work, stub.tokenizer, stub.inventory, cfg, on_part=crash_after_first)
    written = []
    resumed = ex.prepare_input(corpus["archive"], work, stub.tokenizer, stub.inventory, cfg, on_part=written.append)
    assert resumed["resumed_at_record"] == 4 and [p["file"] for p in written] == ["part-00001.parquet",
                                                                                 "part-00002.parquet"]
    clean = prepare_all([corpus["archive"]], str(tmp_path / "clean"), stub)[0]
    assert [{k: v for k, v in p.items()} for p in resumed["parts"]] == clean["parts"]
    rows = [ex.run.read_part(p)[1] for p in ex.plan_parts([resumed])]
    assert [[d.id for d in docs] for docs in rows] == [["1000", "1001", "1002", "1003"], ["1004", "1006", "1007", "1008"],
                                                       ["1009", "1010"]]


def test_planning_reads_manifests_not_documents(tmp_path, corpus, stub):
    manifests = prepare_all([corpus["archive"], corpus["baseline"]], str(tmp_path / "w"), stub,
                            concepts=corpus["concepts"])
    parts = ex.plan_parts(manifests)
    assert [(p.input_rank, p.docs, p.quarantined) for p in parts] == [(0, 4, 0), (0, 4, 1), (0, 2, 0), (1, 3, 0)]
    assert len({p.part_id for p in parts}) == 4
    # a thousand-part plan is list arithmetic: no storage access at all
    big = {"input_url": "s3://b/x", "prepared_url": "s3://nowhere/k",
           "parts": [{"part_id": f"k-{i:05d}", "file": f"part-{i:05d}.parquet",
                      "quarantine_file": f"quarantine-{i:05d}.parquet", "first_record": i, "end_record": i + 1,
                      "docs": 1, "quarantined": 0} for i in range(1000)], "deleted": []}
    assert len(ex.plan_parts([big] * 2)) == 2000


# ---------------------------------------------------------------- extract

def test_extract_part_matches_predict_commits_and_reruns(tmp_path, corpus, model):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    cdr_model = model
    [m] = prepare_all([corpus["archive"]], work, cdr_model, part_docs=100)
    [part] = ex.plan_parts([m])
    r = ex.extract_part(cdr_model, part, out, "v1", code_version="test")
    assert (r.docs_in, r.docs_out, r.quarantined, r.skipped) == (11, 10, 1, False)
    docs = [d for d in read_documents(corpus["archive"], quarantine=[])]
    want = sorted((t.doc_id, t.head, t.tail, t.relation, t.iteration) for t in cdr_model.predict(docs))
    got = ex.read_triples(out).to_pylist()
    assert sorted((t["doc_id"], t["head_entity"], t["tail_entity"], t["relation"], t["iteration"]) for t in got) == want
    [q] = ex.read_quarantine(out).to_pylist()
    assert (q["stage"], q["where"], q["reason"]) == ("read", "line 2, document '1005'", "document has no passages")
    assert q["source"].endswith("BioCXML.0.tar.gz!output/BioCXML/1.BioC.XML")
    again = ex.extract_part(cdr_model, part, out, "v1")
    assert again.skipped and ex.read_triples(out).num_rows == len(got)
    # a lost commit marker (a crash after writing data): redone in place, same rows, no duplicates
    Path(out, "_committed", f"part-{part.part_id}.json").unlink()
    ex.extract_part(cdr_model, part, out, "v1")
    assert ex.read_triples(out).num_rows == len(got)
    with pytest.raises(ValueError, match="other model version|model version"):
        ex.pending_parts([part], out, "v2")


def test_failure_before_commit_is_redone_without_duplicates(tmp_path, corpus, stub):
    [m] = prepare_all([corpus["archive"]], str(tmp_path / "w"), stub, part_docs=100)
    [part] = ex.plan_parts([m])
    out = str(tmp_path / "out")

    def crash(p):
        raise RuntimeError("worker died")
    with pytest.raises(RuntimeError):
        ex.extract_part(stub, part, out, "v1", before_commit=crash)
    assert ex.read_committed(out) == {} and ex.read_triples(out).num_rows == 0  # data files are not trusted
    r = ex.extract_part(stub, part, out, "v1")
    assert ex.read_triples(out).num_rows == r.triples == 10  # one Chemical -> Disease pair per document


def test_document_crashing_the_model_is_quarantined(tmp_path, corpus, stub):
    [m] = prepare_all([corpus["archive"]], str(tmp_path / "w"), stub, part_docs=100)
    [part] = ex.plan_parts([m])

    class Flaky(ChemDisModel):
        def predict_examples(self, examples, iterations=None, batch_size=8, **kw):
            if any(e.doc_id == "1002" for e in examples):
                raise RuntimeError("CUDA error: boom")
            return super().predict_examples(examples, iterations, batch_size)

    r = ex.extract_part(Flaky(stub.tokenizer), part, str(tmp_path / "a"), "v1")
    assert (r.docs_in, r.docs_out, r.quarantined) == (11, 9, 2)
    q = {row["stage"]: row for row in ex.read_quarantine(str(tmp_path / "a")).to_pylist()}
    assert "CUDA error: boom" in q["predict"]["reason"] and q["predict"]["where"] == "document '1002'"

    class Broken(ChemDisModel):
        def predict_examples(self, *a, **k):
            raise MemoryError("out of memory")
    with pytest.raises(MemoryError):  # every document fails: the part is retried, not quarantined
        ex.extract_part(Broken(stub.tokenizer), part, str(tmp_path / "b"), "v1")


def test_triples_carry_provenance_and_evidence(tmp_path, corpus, stub):
    [m] = prepare_all([corpus["archive"]], str(tmp_path / "w"), stub, part_docs=100)
    [part] = ex.plan_parts([m])
    out = str(tmp_path / "out")
    ex.extract_part(stub, part, out, "v7", code_version="docre 0.1.0 git abc")
    rows = {r["doc_id"]: r for r in ex.read_triples(out).to_pylist()}
    r = rows["1000"]  # "Haloperidol and dyskinesia." / "Patients given haloperidol developed dyskinesia. ..."
    assert (r["head_id"], r["tail_id"], r["head_type"], r["tail_type"]) == ("MESH:D006220", "MESH:D004409",
                                                                             "Chemical", "Disease")
    assert (r["head_name"], r["tail_name"]) == ("Haloperidol", "dyskinesia")  # most frequent mention (ties: first)
    assert (r["evidence_sentence"], r["evidence_tail_sentence"], r["evidence_text"]) == (
        0, 0, "Haloperidol and dyskinesia.")
    assert (r["relation"], r["score"], r["iteration"]) == ("CID", pytest.approx(0.9), 1)
    assert (r["source"], r["part_id"], r["model_version"], r["code_version"]) == (
        corpus["archive"], part.part_id, "v7", "docre 0.1.0 git abc")


def test_evidence_falls_back_to_the_head_and_tail_sentences():
    """No shared sentence: the closest pair of sentences, each one's own text, never the span between them."""
    from docre.data.document import Document, Entity, Mention
    doc = Document("d", [["A", "x", "."], ["y", "."], ["z", "."], ["B", "."], ["A", "."]],
                   [Entity([Mention(0, 0, 1, "A"), Mention(4, 0, 1, "A")], "Chemical", "D1"),
                    Entity([Mention(3, 0, 1, "B")], "Disease", "D2")], [])
    assert ex.run.evidence(doc, 0, 1) == (4, 3, "A . … B .")  # sentence 4 is closer to 3 than sentence 0
    assert ex.run.evidence(doc, 1, 0) == (3, 4, "B . … A .")


# ---------------------------------------------------------------- aggregate

def test_aggregate_applies_updates_and_deletions(tmp_path, corpus, stub):
    urls = [corpus["archive"], corpus["baseline"], corpus["update"]]
    manifests = prepare_all(urls, str(tmp_path / "w"), stub, concepts=corpus["concepts"])
    assert [m["deleted"] for m in manifests] == [[], [], ["2003"]]
    parts = ex.plan_parts(manifests)
    out = str(tmp_path / "out")
    for p in parts:
        ex.extract_part(stub, p, out, "v1")
    s = ex.aggregate(out, parts, {2: ["2003"]})
    graph = {(r["head_id"], r["relation"], r["tail_id"]): r for r in ex.read_graph(out).to_dicts()}
    # archive: pair 0 in 1000, 1003, 1004, 1008, 1009, 1010; pair 1 in 1001, 1006; pair 2 in 1002, 1007
    archive_counts = {0: 6, 1: 2, 2: 2}
    hal, cis, lit = (("MESH:D006220", "CID", "MESH:D004409"), ("MESH:D002945", "CID", "MESH:D007674"),
                     ("MESH:D008094", "CID", "MESH:D014202"))
    assert graph[hal]["documents"] == archive_counts[0] + 1  # + PubMed 2001
    assert graph[cis]["documents"] == archive_counts[1]  # PubMed 2002 was revised: no longer about nephrotoxicity
    assert graph[lit]["documents"] == archive_counts[2]  # PubMed 2003 was deleted
    assert graph[("MESH:D002945", "CID", "MESH:D014202")]["documents"] == 1  # the revised 2002
    assert len(graph) == 4
    assert (s["triples_in"], s["triples_kept"], s["documents_deleted"]) == (10 + 3 + 1, 10 + 1 + 1, 1)
    ex_hal = graph[hal]["examples"]
    assert len(ex_hal) == 5 and all(e["evidence"] for e in ex_hal)
    assert graph[hal]["head_name"] in ("Haloperidol", "haloperidol") and graph[hal]["mean_score"] == pytest.approx(0.9)


def test_cli_aggregate_rebuilds_the_graph(tmp_path, corpus, stub, capsys):
    from docre.cli import main
    manifests = prepare_all([corpus["baseline"], corpus["update"]], str(tmp_path / "w"), stub,
                            concepts=corpus["concepts"])
    parts = ex.plan_parts(manifests)
    out = str(tmp_path / "out")
    ex.write_plan(out, manifests)
    for p in parts:
        ex.extract_part(stub, p, out, "v1")
    assert main(["aggregate", out]) == 0
    text = capsys.readouterr().out
    assert "2 facts from 2 documents; 2 of 4 triples live (1 superseded and 1 deleted citations)" in text
    assert main(["aggregate", str(tmp_path / "nothing")]) == 2


def run_output(out: str, urls: list[str], work: str, model, part_docs: int = 4, **kw) -> dict:
    """What docre-extract does with a run's inputs, without the orchestrator: skip the ones the output holds,
    prepare the new ones, add them to the output's ordered set, extract what is pending, aggregate it all."""
    cfg = ex.PrepareConfig(part_docs=part_docs, concepts=kw.pop("concepts", None))
    fresh = ex.new_inputs(out, urls, cfg)
    manifests = ex.extend_plan(out, [ex.prepare_input(u, work, model.tokenizer, model.inventory, cfg)
                                     for u in fresh], cfg)
    parts = ex.plan_parts(manifests)
    for p in ex.pending_parts(parts, out, "v1")[0]:
        ex.extract_part(model, p, out, "v1")
    deletions = {rank: m["deleted"] for rank, m in enumerate(manifests) if m["deleted"]}
    return ex.aggregate(out, parts, deletions, **kw) | {"fresh": fresh}


def sorted_rows(frame) -> list[dict]:
    return sorted(frame.drop("examples").to_dicts() if "examples" in frame.columns else frame.to_dicts(),
                  key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_baseline_then_update_in_two_runs_equals_one_run(tmp_path, corpus, stub):
    """PubMed's daily workflow: the baseline once, then the update file into the same output."""
    urls, work = [corpus["baseline"], corpus["update"]], str(tmp_path / "w")
    one = run_output(str(tmp_path / "one"), urls, work, stub, concepts=corpus["concepts"])
    first = run_output(str(tmp_path / "two"), urls[:1], work, stub, concepts=corpus["concepts"])
    # the baseline given again is skipped; the update removes 1 of 3 facts, more than the default guard's 20%
    second = run_output(str(tmp_path / "two"), urls, work, stub, concepts=corpus["concepts"], max_graph_loss=0.5)
    assert first["facts"] == 3 and second["fresh"] == [corpus["update"]]  # only the update is new
    assert second["facts"] == one["facts"] == 2 and second["inputs"] == 2
    assert sorted_rows(ex.read_graph(str(tmp_path / "one"))) == sorted_rows(ex.read_graph(str(tmp_path / "two")))
    live_one, live_two = (ex.read_live_triples(str(tmp_path / d)) for d in ("one", "two"))
    assert sorted_rows(live_one.drop("part_id")) == sorted_rows(live_two.drop("part_id"))
    assert sorted(live_two["doc_id"].to_list()) == ["2001", "2002"]
    assert live_two.filter(live_two["doc_id"] == "2002")["source"].to_list() == [corpus["update"]]  # the revision
    status = {(r["doc_id"], r["source"]): r["status"]
              for r in pl_read(tmp_path / "two" / "aggregate" / "documents.parquet")}
    assert status == {("2001", corpus["baseline"]): "live", ("2002", corpus["baseline"]): "superseded",
                      ("2003", corpus["baseline"]): "deleted", ("2002", corpus["update"]): "live"}
    # the raw triples keep every version: 3 from the baseline, 1 from the update
    assert ex.read_triples(str(tmp_path / "two")).num_rows == 4


def pl_read(path):
    import polars as pl
    return pl.read_parquet(path).to_dicts()


def test_an_output_refuses_files_out_of_order_and_other_settings(tmp_path, corpus, stub):
    out, work = str(tmp_path / "out"), str(tmp_path / "w")
    run_output(out, [corpus["update"]], work, stub, concepts=corpus["concepts"])
    with pytest.raises(ex.PlanConflict, match=r"pubmed26n0001.xml.gz is numbered before .*pubmed26n1400.xml.gz"):
        ex.new_inputs(out, [corpus["baseline"]], ex.PrepareConfig(part_docs=4, concepts=corpus["concepts"]))
    with pytest.raises(ex.PlanConflict, match="part_docs: 4 there, 10 now"):
        ex.new_inputs(out, [corpus["update"]], ex.PrepareConfig(part_docs=10, concepts=corpus["concepts"]))
    # an unnumbered input joins at the end; the update already there is skipped
    assert ex.new_inputs(out, [corpus["update"], corpus["archive"]],
                         ex.PrepareConfig(part_docs=4, concepts=corpus["concepts"])) == [corpus["archive"]]


def test_an_update_that_would_wipe_the_graph_stops(tmp_path, corpus, stub):
    """A deletion file that removes most of the graph fails and leaves the graph as it was, unless allowed."""
    out, work = str(tmp_path / "out"), str(tmp_path / "w")
    assert run_output(out, [corpus["baseline"]], work, stub, concepts=corpus["concepts"])["facts"] == 3
    wipe = tmp_path / "pubmed26n1401.xml.gz"
    wipe.write_bytes(gzip.compress(("<PubmedArticleSet>\n" + "".join(
        f'<DeleteCitation><PMID Version="1">{p}</PMID></DeleteCitation>\n' for p in (2001, 2002))
        + "</PubmedArticleSet>\n").encode()))
    graph_before = (tmp_path / "out" / ex.GRAPH_FILE).read_bytes()
    with pytest.raises(ex.GraphShrinkError, match="from 3 to 1 facts"):
        run_output(out, [str(wipe)], work, stub, concepts=corpus["concepts"])
    assert (tmp_path / "out" / ex.GRAPH_FILE).read_bytes() == graph_before
    assert run_output(out, [str(wipe)], work, stub, concepts=corpus["concepts"], max_graph_loss=1.0)["facts"] == 1


def test_a_model_that_sees_no_entity_fails_by_name(tmp_path, corpus, stub):
    people = replace_inventory(stub, RelationInventory(["P17"], {"P17": "country"}, None,
                                                       entity_types=["PER", "ORG", "LOC"]))
    manifests = prepare_all([corpus["archive"]], str(tmp_path / "w"), people, part_docs=100)
    with pytest.raises(ex.NoScoreableEntities, match=r"scores entity types \['LOC', 'ORG', 'PER'\].*"
                                                     r"30 entities .*Chemical: 10, Disease: 10, Species: 10"):
        ex.entity_coverage(manifests)
    chem = prepare_all([corpus["archive"]], str(tmp_path / "w2"), stub, part_docs=100)
    c = ex.entity_coverage(chem)
    assert (c["scored"], c["left_out_by_type"], c["warning"]) == (20, {"Species": 10}, "")
    assert "Species" in ex.entity_coverage(chem, warn_share=0.1)["warning"]


def triple(doc, head, tail, head_name, score, head_id=None, tail_id="MESH:D2"):
    return {"doc_id": doc, "head_entity": head, "tail_entity": tail, "head_id": head_id, "tail_id": tail_id,
            "head_name": head_name, "tail_name": "pain", "head_type": "Chemical", "tail_type": "Disease",
            "relation": "CID", "relation_name": "cid", "score": score, "iteration": 1, "evidence_sentence": 0,
            "evidence_tail_sentence": 0, "evidence_text": "x", "source": "in.jsonl", "part_id": "p0",
            "model_version": "v1", "code_version": ""}


def test_graph_names_are_stable_and_unlinked_entities_stay_in_their_document(tmp_path, monkeypatch):
    import sys
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [triple("a", 0, 1, "zentrovir", 0.9, "MESH:D1"), triple("b", 0, 1, "Zentrovir", 0.5, "MESH:D1"),
            triple("c", 0, 1, "Ostrand", 0.8), triple("d", 2, 1, "Ostrand", 0.7)]  # no ids: two entities
    monkeypatch.setattr(sys.modules["docre.extract.aggregate"], "read_triples",
                        lambda out: pa.Table.from_pylist(rows, ex.TRIPLE_SCHEMA))
    pq.write_table(pa.table({"doc_id": ["a", "b", "c", "d"]}), tmp_path / "part.parquet")
    part = ex.Part("p0", "in.jsonl", 0, str(tmp_path / "part.parquet"), "", 0, 4, 4, 0)
    names = set()
    for i in range(3):  # rebuilt from the same triples: the same names; a tie goes to the first in order
        s = ex.aggregate(str(tmp_path / f"o{i}"), [part])
        graph = {r["head_key"]: r for r in ex.read_graph(str(tmp_path / f"o{i}")).to_dicts()}
        names.add(tuple(sorted((k, r["head_name"]) for k, r in graph.items())))
    assert names == {(("MESH:D1", "Zentrovir"), ("c#0", "Ostrand"), ("d#2", "Ostrand"))}
    assert graph["MESH:D1"]["documents"] == 2 and graph["c#0"]["documents"] == 1 and graph["c#0"]["head_id"] is None
    assert s["relations"] == [{"relation": "CID", "document_facts": 4, "documents": 4, "facts": 3}]


# ---------------------------------------------------------------- the model store

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


def test_extraction_ignores_foreign_labels_and_types(tmp_path, model):
    """PubTator3 labels (Association) and types (Gene, Species) are not CDR's: neither is fatal."""
    xml = (FIXTURES / "pubtator3" / "bioc_sample.xml").read_bytes()
    cdr_model = replace_inventory(model, replace(cdr_inventory(), entity_types=["Chemical", "Disease"]))
    [m] = prepare_all([str(FIXTURES / "pubtator3" / "bioc_sample.xml")], str(tmp_path / "w"), cdr_model)
    assert (m["docs"], m["quarantined"]) == (3, 0) and len(xml) > 0
    assert m["left_out"]["entities of type 'Gene' left out"] == 1
    assert m["left_out"]["gold labels with relation 'Association' ignored (not in the model's inventory)"] == 1


def replace_inventory(model, inventory):
    clone = DocREModel.__new__(DocREModel)
    clone.__dict__ = dict(model.__dict__)
    clone.inventory = inventory
    return clone


def test_parts_can_also_be_written_as_bioc_and_jsonl(tmp_path, corpus, stub):
    [m] = prepare_all([corpus["archive"]], str(tmp_path / "w"), stub, part_docs=100)
    [part] = ex.plan_parts([m])
    out = tmp_path / "out"
    r = ex.extract_part(stub, part, str(out), "v1", extra_formats=["jsonl", "bioc_xml", "bioc_json"])
    assert r.extra_files == [f"jsonl/part-{part.part_id}.jsonl", f"bioc_xml/part-{part.part_id}.xml",
                             f"bioc_json/part-{part.part_id}.bioc.json"]
    lines = (out / r.extra_files[0]).read_text().splitlines()
    assert len(lines) == r.triples == 10 and json.loads(lines[0])["head_id"].startswith("MESH:")
    for f in r.extra_files[1:]:
        docs = list(read_documents(str(out / f)))
        assert len(docs) == 10 and sum(len(d.facts) for d in docs) == 10
        assert {f_.relation for d in docs for f_ in d.facts} == {"CID"}


def test_code_version_without_git_reads_the_commit_baked_into_the_image(tmp_path, monkeypatch):
    """An image has no .git; its build writes docre/build_info.json, and provenance names that commit."""
    import subprocess

    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(model_store, "BUILD_INFO", tmp_path / "build_info.json")
    assert "git_commit" not in model_store.code_version()
    (tmp_path / "build_info.json").write_text('{"git_commit": "0123456789abcdef", "git_dirty": false}')
    assert model_store.code_version()["git_commit"] == "0123456789abcdef"
