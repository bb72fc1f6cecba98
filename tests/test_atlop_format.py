"""The ATLOP / EoG ``.data`` reader and writer, on a hand-written fixture of invented abstracts."""
from __future__ import annotations

from pathlib import Path

import pytest

from docre.data.atlop import read_atlop, write_atlop
from docre.data.document import Document, DocumentError, Entity, Fact, Mention

FIXTURE = Path(__file__).parent / "fixtures" / "cdr_sample.data"


def fixture_lines() -> list[str]:
    return FIXTURE.read_text().splitlines(keepends=True)


def read_fixture() -> list[Document]:
    return list(read_atlop(fixture_lines(), str(FIXTURE)))


def mutate(line: str, index: int, value: str | None) -> str:
    """The line with tab-separated field `index` replaced (or removed when value is None)."""
    fields = line.rstrip("\n").split("\t")
    if value is None:
        del fields[index]
    else:
        fields[index] = value
    return "\t".join(fields) + "\n"


# field positions in the whole line: pmid, text, then 17 per record
def field(record: int, offset: int) -> int:
    return 2 + 17 * record + offset


def summary(ent: Entity) -> tuple:
    return ent.kb_id, ent.type, [(m.sent_id, m.start, m.end, m.text) for m in ent.mentions]


# ---------------------------------------------------------------- reading

def test_fixture_documents_duplicate_skipped():
    docs = read_fixture()
    assert [d.id for d in docs] == ["9000001", "9000002", "9000003"]


def test_first_document_sentences_entities_facts():
    doc = read_fixture()[0]
    assert [len(s) for s in doc.sentences] == [7, 8, 9]
    assert doc.sentences[2][4] == "Halomedin"
    # first appearance: arg1 before arg2, record by record
    assert [summary(e) for e in doc.entities] == [
        ("C900001", "Chemical", [(0, 0, 1, "Zentrovir"), (1, 2, 3, "zentrovir")]),
        ("D900001", "Disease", [(0, 3, 4, "cardiotoxicity"), (1, 6, 7, "cardiotoxicity")]),
        ("D900002", "Disease", [(1, 4, 5, "arrhythmia"), (2, 7, 8, "arrhythmia")]),
        ("C900002", "Chemical", [(2, 4, 5, "Halomedin")]),
    ]
    # two CID records; the NR records (one R2L, one CROSS) are not facts
    assert doc.facts == [Fact(0, 1, "CID"), Fact(0, 2, "CID")]
    assert doc.labelled and doc.text is None


def test_r2l_record_keeps_arg1_as_head_and_not_include_keeps_entities():
    doc = read_fixture()[1]
    assert [summary(e) for e in doc.entities] == [
        ("C900010", "Chemical", [(0, 3, 4, "Borvalene"), (1, 0, 1, "Borvalene")]),
        ("D900010", "Disease", [(0, 0, 2, "Acute hepatitis")]),
        # only in the not_include record (and a later NR one): kept as entities
        ("C900011", "Chemical", [(1, 4, 5, "norborvalene")]),
        ("D900011", "Disease", [(1, 6, 7, "jaundice")]),
    ]
    # record 0 is 1:CID:2 R2L: the Chemical (arg1) stays the head
    assert doc.facts == [Fact(0, 1, "CID"), Fact(0, 3, "CID")]


def test_document_without_positive_pairs():
    doc = read_fixture()[2]
    assert doc.sentences == [["Quintaprel", "did", "not", "cause", "nephropathy", "in", "this", "trial", "."]]
    assert [summary(e) for e in doc.entities] == [
        ("C900020", "Chemical", [(0, 0, 1, "Quintaprel")]),
        ("D900020", "Disease", [(0, 4, 5, "nephropathy")]),
    ]
    assert doc.facts == []


def test_gda_relation_label():
    line = ("123\tGENEX variants raise colitis risk .\t1:GDA:2\tL2R\tNON-CROSS\t0-1\t3-4\t"
            "5501\tGENEX\tGene\t0\t1\t0\tD900099\tcolitis\tDisease\t3\t4\t0\n")
    (doc,) = read_atlop([line], "gda.data", relation="GDA")
    assert [e.kb_id for e in doc.entities] == ["5501", "D900099"]
    assert doc.facts == [Fact(0, 1, "GDA")]
    with pytest.raises(DocumentError, match=r"unknown label '1:GDA:2'"):
        list(read_atlop([line], "gda.data"))  # relation defaults to CID


def test_line_with_trailing_tab_and_no_records():
    (doc,) = read_atlop(["77\tNothing here .\t\n"], "x.data")
    assert doc.entities == [] and doc.facts == []


# ---------------------------------------------------------------- writing

def test_round_trip_write_read():
    docs = read_fixture()
    lines = list(write_atlop(docs))
    assert len(lines) == 3 and all(line.endswith("\n") for line in lines)
    assert list(read_atlop(lines, "roundtrip")) == docs


def test_written_records_match_the_hand_written_ones():
    """Direction, cross flag and closest mentions are recomputed to the fixture's values."""
    src = [line.rstrip("\n").split("\t") for line in fixture_lines()]
    out = [line.rstrip("\n").split("\t") for line in write_atlop(read_fixture())]
    for want, got in zip([src[0], src[1], src[3]], out):
        assert got[:2] == want[:2]
        chunks = lambda f: {tuple(f[i:i + 17]) for i in range(2, len(f), 17)}
        # not_include cannot be represented in a Document: it comes back as a plain negative
        expected = {tuple(["1:NR:2" if r[0] == "not_include" else r[0], *r[1:]]) for r in chunks(want)}
        assert chunks(got) == expected


