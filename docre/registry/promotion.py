"""Champion / challenger: may a newly trained model replace the one in production?

Both models are scored on the same evaluation set at the same iterations K
(docre.training.train.evaluate); the decision compares F1 at one K, in percentage
points. A fixed tolerance on the point difference alone decides on noise (CDR's
500 dev documents move F1 by more than the tolerance between seeds) and lets a
chain of small regressions through, so the rule here has three parts:

1. the floor: the challenger's F1 is at least `floor`;
2. the interval: a paired bootstrap over the evaluation documents (both models
   resampled with the same indices) gives a confidence interval of challenger
   F1 - champion F1, and its lower bound must be >= -tolerance;
3. the drift budget: the challenger's F1 is at least the best F1 ever promoted
   minus `drift_budget`, that model re-scored on today's evaluation set where it
   is still in the store, else as recorded in its lineage.

Plain functions, no orchestrator: the Prefect training flow calls them and
turns the markdown into an artifact.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

_COLUMNS = ("f1", "precision", "recall", "ign_f1", "intra_f1", "inter_f1", "infer_f1")
_EPS = 1e-9  # F1 values are rounded to 0.01; equality at a threshold passes

# doc id -> (correct, submitted, gold facts) at one K: docre.training.metrics.docred_doc_counts
DocCounts = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class PromotionPolicy:
    """The thresholds of the rule (F1 percentage points) and how the bootstrap interval is drawn.

    One object so the flow's parameters reach the decision, the artifact and
    the lineage unchanged; validated here so a bad parameter fails before
    hours of training rather than at the comparison.
    """
    tolerance: float = 0.5
    floor: float = 1.0
    drift_budget: float = 1.0
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not self.tolerance >= 0 or not self.drift_budget >= 0:
            raise ValueError(f"tolerance and drift_budget must be >= 0 F1 points, got {self.tolerance} and "
                             f"{self.drift_budget}")
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")

    def rule(self, compare_k: int) -> str:
        """The rule in words, for the artifact and the lineage (a reader should not need the code)."""
        return (f"Promote only if (1) the challenger's F1 at K={compare_k} is at least the floor, "
                f"{self.floor:.2f}; (2) when there is a champion, the {100 * self.confidence:g}% paired-bootstrap "
                f"interval of challenger F1 - champion F1 ({self.resamples} resamples of the evaluation "
                f"documents, seed {self.seed}) has its lower bound at or above -{self.tolerance:.2f} (the "
                f"tolerance); and (3) the challenger's F1 is at least the best F1 ever promoted minus the drift "
                f"budget, {_pts(self.drift_budget)} (that model re-scored on today's evaluation set where it is "
                f"still in the store, else its F1 recorded in its lineage).")


@dataclass(frozen=True)
class BootstrapInterval:
    """Challenger F1 - champion F1 (points) over resampled evaluation documents."""
    observed: float  # on all paired documents
    mean: float  # over the resamples
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    documents: int  # paired documents (in both models' counts)


@dataclass(frozen=True)
class DriftReference:
    """The best F1 ever promoted, and where that number comes from.

    `source`: "scored today" (the champion, scored in this run), "re-scored today"
    (an earlier champion still in the store) or "recorded" (from a lineage; the
    model is gone, or not yet re-scored); `where` says which lineage.
    """
    version: str
    f1: float
    source: str
    compare_k: int | None = None
    where: str = ""

    def describe(self) -> str:
        k = "" if self.compare_k is None else f" at K={self.compare_k}"
        return f"{self.version}, {self.source}{k}" + (f"; {self.where}" if self.where else "")


@dataclass(frozen=True)
class DriftCheck:
    """Criterion (3) as decided: the reference used and the F1 the challenger needed."""
    reference_version: str | None
    reference_f1: float | None
    source: str | None
    budget: float
    min_f1: float | None
    passed: bool
    compare_k: int | None = None
    where: str = ""


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a challenger may replace the champion as `latest`; F1 values in percentage points.

    The first seven fields are the pre-interval decision's (events and old
    lineages read them); `interval`, `drift`, `checks` and `rule` say why.
    """
    promote: bool
    reason: str
    challenger_f1: float
    champion_f1: float | None
    tolerance: float
    floor: float
    compare_k: int
    drift_budget: float | None = None
    interval: BootstrapInterval | None = None
    drift: DriftCheck | None = None
    checks: tuple[dict, ...] = ()  # {"check", "passed", "detail"} for floor, interval, drift
    rule: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["checks"] = list(out["checks"])
        return out


