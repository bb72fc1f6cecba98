"""A second bad-input battery: truncation at many points, foreign archive members, silent drops and messages.

Every case builds its input in tmp_path from the real formats and asserts the exact outcome: the
documents read, the quarantine records (source, where, reason), the counts of what was left out or
changed, and documents in = documents out + quarantined.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from dataclasses import dataclass, field

import pytest

from docre.cli import main
from docre.data.document import DocumentError, cdr_inventory
from docre.data.io import NOT_DATA_MEMBERS, read_documents
from docre.data.pubmed import DELETED, OLDER_VERSIONS
from docre.data.xmlstream import RESOLVED, UNRESOLVED

from test_bad_inputs import article, bioc, bioc_doc, docred, noisy_passage, pt, pubmed


def tar(members: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read(tmp_path, name: str, content: bytes, **kw):
    path = tmp_path / name
    path.write_bytes(content)
    quarantine, counts = [], {}
    docs = [d.id for d in read_documents(str(path), quarantine=quarantine, counts=counts, **kw)]
    recs = [(q.source.removeprefix(str(tmp_path) + "/"), q.where, q.reason, q.count) for q in quarantine]
    return docs, recs, counts


# ---------------------------------------------------------------- truncation at many points

BIG_BIOC = bioc(*[bioc_doc(str(i), noisy_passage(i)) for i in range(1, 61)]).encode()
BIG_PUBMED = pubmed(*[article(str(i)) for i in range(1, 61)]).encode()
BIG_PT = "\n".join(pt(str(i)) for i in range(1, 61)).encode()
BIG_DOCRED = json.dumps([docred(f"D{i}") for i in range(1, 61)]).encode()
NL = b"\n"
FRACTIONS = [0.05, 0.17, 0.29, 0.41, 0.53, 0.65, 0.77, 0.89, 0.97]


def _complete(data: bytes, end: bytes) -> int:
    return data.count(end)


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("kind", ["plain-tar", "tar-gz"])
def test_tar_cut_inside_a_member_keeps_every_complete_document(tmp_path, kind, fraction):
    content = tar({"out/0.xml": bioc(bioc_doc("0")).encode(), "out/1.xml": BIG_BIOC}, gz=kind == "tar-gz")
    if kind == "plain-tar":
        start = 3 * 512 + len(bioc(bioc_doc("0")).encode()) // 512 * 512  # member 1's data begins here
        cut = start + int(len(BIG_BIOC) * fraction)
        arrived = BIG_BIOC[:cut - start]
    else:
        cut = int(len(content) * fraction)
        if cut < 200:
            cut = 200
        tar_bytes = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(content[:cut])
        arrived = tar_bytes[2048:]
        if len(tar_bytes) <= 2048:
            pytest.skip("cut before the member")
    docs, recs, counts = read(tmp_path, f"a.{kind.replace('-', '.')}", content[:cut])
    complete = _complete(arrived, b"</document>")
    assert docs == ["0"] + [str(i) for i in range(1, complete + 1)]
    assert len(recs) == 1
    src, where, reason, count = recs[0]
    assert src == f"a.{kind.replace('-', '.')}!out/1.xml"
    assert where == f"line {arrived.count(NL) + 1}, byte {len(arrived)} of {len(BIG_BIOC)}"
    assert reason == ("truncated tar archive" if kind == "plain-tar" else "truncated compressed file") + \
        ": the archive ends inside this member"
    assert len(docs) + count == 1 + complete + 1  # documents in: member 0's, the complete ones, the cut one


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("fmt,name,data,end", [
    ("pubmed", "pubmed26n0001.xml.gz", BIG_PUBMED, b"</PubmedArticle>"),
    ("bioc", "a.xml.gz", BIG_BIOC, b"</document>"),
    ("pubtator", "a.pubtator.gz", BIG_PT, b"\n\n"),
    ("docred", "a.json.gz", BIG_DOCRED, b"]}]}, "),
])
def test_gzip_cut_keeps_every_complete_record(tmp_path, fmt, name, data, end, fraction):
    compressed = gzip.compress(data, mtime=0)
    cut = max(30, int(len(compressed) * fraction))
    arrived = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(compressed[:cut])
    docs, recs, _ = read(tmp_path, name, compressed[:cut])
    complete = arrived.count(end)
    if fmt == "pubtator":  # a document is complete at its blank line
        complete = len([p for p in arrived.split(b"\n\n")[:-1] if p.strip()])
    want = [f"D{i}" if fmt == "docred" else str(i) for i in range(1, complete + 1)]
    assert docs == want
    assert [(r[0], r[1], r[2].split(":")[0], r[3]) for r in recs] == \
        [(name, f"line {arrived.count(NL) + 1}, byte {len(arrived)}" if arrived else "byte 0",
          "truncated compressed file", 1)]


@pytest.mark.parametrize("cut", [40, 400, 1200, 2400, 3600])
def test_plain_json_array_cut_keeps_the_elements_before(tmp_path, cut):
    data = BIG_DOCRED[:cut]
    docs, recs, _ = read(tmp_path, "a.json", data)
    complete = data.count(b"]}]}")  # each DocRED element ends with its labels' evidence list
    assert docs == [f"D{i}" for i in range(1, complete + 1)]
    assert len(recs) == 1 and recs[0][1].endswith(f"document {complete}") and recs[0][3] == 1
    assert recs[0][2].startswith("invalid JSON (truncated file): ")


# ---------------------------------------------------------------- archives: foreign members, per-member records

@pytest.mark.parametrize("foreign", ["LICENSE", "LICENSE.xml", "README", "README.md", "readme.txt", "MD5SUMS",
                                     "1.xml.md5", "checksums.sha256", "COPYING", "NOTICE.txt", ".hidden.xml",
                                     "output/__MACOSX.xml"])
def test_foreign_members_are_skipped_and_counted(tmp_path, foreign):
    content = tar({"out/1.xml": bioc(bioc_doc("1")).encode(), f"out/{foreign}": b"not data at all\n",
                   "out/2.xml": bioc(bioc_doc("2")).encode()}, gz=True)
    docs, recs, counts = read(tmp_path, "BioCXML.3.tar.gz", content)
    assert docs == ["1", "2"] and recs == []
    assert counts == {NOT_DATA_MEMBERS: 1}  # hidden files (.x, __MACOSX) too: nothing skipped silently


@pytest.mark.parametrize("member,content,where,reason", [
    ("out/2.xml", b"<collection><doc", "line 1", "invalid XML: "),
    ("out/2.csv", b"a,b\n", "member", "cannot tell the format from the name"),
    ("out/2.xml", b"<other/>", "line 1", "XML that is neither a BioC <collection> nor a <PubmedArticleSet>"),
    ("out/2.xml.gz", b"not gzip", "byte 0", "not a valid gzip file"),
    ("out/2.xml", "<collection><document><id>9</id><passage><offset>0</offset><text>caf\xe9</text></passage>"
                  "</document></collection>".encode("latin-1"), "line 1", "invalid XML: "),
])
def test_one_bad_member_is_one_record_and_the_archive_goes_on(tmp_path, member, content, where, reason):
    data = tar({"out/1.xml": bioc(bioc_doc("1")).encode(), member: content, "out/3.xml": bioc(bioc_doc("3")).encode()})
    docs, recs, _ = read(tmp_path, "a.tar", data)
    assert docs == ["1", "3"]
    assert len(recs) == 1 and recs[0][0] == f"a.tar!{member}" and recs[0][1] == where
    assert recs[0][2].startswith(reason) and len(docs) + recs[0][3] == 3


def test_duplicate_id_across_members_is_counted_alike_by_stats_and_tokenize(tmp_path):
    data = tar({"out/1.xml": bioc(bioc_doc("1"), bioc_doc("2")).encode(), "out/2.xml": bioc(bioc_doc("2")).encode()})
    docs, recs, _ = read(tmp_path, "a.tar", data)
    assert docs == ["1", "2"]
    assert recs == [("a.tar!out/2.xml", "document '2'", "duplicate document id '2' (already read from "
                     f"{tmp_path}/a.tar!out/1.xml)", 1)]


@pytest.mark.parametrize("cut,where,reason,count", [
    (700, "line 3, byte 188 of ", "truncated tar archive: the archive ends inside this member", 1),
    (1536 + 300, "byte 1836 (after member 'out/1.xml')", "truncated tar archive: the archive ends inside a header", 0),
    (1536, "byte 1536 (after member 'out/1.xml')", "truncated tar archive: the archive ends without its "
                                                   "end-of-archive marker (cut between members)", 0),
])
def test_plain_tar_cut_between_or_in_headers(tmp_path, cut, where, reason, count):
    data = tar({"out/1.xml": bioc(bioc_doc("1")).encode(), "out/2.xml": bioc(bioc_doc("2")).encode()})
    docs, recs, _ = read(tmp_path, "a.tar", data[:cut])
    assert recs[0][1].startswith(where) and recs[0][2] == reason and recs[0][3] == count and len(recs) == 1
    assert docs == ([] if cut == 700 else ["1"])


def test_long_member_names_are_read(tmp_path):
    name = "output/" + "x" * 150 + "/1.BioC.XML"
    docs, recs, _ = read(tmp_path, "a.tar", tar({name: bioc(bioc_doc("1")).encode()}))
    assert docs == ["1"] and recs == []
    with tarfile.open(fileobj=io.BytesIO(b""), mode="w") as _:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = bioc(bioc_doc("7")).encode()
        info = tarfile.TarInfo("out/ünïcode-" + "y" * 120 + ".xml")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    docs, recs, _ = read(tmp_path, "b.tar", buf.getvalue())
    assert docs == ["7"] and recs == []


def test_corrupt_gzip_is_reported_as_corrupt_compressed_data(tmp_path):
    g = gzip.compress(BIG_BIOC, mtime=0)
    mid = len(g) // 2
    damaged = g[:mid] + bytes(b ^ 0x55 for b in g[mid:mid + 50]) + g[mid + 50:]
    docs, recs, _ = read(tmp_path, "a.xml.gz", damaged)
    assert len(recs) == 1 and recs[0][2].startswith("corrupt compressed data: ")
    assert "invalid XML" not in recs[0][2]
    assert docs == [str(i) for i in range(1, len(docs) + 1)] and len(docs) > 10


# ---------------------------------------------------------------- silent drops and changes, counted

@dataclass
class Outcome:
    name: str
    filename: str
    content: bytes
    docs: list[str]
    records: list[tuple[str, str]] = field(default_factory=list)  # (where, reason start)
    counts: dict = field(default_factory=dict)
    docs_in: int | None = None
    kw: dict = field(default_factory=dict)


BOOK = ('<PubmedBookArticle><BookDocument><PMID Version="1">{pmid}</PMID>{title}'
        '<Abstract><AbstractText>Aspirin was studied.</AbstractText></Abstract></BookDocument></PubmedBookArticle>\n')
ENTITY_DOC = ("<?xml version='1.0'?>\n<!DOCTYPE collection SYSTEM 'BioC.dtd'>\n<collection><document><id>1</id>"
              "<passage><infon key=\"type\">title</infon><offset>0</offset><text>The {ent}-blocker was given.</text>"
              "</passage></document></collection>\n")
CDR_REV = pt("100", extra=["100\tCID\tD014456\tD001241"])


def outcome_cases() -> list[Outcome]:
    c = [
        Outcome("pubmed-only-deletions", "pubmed26n1400.xml",
                pubmed(deletes="<DeleteCitation><PMID Version=\"1\">5</PMID><PMID Version=\"1\">6</PMID>"
                               "</DeleteCitation>").encode(), [], counts={DELETED: 2}, docs_in=0),
        Outcome("pubmed-older-version", "pubmed26n0001.xml",
                pubmed(article("1"), article("1", title="Aspirin, revised.").replace('Version="1"', 'Version="2"'))
                .encode(), ["1"], counts={OLDER_VERSIONS: 1}, docs_in=1),
        Outcome("pubmed-version-not-a-number", "pubmed26n0001.xml",
                pubmed(article("1").replace('Version="1"', 'Version="A"'), article("2")).encode(), ["2"],
                [("line 3, document '1'", "PMID Version 'A' is not a whole number")]),
        Outcome("pubmed-book-article", "pubmed26n0001.xml",
                pubmed(article("1"), BOOK.format(pmid="2", title="<ArticleTitle>Chapter one.</ArticleTitle>"),
                       BOOK.format(pmid="3", title="<Book><BookTitle>A book.</BookTitle></Book>")).encode(),
                ["1", "2", "3"]),
        Outcome("bioc-xml-given-pubmed", "pubmed26n0001.xml", pubmed(article("1")).encode(), [],
                [("line 1", "format bioc_xml given, but the file is PubMed XML (<PubmedArticleSet>); "
                            "use --format pubmed")], kw={"format": "bioc_xml"}),
        Outcome("pubmed-given-bioc", "a.xml", bioc(bioc_doc("1")).encode(), [],
                [("line 1", "format pubmed given, but the file is BioC XML (<collection>); use --format bioc_xml")],
                kw={"format": "pubmed"}),
        Outcome("pubtator-given-xml", "a.txt", bioc(bioc_doc("1")).encode(), [],
                [("line 1", "format pubtator given, but the file is XML")], kw={"format": "pubtator"}),
        Outcome("bioc-given-json", "a.xml", b'{"documents": []}', [],
                [("line 1", "format bioc_xml given, but the file is not XML")], kw={"format": "bioc_xml"}),
        Outcome("cdr-relation-reversed", "a.pubtator", CDR_REV.encode(), ["100"],
                counts={"CID relations written tail->head, turned around": 1}, kw={"inventory": cdr_inventory()}),
        Outcome("cdr-relation-reversed-no-inventory", "a.pubtator", CDR_REV.encode(), ["100"],
                counts={"CID relations written tail->head, turned around": 1}),
        Outcome("pubtator-zero-length", "a.pubtator",
                pt("100", mentions=[(0, 0, "", "Chemical", "D1")]).encode() + b"\n" + pt("200").encode(), ["200"],
                [("line 3, document '100'", "zero-length mention '' at offset 0")]),
        Outcome("pubtator-reversed-offsets", "a.pubtator",
                pt("100", mentions=[(7, 0, "Aspirin", "Chemical", "D1")]).encode(), [],
                [("line 3, document '100'", "mention 'Aspirin' ends before it starts ([7, 0))")]),
        Outcome("pubtator-offset-2O", "a.pubtator",
                pt("100").replace("\t0\t7\t", "\t2O\t7\t").encode(), [],
                [("line 3, document '100'", "malformed mention line: offsets '2O', '7' are not integers")]),
    ]
    for ent, text, counts in [("&beta;", "The \u03b2-blocker was given.", {RESOLVED: 1}),
                              ("&alpha;&gamma;", "The \u03b1\u03b3-blocker was given.", {RESOLVED: 2}),
                              ("&amp;", "The &-blocker was given.", {}),
                              ("&#946;", "The \u03b2-blocker was given.", {}),
                              ("&notaname;", "The &notaname;-blocker was given.", {UNRESOLVED: 1})]:
        c.append(Outcome(f"bioc-entity-{ent}", "a.xml", ENTITY_DOC.format(ent=ent).encode(), ["1"], counts=counts,
                         kw={"text": text}))
    bad_json_ann = [
        ("annotation-is-a-string", {"annotations": ["T1"]}, "annotation 0 is not an object (got str 'T1')"),
        ("annotations-not-a-list", {"annotations": 5}, "annotations must be a list, got int"),
        ("location-is-a-number", {"annotations": [{"id": "1", "infons": {"type": "Chemical"}, "text": "A",
                                                   "locations": [3]}]}, "location 0 is not an object (got int 3)"),
        ("zero-length", {"annotations": [{"id": "1", "infons": {"type": "Chemical"}, "text": "",
                                          "locations": [{"offset": 2, "length": 0}]}]},
         "zero-length annotation at offset 2"),
        ("offset-2O", {"annotations": [{"id": "1", "infons": {"type": "Chemical"}, "text": "A",
                                        "locations": [{"offset": "2O", "length": 1}]}]},
         "location offset '2O' is not an integer"),
        ("infons-a-list", {"infons": ["title"]}, "infons must be an object, got list"),
        ("sentences-not-objects", {"sentences": ["x"]}, "sentence 0 is not an object (got str 'x')"),
    ]
    for name, over, reason in bad_json_ann:
        passage = {"infons": {"type": "title"}, "offset": 0, "text": "Aspirin causes ulcer."} | over
        data = {"documents": [{"id": "1", "passages": [passage]},
                              {"id": "2", "passages": [{"offset": 0, "text": "Fine text."}]}]}
        c.append(Outcome(f"bioc-json-{name}", "a.bioc.json", json.dumps(data).encode(), ["2"], [("", reason)]))
    good = pt("100").encode()
    c += [
        Outcome("pubtator-bom", "a.pubtator", b"\xef\xbb\xbf" + good, ["100"]),
        Outcome("pubtator-crlf", "a.pubtator", good.replace(b"\n", b"\r\n"), ["100"]),
        Outcome("pubtator-no-final-newline", "a.pubtator", good.rstrip(b"\n"), ["100"]),
        Outcome("pubtator-empty", "a.pubtator", b"", []),
        Outcome("xml-empty", "a.xml", b"", []),
        Outcome("json-empty", "a.json", b"  \n", []),
        Outcome("tar-gz-empty", "a.tar.gz", gzip.compress(b"", mtime=0), []),
        Outcome("bioc-bom", "a.xml", b"\xef\xbb\xbf" + bioc(bioc_doc("1")).encode(), ["1"]),
        Outcome("pubtator-latin1", "a.pubtator", pt("100", title="Aspirin caus\xe9 ulcer.").encode("latin-1"), [],
                [("line 1, document '100'", "byte 19 of the line is not valid UTF-8 (0xe9)")]),
        Outcome("pubtator-offsets-past-the-text", "a.pubtator",
                pt("100", mentions=[(60, 67, "Aspirin", "Chemical", "D1")]).encode(), [],
                [("line 3, document '100'", "mention 'Aspirin' offsets [60, 67) outside the text (48 characters)")]),
        Outcome("pubtator-relation-to-missing-entity", "a.pubtator",
                pt("100", extra=["100\tCID\tD001241\tD999999"]).encode(), [],
                [("line 6, document '100'", "relation CID points at entity 'D999999', which has no mention in "
                                            "the document")]),
        Outcome("pubtator-three-field-line", "a.pubtator", pt("100", extra=["100\tCID\tD001241"]).encode(), [],
                [("line 6, document '100'", "malformed line: expected a mention line (6 tab-separated fields) or "
                                            "a relation line (4 fields), got 3 fields")]),
        Outcome("docred-mention-past-sentence", "a.jsonl",
                (json.dumps(docred("A", vertexSet=[[{"name": "Paris", "pos": [0, 9], "sent_id": 0, "type": "LOC"}],
                                                   [{"name": "France", "pos": [3, 4], "sent_id": 0, "type": "LOC"}]]))
                 + "\n").encode(), [],
                [("line 1 ('A')", "entity 0 mention 'Paris': token span [0, 9) outside sentence 0 (5 tokens)")]),
        Outcome("docred-jsonl-crlf-bom", "a.jsonl",
                b"\xef\xbb\xbf" + (json.dumps(docred("A")) + "\r\n" + json.dumps(docred("B")) + "\r\n").encode(),
                ["A", "B"]),
    ]
    return c


OUTCOMES = outcome_cases()


@pytest.mark.parametrize("case", OUTCOMES, ids=[c.name for c in OUTCOMES])
def test_every_drop_and_change_is_counted_and_named(tmp_path, case: Outcome):
    kw = dict(case.kw)
    text = kw.pop("text", None)
    path = tmp_path / case.filename
    path.write_bytes(case.content)
    quarantine, counts = [], {}
    docs = list(read_documents(str(path), quarantine=quarantine, counts=counts, **kw))
    assert [d.id for d in docs] == case.docs
    assert len(quarantine) == len(case.records), [(q.where, q.reason) for q in quarantine]
    for q, (where, reason) in zip(quarantine, case.records):
        assert q.source == str(path)
        assert (q.where.endswith("document '1'") if where == "" else q.where == where), q.where
        assert q.reason == reason or (reason.endswith(" ") and q.reason.startswith(reason)), q.reason
    assert counts == case.counts
    if text is not None:
        assert docs[0].text == text
    docs_in = case.docs_in if case.docs_in is not None else len(case.docs) + len(case.records)
    assert docs_in == len(docs) + sum(q.count for q in quarantine)


def test_book_articles_have_their_titles_and_abstracts(tmp_path):
    path = tmp_path / "pubmed26n0001.xml"
    path.write_text(pubmed(BOOK.format(pmid="2", title="<ArticleTitle>Chapter one.</ArticleTitle>"),
                           BOOK.format(pmid="3", title="<Book><BookTitle>A book.</BookTitle></Book>")))
    docs = list(read_documents(str(path)))
    assert [(d.title, d.text) for d in docs] == [("Chapter one.", "Chapter one. Aspirin was studied."),
                                                 ("A book.", "A book. Aspirin was studied.")]


def test_cdr_relation_is_turned_to_chemical_disease(tmp_path):
    path = tmp_path / "a.pubtator"
    path.write_text(CDR_REV)
    doc = next(read_documents(str(path), inventory=cdr_inventory()))
    fact = doc.facts[0]
    assert (doc.entities[fact.head].type, doc.entities[fact.tail].type) == ("Chemical", "Disease")


def test_strict_mode_raises_a_named_error_for_a_bad_version(tmp_path):
    path = tmp_path / "pubmed26n0001.xml"
    path.write_text(pubmed(article("1").replace('Version="1"', 'Version="A"')))
    with pytest.raises(DocumentError) as info:
        list(read_documents(str(path)))
    assert str(info.value) == f"{path}: line 3, document '1': PMID Version 'A' is not a whole number"


# ---------------------------------------------------------------- the CLI: messages that name the file

@pytest.mark.parametrize("content,message", [
    (b"{not json", "line 1, column 2: relations file is not valid JSON: "),
    (b'["P17"]', "relations file: expected a rel_info.json object"),
    (b"\xff\xfe", "byte 0: relations file is not valid UTF-8 (0xff)"),
    (b'{"P17": 5}', "relations file: expected a rel_info.json object"),
])
def test_bad_relations_file_names_that_file(tmp_path, capsys, content, message):
    rel = tmp_path / "rel_info.json"
    rel.write_bytes(content)
    data = tmp_path / "a.pubtator"
    data.write_text(pt("100"))
    code = main(["data", "stats", str(data), "--no-subwords", "--relations", str(rel)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {rel}: {message}") and err.count("\n") == 1


def test_stats_quarantine_lines_show_the_whole_path(tmp_path, capsys):
    data = tar({"output/BioCXML/1.BioC.XML": b"<collection><doc"})
    path = tmp_path / "BioCXML.4.tar"
    path.write_bytes(data)
    code = main(["data", "stats", str(path), "--no-subwords", "--lenient"])
    out = capsys.readouterr().out
    assert code == 0 and f"{path}!output/BioCXML/1.BioC.XML: line 1: invalid XML: " in out


def test_battery_size(request):
    battery = [item for item in request.session.items if item.module is request.module]
    assert len(battery) >= 120 or len(battery) == 1  # the whole module, or this test run alone
