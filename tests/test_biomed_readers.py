"""PubTator3 BioC XML / JSON, PubTator3 text exports, PubMed XML + concepts: against hand-counted fixtures.

The fixtures (tests/fixtures/pubtator3, tests/fixtures/pubmed) are invented abstracts written by
tests/fixtures/make_biomed_fixtures.py; every expectation below was counted by hand from that script.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from docre.data.assemble import normalize_id, split_ids
from docre.data.bioc import write_bioc_json, write_bioc_xml
from docre.data.document import Document, RelationInventory
from docre.data.io import Quarantined, ReadOptions, detect_format, read_documents
from docre.data.pubmed import ConceptIndex, build_concept_index

FIX = Path(__file__).parent / "fixtures"
P3 = FIX / "pubtator3"
PM = FIX / "pubmed"
CDR_SAMPLE = FIX / "cdr_sample.pubtator"


def summary(doc: Document) -> tuple:
    ents = [(e.type, e.kb_id, [m.text for m in e.mentions]) for e in doc.entities]
    facts = None if doc.facts is None else [(f.head, f.tail, f.relation) for f in doc.facts]
    return doc.id, ents, facts


DOC1 = ("31000001", [
    ("Chemical", "D008687", ["Metformin", "metformin", "metformin"]),
    ("Chemical", "D005947", ["glucose"]),  # the second "glucose" is unlinked ("-"): dropped
    ("Disease", "D003924", ["type 2 diabetes", "type 2 diabetes"]),
    ("Species", "9606", ["patients"]),
    ("Gene", "5562", ["AMPK"]),
    ("Disease", "D000140", ["lactic acidosis"]),
    ("Chemical", "D007328", ["Insulin"]),  # "MESH:D007328;MESH:D061385": one mention, two entities
    ("Chemical", "D061385", ["Insulin"]),
    ("Chemical", "D001241", ["Aspirin"]),  # "bleeding" has an empty id: dropped
], [(0, 2, "Negative_Correlation"), (0, 4, "Association")])
DOC2 = ("31000002", [  # PMC7000002 read as title + abstract: the PMID comes from article-id_pmid
    ("Chemical", "D008094", ["Lithium", "Lithium"]),
    ("Disease", "D014202", ["tremor", "tremor"]),
    ("Species", "9606", ["patients"]),
], [(0, 1, "Positive_Correlation")])  # the Valproate relation lives in a paragraph: dropped, counted
DOC3 = ("31000003", [
    ("Chemical", "D003000", ["Clonidine", "Clonidine"]),
    ("Disease", "D007022", ["hypotension", "hypotension"]),
    ("Disease", "D001919", ["bradycardia"]),
], [(0, 1, "CID")])


def read(url, **kw) -> tuple[list[Document], list[Quarantined], dict]:
    quarantine: list[Quarantined] = []
    counts: dict = {}
    docs = list(read_documents(str(url), quarantine=quarantine, counts=counts, **kw))
    return docs, quarantine, counts


# ---------------------------------------------------------------- ids

@pytest.mark.parametrize("raw,ids", [
    ("MESH:D003920", ["D003920"]), ("D003920", ["D003920"]), ("MESH:D001;MESH:D002", ["D001", "D002"]),
    ("D001|D002", ["D001", "D002"]), ("5562,7157", ["5562", "7157"]), ("-", []), ("-1", []), ("", []),
    (" CVCL:E217 ", ["CVCL:E217"]), ("D001;D001", ["D001"]), ("c.35G>A", ["c.35G>A"]), (None, []),
])
def test_split_ids(raw, ids):
    assert split_ids(raw) == ids


def test_mesh_prefix_is_the_only_namespace_dropped():
    assert normalize_id("MESH:D003920") == normalize_id("D003920") == "D003920"
    assert normalize_id("NCBIGene:5562") == "NCBIGene:5562"


def test_bare_numbers_are_grouped_within_their_type_only(tmp_path):
    """Gene 9606 and Taxonomy 9606 are different concepts; MeSH ids are global."""
    text = "Human 9606 gene and human species."
    lines = [f"1|t|{text}", "1|a|", "1\t0\t5\tHuman\tGene\t9606", "1\t20\t25\thuman\tSpecies\t9606", ""]
    path = tmp_path / "x.pubtator"
    path.write_text("\n".join(lines) + "\n")
    (doc,), _, _ = read(path)
    assert [(e.type, e.kb_id) for e in doc.entities] == [("Gene", "9606"), ("Species", "9606")]


# ---------------------------------------------------------------- the four sources

def test_bioc_xml_reads_pubtator3_pmc_and_cdr_styles():
    docs, quarantine, counts = read(P3 / "bioc_sample.xml")
    assert [summary(d) for d in docs] == [DOC1, DOC2, DOC3]
    assert quarantine == []
    assert counts == {"unlinked mentions dropped": 2, "passages left out": 2,
                      "relations without a mention in the text": 1}
    # passages are sentence boundaries, and offsets map into the joined text
    d2 = docs[1]
    assert d2.title == "Lithium and tremor: a cohort study"
    assert d2.text == "Lithium and tremor: a cohort study Lithium treatment was followed by tremor in 12 patients."
    assert [" ".join(s) for s in d2.sentences] == ["Lithium and tremor : a cohort study",
                                                   "Lithium treatment was followed by tremor in 12 patients ."]
    for d in docs:
        for e in d.entities:
            for m in e.mentions:
                assert d.text[m.char_start:m.char_end] == m.text


def test_bioc_xml_full_text_option_keeps_every_passage():
    docs, _, counts = read(P3 / "bioc_sample.xml", options=ReadOptions(passages="all"))
    d2 = docs[1]
    assert [(e.kb_id, len(e.mentions)) for e in d2.entities] == [
        ("D008094", 4), ("D014202", 4), ("9606", 1), ("D014635", 1)]  # numbered by first mention
    assert [(f.head, f.tail, f.relation) for f in d2.facts] == [(0, 1, "Positive_Correlation"),
                                                                (3, 1, "Positive_Correlation")]
    # title, abstract, two paragraph sentences, and the caption's two ("Figure 1." / "Tremor frequency ...")
    assert len(d2.sentences) == 1 + 1 + 2 + 2
    assert "passages left out" not in counts


def test_bioc_json_both_shapes():
    api, q1, _ = read(P3 / "api_sample.json")
    coll, q2, _ = read(P3 / "collection_sample.json")
    assert [summary(d) for d in api] == [DOC1, DOC3]
    assert [summary(d) for d in coll] == [DOC2]
    assert q1 == q2 == []


def test_pubtator3_text_export_bom_crlf_mesh_prefix_multi_ids():
    docs, quarantine, counts = read(P3 / "export_sample.pubtator")
    assert docs[0].id == "31000001"  # not "\ufeff31000001"
    assert [summary(d) for d in docs] == [(DOC1[0], DOC1[1], [(0, 2, "Negative_Correlation")]), DOC3]
    assert quarantine == [] and counts == {"unlinked mentions dropped": 2}
    assert not any("\r" in t for d in docs for s in d.sentences for t in s)


def test_the_same_abstract_is_the_same_document_in_every_format():
    xml = {d.id: d for d in read(P3 / "bioc_sample.xml")[0]}
    for d in read(P3 / "export_sample.pubtator")[0] + read(P3 / "api_sample.json")[0]:
        assert (d.sentences, d.entities, d.text) == (xml[d.id].sentences, xml[d.id].entities, xml[d.id].text)


@pytest.fixture(scope="module")
def concept_index(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("concepts") / "index")
    manifest = build_concept_index(str(PM / "bioconcepts2pubtator3_sample.tsv"), url, run_rows=4,
                                   row_group_rows=2)
    assert manifest["rows"] == 8 and manifest["bad_lines"] == 1 and manifest["first_bad_lines"] == [7]
    assert len(manifest["runs"]) == 2  # 8 rows, 4 per sorted run
    return url


def test_pubmed_xml_alone_gives_documents_without_entities():
    docs, quarantine, _ = read(PM / "pubmed26n0001.xml")
    assert [(d.id, len(d.entities), d.facts) for d in docs] == [("32000001", 0, None), ("32000002", 0, None),
                                                                ("32000003", 0, None)]
    assert docs[0].title == "Haloperidol and tardive dyskinesia."  # inline <i> flattened
    # each AbstractText is its own passage: sentence boundaries
    assert [" ".join(s) for s in docs[0].sentences][1:] == [
        "Haloperidol causes dyskinesia in some patients .",
        "Tardive dyskinesia was seen after haloperidol ; dyskinesias were rare ."]


def test_pubmed_with_concepts_locates_mentions_on_token_boundaries(concept_index):
    deleted: list[str] = []
    docs, quarantine, _ = read(PM / "pubmed26n0001.xml", options=ReadOptions(concepts=concept_index),
                               deleted=deleted)
    assert [summary(d) for d in docs] == [
        ("32000001", [("Chemical", "D006220", ["Haloperidol", "Haloperidol", "haloperidol"]),
                      ("Disease", "D004409", ["tardive dyskinesia", "dyskinesia", "dyskinesia",
                                              "Tardive dyskinesia", "dyskinesia"]),
                      ("Species", "9606", ["patients"])], None),  # "dyskinesias" is not a token-boundary match
        ("32000002", [("Chemical", "D002945", ["Cisplatin", "Cisplatin", "cisplatin"]),
                      ("Disease", "D007674", ["nephrotoxicity", "nephrotoxicity"])], None),
        ("32000003", [("Chemical", "D001241", ["aspirin"])], None),
    ]
    assert deleted == [] and quarantine == []


def test_pubmed_update_file_revises_and_deletes(concept_index):
    deleted: list[str] = []
    docs, _, _ = read(PM / "pubmed26n1400.xml", options=ReadOptions(concepts=concept_index), deleted=deleted)
    assert [d.title for d in docs] == ["Cisplatin nephrotoxicity, revised."]
    assert [e.kb_id for e in docs[0].entities] == ["D002945", "D007674", "D006311"]
    assert deleted == ["32000003"]


def test_concept_index_reads_only_overlapping_row_groups(concept_index):
    index = ConceptIndex(concept_index)
    assert index.lookup(["32000002"]) == {"32000002": [("Chemical", "MESH:D002945", ["Cisplatin", "cisplatin"]),
                                                       ("Disease", "MESH:D007674", ["nephrotoxicity"]),
                                                       ("Disease", "MESH:D006311", ["ototoxicity"])]}
    assert index.lookup(["99999999"]) == {}
    assert index.lookup(["32000001", "32000003"]).keys() == {"32000001", "32000003"}


# ---------------------------------------------------------------- archives and detection

def make_tar(path: Path, members: dict[str, bytes], compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_gz_archive_is_streamed_member_by_member(tmp_path):
    xml = (P3 / "bioc_sample.xml").read_bytes()
    second = xml.replace(b"31000001", b"31000011").replace(b"PMC7000002", b"PMC7000012") \
        .replace(b"31000002", b"31000012").replace(b"31000003", b"31000013")
    tar = make_tar(tmp_path / "BioCXML.0.tar.gz", {"output/BioCXML/1234.BioC.XML": xml,
                                                   "output/BioCXML/1235.BioC.XML": second,
                                                   "output/BioCXML/._1234.BioC.XML": b"macOS junk"})
    docs, quarantine, counts = read(tar)
    assert [d.id for d in docs] == ["31000001", "31000002", "31000003", "31000011", "31000012", "31000013"]
    assert quarantine == [] and counts["passages left out"] == 4


@pytest.mark.parametrize("name,content,fmt", [
    ("a.json", b'[{"title": "x", "sents": [], "vertexSet": []}]', "docred"),
    ("a.json", b'{"PubTator3": []}', "bioc_json"),
    ("a.json", b'\xef\xbb\xbf  {"source": "PubTator", "documents": []}', "bioc_json"),
    ("a.json", b'{"title": "x", "sents": [["a"]], "vertexSet": []}\n', "docred"),
    ("a.xml", b"<?xml version='1.0'?><!DOCTYPE collection SYSTEM 'BioC.dtd'><collection>", "bioc_xml"),
    ("a.xml", b'<?xml version="1.0"?>\n<!DOCTYPE PubmedArticleSet PUBLIC "x" "y">\n<PubmedArticleSet>', "pubmed"),
    ("x.tar!out/1.BioC.XML", b"<collection>", "bioc_xml"),
])
def test_format_detection_by_content(name, content, fmt):
    assert detect_format(name, content) == fmt


def test_format_detection_by_name_without_content():
    assert detect_format("pubmed26n0001.xml.gz") == "pubmed"
    assert detect_format("s3://b/BioCXML/1.BioC.XML") == "bioc_xml"


# ---------------------------------------------------------------- writers and round trips

def test_bioc_round_trip_of_the_cdr_sample(tmp_path):
    docs = list(read_documents(str(CDR_SAMPLE)))
    xml = tmp_path / "cdr.xml"
    xml.write_text("".join(write_bioc_xml(docs)))
    js = tmp_path / "cdr.bioc.json"
    js.write_text(write_bioc_json(docs))
    assert list(read_documents(str(xml))) == docs
    assert list(read_documents(str(js))) == docs


def test_bioc_writer_output_loads_in_the_bioc_package(tmp_path):
    bioc = pytest.importorskip("bioc")
    docs = read(P3 / "bioc_sample.xml")[0]
    triples = [{"doc_id": "31000003", "head": 0, "tail": 2, "relation": "CID", "score": 0.81234, "iteration": 2}]
    path = tmp_path / "pred.xml"
    path.write_text("".join(write_bioc_xml(docs, triples, model_version="20260101-000000-abcd")))
    with open(path) as f:
        coll = bioc.biocxml.load(f)
    assert [d.id for d in coll.documents] == ["31000001", "31000002", "31000003"]
    rel = coll.documents[2].relations[0]
    assert rel.infons == {"type": "CID", "role1": "Chemical|D003000", "role2": "Disease|D001919",
                          "score": "0.8123", "model_version": "20260101-000000-abcd", "iteration": "2"}
    assert [(n.refid, n.role) for n in rel.nodes] == [("T0", "head"), ("T4", "tail")]
    assert coll.documents[0].relations == []  # predictions replace gold: none predicted there
    # and our reader reads its own predictions back as facts
    back = {d.id: d for d in read_documents(str(path))}
    assert [(f.head, f.tail, f.relation) for f in back["31000003"].facts] == [(0, 2, "CID")]


def test_bioc_json_writer_matches_the_xml_writer(tmp_path):
    docs = read(P3 / "bioc_sample.xml")[0]
    (tmp_path / "a.xml").write_text("".join(write_bioc_xml(docs)))
    (tmp_path / "a.bioc.json").write_text(write_bioc_json(docs))
    assert list(read_documents(str(tmp_path / "a.xml"))) == list(read_documents(str(tmp_path / "a.bioc.json")))
    data = json.loads((tmp_path / "a.bioc.json").read_text())
    assert set(data) == {"source", "date", "key", "infons", "documents"}


# ---------------------------------------------------------------- entity types and foreign labels

def test_entity_types_the_model_does_not_know_are_left_out_and_counted():
    inv = RelationInventory(["CID"], pair_types=[("Chemical", "Disease")], entity_types=["Chemical", "Disease"])
    docs, _, counts = read(P3 / "bioc_sample.xml", inventory=inv,
                           options=ReadOptions(unknown_relations="ignore"))
    assert [e.type for e in docs[0].entities] == ["Chemical", "Chemical", "Disease", "Disease", "Chemical",
                                                  "Chemical", "Chemical"]
    assert counts["entities of type 'Species' left out"] == 2
    assert counts["entities of type 'Gene' left out"] == 1
    # gold labels from another schema are dropped (counted), the CID fact stays
    assert [f.relation for d in docs for f in d.facts] == ["CID"]
    assert counts["gold labels with relation 'Negative_Correlation' ignored (not in the model's inventory)"] == 1
    assert counts["gold labels with relation 'Positive_Correlation' ignored (not in the model's inventory)"] == 1
    kept, _, _ = read(P3 / "bioc_sample.xml", inventory=inv,
                      options=ReadOptions(unknown_relations="ignore", entity_types="all"))
    assert len(kept[0].entities) == 9
    assert inv.candidate_pairs(kept[2]) == [(0, 1), (0, 2)]  # Chemical -> Disease only


def test_inventory_entity_types_survive_json():
    inv = RelationInventory(["CID"], entity_types=["Chemical", "Disease"])
    assert RelationInventory.from_json(inv.to_json()).entity_types == ["Chemical", "Disease"]
    assert "entity_types" not in RelationInventory(["CID"]).to_json()  # old cache keys unchanged


# ---------------------------------------------------------------- S3

def test_every_source_reads_the_same_from_s3(s3_bucket, tmp_path, concept_index):
    fs, bucket = s3_bucket
    tar = make_tar(tmp_path / "BioCXML.0.tar.gz", {"output/BioCXML/1.BioC.XML": (P3 / "bioc_sample.xml").read_bytes()})
    for local in (tar, P3 / "api_sample.json", P3 / "export_sample.pubtator", PM / "pubmed26n0001.xml"):
        fs.put(str(local), f"{bucket}/in/{local.name}")
        opts = ReadOptions(concepts=concept_index)
        assert read(f"s3://{bucket}/in/{local.name}", options=opts)[0] == read(local, options=opts)[0]
    # the concept index itself in S3
    fs.put(concept_index, f"{bucket}/index", recursive=True)
    s3_docs = read(PM / "pubmed26n0001.xml", options=ReadOptions(concepts=f"s3://{bucket}/index"))[0]
    assert s3_docs == read(PM / "pubmed26n0001.xml", options=ReadOptions(concepts=concept_index))[0]


# ---------------------------------------------------------------- the CLI: stats and tokenize, local and S3

def stats_json(args: list[str], capsys) -> dict:
    from docre.cli import main
    assert main(["data", "stats", *args, "--no-subwords", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# hand counts: documents, entities, facts of each source (DOC1..DOC3 above; PubMed with its concepts)
SOURCE_COUNTS = {
    "BioCXML.0.tar.gz": (3, 9 + 3 + 3, 2 + 1 + 1),
    "api_sample.json": (2, 9 + 3, 2 + 1),
    "collection_sample.json": (1, 3, 1),
    "export_sample.pubtator": (2, 9 + 3, 1 + 1),
    "pubmed26n0001.xml": (3, 3 + 2 + 1, 0),
}


def source_files(tmp_path: Path) -> dict[str, Path]:
    tar = make_tar(tmp_path / "BioCXML.0.tar.gz", {"output/BioCXML/1.BioC.XML": (P3 / "bioc_sample.xml").read_bytes()})
    return {"BioCXML.0.tar.gz": tar, "api_sample.json": P3 / "api_sample.json",
            "collection_sample.json": P3 / "collection_sample.json",
            "export_sample.pubtator": P3 / "export_sample.pubtator", "pubmed26n0001.xml": PM / "pubmed26n0001.xml"}


def test_cli_stats_counts_every_source_locally_and_in_s3(tmp_path, capsys, concept_index, s3_bucket):
    fs, bucket = s3_bucket
    fs.put(concept_index, f"{bucket}/index", recursive=True)
    for name, path in source_files(tmp_path).items():
        fs.put(str(path), f"{bucket}/in/{name}")
        for url, index in ((str(path), concept_index), (f"s3://{bucket}/in/{name}", f"s3://{bucket}/index")):
            s = stats_json([url, "--concepts", index], capsys)
            assert (s["documents"], s["entities"], s["facts"]) == SOURCE_COUNTS[name], (url, s)
            assert s["quarantined"] == 0


def test_cli_stats_reports_what_was_left_out(capsys):
    s = stats_json([str(P3 / "bioc_sample.xml")], capsys)
    assert s["left_out"] == {"unlinked mentions dropped": 2, "passages left out": 2,
                             "relations without a mention in the text": 1}


def test_cli_tokenize_an_archive_and_pubmed_with_concepts(tmp_path, tiny_encoder, concept_index):
    import pyarrow.parquet as pq
    from docre.cli import main
    from docre.data.tokenize import read_manifest
    files = source_files(tmp_path)
    out = tmp_path / "tok"
    assert main(["data", "tokenize", str(files["BioCXML.0.tar.gz"]), str(files["pubmed26n0001.xml"]), str(out),
                 "--encoder", tiny_encoder, "--concepts", concept_index]) == 0
    m = read_manifest(str(out))
    assert (m.documents, m.quarantined) == (6, 0)
    assert m.inventory["entity_types"] == ["Chemical", "Disease", "Gene", "Species"]
    assert sorted(m.inventory["ids"]) == ["Association", "CID", "Na", "Negative_Correlation", "Positive_Correlation"]
    rows = pq.read_table(out / "data.parquet", columns=["doc_id", "entity_types"]).to_pylist()
    assert [r["doc_id"] for r in rows] == ["31000001", "31000002", "31000003", "32000001", "32000002", "32000003"]
    assert [len(r["entity_types"]) for r in rows] == [9, 3, 3, 3, 2, 1]
    # another passage choice is another dataset: not a cache hit
    assert main(["data", "tokenize", str(files["BioCXML.0.tar.gz"]), str(files["pubmed26n0001.xml"]), str(out),
                 "--encoder", tiny_encoder, "--concepts", concept_index, "--passages", "all"]) == 0
    assert read_manifest(str(out)).reused is False
    rows = pq.read_table(out / "data.parquet", columns=["doc_id", "entity_types"]).to_pylist()
    assert len(rows[1]["entity_types"]) == 4  # PMC7000002 full text: Valproate too


def test_raw_bioconcepts_file_is_indexed_once_and_reused(tmp_path, monkeypatch, concept_index):
    """--concepts may name the raw file: it is indexed once (cached), never re-read per PubMed file."""
    from docre.data import pubmed
    monkeypatch.setenv("DOCRE_CACHE", str(tmp_path / "cache"))
    builds = []
    real = pubmed.build_concept_index
    monkeypatch.setattr(pubmed, "build_concept_index", lambda *a, **k: builds.append(a) or real(*a, **k))
    raw = str(PM / "bioconcepts2pubtator3_sample.tsv")
    first = read(PM / "pubmed26n0001.xml", options=ReadOptions(concepts=raw))[0]
    second = read(PM / "pubmed26n1400.xml", options=ReadOptions(concepts=raw))[0]
    assert len(builds) == 1
    assert first == read(PM / "pubmed26n0001.xml", options=ReadOptions(concepts=concept_index))[0]
    assert [e.kb_id for e in second[0].entities] == ["D002945", "D007674", "D006311"]
    assert [p.name for p in (tmp_path / "cache" / "concepts").iterdir()] == [Path(pubmed.concept_index_for(raw)).name]


def test_cli_tokenize_from_s3_into_s3(tmp_path, tiny_encoder, s3_bucket):
    from docre.cli import main
    from docre.data.tokenize import read_manifest
    fs, bucket = s3_bucket
    files = source_files(tmp_path)
    for name in ("BioCXML.0.tar.gz", "pubmed26n0001.xml"):
        fs.put(str(files[name]), f"{bucket}/in/{name}")
    fs.put(str(PM / "bioconcepts2pubtator3_sample.tsv"), f"{bucket}/bioconcepts2pubtator3.tsv")
    out = f"s3://{bucket}/tok"
    assert main(["data", "tokenize", f"s3://{bucket}/in/BioCXML.0.tar.gz", f"s3://{bucket}/in/pubmed26n0001.xml", out,
                 "--encoder", tiny_encoder, "--concepts", f"s3://{bucket}/bioconcepts2pubtator3.tsv"]) == 0
    m = read_manifest(out)
    assert (m.documents, m.quarantined) == (6, 0) and fs.exists(f"{bucket}/tok/data.parquet")


def test_pubmed_versions_are_compared_across_read_batches():
    """The versions of a PMID stand together in a file: a batch boundary between them must not let both
    through; a repeat far away keeps the latest that was read and counts the other."""
    import io as _io
    from docre.data.pubmed import LATE_NEWER_VERSIONS, OLDER_VERSIONS, read_pubmed

    def art(pmid, version, title):
        return (f'<PubmedArticle><MedlineCitation><PMID Version="{version}">{pmid}</PMID><Article><ArticleTitle>'
                f"{title}</ArticleTitle></Article></MedlineCitation></PubmedArticle>")
    xml = ("<PubmedArticleSet>" + art(1, 1, "One.") + art(2, 1, "Two, first.") + art(2, 2, "Two, second.")
           + art(3, 1, "Three.") + art(4, 1, "Four.") + art(3, 2, "Three, late.") + art(1, 1, "One again.")
           + "</PubmedArticleSet>").encode()
    counts: dict = {}
    docs = list(read_pubmed(_io.BytesIO(xml), "f.xml", counts=counts, batch=2))
    assert [(d.id, d.title) for d in docs] == [("1", "One."), ("2", "Two, second."), ("3", "Three."),
                                               ("4", "Four."), ("3", "Three, late.")]
    assert counts == {OLDER_VERSIONS: 2, LATE_NEWER_VERSIONS: 1}


@pytest.mark.parametrize("shape", ["collection", "pubtator3_api", "list"])
def test_truncated_bioc_json_keeps_the_documents_before_the_cut(tmp_path, shape):
    import json as _json
    from docre.data.bioc import write_bioc_json
    from docre.data.document import cdr_inventory
    from docre.data.io import read_documents
    from conftest import FIXTURES
    docs = list(read_documents(str(FIXTURES / "cdr_sample.data"), inventory=cdr_inventory(), quarantine=[]))[:3]
    collection = _json.loads(write_bioc_json(docs, [], "v1"))
    value = {"collection": collection, "pubtator3_api": {"PubTator3": collection["documents"]},
             "list": collection["documents"]}[shape]
    text = _json.dumps(value, indent=1)
    third = text.index(f'"id": {_json.dumps(collection["documents"][2]["id"])}')
    path = tmp_path / "cut.json"
    path.write_text(text[:third + 40])  # inside the third document
    quarantine = []
    got = list(read_documents(str(path), "bioc_json", cdr_inventory(), quarantine))
    assert [d.id for d in got] == [d.id for d in docs[:2]]
    assert len(quarantine) == 1 and "truncated" in quarantine[0].reason
    path.write_text(text)  # whole: all three, nothing quarantined
    assert len(list(read_documents(str(path), "bioc_json", cdr_inventory(), quarantine := []))) == 3
    assert quarantine == []
