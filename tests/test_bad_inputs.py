"""The bad-input battery: every broken input gives the exact error (strict) or quarantine record (lenient).

Each case is a file and the number of documents a person would count in it. Lenient reading must give the
expected documents and quarantine records, and documents in = documents out + quarantined, always. Strict
reading of a case with quarantine records must raise the first of them as a DocumentError.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from docre.cli import main
from docre.data.docred import read_docred
from docre.data.document import DocumentError, RelationInventory
from docre.data.io import Quarantined, ReadOptions, read_documents

FIX = Path(__file__).parent / "fixtures"
NEWLINE = b"\n"
BIOC = (FIX / "pubtator3" / "bioc_sample.xml").read_text()

# ---------------------------------------------------------------- builders

TITLE, ABSTRACT = "Aspirin causes ulcer.", "Aspirin was given to rats."


def pt(pmid: str, title: str = TITLE, abstract: str = ABSTRACT, extra: list[str] = (), mentions=None) -> str:
    """One PubTator document; offsets of the default mentions are right for the default text."""
    if mentions is None:
        mentions = [(0, 7, "Aspirin", "Chemical", "D001241"), (15, 20, "ulcer", "Disease", "D014456"),
                    (22, 29, "Aspirin", "Chemical", "D001241")]
    lines = [f"{pmid}|t|{title}", f"{pmid}|a|{abstract}"]
    lines += [f"{pmid}\t{s}\t{e}\t{t}\t{ty}\t{i}" for s, e, t, ty, i in mentions]
    lines += list(extra) + [""]
    return "\n".join(lines) + "\n"


def docred(title: str, **over) -> dict:
    d = {"title": title, "sents": [["Paris", "is", "in", "France", "."]],
         "vertexSet": [[{"name": "Paris", "pos": [0, 1], "sent_id": 0, "type": "LOC"}],
                       [{"name": "France", "pos": [3, 4], "sent_id": 0, "type": "LOC"}]],
         "labels": [{"h": 0, "t": 1, "r": "P17", "evidence": [0]}]}
    return d | over


def bioc_doc(doc_id: str, passage: str | None = None, relations: str = "") -> str:
    if passage is None:
        passage = ('<passage><infon key="type">title</infon><offset>0</offset><text>Aspirin causes ulcer.</text>'
                   '<annotation id="1"><infon key="type">Chemical</infon><infon key="identifier">MESH:D001241</infon>'
                   '<location offset="0" length="7"/><text>Aspirin</text></annotation>'
                   '<annotation id="2"><infon key="type">Disease</infon><infon key="identifier">MESH:D014456</infon>'
                   '<location offset="15" length="5"/><text>ulcer</text></annotation></passage>')
    return f"<document><id>{doc_id}</id>{passage}{relations}</document>\n"


def bioc(*docs: str) -> str:
    return "<?xml version='1.0' encoding='UTF-8'?>\n<collection><source>PubTator</source>\n" + "".join(docs) + \
        "</collection>\n"


def noisy_passage(seed: int) -> str:
    """A passage of random words: archives of these compress poorly, like real ones, so a cut lands late."""
    import random
    rng = random.Random(seed)
    words = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                     for _ in range(60))
    return f"<passage><offset>0</offset><text>{words}.</text></passage>"


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pubmed(*articles: str, deletes: str = "") -> str:
    return ('<?xml version="1.0"?>\n<PubmedArticleSet>\n' + "".join(articles) + deletes + "</PubmedArticleSet>\n")


def article(pmid: str, title: str = "Aspirin and ulcer.", abstract: str = "Aspirin caused ulcer.") -> str:
    pmid_el = f'<PMID Version="1">{pmid}</PMID>' if pmid else ""
    abs_el = f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>" if abstract else ""
    title_el = f"<ArticleTitle>{title}</ArticleTitle>" if title else ""
    return (f"<PubmedArticle><MedlineCitation>{pmid_el}<Article>{title_el}{abs_el}</Article>"
            f"</MedlineCitation></PubmedArticle>\n")


GOOD_PT = pt("100") + "\n" + pt("300")
DOCRED_PRETTY = json.dumps(docred("Paris"), indent=2)
INV_P17 = RelationInventory(["P17"])


@dataclass
class Case:
    name: str
    filename: str
    content: bytes
    docs_in: int
    out: list[str]  # ids read, in order
    quarantine: list[tuple[str, str, str]] = field(default_factory=list)  # (source suffix, where, reason start)
    inventory: RelationInventory | None = None
    options: ReadOptions | None = None
    counts: dict = field(default_factory=dict)  # exact `counts` after lenient reading (when given)
    record_end: bytes = b""  # cut cases: what ends a complete record, to count those before the cut


def b(text: str) -> bytes:
    return text.encode()


CASES = [
    # ---- PubTator text (CDR, PubTator3 exports)
    Case("pubtator-bom", "a.pubtator", b"\xef\xbb\xbf" + b(pt("100")), 1, ["100"]),
    Case("pubtator-crlf", "a.pubtator", b(pt("100").replace("\n", "\r\n")), 1, ["100"]),
    Case("pubtator-bom-crlf-mesh-prefix-semicolon", "a.txt", b"\xef\xbb\xbf" + b(pt("100", mentions=[
        (0, 7, "Aspirin", "Chemical", "MESH:D001241;MESH:D000001"), (15, 20, "ulcer", "Disease", "-")]).replace(
        "\n", "\r\n")), 1, ["100"], counts={"unlinked mentions dropped": 1}),
    Case("pubtator-non-utf8-in-abstract", "a.pubtator",
         b(pt("100")) + b"\n" + b(pt("200")).replace(b"rats", b"r\xffts") + b"\n" + b(pt("300")), 3, ["100", "300"],
         [("a.pubtator", "line 9, document '200'", "byte 29 of the line is not valid UTF-8 (0xff)")]),
    Case("pubtator-non-utf8-in-mention", "a.pubtator",
         b(pt("100")).replace(b"D014456", b"D01\xe94456"), 1, [],
         [("a.pubtator", "line 4, document '100'", "byte 28 of the line is not valid UTF-8 (0xe9)")]),
    Case("pubtator-foreign-pmid-line", "a.pubtator",
         b(pt("100") + "\n" + pt("200", extra=["999\t0\t7\tAspirin\tChemical\tD001241"]) + "\n" + pt("300")),
         3, ["100", "300"],
         [("a.pubtator", "line 13, document '200'", "annotation line for document '999' inside document '200'")]),
    Case("pubtator-offsets-not-integers", "a.pubtator", b(pt("100", mentions=[(0, "x", "Aspirin", "Chemical", "D1")])),
         1, [], [("a.pubtator", "line 3, document '100'", "malformed mention line: offsets '0', 'x' are not integers")]),
    Case("pubtator-offsets-outside-text", "a.pubtator", b(pt("100", mentions=[(40, 90, "Aspirin", "Chemical", "D1")])),
         1, [], [("a.pubtator", "line 3, document '100'", "mention 'Aspirin' offsets [40, 90) outside the text")]),
    Case("pubtator-mention-text-mismatch", "a.pubtator",
         b(pt("100", mentions=[(0, 7, "Ibuprof", "Chemical", "D1")])), 1, [],
         [("a.pubtator", "line 3, document '100'", "mention 'Ibuprof' does not match the text at [0, 7): 'Aspirin'")]),
    Case("pubtator-three-fields", "a.pubtator", b(pt("100", extra=["100\t5\tx"])), 1, [],
         [("a.pubtator", "line 6, document '100'", "malformed line: expected a mention line")]),
    Case("pubtator-relation-to-absent-entity", "a.pubtator", b(pt("100", extra=["100\tCID\tD001241\tD999999"])),
         1, [], [("a.pubtator", "line 6, document '100'", "relation CID points at entity 'D999999'")]),
    Case("pubtator-duplicate-id", "a.pubtator", b(pt("100") + "\n" + pt("100")), 2, ["100"],
         [("a.pubtator", "line 8, document '100'", "duplicate document id '100'")]),
    Case("pubtator-empty-text", "a.pubtator", b("100|t|\n100|a|\n\n") + b(pt("200")), 2, ["200"],
         [("a.pubtator", "line 1, document '100'", "empty document (title and abstract are empty)")]),
    Case("pubtator-annotations-without-title", "a.pubtator",
         b("100\t0\t7\tAspirin\tChemical\tD1\n100\t8\t9\tx\tChemical\tD2\n\n") + b(pt("200")), 2, ["200"],
         [("a.pubtator", "line 1, document '100'", "annotation line outside a document (no title line before it)")]),
    Case("pubtator-empty-file", "a.pubtator", b"", 0, []),
    Case("pubtator-blank-lines-only", "a.pubtator", b"\n\r\n  \n", 0, []),
    Case("pubtator-gzip-truncated", "a.pubtator.gz", gz(b("\n".join(pt(str(i)) for i in range(1, 101))))[:-30],
         100, [],
         [("a.pubtator.gz", "line ", "truncated compressed file")], record_end=b"\n\n"),  # those before the cut
    # a file that cannot be decompressed at all is one record: nobody can count the documents inside it
    Case("pubtator-gzip-corrupt", "a.pubtator.gz", gz(b(GOOD_PT))[:20] + b"\x00garbage\x00" * 20, 1, [],
         [("a.pubtator.gz", "byte 0", "corrupt compressed data")]),
    Case("pubtator-not-gzip", "a.pubtator.gz", b(GOOD_PT), 1, [],
         [("a.pubtator.gz", "byte 0", "not a valid gzip file")]),
    # ---- DocRED JSON / JSON lines
    Case("docred-pretty-object", "a.json", b(DOCRED_PRETTY), 1, ["Paris"]),
    Case("docred-pretty-object-bad", "a.json", b(json.dumps(docred("Paris", vertexSet=None), indent=2)), 1, [],
         [("a.json", "document 0 ('Paris')", "'vertexSet' must be a list of mention lists")]),
    Case("docred-truncated-array", "a.json",
         b(json.dumps([docred("A"), docred("B"), docred("C")]))[:-40], 3, ["A", "B"],
         [("a.json", "line 1, document 2", "invalid JSON (truncated file): ")]),
    Case("docred-array-with-bom", "a.json", b"\xef\xbb\xbf" + b(json.dumps([docred("A")])), 1, ["A"]),
    Case("docred-array-non-utf8", "a.json", b(json.dumps([docred("A")], indent=1)).replace(b"Paris", b"P\xe4ris"),
         1, [], [("a.json", "line 6", "byte 7 of the line is not valid UTF-8 (0xe4)")]),
    Case("docred-array-of-non-objects", "a.json", b"[1, [2]]", 2, [],
         [("a.json", "document 0", "expected a JSON object, got int"),
          ("a.json", "document 1", "expected a JSON object, got list")]),
    Case("jsonl-bad-line", "a.jsonl", b(json.dumps(docred("A")) + "\n{not json\n" + json.dumps(docred("C")) + "\n"),
         3, ["A", "C"], [("a.jsonl", "line 2", "invalid JSON: ")]),
    Case("jsonl-non-utf8-line", "a.jsonl",
         b(json.dumps(docred("A"))) + b"\n" + b(json.dumps(docred("B"))).replace(b"France", b"Fr\xe0nce") + b"\n",
         2, ["A"], [("a.jsonl", "line 2", "byte 51 of the line is not valid UTF-8 (0xe0)")]),
    Case("docred-label-missing-entity", "a.jsonl",
         b(json.dumps(docred("A", labels=[{"h": 0, "t": 7, "r": "P17"}])) + "\n"), 1, [],
         [("a.jsonl", "line 1 ('A')", "label 0->7 P17: tail points at missing entity 7")]),
    Case("docred-unknown-relation-checked", "a.jsonl",
         b(json.dumps(docred("A", labels=[{"h": 0, "t": 1, "r": "P999"}])) + "\n"), 1, [],
         [("a.jsonl", "line 1 ('A')", "label 0->1: unknown relation id 'P999'")], inventory=INV_P17),
    Case("docred-unknown-relation-ignored", "a.jsonl",
         b(json.dumps(docred("A", labels=[{"h": 0, "t": 1, "r": "P999"}, {"h": 0, "t": 1, "r": "P17"}])) + "\n"),
         1, ["A"], inventory=INV_P17, options=ReadOptions(unknown_relations="ignore"),
         counts={"gold labels with relation 'P999' ignored (not in the model's inventory)": 1}),
    # ---- BioC XML
    Case("bioc-xml-syntax-error", "a.xml", b(bioc(bioc_doc("1"), bioc_doc("2"), "<document><id>3</id><passage>"
                                                                                 "<offset>0</offset></document>\n")),
         3, ["1", "2"], [("a.xml", "line 5", "invalid XML: Opening and ending tag mismatch: passage")]),
    Case("bioc-xml-truncated", "a.xml", b(bioc(bioc_doc("1"), bioc_doc("2")))[:-60], 2, ["1"],
         [("a.xml", "line 4", "invalid XML: ")]),
    Case("bioc-xml-non-utf8", "a.xml", b(bioc(bioc_doc("1"))).replace(b"ulcer.", b"ulc\xffr."), 1, [],
         [("a.xml", "line 3", "invalid XML: ")]),
    Case("bioc-location-outside-passage", "a.xml", b(bioc(bioc_doc("1").replace('offset="15"', 'offset="95"'))), 1,
         [], [("a.xml", "annotation '2', line 3, document '1'", "location [95, 100) is outside its passage [0, 21)")]),
    Case("bioc-annotation-text-mismatch", "a.xml", b(bioc(bioc_doc("1").replace("<text>ulcer</text>",
                                                                                 "<text>ulcor</text>"))), 1, [],
         [("a.xml", "annotation '2', document '1'", "mention 'ulcor' does not match the text at [15, 20): 'ulcer'")]),
    Case("bioc-offset-not-integer", "a.xml", b(bioc(bioc_doc("1").replace('offset="0"', 'offset="zero"'))), 1, [],
         [("a.xml", "annotation '1', line 3, document '1'", "location offset 'zero' is not an integer")]),
    Case("bioc-no-passages", "a.xml", b(bioc("<document><id>1</id></document>\n", bioc_doc("2"))), 2, ["2"],
         [("a.xml", "line 3, document '1'", "document has no passages")]),
    Case("bioc-no-id", "a.xml", b(bioc(bioc_doc(""), bioc_doc("2"))), 2, ["2"],
         [("a.xml", "line 3, document 0", "document has no id")]),
    Case("bioc-duplicate-id", "a.xml", b(bioc(bioc_doc("1"), bioc_doc("1"))), 2, ["1"],
         [("a.xml", "line 4, document '1'", "duplicate document id '1'")]),
    Case("bioc-annotation-without-location", "a.xml",
         b(bioc(bioc_doc("1").replace('<location offset="15" length="5"/>', ""))), 1, [],
         [("a.xml", "annotation '2', line 3, document '1'", "annotation has no location")]),
    Case("bioc-unresolvable-relation", "a.xml", b(bioc(bioc_doc("1", relations='<relation id="R1"><infon key="type">'
                                                                                'CID</infon><node refid="9" role="x"/>'
                                                                                '</relation>'))), 1, [],
         [("a.xml", "relation 'R1', line 3, document '1'", "relation without a type and two resolvable entities")]),
    Case("bioc-relation-outside-kept-passages", "a.xml",
         b(bioc(bioc_doc("1", relations='<relation id="R1"><infon key="type">Association</infon><infon key="role1">'
                                        'Chemical|MESH:D001241</infon><infon key="role2">Disease|MESH:D000999</infon>'
                                        '</relation>'))), 1, ["1"],
         counts={"relations without a mention in the text": 1}),
    # ---- BioC JSON
    Case("bioc-json-truncated", "a.json", b(json.dumps({"PubTator3": [{"_id": "1|None", "passages": []}]}))[:-5], 1,
         [], [("a.json", "line 1, document 0", "invalid JSON (truncated file): ")]),  # the document it cuts
    Case("bioc-json-not-a-collection", "a.bioc.json", b('{"documents": 5}'), 1, [],
         [("a.bioc.json", "top level", "'documents' must be a list, got int")]),
    Case("bioc-json-document-not-object", "a.json", b('{"documents": [7, {"id": "2", "passages": []}]}'), 2, [],
         [("a.json", "document", "expected a JSON object, got int"),
          ("a.json", "document '2'", "document has no passages")]),
    Case("bioc-json-non-utf8", "a.json", b'{"documents": [{"id": "1", "passages": [{"text": "\xff"}]}]}', 1, [],
         [("a.json", "line 1, byte 50", "not valid UTF-8 (0xff)")]),
    # ---- tar archives
    Case("tar-member-bad-xml", "BioCXML.0.tar.gz",
         tar_gz({"output/BioCXML/1.BioC.XML": b(bioc(bioc_doc("1"))), "output/BioCXML/2.BioC.XML": b"<collection><doc",
                 "output/BioCXML/3.BioC.XML": b(bioc(bioc_doc("3")))}), 3, ["1", "3"],
         [("BioCXML.0.tar.gz!output/BioCXML/2.BioC.XML", "line 1", "invalid XML: ")]),
    Case("tar-truncated", "BioCXML.1.tar.gz",
         tar_gz({"output/BioCXML/1.BioC.XML": b(bioc(bioc_doc("1"))),
                 "output/BioCXML/2.BioC.XML": b(bioc(*[bioc_doc(str(i), noisy_passage(i)) for i in range(2, 2000)]))
                 })[:-200], 1999, [],
         [("BioCXML.1.tar.gz!output/BioCXML/2.BioC.XML", "line ", "truncated compressed file")],
         record_end=b"</document>"),
    Case("tar-not-a-tar", "BioCXML.2.tar", b"this is not a tar archive" * 40, 1, [],
         [("BioCXML.2.tar", "byte ", "corrupt or truncated tar archive")]),
    # ---- PubMed XML
    Case("pubmed-no-pmid", "pubmed26n0001.xml", b(pubmed(article(""), article("2"))), 2, ["2"],
         [("pubmed26n0001.xml", "line 3", "citation has no PMID")]),
    Case("pubmed-no-text", "pubmed26n0001.xml", b(pubmed(article("1", title="", abstract=""), article("2"))), 2,
         ["2"], [("pubmed26n0001.xml", "line 3, document '1'", "citation has no title and no abstract")]),
    Case("pubmed-truncated", "pubmed26n0001.xml.gz", gz(b(pubmed(*[article(str(i)) for i in range(1, 300)])))[:-100],
         299, [], [("pubmed26n0001.xml.gz", "line ", "truncated compressed file")], record_end=b"</PubmedArticle>"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
    path = tmp_path / case.filename
    path.write_bytes(case.content)
    quarantine: list[Quarantined] = []
    counts: dict = {}
    docs = list(read_documents(str(path), None, case.inventory, quarantine, case.options, counts))
    got = [(q.source.removeprefix(str(tmp_path) + "/"), q.where, q.reason) for q in quarantine]
    if case.record_end:
        # a stream cut mid-file: every document complete before the cut is read, the one the cut went through
        # is one record naming the file and where the readable bytes end; what came after is unknowable
        assert len(got) == 1 and got[0][0] == case.quarantine[0][0] and got[0][2].startswith(case.quarantine[0][2])
        assert got[0][1].startswith(case.quarantine[0][1])
        recovered = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(case.content)
        complete = len(re.findall(re.escape(case.record_end) + b"+", recovered))
        if "!" not in got[0][0]:  # the byte where the decompressed data ends, not where a read buffer did
            lines = recovered.count(NEWLINE) + 1
            assert got[0][1] == f"line {lines}, byte {len(recovered)}"
        assert [d.id for d in docs] == [str(i) for i in range(1, complete + 1)]  # in order, none skipped
        assert len(docs) + sum(q.count for q in quarantine) == complete + 1
    else:
        assert [d.id for d in docs] == case.out
        assert len(got) == len(case.quarantine), got
        for (src, where, reason), (want_src, want_where, want_reason) in zip(got, case.quarantine):
            assert src == want_src
            assert where.startswith(want_where) if want_where.endswith(" ") else where == want_where, got
            assert reason.startswith(want_reason), got
        quarantined = sum(q.count for q in quarantine)
        assert case.docs_in == len(docs) + quarantined  # nothing lost
    if case.counts:
        assert counts == case.counts
    if quarantine:  # strict mode: the first problem, as a DocumentError naming the file
        with pytest.raises(DocumentError) as info:
            list(read_documents(str(path), None, case.inventory, None, case.options))
        assert str(info.value).startswith(quarantine[0].source + ": ")
        assert info.value.where == quarantine[0].where and info.value.problem == quarantine[0].reason


def test_battery_is_large_enough():
    assert len(CASES) >= 40


def test_truncated_array_keeps_the_documents_before_the_cut():
    """Three documents, the last one cut: the first two are read, one record stands for the third."""
    text = json.dumps([docred("A"), docred("B"), docred("C")])[:-40]
    docs, errors = [], []
    with pytest.raises(DocumentError) as info:
        for doc in read_docred(text, "mem.json", on_error=errors.append):
            docs.append(doc.id)
    assert docs == ["A", "B"] and errors == []
    assert info.value.count == 1 and info.value.where == "line 1, document 2"
    assert info.value.problem.startswith("invalid JSON (truncated file): ")


# ---------------------------------------------------------------- the CLI: one line, exit code 2

def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_stats_on_an_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.pubtator"
    path.write_text("")
    code, out, err = run_cli(["data", "stats", str(path), "--no-subwords", "--json"], capsys)
    assert code == 0 and err == ""
    assert json.loads(out.strip().splitlines()[-1])["documents"] == 0


@pytest.mark.parametrize("name,content,message", [
    ("bad.pubtator", b(pt("100")).replace(b"rats", b"r\xffts"),
     "line 2, document '100': byte 29 of the line is not valid UTF-8 (0xff)"),
    ("bad.pubtator.gz", b"not gzip at all", "byte 0: not a valid gzip file: "),
    ("bad.json", b'[{"title": "A"', "line 1, document 0: invalid JSON (truncated file): "),
    ("bad.xml", b"<collection><document><id>1</id>", "line 1: invalid XML: "),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run_cli(["data", "stats", str(path), "--no-subwords"], capsys)
    assert code == 2
    assert err.startswith(f"error: {path}: {message}") and err.count("\n") == 1 and "Traceback" not in err
    # --lenient: the same problem as a quarantine record, exit 0
    code, out, err = run_cli(["data", "stats", str(path), "--no-subwords", "--lenient"], capsys)
    assert code == 0 and "quarantined" in out and message.split(":")[0] in out


def test_cli_missing_file_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["data", "stats", str(tmp_path / "absent.pubtator"), "--no-subwords"], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'absent.pubtator'}: no such file or object\n"


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["data", "stats", str(tmp_path / "absent.pubtator"), "--no-subwords", "--debug"])


def test_cli_missing_s3_object_is_one_line(s3_bucket, capsys):
    _, bucket = s3_bucket
    url = f"s3://{bucket}/absent.pubtator"
    code, _, err = run_cli(["data", "stats", url, "--no-subwords"], capsys)
    assert code == 2 and err.startswith("error: ") and url.removeprefix("s3://") in err
    assert "no such file or object" in err and err.count("\n") == 1


def test_cli_missing_credentials_is_one_line(s3_endpoint, monkeypatch, capsys):
    import s3fs
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        code, _, err = run_cli(["data", "stats", "s3://some-bucket/cdr.pubtator", "--no-subwords"], capsys)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert code == 2
    assert err == ("error: s3://some-bucket/cdr.pubtator: no object-store credentials (set AWS_ACCESS_KEY_ID and "
                   "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an IAM role)\n")
    assert "testing" not in err


def test_cli_errors_name_the_file_that_is_wrong(tmp_path, capsys):
    """A tokenize target that cannot hold a dataset, and a broken extraction plan, are named as such."""
    fixture = str(Path(__file__).parent / "fixtures" / "cdr_sample.data")
    (tmp_path / "a-file").write_text("x")
    target = str(tmp_path / "a-file" / "out")
    assert main(["data", "tokenize", fixture, target, "--relations", "cdr"]) == 2
    assert f"{target}: cannot write the tokenized dataset there (Not a directory)" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_plan.json").write_text("{broken")
    assert main(["aggregate", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'out' / '_plan.json'}: not valid JSON (line 1, column 2" in capsys.readouterr().err