@dataclass(frozen=True)
class ScoredModel:
    """One model's result on today's evaluation set at the compared K: F1 (points) and per-document counts."""
    name: str
    f1: float
    counts: DocCounts | None = None


def _pts(x: float) -> str:
    return "unlimited" if math.isinf(x) else f"{x:.2f}"


def f1_points(counts: np.ndarray) -> np.ndarray:
    """Micro F1 in points from (..., 3) arrays of (correct, submitted, gold): 200 * correct / (submitted + gold)."""
    counts = np.asarray(counts, dtype=np.float64)
    denom = counts[..., 1] + counts[..., 2]
    return np.where(denom > 0, 200.0 * counts[..., 0] / np.where(denom > 0, denom, 1.0), 0.0)


def paired_counts(challenger: DocCounts, champion: DocCounts) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both models' per-document counts as aligned (n, 3) arrays, over the documents both have.

    Pairing by document id, not by position: each model reads the evaluation
    set with its own tokenizer, and nothing promises the same order.
    """
    ids = sorted(set(challenger) & set(champion))
    if not ids:
        raise ValueError("no evaluation document is in both models' per-document counts")
    a = np.array([challenger[i] for i in ids], dtype=np.int64).reshape(len(ids), 3)
    b = np.array([champion[i] for i in ids], dtype=np.int64).reshape(len(ids), 3)
    return a, b, ids


def paired_bootstrap(challenger: np.ndarray, champion: np.ndarray, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, max_cells: int = 1 << 22) -> BootstrapInterval:
    """Percentile interval of challenger F1 - champion F1 over documents resampled with replacement.

    `challenger` and `champion` are (n, 3) per-document counts of the same n
    documents. Each resample draws n document indices once and uses them for
    both models (paired: a hard document is hard for both, so the difference
    varies far less than either F1). Counts per resample are a weight matrix
    (how often each document was drawn, by bincount) times the counts, so the
    cost is one matrix product, not re-scoring; `max_cells` bounds the weight
    matrix's memory by doing the resamples in chunks (the random stream is the
    same for any chunking).
    """
    a = np.asarray(challenger, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"expected two (n, 3) count arrays of the same n, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("no documents to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    both = np.concatenate([a, b], axis=1)  # (n, 6)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples, dtype=np.float64)
    rows = max(1, max_cells // n)
    for start in range(0, resamples, rows):
        m = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        flat = (idx + (np.arange(m, dtype=np.int64) * n)[:, None]).ravel()
        weights = np.bincount(flat, minlength=m * n).reshape(m, n).astype(np.float64)
        sums = weights @ both
        diffs[start:start + m] = f1_points(sums[:, :3]) - f1_points(sums[:, 3:])
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    observed = float(f1_points(a.sum(axis=0)) - f1_points(b.sum(axis=0)))
    # 4 decimals: far below any tolerance, and the lineage stays readable
    return BootstrapInterval(observed=round(observed, 4), mean=round(float(diffs.mean()), 4), low=round(float(low), 4),
                             high=round(float(high), 4), confidence=confidence, resamples=resamples, seed=seed,
                             documents=n)


def best_promoted(rows: Iterable[Mapping], history: Iterable[Mapping] = ()) -> DriftReference | None:
    """The highest F1 ever promoted, as recorded: the drift budget's reference before re-scoring.

    `rows` are docre.registry.store.list_versions rows; `history` is the store's
    promotions.json. Candidates are every version that was ever promoted (its
    own recorded F1 at its compared K) and every decision's drift record (so a
    best model whose directory was deleted still counts through the chain).
    A version that was rolled back from, and not promoted again since, is not a
    candidate: a rollback says it should not have been in production.
    """
    withdrawn: set[str] = set()
    for e in history:
        withdrawn.discard(e.get("version"))
        if e.get("action") == "rollback" and e.get("previous"):
            withdrawn.add(e["previous"])
    best: DriftReference | None = None

    def offer(c: DriftReference) -> None:
        nonlocal best
        if c.version not in withdrawn and (best is None or c.f1 > best.f1):
            best = c

    for r in rows:
        if r.get("status") in ("latest", "promoted") and isinstance(r.get("f1"), (int, float)):
            offer(DriftReference(r["version"], float(r["f1"]), "recorded", r.get("compare_k"),
                                 "its version.json lineage"))
        d = r.get("drift") or {}
        if d.get("reference_version") and isinstance(d.get("reference_f1"), (int, float)):
            offer(DriftReference(d["reference_version"], float(d["reference_f1"]), "recorded", d.get("compare_k"),
                                 f"the drift record in {r['version']}'s lineage ({d.get('source')})"))
    return best


def drift_reference(*candidates: DriftReference | None) -> DriftReference | None:
    """The highest of the given references (the first on a tie: pass today's scores first)."""
    best = None
    for c in candidates:
        if c is not None and (best is None or c.f1 > best.f1):
            best = c
    return best


def resolve_drift_reference(recorded: DriftReference | None, champion_today: DriftReference | None,
                            rescore: Callable[[str], float | None], compare_k: int) -> DriftReference | None:
    """The drift budget's reference for today: the higher of the champion scored today and the best recorded.

    The best recorded model (best_promoted) is re-scored on today's evaluation
    set by `rescore(version)` where that is possible (it returns None when the
    model is no longer in the store), because a recorded F1 may come from
    another evaluation set; only when it cannot be re-scored does its recorded
    F1 stand. When the best recorded model is the champion, today's champion
    score is that re-scoring.
    """
    best_today = None
    if recorded is not None and (champion_today is None or recorded.version != champion_today.version):
        f1 = rescore(recorded.version)
        best_today = recorded if f1 is None else DriftReference(
            recorded.version, float(f1), "re-scored today", compare_k,
            f"recorded {recorded.f1:.2f}" + ("" if recorded.compare_k is None else f" at K={recorded.compare_k}"))
    return drift_reference(champion_today, best_today)


def decide_promotion(challenger_f1: float, champion_f1: float | None, tolerance: float = 0.5,
                     floor: float = 1.0, compare_k: int = 0, *, interval: BootstrapInterval | None = None,
                     reference: DriftReference | None = None, drift_budget: float = 1.0,
                     rule: str = "") -> PromotionDecision:
    """Promote iff F1 >= floor, interval lower bound >= -tolerance (with a champion), F1 >= best - drift_budget.

    The floor stops a collapsed model (F1 ~ 0), also when the store is empty.
    The interval stops a challenger that is worse beyond what document
    sampling explains, and lets through one whose difference is noise.
    Without an interval (no per-document counts) the observed difference
    stands in for both bounds. The drift budget stops a chain of retrains
    that each pass (2) against the one before while together sliding away
    from the best model ever promoted. All three are evaluated and reported;
    the reason names the first that failed.
    """
    c = challenger_f1
    checks: list[dict] = []
    floor_ok = c >= floor - _EPS
    checks.append({"check": "floor", "passed": floor_ok,
                   "detail": f"challenger F1 {c:.2f} {'>=' if floor_ok else '<'} floor {floor:.2f}"})
    fails: list[str] = [] if floor_ok else [f"challenger F1 {c:.2f} at K={compare_k} is below the floor {floor:.2f}"]

    if champion_f1 is None:
        interval_ok = True
        checks.append({"check": "interval", "passed": True, "detail": "no champion yet: nothing to compare with"})
    else:
        if interval is None:
            d = c - champion_f1
            interval = BootstrapInterval(d, d, d, d, 0.0, 0, 0, 0)
        interval_ok = interval.low >= -tolerance - _EPS
        span = (f"{100 * interval.confidence:g}% interval [{interval.low:+.2f}, {interval.high:+.2f}]"
                if interval.resamples else "no per-document counts: the observed difference")
        checks.append({"check": "interval", "passed": interval_ok,
                       "detail": f"challenger - champion {interval.observed:+.2f} ({span}); lower bound "
                                 f"{interval.low:+.2f} {'>=' if interval_ok else '<'} -{tolerance:.2f}"})
        if not interval_ok:
            fails.append(f"challenger F1 {c:.2f} vs champion F1 {champion_f1:.2f} at K={compare_k}: "
                         f"difference {interval.observed:+.2f}, {span}, lower bound {interval.low:+.2f} is "
                         f"below -tolerance -{tolerance:.2f}")

    if reference is None:
        drift = DriftCheck(None, None, None, drift_budget, None, True)
        checks.append({"check": "drift", "passed": True, "detail": "no model promoted yet"})
    else:
        min_f1 = reference.f1 - drift_budget
        ok = c >= min_f1 - _EPS
        drift = DriftCheck(reference.version, reference.f1, reference.source, drift_budget,
                           None if math.isinf(min_f1) else round(min_f1, 4), ok, reference.compare_k,
                           reference.where)
        need = "any" if math.isinf(min_f1) else f"{min_f1:.2f}"
        checks.append({"check": "drift", "passed": ok,
                       "detail": f"challenger F1 {c:.2f} {'>=' if ok else '<'} {need} = best promoted F1 "
                                 f"{reference.f1:.2f} ({reference.describe()}) - drift budget "
                                 f"{_pts(drift_budget)}"})
        if not ok:
            fails.append(f"challenger F1 {c:.2f} at K={compare_k} is more than the drift budget "
                         f"{_pts(drift_budget)} below the best promoted F1 {reference.f1:.2f} "
                         f"({reference.describe()})")

    promote = not fails
    if promote:
        parts = [f"challenger F1 {c:.2f} at K={compare_k} >= floor {floor:.2f}"]
        parts.append("no champion yet" if champion_f1 is None else
                     f"vs champion F1 {champion_f1:.2f}: lower bound {interval.low:+.2f} >= -{tolerance:.2f}")
        parts.append("no model promoted before" if reference is None else
                     f"within the drift budget {_pts(drift_budget)} of the best promoted F1 {reference.f1:.2f} "
                     f"({reference.version}, {reference.source})")
        reason = "; ".join(parts)
    else:
        reason = "; ".join(fails)
    return PromotionDecision(promote, reason, c, champion_f1, tolerance, floor, compare_k, drift_budget,
                             interval if champion_f1 is not None else None, drift, tuple(checks), rule)


def judge(challenger: ScoredModel, champion: ScoredModel | None, reference: DriftReference | None,
          policy: PromotionPolicy, compare_k: int) -> PromotionDecision:
    """The whole decision from today's scores: the paired bootstrap when both have counts, then the rule.

    `reference` is the drift reference already resolved (resolve_drift_reference).
    """
    interval = None
    if champion is not None and challenger.counts is not None and champion.counts is not None:
        a, b, _ = paired_counts(challenger.counts, champion.counts)
        interval = paired_bootstrap(a, b, policy.resamples, policy.seed, policy.confidence)
    return decide_promotion(challenger.f1, champion.f1 if champion else None, policy.tolerance, policy.floor,
                            compare_k, interval=interval, reference=reference, drift_budget=policy.drift_budget,
                            rule=policy.rule(compare_k))


def percent_by_k(metrics: dict) -> dict[str, dict[str, float]]:
    """docre.training.train.evaluate output -> {"K0": {"f1": 12.34, ...}, ...} in percentage points (JSON-friendly)."""
    return {k: {m: round(100 * v[m], 2) for m in _COLUMNS if m in v}
            for k, v in sorted(metrics.items(), key=lambda kv: kv[0]) if k.startswith("K") and k[1:].isdigit()}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _old_rule(d: PromotionDecision) -> str:
    return f"challenger F1 >= champion F1 - {d.tolerance:.2f} and >= {d.floor:.2f}"


def decision_lines(decision: PromotionDecision) -> list[str]:
    """The three checks as a markdown table: what was measured, against what, pass or fail."""
    i, d = decision.interval, decision.drift
    lines = ["## Decision", "", "| check | measured | needed | result |", "|---|---|---|---|",
             f"| floor | challenger F1 {decision.challenger_f1:.2f} | >= {decision.floor:.2f} | "
             f"{_verdict(decision.challenger_f1 >= decision.floor - _EPS)} |"]
    if decision.champion_f1 is None:
        lines.append("| interval | no champion | - | pass |")
    elif i is not None and i.resamples:
        lines.append(f"| interval | challenger - champion: {i.observed:+.2f} (bootstrap mean {i.mean:+.2f}), "
                     f"{100 * i.confidence:g}% interval **[{i.low:+.2f}, {i.high:+.2f}]** over {i.documents} "
                     f"documents, {i.resamples} resamples, seed {i.seed} | lower bound >= "
                     f"-{decision.tolerance:.2f} | {_verdict(i.low >= -decision.tolerance - _EPS)} |")
    else:
        diff = decision.challenger_f1 - decision.champion_f1
        lines.append(f"| interval | challenger - champion: {diff:+.2f} (no per-document counts, no interval) | "
                     f">= -{decision.tolerance:.2f} | {_verdict(diff >= -decision.tolerance - _EPS)} |")
    if d is None or d.reference_version is None:
        lines.append("| drift | no model promoted yet | - | pass |")
    else:
        ref = DriftReference(d.reference_version, d.reference_f1, d.source or "", d.compare_k, d.where)
        need = "-" if d.min_f1 is None else f">= {d.min_f1:.2f} (best - {_pts(d.budget)})"
        lines.append(f"| drift | challenger F1 {decision.challenger_f1:.2f}; best promoted F1 {d.reference_f1:.2f} "
                     f"({ref.describe()}) | {need} | {_verdict(d.passed)} |")
    return lines + [""]


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def comparison_markdown(decision: PromotionDecision, challenger: dict, champion: dict | None,
                        challenger_relations: list[dict], champion_relations: list[dict] | None,
                        challenger_name: str, champion_name: str | None, eval_name: str) -> str:
    """Both models side by side: P/R/F1 per K, then F1 per relation at the compared K.

    `challenger` / `champion` are percent_by_k outputs; the relation lists are
    docre.training.report.per_relation_rows rows (relation, name, gold, f1, ...).
    """
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED (stored as a candidate; `latest` unchanged)"
    lines = [f"# Champion / challenger: {verdict}", "",
             f"- challenger: `{challenger_name}`",
             f"- champion: `{champion_name}`" if champion_name else "- champion: none (empty model store)",
             f"- evaluation set: `{eval_name}`, compared at K={decision.compare_k}",
             f"- rule: {decision.rule or _old_rule(decision)}",
             f"- decision: {decision.reason}", ""]
    lines += decision_lines(decision)
    lines += ["## Scores per K (%)", "",
             "| K | challenger F1 | champion F1 | diff | challenger P | champion P | challenger R | champion R |"
             " challenger Ign F1 | champion Ign F1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k, c in challenger.items():
        h = (champion or {}).get(k, {})
        diff = c["f1"] - h["f1"] if "f1" in h else None
        lines.append(f"| {k[1:]}{' *' if int(k[1:]) == decision.compare_k else ''} | {_fmt(c.get('f1'))} | "
                     f"{_fmt(h.get('f1'))} | {'-' if diff is None else f'{diff:+.2f}'} | {_fmt(c.get('precision'))} | "
                     f"{_fmt(h.get('precision'))} | {_fmt(c.get('recall'))} | {_fmt(h.get('recall'))} | "
                     f"{_fmt(c.get('ign_f1'))} | {_fmt(h.get('ign_f1'))} |")
    lines += ["", f"## F1 per relation at K={decision.compare_k} (%)", "",
              "| relation | gold | challenger F1 | champion F1 | diff |", "|---|---|---|---|---|"]
    champ_rel = {r["relation"]: r for r in champion_relations or []}
    for r in challenger_relations:
        h = champ_rel.get(r["relation"])
        name = r["relation"] if r.get("name") in (None, r["relation"]) else f"{r['relation']} {r['name']}"
        diff = f"{r['f1'] - h['f1']:+.2f}" if h else "-"
        lines.append(f"| {name} | {r.get('gold', '')} | {_fmt(r['f1'])} | {_fmt(h['f1'] if h else None)} | {diff} |")
    return "\n".join(lines) + "\n"
