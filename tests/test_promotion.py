"""Promotion with confidence (docre.registry.promotion): the paired bootstrap, the rule, the drift budget.

Every case is a constructed prediction set whose answer is known: per-document counts
(correct, submitted, gold) chosen so that F1 and its differences are round numbers. With
submitted = gold = G in every document, micro F1 = 200 * sum(correct) / (2 * G * n) points.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from docre.cli import main as docre_cli
from docre.data.document import Document, Entity, Fact, Mention
from docre.registry import store
from docre.registry.promotion import (DriftReference, PromotionPolicy, ScoredModel,
                                      best_promoted, comparison_markdown, decide_promotion, f1_points, judge,
                                      paired_bootstrap, paired_counts, resolve_drift_reference)
from docre.training.metrics import docred_doc_counts, docred_scores

POLICY = PromotionPolicy()  # the deployment's defaults: tolerance 0.5, floor 1.0, drift budget 1.0, 1000, seed 0


def counts(tp: list[int] | np.ndarray, gold: int | list[int], pred: int | list[int] | None = None) -> dict:
    """doc id -> (correct, submitted, gold), documents d000, d001, ..."""
    tp = np.asarray(tp)
    gold = np.broadcast_to(np.asarray(gold), tp.shape)
    pred = gold if pred is None else np.broadcast_to(np.asarray(pred), tp.shape)
    return {f"d{i:03d}": (int(t), int(p), int(g)) for i, (t, p, g) in enumerate(zip(tp, pred, gold))}


def f1_of(c: dict) -> float:
    return round(float(f1_points(np.array(list(c.values())).sum(axis=0))), 2)


def decide(challenger: dict, champion: dict | None, reference: DriftReference | None = None,
           policy: PromotionPolicy = POLICY):
    return judge(ScoredModel("challenger", f1_of(challenger), challenger),
                 ScoredModel("champion", f1_of(champion), champion) if champion else None, reference, policy, 3)


# ------------------------------------------------------------------------------ counts and the bootstrap itself
def _doc(doc_id: str, n_entities: int, facts: list[tuple[int, int, str]]) -> Document:
    return Document(doc_id, [["w"]], [Entity([Mention(0, 0, 1, f"e{i}")], "X") for i in range(n_entities)],
                    [Fact(h, t, r) for h, t, r in facts])


def _gold() -> list[Document]:
    return [_doc("a", 3, [(0, 1, "R1"), (1, 2, "R1"), (0, 2, "R2")]),
            _doc("b", 2, [(0, 1, "R1")]),
            _doc("c", 2, [(0, 1, "R2"), (1, 0, "R2")]),
            _doc("d", 2, [])]


# two prediction sets on _gold(); duplicates count once, "Na" is submitted but never correct
CHALLENGER = [("a", 0, 1, "R1"), ("a", 0, 1, "R1"), ("a", 1, 2, "R1"), ("a", 2, 0, "R1"), ("b", 0, 1, "R1"),
              ("c", 0, 1, "R2"), ("c", 1, 0, "Na"), ("d", 0, 1, "R1")]
CHAMPION = [("a", 0, 2, "R2"), ("b", 0, 1, "R2"), ("c", 0, 1, "R2"), ("c", 1, 0, "R2")]


def test_doc_counts_are_the_counts_behind_docred_scores():
    gold = _gold()
    per_doc = docred_doc_counts(gold, CHALLENGER)
    # a: 3 distinct submitted, (0,1,R1) and (1,2,R1) correct; b: 1/1; c: 2 submitted (one Na), 1 correct; d: 1 wrong
    assert per_doc == {"a": (2, 3, 3), "b": (1, 1, 1), "c": (1, 2, 2), "d": (0, 1, 0)}
    s = docred_scores(gold, CHALLENGER)
    total = np.array(list(per_doc.values())).sum(axis=0)
    assert tuple(total) == (s.counts["correct"], s.counts["pred"], s.counts["gold"]) == (4, 7, 6)
    assert f1_points(total) == pytest.approx(100 * s.f1) == pytest.approx(800 / 13)
    with pytest.raises(ValueError, match="unknown document id 'z'"):
        docred_doc_counts(gold, [("z", 0, 1, "R1")])


def test_bootstrap_equals_rescoring_every_resample():
    """The vectorised sums give, resample by resample, what docred_scores gives on the resampled documents."""
    gold = _gold()
    a, b, ids = paired_counts(docred_doc_counts(gold, CHALLENGER), docred_doc_counts(gold, CHAMPION))
    assert ids == ["a", "b", "c", "d"]
    resamples, seed = 40, 11
    got = paired_bootstrap(a, b, resamples, seed)

    by_id = {d.id: d for d in gold}
    indices = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    diffs = []
    for row in indices:
        docs, preds = {}, {"ch": [], "cp": []}
        for j, i in enumerate(row):  # a document drawn twice is two documents
            d = by_id[ids[i]]
            new_id = f"{d.id}#{j}"
            docs[new_id] = Document(new_id, d.sentences, d.entities, d.facts)
            for key, source in (("ch", CHALLENGER), ("cp", CHAMPION)):
                preds[key] += [(new_id, h, t, r) for doc_id, h, t, r in source if doc_id == d.id]
        f1 = {k: 100 * docred_scores(list(docs.values()), p).f1 for k, p in preds.items()}
        diffs.append(f1["ch"] - f1["cp"])
    assert got.mean == pytest.approx(float(np.mean(diffs)), abs=1e-4)  # recorded to 4 decimals
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-4)
    assert got.observed == pytest.approx(100 * (docred_scores(gold, CHALLENGER).f1 - docred_scores(gold, CHAMPION).f1),
                                         abs=1e-4)
    assert got.documents == 4 and got.resamples == 40 and got.seed == 11
    # chunking the resamples (bounded memory) draws the same indices
    assert paired_bootstrap(a, b, resamples, seed, max_cells=4 * 7) == got
    assert paired_bootstrap(a, b, resamples, seed + 1) != got


def test_evaluate_returns_per_document_counts_of_the_same_predictions(tiny_encoder, tmp_path, one_torch_thread):
    """evaluate(per_doc=True): the other outputs unchanged; the counts sum to the F1 it reports at each K."""
    import torch
    from conftest import FIXTURES
    from docre.data.document import cdr_inventory
    from docre.data.tokenize import TokenizeConfig, tokenize_to_parquet
    from docre.model.docre_ii import DocREModel, ModelConfig
    from docre.training.train import evaluate, load_split
    data = str(tmp_path / "data")
    tokenize_to_parquet([str(FIXTURES / "cdr_sample.data")], data,
                        TokenizeConfig(encoder=tiny_encoder, relations="cdr"), progress=False)
    torch.manual_seed(3)
    model = DocREModel.create(ModelConfig(encoder=tiny_encoder, feature_dim=16, iterations=2,
                                          inference=dict(num_layers=1, ffn_dim=32, predictor_dim=16)),
                              cdr_inventory()).eval()
    examples, docs = load_split(data)
    plain = evaluate(model, examples, docs, [0, 2])
    with_counts = evaluate(model, examples, docs, [0, 2], per_doc=True)
    per_doc = with_counts.pop("per_doc")
    timing = ("docs_per_s", "seconds")
    assert ({k: v for k, v in with_counts.items() if k not in timing} ==
            {k: v for k, v in plain.items() if k not in timing})
    assert set(per_doc) == {"K0", "K2"} and set(per_doc["K0"]) == {d.id for d in docs}
    for k in ("K0", "K2"):
        total = np.array(list(per_doc[k].values())).sum(axis=0)
        assert total[2] == sum(len(d.facts) for d in docs) and total[1] > 0  # this model predicts something
        assert f1_points(total) == pytest.approx(100 * plain[k]["f1"])


def test_counts_are_paired_by_document_id_not_position():
    ch = {"x": (1, 1, 1), "y": (0, 2, 1)}
    cp = {"y": (0, 2, 1), "x": (1, 1, 1), "only-in-champion": (5, 5, 5)}
    a, b, ids = paired_counts(ch, cp)
    assert ids == ["x", "y"] and (a == b).all()
    with pytest.raises(ValueError, match="no evaluation document"):
        paired_counts({"x": (1, 1, 1)}, {"y": (1, 1, 1)})


def test_bootstrap_is_fast():
    """Issue 28: 1,000 resamples over 500 documents well under 2 s (bench/promotion_bench.py times it)."""
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 6, 500)
    ch = counts(rng.binomial(gold, 0.6), gold)
    cp = counts(rng.binomial(gold, 0.6), gold)
    a, b, _ = paired_counts(ch, cp)
    paired_bootstrap(a, b)  # warm-up (imports, BLAS threads)
    t0 = time.perf_counter()
    paired_bootstrap(a, b, 1000, 0)
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------------------------ the rule on constructed cases
def test_identical_challenger_is_promoted():
    rng = np.random.default_rng(1)
    gold = rng.integers(1, 8, 500)
    champion = counts(rng.binomial(gold, 0.55), gold)
    d = decide(dict(champion), champion)
    assert d.promote
    i = d.interval
    assert (i.observed, i.mean, i.low, i.high) == (0.0, 0.0, 0.0, 0.0)  # paired: every resample differs by 0
    assert i.resamples == 1000 and i.seed == 0 and i.documents == 500


def test_clearly_worse_challenger_is_rejected():
    # 500 documents, 10 gold facts each; champion finds 6 per document (F1 60), challenger 4 (F1 40)
    d = decide(counts([4] * 500, 10), counts([6] * 500, 10))
    assert not d.promote and d.challenger_f1 == 40.0 and d.champion_f1 == 60.0
    assert d.interval.low == pytest.approx(-20.0) and d.interval.high == pytest.approx(-20.0)
    assert "lower bound -20.00 is below -tolerance -0.50" in d.reason
    assert [c["passed"] for c in d.checks] == [True, False, True]


def test_noisy_slightly_worse_challenger_is_rejected_when_its_interval_says_so():
    """Two challengers 0.30 points below the champion: the old fixed rule promotes both; the interval
    promotes the one whose loss is small and steady and rejects the one whose 0.30 is the balance of
    large gains and losses, where document sampling alone could hide a much larger regression."""
    # 500 documents, 20 gold = 20 submitted each: F1 = sum(correct) / 100 points; champion 10 correct each
    champion = counts([10] * 500, 20)
    steady = counts([9] * 30 + [10] * 470, 20)  # 30 documents lose one fact: -0.30
    noisy = counts([7] * 200 + [13] * 190 + [10] * 110, 20)  # -600 + 570 = -30 facts: -0.30
    assert f1_of(champion) == 50.0 and f1_of(steady) == f1_of(noisy) == 49.7

    # the pre-interval rule (observed difference only) cannot tell them apart
    assert decide_promotion(49.7, 50.0, 0.5, 1.0, 3).promote

    ok = decide(steady, champion)
    assert ok.promote and ok.interval.observed == pytest.approx(-0.3)
    assert -0.5 < ok.interval.low < -0.3 < ok.interval.high < 0  # sd ~ sqrt(30)/100 = 0.055

    bad = decide(noisy, champion)
    assert not bad.promote and bad.interval.observed == pytest.approx(-0.3)
    assert bad.interval.low < -1.0 and bad.interval.high > 0.3  # sd ~ sqrt(390 * 9)/100 = 0.59
    assert "95% interval [" in bad.reason and "below -tolerance -0.50" in bad.reason


def test_better_model_is_promoted():
    champion = counts([6] * 500, 10)
    better = counts([7] * 250 + [6] * 250, 10)  # +250 facts over 10,000: +5 points
    d = decide(better, champion, DriftReference("v0", 60.0, "scored today"))
    assert d.promote and d.challenger_f1 == 65.0
    assert d.interval.observed == pytest.approx(5.0) and d.interval.low > 4.0
    assert "within the drift budget 1.00 of the best promoted F1 60.00 (v0, scored today)" in d.reason


def test_floor_and_empty_store():
    assert decide(counts([1] * 10, 10), None).promote  # F1 10: no champion, only the floor
    d = decide(counts([0] * 10, 10), None)
    assert not d.promote and "below the floor 1.00" in d.reason and d.interval is None
    assert [c["check"] for c in d.checks] == ["floor", "interval", "drift"]
    # better than a bad champion is not enough
    assert not decide(counts([1] * 10 + [0] * 290, 10), counts([0] * 300, 10)).promote


def test_policy_is_validated():
    for bad in ({"tolerance": -0.1}, {"drift_budget": -1}, {"resamples": 0}, {"confidence": 1.0}):
        with pytest.raises(ValueError):
            PromotionPolicy(**bad)
    rule = PromotionPolicy().rule(3)
    assert "K=3" in rule and "-0.50" in rule and "1000 resamples" in rule and "drift budget, 1.00" in rule


# ------------------------------------------------------------------------------ drift: a chain through a store
def _fake_checkpoint(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(name.encode())
    return d


def _retrain_chain(tmp_path: Path, policy: PromotionPolicy, n_models: int = 11) -> tuple[str, list]:
    """v0 (F1 60.00) then ten retrains each 0.40 worse than the one before, on one fixed evaluation set.

    50 documents with 250 gold = 250 submitted facts each and the same number correct in every
    document (150 - i for v<i>): F1 = (150 - i) * 0.4 points, and every resample of documents gives
    the same difference, so each step's interval is exactly [-0.40, -0.40] (inside the tolerance).
    The glue is the flow's: the champion is scored today, the best recorded promoted model is
    re-scored today while it is in the store, the decision goes into version.json.
    """
    url = str(tmp_path / "store")
    today = {f"v{i}": counts([150 - i] * 50, 250) for i in range(n_models)}  # the fixed evaluation set
    decisions = []
    for i in range(n_models):
        name = f"v{i}"
        latest = store.read_latest(url)
        champ = ScoredModel(latest, f1_of(today[latest]), today[latest]) if latest else None
        recorded = best_promoted(store.list_versions(url), store.promotion_history(url))
        in_store = {r["version"] for r in store.list_versions(url)}
        reference = resolve_drift_reference(
            recorded, DriftReference(latest, champ.f1, "scored today", 3) if champ else None,
            lambda v: f1_of(today[v]) if v in in_store else None, 3)
        d = judge(ScoredModel(name, f1_of(today[name]), today[name]), champ, reference, policy, 3)
        decisions.append(d)
        lineage = {"compare_k": 3, "metrics": {"K3": {"f1": d.challenger_f1}}, "compared_with": latest,
                   "decision": d.to_dict()}
        store.publish_model(_fake_checkpoint(tmp_path / "ckpts", name), url, name, lineage=lineage,
                            make_latest=d.promote, reason=d.reason)
    return url, decisions


def test_ten_retrains_each_0_4_worse_are_stopped_by_the_drift_budget(tmp_path):
    url, decisions = _retrain_chain(tmp_path, POLICY)
    assert [d.challenger_f1 for d in decisions] == [round(60 - 0.4 * i, 2) for i in range(11)]
    assert [d.promote for d in decisions] == [True, True, True] + [False] * 8
    assert store.read_latest(url) == "v2"  # 0.80 below the best: never 1.0 below
    for d in decisions[1:3]:
        assert (d.interval.low, d.interval.high) == pytest.approx((-0.4, -0.4))
    v3 = decisions[3]  # the one the budget stops: its interval against v2 alone would pass
    assert [c["passed"] for c in v3.checks] == [True, True, False]
    assert v3.drift.reference_version == "v0" and v3.drift.reference_f1 == 60.0
    assert v3.drift.source == "re-scored today" and v3.drift.min_f1 == pytest.approx(59.0)
    assert "more than the drift budget 1.00 below the best promoted F1 60.00 (v0, re-scored today" in v3.reason
    for d in decisions[4:]:  # later ones are also >= 0.8 below the champion v2: the interval fails too
        assert not d.drift.passed
    # every champion on the way stayed within the budget of the best
    assert all(60.0 - d.challenger_f1 <= 1.0 for d in decisions if d.promote)

    # the lineage records the interval and the drift check, so the chain can be followed
    lineage = store.read_version_meta(url, "v3")["lineage"]["decision"]
    assert lineage["interval"]["low"] == pytest.approx(-0.4) and lineage["drift"]["reference_version"] == "v0"
    assert lineage["drift"]["passed"] is False and lineage["rule"].startswith("Promote only if")
    rows = {r["version"]: r for r in store.list_versions(url)}
    assert rows["v3"]["status"] == "rejected" and rows["v2"]["status"] == "latest"
    assert rows["v1"]["interval"]["high"] == pytest.approx(-0.4) and rows["v0"]["interval"] is None


def test_without_a_drift_budget_the_same_chain_slides_four_points(tmp_path):
    """The control: the interval alone promotes every step (each is 0.40 worse than the one before)."""
    url, decisions = _retrain_chain(tmp_path, PromotionPolicy(drift_budget=math.inf))
    assert all(d.promote for d in decisions) and store.read_latest(url) == "v10"
    assert decisions[-1].challenger_f1 == 56.0


def test_best_promoted_follows_the_chain_when_the_best_model_is_gone(tmp_path):
    url, _ = _retrain_chain(tmp_path, POLICY, n_models=4)
    shutil.rmtree(Path(url) / "v0")  # the best model deleted from the store
    rows = store.list_versions(url)
    assert "v0" not in {r["version"] for r in rows}
    best = best_promoted(rows, store.promotion_history(url))
    # still known from the drift records of v1..v3, with its recorded F1
    assert (best.version, best.f1, best.source) == ("v0", 60.0, "recorded")
    ref = resolve_drift_reference(best, DriftReference("v2", 59.2, "scored today", 3), lambda v: None, 3)
    assert ref == best
    d = decide_promotion(58.8, 59.2, reference=ref, compare_k=3)
    assert not d.promote and "(v0, recorded" in d.reason


def test_a_rolled_back_model_is_not_the_drift_reference(tmp_path):
    url = str(tmp_path / "store")
    for name, f1 in (("v1", 50.0), ("v2", 70.0)):  # v2 promoted with a too-good-to-be-true score
        store.publish_model(_fake_checkpoint(tmp_path, name), url, name,
                            lineage={"compare_k": 3, "metrics": {"K3": {"f1": f1}}, "decision": {"promote": True}})
    assert best_promoted(store.list_versions(url), store.promotion_history(url)).version == "v2"
    store.rollback(url)
    assert best_promoted(store.list_versions(url), store.promotion_history(url)).version == "v1"
    store.promote(url, "v2", "it was fine after all")
    assert best_promoted(store.list_versions(url), store.promotion_history(url)).version == "v2"


def test_best_recorded_model_rescored_lower_today_is_replaced_by_the_champion():
    recorded = DriftReference("v1", 62.0, "recorded", 3)
    champ = DriftReference("v2", 60.0, "scored today", 3)
    ref = resolve_drift_reference(recorded, champ, lambda v: 58.5, 3)  # v1 on today's set: 58.5
    assert ref == champ
    ref = resolve_drift_reference(recorded, champ, lambda v: 61.0, 3)
    assert (ref.version, ref.f1, ref.source) == ("v1", 61.0, "re-scored today") and "recorded 62.00" in ref.where
    # the best recorded model is the champion: today's champion score is its re-scoring, nothing else is scored
    assert resolve_drift_reference(DriftReference("v2", 61.0, "recorded"), champ, lambda v: 1 / 0, 3) == champ


# ------------------------------------------------------------------------------ what people see
def test_artifact_shows_interval_drift_check_and_rule():
    d = decide(counts([9] * 30 + [10] * 470, 20), counts([10] * 500, 20),
               DriftReference("v0", 50.5, "re-scored today", 3))
    md = comparison_markdown(d, {"K3": {"f1": 49.7}}, {"K3": {"f1": 50.0}},
                             [{"relation": "CID", "name": "CID", "gold": 5, "f1": 49.7}],
                             [{"relation": "CID", "name": "CID", "gold": 5, "f1": 50.0}], "this run", "v2", "dev")
    assert md.startswith("# Champion / challenger: PROMOTED")
    assert f"- rule: {POLICY.rule(3)}" in md
    i = d.interval
    assert f"95% interval **[{i.low:+.2f}, {i.high:+.2f}]** over 500 documents, 1000 resamples, seed 0" in md
    assert "| drift | challenger F1 49.70; best promoted F1 50.50 (v0, re-scored today at K=3) | >= 49.50 " \
           "(best - 1.00) | pass |" in md
    assert "| floor | challenger F1 49.70 | >= 1.00 | pass |" in md and "| 3 * | 49.70 | 50.00 | -0.30 |" in md


def test_model_list_shows_each_decisions_interval(tmp_path, capsys):
    url, decisions = _retrain_chain(tmp_path, POLICY, n_models=4)
    old = _fake_checkpoint(tmp_path, "old")  # a version.json from before intervals: lists and loads
    store.publish_model(old, url, "v9-old", lineage={"compare_k": 3, "metrics": {"K3": {"f1": 1.0}},
                                                     "decision": {"promote": False, "reason": "old rule"}},
                        make_latest=False)
    assert docre_cli(["model", "list", url, "-v"]) == 0
    out = capsys.readouterr().out
    lines = {line.lstrip("* ").split()[0]: line for line in out.splitlines() if line.lstrip("* ").startswith("v")}
    assert "-0.40 [-0.40, -0.40]" in lines["v1"] and "-0.40 [-0.40, -0.40]" in lines["v3"]
    assert lines["v3"].split()[2] == "rejected"
    assert "drift: best promoted F1 60.00 (v0, re-scored today), budget 1.00: FAIL" in out
    assert lines["v9-old"].split()[2:6] == ["rejected", "3", "1.00", "-"]
    assert store.resolve_model(f"{url}/v9-old")[1] == "v9-old"


def test_point_difference_without_counts():
    """Callers without per-document counts (e.g. by hand) get the observed difference as both bounds."""
    d = decide_promotion(59.4, 60.0, tolerance=0.5, compare_k=3)
    assert not d.promote and "no per-document counts" in d.reason and "K=3" in d.reason
    assert d.interval.resamples == 0 and d.interval.low == d.interval.high == pytest.approx(-0.6)
    assert decide_promotion(59.6, 60.0).promote