def test_written_r2l_record():
    out = list(write_atlop(read_fixture()[1:2]))[0].rstrip("\n").split("\t")
    first = out[2:19]
    assert first[:5] == ["1:CID:2", "R2L", "NON-CROSS", "3-4", "0-2"]
    assert first[5:11] == ["C900010", "Borvalene|Borvalene", "Chemical", "3:6", "4:7", "0:1"]
    assert first[11:] == ["D900010", "Acute hepatitis", "Disease", "0", "2", "0"]


def _pubtator_like() -> Document:
    # entity order by text (as the PubTator reader makes it), plus a lone Gene
    return Document("5", [["Drugone", "and", "Drugtwo", "cause", "rash", "in", "GENEY", "mice", "."]],
                    [Entity([Mention(0, 0, 1, "Drugone")], "Chemical", "C1"),
                     Entity([Mention(0, 2, 3, "Drugtwo")], "Chemical", "C2"),
                     Entity([Mention(0, 4, 5, "rash")], "Disease", "D1"),
                     Entity([Mention(0, 6, 7, "GENEY")], "Gene", "G1")],
                    [Fact(1, 2, "CID")])


def test_unpaired_entity_is_an_error_unless_dropped():
    with pytest.raises(DocumentError, match=r"document '5'.*'G1'.*no candidate pair"):
        list(write_atlop([_pubtator_like()]))
    (line,) = write_atlop([_pubtator_like()], unpaired="drop")
    (doc,) = read_atlop([line], "w")
    # [C1, C2, D1] cannot be met in that order (each record brings D1 along): ids and facts survive
    assert [e.kb_id for e in doc.entities] == ["C1", "D1", "C2"]
    assert [(doc.entities[f.head].kb_id, doc.entities[f.tail].kb_id) for f in doc.facts] == [("C2", "D1")]


def test_fact_the_format_cannot_hold_is_an_error():
    doc = read_fixture()[2]
    doc.facts = [Fact(1, 0, "CID")]  # Disease -> Chemical is no candidate
    with pytest.raises(DocumentError, match=r"document '9000003'.*not among the pair types"):
        list(write_atlop([doc]))
    doc.facts = [Fact(0, 1, "P17")]
    errors: list[DocumentError] = []
    assert list(write_atlop([doc], on_error=errors.append)) == []
    assert "relation 'P17'" in errors[0].problem


# ---------------------------------------------------------------- bad input

def bad_line(index: int, value: str | None) -> str:
    return mutate(fixture_lines()[1], index, value)  # document 9000002


@pytest.mark.parametrize("index,value,problem", [
    (field(3, 16), None, "wrong field count"),
    (field(0, 8), "3:x", "non-integer start offset '3:x'"),
    (field(2, 15), "99", "mention span [12, 99) is outside the text (14 tokens)"),
    (field(1, 1), "UP", "bad direction 'UP'"),
    (field(0, 0), "1:XYZ:2", "unknown label '1:XYZ:2'"),
    (field(0, 16), "1", "lies in sentence 0 but the record says sentence 1"),
    (field(0, 9), "7:7", "mention span [3, 7) crosses the end of sentence 0"),
])
def test_bad_input_raises_with_document_and_problem(index, value, problem):
    with pytest.raises(DocumentError) as info:
        list(read_atlop([bad_line(index, value)], "bad.data"))
    err = info.value
    assert "'9000002'" in str(err) and problem in str(err)
    assert err.where == "line 1, document '9000002'" and err.source == "bad.data"


def test_inconsistent_entity_between_records():
    # record 2 lists C900010 (Borvalene) with only one mention
    line = bad_line(field(2, 8), "3")
    line = mutate(line, field(2, 9), "4")
    line = mutate(line, field(2, 10), "0")
    with pytest.raises(DocumentError, match=r"'9000002'.*'C900010' is listed with other type or mentions"):
        list(read_atlop([line], "bad.data"))


def test_duplicate_with_different_content_is_reported():
    lines = fixture_lines()
    changed = mutate(lines[0], field(2, 0), "1:CID:2")
    errors: list[DocumentError] = []
    docs = list(read_atlop([lines[0], changed], "dup.data", on_error=errors.append))
    assert [d.id for d in docs] == ["9000001"] and docs[0].facts == read_fixture()[0].facts
    assert errors[0].where == "line 2, document '9000001'" and "first on line 1" in errors[0].problem


def test_lenient_mode_collects_bad_document_and_keeps_good_ones():
    lines = fixture_lines()
    bad = mutate(lines[1], field(1, 1), "SIDEWAYS")
    errors: list[DocumentError] = []
    docs = list(read_atlop([lines[0], bad, lines[3]], "mixed.data", on_error=errors.append))
    assert [d.id for d in docs] == ["9000001", "9000003"]
    assert len(errors) == 1
    assert errors[0].where == "line 2, document '9000002'"
    assert "bad direction 'SIDEWAYS'" in errors[0].problem
    assert str(errors[0]).startswith("mixed.data: line 2, document '9000002': ")
