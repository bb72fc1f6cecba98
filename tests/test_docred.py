"""The DocRED JSON / JSON-lines reader and writer, on two invented documents."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from docre.data.docred import read_docred, read_rel_info, to_docred_dict, write_docred
from docre.data.document import DocumentError, Entity, Fact

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "docred_sample.json"
REL_INFO = FIXTURES / "rel_info_sample.json"
TITLES = ["Lake Varnholm", "The Silver Ferns"]


def raw_docs() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def inventory():
    return read_rel_info(REL_INFO.read_text())


def read(text: str | None = None, **kw):
    return list(read_docred(FIXTURE.read_text() if text is None else text, "sample.json", **kw))


def jsonl(docs: list[dict]) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


def summary(ent: Entity) -> tuple:
    return ent.type, [(m.sent_id, m.start, m.end, m.text) for m in ent.mentions]


# ---------------------------------------------------------------- reading

def test_fixture_documents():
    docs = read()
    assert [d.id for d in docs] == TITLES
    assert [d.title for d in docs] == TITLES
    assert all(d.labelled and d.text is None and d.token_chars is None for d in docs)
    assert [[len(s) for s in d.sentences] for d in docs] == [[16, 19, 8], [19, 16]]
    assert docs[0].sentences[2] == ["Moravec", "later", "became", "a", "citizen", "of", "Ostravia", "."]


def test_entities_and_mentions():
    doc = read()[0]
    assert [summary(e) for e in doc.entities] == [
        ("LOC", [(0, 0, 2, "Lake Varnholm")]),
        ("LOC", [(0, 7, 9, "Tessarin County")]),
        ("LOC", [(0, 14, 15, "Ostravia"), (2, 6, 7, "Ostravia")]),
        ("PER", [(1, 2, 4, "Edda Moravec"), (2, 0, 1, "Moravec")]),
        ("TIME", [(1, 7, 10, "3 May 1911")]),
        ("LOC", [(1, 11, 12, "Kirnau")]),
    ]
    assert all(e.kb_id is None for e in doc.entities)
    assert doc.entities[3].name == "Edda Moravec"
    for ent in doc.entities:
        for m in ent.mentions:
            assert " ".join(doc.sentences[m.sent_id][m.start:m.end]) == m.text
            assert m.char_start is None and m.char_end is None


def test_facts_and_evidence():
    a, b = read()
    assert a.facts == [Fact(0, 2, "P17", [0]), Fact(0, 1, "P131", [0]), Fact(1, 2, "P17", [0]),
                       Fact(3, 4, "P569", [1]), Fact(3, 2, "P27", [2]), Fact(5, 2, "P17", [0, 1])]
    assert b.facts == [Fact(1, 2, "P131", [0]), Fact(1, 3, "P17", [0]), Fact(2, 3, "P17", [0]),
                       Fact(4, 5, "P569", [1]), Fact(4, 3, "P27", [1])]


def test_read_rel_info():
    inv = inventory()
    assert inv.ids == ["Na", "P17", "P27", "P131", "P569"]  # numeric order, no-relation first
    assert inv.name("P27") == "country of citizenship"
    assert inv.name("P569") == "date of birth"
    assert inv.pair_types is None and "P131" in inv and "P6" not in inv
    assert read(inventory=inv) == read()


def test_reading_is_deterministic():
    assert read() == read()


def test_json_lines_and_file_objects_read_the_same():
    docs = read()
    assert read(jsonl(raw_docs())) == docs
    with FIXTURE.open() as f:
        assert list(read_docred(f, "sample.json")) == docs
    # JSON lines streamed from an iterator of lines, with blank lines around
    lines = ["\n"] + jsonl(raw_docs()).splitlines(keepends=True) + ["\n", "  \n"]
    assert list(read_docred(iter(lines), "sample.jsonl")) == docs


def test_unlabelled_documents_have_no_facts():
    raws = raw_docs()
    for r in raws:
        del r["labels"]
    docs = read(json.dumps(raws))
    assert [d.facts for d in docs] == [None, None]
    assert not any(d.labelled for d in docs)
    # an empty labels list is labelled with no facts
    raws[0]["labels"] = []
    assert read(json.dumps(raws))[0].facts == []


def test_evidence_is_optional():
    raws = raw_docs()
    del raws[0]["labels"][0]["evidence"]
    assert read(json.dumps(raws))[0].facts[0] == Fact(0, 2, "P17", [])


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("as_jsonl", [False, True])
def test_round_trip(as_jsonl):
    docs = read()
    text = write_docred(docs, jsonl=as_jsonl)
    assert read(text) == docs
    if as_jsonl:
        assert len(text.splitlines()) == 2 and text.endswith("\n")
        assert all(json.loads(line)["title"] in TITLES for line in text.splitlines())
    else:
        assert json.loads(text) == raw_docs()


def test_round_trip_unlabelled():
    docs = read()
    for d in docs:
        d.facts = None
    text = write_docred(docs, jsonl=True)
    assert all("labels" not in json.loads(line) for line in text.splitlines())
    assert read(text) == docs


def test_write_keeps_non_ascii_text():
    raws = raw_docs()
    raws[1]["sents"][1][3] = "Tomás"
    raws[1]["vertexSet"][4][0]["name"] = "Tomás Lindqvar"
    docs = read(json.dumps(raws))
    text = write_docred(docs)
    assert "Tomás Lindqvar" in text
    assert read(text) == docs


def test_to_docred_dict_uses_id_when_title_is_empty():
    doc = read()[0]
    doc.title = ""
    assert to_docred_dict(doc)["title"] == "Lake Varnholm"


def test_round_trip_keeps_an_id_that_is_not_the_title():
    """A PubTator document written as DocRED JSON (`docre data split`) keeps its PMID, not its title."""
    docs = read()
    docs[0].id = "9000001"
    raw = to_docred_dict(docs[0])
    assert raw["id"] == "9000001" and raw["title"] == "Lake Varnholm"
    assert "id" not in to_docred_dict(docs[1])  # DocRED's own documents: the title is the id
    assert [d.id for d in read(write_docred(docs))] == ["9000001", docs[1].id]


# ---------------------------------------------------------------- bad input

def broken(change, index: int = 1) -> str:
    """The fixture as JSON lines, with document `index` changed by `change(raw)`."""
    raws = raw_docs()
    change(raws[index])
    return jsonl(raws)


def set_path(*path, value):
    def change(raw):
        obj = raw
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return change


def delete(key):
    return lambda raw: raw.pop(key)


BAD = {
    "label to a missing entity": (set_path("labels", 2, "t", value=9),
                                  "label 2->9 P17: tail points at missing entity 9 (document has 6 entities)"),
    "negative entity index": (set_path("labels", 0, "h", value=-1),
                              "label -1->2 P131: head points at missing entity -1"),
    "evidence outside the document": (set_path("labels", 0, "evidence", value=[0, 5]),
                                      "label 1->2 P131: evidence sentence 5 outside the document"),
    "missing key": (delete("vertexSet"), "missing key 'vertexSet'"),
    "malformed mention (no pos)": (lambda raw: raw["vertexSet"][2][0].pop("pos"),
                                   "entity 2: malformed mention"),
    "malformed mention (bad pos)": (set_path("vertexSet", 1, 0, "pos", value=[8]), "entity 1: malformed mention"),
    "malformed mention (not an object)": (set_path("vertexSet", 1, value=["Doravale"]),
                                          "entity 1: malformed mention 'Doravale'"),
    "vertexSet not a list": (set_path("vertexSet", value=None), "'vertexSet' must be a list of mention lists"),
    "labels not a list": (set_path("labels", value=None), "'labels' must be a list"),
    "sents not token lists": (set_path("sents", value="Their singer ."), "'sents' must be a list of token lists"),
    "malformed label": (lambda raw: raw["labels"][1].pop("r"), "malformed label"),
    "evidence not a list": (set_path("labels", 1, "evidence", value=None), "malformed label"),
    "mention outside its sentence": (set_path("vertexSet", 4, 0, "pos", value=[14, 17]),
                                     "entity 4 mention 'Tomas Lindqvar': token span [14, 17) outside sentence 1 "
                                     "(16 tokens)"),
    "mention in a missing sentence": (set_path("vertexSet", 4, 0, "sent_id", value=2),
                                      "entity 4 mention 'Tomas Lindqvar': sentence 2 outside the document "
                                      "(2 sentences)"),
    "empty mention span": (set_path("vertexSet", 4, 0, "pos", value=[3, 3]), "token span [3, 3) outside"),
    "entity without mentions": (set_path("vertexSet", 5, value=[]), "entity 5 has no mentions"),
    "empty document": (set_path("sents", value=[]), "empty document (no tokens)"),
    "document of empty sentences": (set_path("sents", value=[[], []]), "empty document (no tokens)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_document_raises_with_document_and_problem(case):
    change, problem = BAD[case]
    with pytest.raises(DocumentError) as info:
        read(broken(change))
    err = info.value
    assert err.source == "sample.json"
    assert err.where == "line 2 ('The Silver Ferns')"
    assert problem in err.problem
    assert str(err).startswith("sample.json: line 2 ('The Silver Ferns'): ")


def test_bad_document_in_a_json_array_is_named_by_index_and_title():
    raws = raw_docs()
    raws[1]["labels"][0]["t"] = 7
    with pytest.raises(DocumentError) as info:
        read(json.dumps(raws, indent=1))
    assert info.value.where == "document 1 ('The Silver Ferns')"
    assert "tail points at missing entity 7" in info.value.problem


def test_unknown_relation_id_with_an_inventory():
    text = broken(set_path("labels", 3, "r", value="P999"))
    assert read(text)[1].facts[3].relation == "P999"  # no inventory: any id
    with pytest.raises(DocumentError) as info:
        read(text, inventory=inventory())
    assert info.value.where == "line 2 ('The Silver Ferns')"
    assert info.value.problem == "label 4->5: unknown relation id 'P999'"


def test_duplicate_title():
    raws = raw_docs()
    dup = copy.deepcopy(raws[0])
    with pytest.raises(DocumentError) as info:
        read(jsonl(raws + [dup]))
    assert info.value.where == "line 3 ('Lake Varnholm')"
    assert info.value.problem == "duplicate document id 'Lake Varnholm'"
    with pytest.raises(DocumentError, match=r"document 2 \('Lake Varnholm'\): duplicate document id"):
        read(json.dumps(raws + [dup]))


def test_invalid_json_line_names_the_line():
    lines = jsonl(raw_docs()).splitlines(keepends=True)
    text = lines[0] + "\n" + '{"title": "Half a document", "sents": [[\n' + lines[1]
    with pytest.raises(DocumentError) as info:
        read(text)
    assert info.value.where == "line 3"
    assert info.value.problem.startswith("invalid JSON: ")
    # leading blank lines count too
    with pytest.raises(DocumentError) as info:
        read("\n\n" + text)
    assert info.value.where == "line 5"


def test_invalid_json_array_names_the_line():
    text = "\n" + json.dumps(raw_docs(), indent=1)
    cut = text.index('"vertexSet"')
    with pytest.raises(DocumentError) as info:
        read(text[:cut] + "," + text[cut:])
    assert info.value.where == f"line {text[:cut].count(chr(10)) + 1}, document 0"
    assert "invalid JSON" in info.value.problem


def test_not_an_object():
    with pytest.raises(DocumentError) as info:
        read(jsonl(raw_docs()) + '"just a string"\n')
    assert info.value.where == "line 3" and info.value.problem == "expected a JSON object, got str"


def test_empty_input_has_no_documents():
    assert read("") == [] and read("\n\n") == [] and read("[]") == []


# ---------------------------------------------------------------- lenient mode

def test_lenient_mode_quarantines_bad_documents_and_keeps_the_good_ones():
    raws = raw_docs()
    bad_label = copy.deepcopy(raws[1])
    bad_label["title"] = "Bad label"
    bad_label["labels"][0]["h"] = 42
    no_sents = {"title": "No sentences", "vertexSet": []}
    lines = [json.dumps(raws[0]) + "\n", json.dumps(bad_label) + "\n", "{not json\n",
             json.dumps(no_sents) + "\n", json.dumps(raws[0]) + "\n", json.dumps(raws[1]) + "\n"]
    errors: list[DocumentError] = []
    docs = list(read_docred(lines, "mixed.jsonl", on_error=errors.append))
    assert [d.id for d in docs] == TITLES
    assert docs == read()
    assert [(e.where, e.problem.split(":")[0]) for e in errors] == [
        ("line 2 ('Bad label')", "label 42->2 P131"),
        ("line 3", "invalid JSON"),
        ("line 4 ('No sentences')", "missing key 'sents'"),
        ("line 5 ('Lake Varnholm')", "duplicate document id 'Lake Varnholm'"),
    ]
    assert all(e.source == "mixed.jsonl" for e in errors)
    assert len(docs) + len(errors) == len(lines)


def test_lenient_mode_with_an_inventory():
    text = broken(set_path("labels", 0, "r", value="P31"), index=0)
    errors: list[DocumentError] = []
    docs = read(text, inventory=inventory(), on_error=errors.append)
    assert [d.id for d in docs] == ["The Silver Ferns"]
    assert [(e.where, e.problem) for e in errors] == [("line 1 ('Lake Varnholm')",
                                                       "label 0->2: unknown relation id 'P31'")]


def test_lenient_mode_json_array():
    raws = raw_docs()
    raws[0]["vertexSet"][0][0]["sent_id"] = 9
    errors: list[DocumentError] = []
    docs = read(json.dumps(raws), on_error=errors.append)
    assert [d.id for d in docs] == ["The Silver Ferns"]
    assert errors[0].where == "document 0 ('Lake Varnholm')"
    # an array that is not valid JSON cannot be read in part: it raises even when lenient
    with pytest.raises(DocumentError, match="invalid JSON"):
        read(json.dumps(raws)[:-1], on_error=errors.append)
