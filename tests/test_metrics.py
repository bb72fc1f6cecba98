"""Metrics on tiny hand-made documents; every expected number is worked out in a comment."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest

from docre.data.document import Document, Entity, Fact, Mention
from docre.training.metrics import (PRF, DocREDScores, Prediction, cdr_scores, docred_scores, format_table,
                           inference_pairs, read_docred_result, write_docred_result)


def ent(*mentions: tuple[str, int], type: str = "MISC") -> Entity:
    """An entity from (text, sent_id) mentions; token positions do not matter to metrics."""
    return Entity([Mention(sent, 0, 1, text) for text, sent in mentions], type)


def doc(doc_id: str, entities: list[Entity], facts: list[tuple[int, int, str]], n_sents: int = 3,
        title: str | None = None) -> Document:
    return Document(doc_id, [["w"] for _ in range(n_sents)], entities,
                    [Fact(h, t, r) for h, t, r in facts], title=doc_id.upper() if title is None else title)


def d1() -> Document:
    # entity 0 "Paris" (sent 0); 1 "France" (sents 0, 2); 2 "Seine" (sent 1); 3 "Europe" (sent 2)
    return doc("d1", [ent(("Paris", 0)), ent(("France", 0), ("French", 2)), ent(("Seine", 1)),
                      ent(("Europe", 2))],
               [(0, 1, "P17"),    # intra: share sent 0
                (2, 1, "P17"),    # inter: {1} vs {0, 2}
                (1, 3, "P30")])   # intra: share sent 2


def d2() -> Document:
    # triangle 0->1, 1->2, 0->2 (pair (0,1) carries two relations); (2,3) is outside any triangle
    return doc("d2", [ent(("A", 0)), ent(("B", 1)), ent(("C", 2)), ent(("D", 3))],
               [(0, 1, "P150"), (0, 1, "P31"), (1, 2, "P131"), (0, 2, "P131"), (2, 3, "P17")], n_sents=4)


def approx(x: float):
    return pytest.approx(x, abs=1e-12)


def test_perfect_prediction_scores_one():
    gold = [d1(), d2()]
    preds = [(d.id, f.head, f.tail, f.relation) for d in gold for f in d.facts]
    s = docred_scores(gold, preds)
    for name in ("precision", "recall", "f1", "ign_precision", "ign_f1", "intra_f1", "inter_f1", "infer_f1",
                 "infer_precision", "infer_recall"):
        assert getattr(s, name) == approx(1.0), name
    assert s.counts["pred"] == s.counts["gold"] == s.counts["correct"] == 8


def test_two_of_three_correct_and_intra_inter_split():
    preds = [("d1", 0, 1, "P17"),   # correct, intra
             ("d1", 2, 1, "P17"),   # correct, inter
             ("d1", 1, 3, "P31")]   # wrong relation, intra
    s = docred_scores([d1()], preds)
    # P = 2 correct / 3 submitted, R = 2 / 3 gold, F1 = 2/3
    assert (s.precision, s.recall, s.f1) == (approx(2 / 3), approx(2 / 3), approx(2 / 3))
    # intra: predictions (0,1,P17) ok + (1,3,P31) wrong -> P = 1/2; gold intra (0,1),(1,3) -> R = 1/2
    assert (s.intra_precision, s.intra_recall, s.intra_f1) == (approx(0.5), approx(0.5), approx(0.5))
    # inter: prediction (2,1,P17) ok, the single inter gold fact -> 1/1, 1/1
    assert (s.inter_precision, s.inter_recall, s.inter_f1) == (approx(1.0), approx(1.0), approx(1.0))
    assert s.counts["intra_pred"] == 2 and s.counts["intra_gold"] == 2 and s.counts["inter_gold"] == 1
    # no train set: Ign equals plain
    assert s.ign_precision == s.precision and s.ign_f1 == s.f1
    # no triangle in d1 -> nothing to score, 0 by convention
    assert s.infer_f1 == 0.0 and s.counts["infer_gold"] == 0


def test_per_relation_numbers():
    preds = [("d1", 0, 1, "P17"), ("d1", 2, 1, "P17"), ("d1", 1, 3, "P31")]
    pr = docred_scores([d1()], preds).per_relation
    assert set(pr) == {"P17", "P30", "P31"}
    assert pr["P17"] == PRF(tp=2, n_pred=2, n_gold=2, precision=1.0, recall=1.0, f1=1.0)
    assert pr["P30"] == PRF(tp=0, n_pred=0, n_gold=1, precision=0.0, recall=0.0, f1=0.0)
    assert pr["P31"] == PRF(tp=0, n_pred=1, n_gold=0, precision=0.0, recall=0.0, f1=0.0)


def test_ign_f1_discounts_facts_seen_in_train():
    # train: ("City of Light"/"Paris") -P17-> "France" ; ("Seine") -P31-> "France" (other relation)
    train = [doc("t1", [ent(("City of Light", 0), ("Paris", 1)), ent(("France", 0)), ent(("Seine", 1))],
                 [(0, 1, "P17"), (2, 1, "P31")])]
    preds = [("d1", 0, 1, "P17"),   # correct; (Paris, France, P17) is a train name triple -> in train
             ("d1", 2, 1, "P17"),   # correct; (Seine, France, P17) not in train (train has P31)
             ("d1", 1, 3, "P31")]   # wrong
    s = docred_scores([d1()], preds, train=train)
    assert s.counts["correct_in_train"] == 1
    # ign P = (2 - 1) / (3 - 1) = 1/2 ; R unchanged = 2/3 ; ign F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7
    assert s.ign_precision == approx(0.5)
    assert s.recall == approx(2 / 3)
    assert s.ign_f1 == approx(4 / 7)
    assert s.precision == approx(2 / 3) and s.f1 == approx(2 / 3)


def test_ign_matches_any_mention_name_of_head_and_tail():
    # the train fact uses the alias "French" (2nd mention of d1's entity 1) as tail name
    train = [doc("t1", [ent(("Paris", 0)), ent(("French", 0))], [(0, 1, "P17")])]
    s = docred_scores([d1()], [("d1", 0, 1, "P17")], train=train)
    # 1 correct, 1 in train -> ign precision (1-1)/(1-1): 0 by convention; recall 1/3
    assert s.counts["correct_in_train"] == 1
    assert s.ign_precision == 0.0 and s.ign_f1 == 0.0 and s.recall == approx(1 / 3)


def test_inference_pairs_triangle_and_directed_cycle():
    assert inference_pairs(d2()) == {(0, 1), (1, 2), (0, 2)}
    # 0->1->2->0 is a directed cycle, not a triangle (no h->t edge closing any path h->o->t)
    cycle = doc("c", [ent(("A", 0)), ent(("B", 0)), ent(("C", 0))], [(0, 1, "R"), (1, 2, "R"), (2, 0, "R")])
    assert inference_pairs(cycle) == set()


def test_infer_f1_on_triangle_document():
    preds = [("d2", 0, 1, "P150"),  # correct, inference pair
             ("d2", 0, 2, "P131"),  # correct, inference pair
             ("d2", 0, 2, "P17"),   # wrong, on an inference pair -> counts against infer precision
             ("d2", 2, 3, "P17"),   # correct, not an inference pair -> ignored by infer
             ("d2", 1, 3, "P17")]   # wrong, not an inference pair -> ignored by infer
    s = docred_scores([d2()], preds)
    # gold inference facts: (0,1,P150), (0,1,P31), (1,2,P131), (0,2,P131) = 4
    # infer P = 2 correct / 3 predictions on inference pairs; R = 2 / 4; F1 = 2*(2/3)(1/2)/(7/6) = 4/7
    assert s.counts["infer_gold"] == 4 and s.counts["infer_pred"] == 3 and s.counts["infer_correct"] == 2
    assert s.infer_precision == approx(2 / 3)
    assert s.infer_recall == approx(0.5)
    assert s.infer_f1 == approx(4 / 7)
    # overall: 3 correct / 5 submitted, 3 / 5 gold
    assert s.precision == approx(0.6) and s.recall == approx(0.6)


@dataclass
class Pred:
    doc_id: str
    head: int
    tail: int
    relation: str


def test_duplicates_count_once_and_objects_accepted():
    preds = [("d1", 0, 1, "P17"), ("d1", 0, 1, "P17"), Pred("d1", 0, 1, "P17"), Prediction("d1", 0, 1, "P17"),
             ("d1", 2, 1, "Na")]  # "Na" is a submitted answer to the official scorer, never a correct one
    s = docred_scores([d1()], preds)
    # two distinct submissions (P17 and Na), one correct: P = 1/2, R = 1/3, F1 = 2 * 1/2 * 1/3 / (5/6) = 2/5
    assert s.counts["pred"] == 2 and s.counts["correct"] == 1
    assert s.precision == approx(0.5) and s.recall == approx(1 / 3) and s.f1 == approx(0.4)
    # without the Na answer it is one submission, correct
    s = docred_scores([d1()], preds[:-1])
    assert s.precision == approx(1.0) and s.f1 == approx(0.5)


def test_unknown_doc_id_raises():
    with pytest.raises(ValueError, match="nope"):
        docred_scores([d1()], [("d1", 0, 1, "P17"), ("nope", 0, 1, "P17")])
    with pytest.raises(ValueError, match="nope"):
        cdr_scores([d1()], [("nope", 0, 1, "CID")])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="out of range"):
        docred_scores([d1()], [("d1", 0, 9, "P17")])
    with pytest.raises(ValueError, match="unlabelled"):
        docred_scores([Document("u", [["w"]], [ent(("A", 0))], None)], [])
    with pytest.raises(ValueError):
        docred_scores([d1()], [("d1", 0, 1)])


def test_no_predictions_is_zero_not_error():
    s = docred_scores([d1()], [])
    assert (s.precision, s.recall, s.f1, s.ign_f1) == (0.0, 0.0, 0.0, 0.0)


def test_cdr_f1():
    chem, dis = "Chemical", "Disease"
    c1 = doc("c1", [ent(("aspirin", 0), type=chem), ent(("ulcer", 0), type=dis)], [(0, 1, "CID")])
    c2 = doc("c2", [ent(("lithium", 0), type=chem), ent(("tremor", 1), type=dis),
                    ent(("caffeine", 1), type=chem), ent(("fever", 2), type=dis)],
             [(0, 1, "CID"), (2, 1, "CID")])
    preds = [("c1", 0, 1, "CID"),    # correct
             ("c2", 0, 1, "CID"),    # correct
             ("c2", 0, 1, "CID"),    # duplicate: once
             ("c2", 0, 3, "CID"),    # wrong
             ("c2", 2, 3, "CID"),    # wrong
             ("c2", 2, 1, "Other")]  # other relation: ignored
    s = cdr_scores([c1, c2], preds)
    # P = 2/4, R = 2/3, F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7
    assert (s.tp, s.n_pred, s.n_gold) == (2, 4, 3)
    assert s.precision == approx(0.5) and s.recall == approx(2 / 3) and s.f1 == approx(4 / 7)


def test_result_json_round_trip(tmp_path):
    docs = [d1(), d2()]
    preds = [("d1", 0, 1, "P17"), ("d2", 0, 2, "P131"), ("d2", 0, 2, "P131"), ("d1", 1, 3, "Na"),
             Pred("d2", 2, 3, "P17")]
    path = tmp_path / "result.json"
    assert write_docred_result(docs, preds, path) == 4  # duplicates once; "Na" kept, as the scorer counts it
    records = json.loads(path.read_text())
    assert records[0] == {"title": "D1", "h_idx": 0, "t_idx": 1, "r": "P17"}
    back = read_docred_result(path, docs)
    assert back == [Prediction("d1", 0, 1, "P17"), Prediction("d2", 0, 2, "P131"), Prediction("d1", 1, 3, "Na"),
                    Prediction("d2", 2, 3, "P17")]
    # file objects work too, and re-scoring the read-back file gives the same numbers
    buf = io.StringIO()
    write_docred_result(docs, preds, buf)
    buf.seek(0)
    assert docred_scores(docs, read_docred_result(buf, docs)) == docred_scores(docs, preds)


def test_result_json_unknown_title_and_id(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps([{"title": "Atlantis", "h_idx": 0, "t_idx": 1, "r": "P17"}]))
    with pytest.raises(ValueError, match="Atlantis"):
        read_docred_result(path, [d1()])
    with pytest.raises(ValueError, match="zz"):
        write_docred_result([d1()], [("zz", 0, 1, "P17")], tmp_path / "x.json")


def test_format_table():
    s = docred_scores([d1()], [("d1", 0, 1, "P17"), ("d1", 2, 1, "P17"), ("d1", 1, 3, "P31")])
    assert isinstance(s, DocREDScores)
    table = format_table(s, names={"P17": "country"})
    assert "| All | 66.67 | 66.67 | 66.67 |" in table
    assert "| Inter | 100.00 | 100.00 | 100.00 |" in table
    assert "| P17 (country) | 2 | 2 | 2 | 100.00 | 100.00 | 100.00 |" in table
    lines = table.splitlines()
    # most frequent gold relation first
    assert lines.index("| P17 (country) | 2 | 2 | 2 | 100.00 | 100.00 | 100.00 |") < \
        next(i for i, l in enumerate(lines) if l.startswith("| P30 "))
    assert "| 1 | 2 | 3 | 50.00 | 33.33 | 40.00 |" in format_table(PRF.from_counts(1, 2, 3))


def test_non_integer_entity_index_rejected():
    with pytest.raises(ValueError, match="integer"):
        docred_scores([d1()], [("d1", 0.5, 1, "P17")])


# ---------------------------------------------------------------- candidates from the inventory alone

def test_off_type_gold_is_unscoreable_and_a_miss():
    from docre.data.document import RelationInventory
    inv = RelationInventory(["CID"], pair_types=[("Chemical", "Disease")])
    gold = doc("c1", [ent(("aspirin", 0), type="Chemical"), ent(("ulcer", 1), type="Disease"),
                      ent(("GENEX", 2), type="Gene")],
               [(0, 1, "CID"), (2, 1, "CID")])  # the second fact is Gene -> Disease: off-type
    preds = [("c1", 0, 1, "CID")]
    s = docred_scores([gold], preds, inventory=inv)
    # 1 correct of 2 gold: the off-type fact stays in the denominator, as the official scorer keeps it
    assert s.counts["unscoreable_gold"] == 1 and s.counts["gold"] == 2
    assert s.recall == approx(0.5) and s.precision == approx(1.0)
    assert "unscoreable_gold" not in docred_scores([gold], preds).counts  # without an inventory: not claimed


def test_candidate_mask_does_not_depend_on_gold():
    import torch
    from docre.data.batch import Example, collate
    from docre.data.document import RelationInventory
    inv = RelationInventory(["CID"], pair_types=[("Chemical", "Disease")])
    def example(labels):
        return Example("x", [1, 2, 3, 4], [[1], [2], [3]], ["Chemical", "Disease", "Gene"], labels, True)

    labelled = collate([example([(0, 1, 1), (2, 1, 1)])], inv)
    unlabelled = collate([example([])], inv)
    assert torch.equal(labelled.candidate_mask, unlabelled.candidate_mask)
    assert labelled.candidate_mask[0].nonzero().tolist() == [[0, 1]]  # Chemical -> Disease only
    assert labelled.labels[0, 2, 1, 1] == 1.0  # the off-type label is kept for what it is, never scored
