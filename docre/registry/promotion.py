"""Champion / challenger: may a newly trained model replace the one in production?

Both models are scored on the same evaluation set at the same iterations K
(docre.training.train.evaluate); the decision compares F1 at one K, in percentage
points. Plain functions, no orchestrator: the Prefect training flow calls them
and turns the markdown into an artifact.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

_COLUMNS = ("f1", "precision", "recall", "ign_f1", "intra_f1", "inter_f1", "infer_f1")


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a challenger may replace the champion as `latest`; F1 values in percentage points."""
    promote: bool
    reason: str
    challenger_f1: float
    champion_f1: float | None
    tolerance: float
    floor: float
    compare_k: int

    def to_dict(self) -> dict:
        return asdict(self)


def decide_promotion(challenger_f1: float, champion_f1: float | None, tolerance: float = 0.5,
                     floor: float = 1.0, compare_k: int = 0) -> PromotionDecision:
    """Promote only if challenger F1 >= champion F1 - tolerance and >= floor (percentage points).

    The tolerance lets a retrain on fresh data through when it scores within
    noise of the champion; the floor stops a collapsed model (F1 ~ 0) from ever
    becoming `latest`, also when there is no champion yet.
    """
    args = (challenger_f1, champion_f1, tolerance, floor, compare_k)
    if challenger_f1 < floor:
        return PromotionDecision(False, f"challenger F1 {challenger_f1:.2f} at K={compare_k} is below the floor "
                                        f"{floor:.2f}", *args)
    if champion_f1 is not None and challenger_f1 < champion_f1 - tolerance:
        return PromotionDecision(False, f"challenger F1 {challenger_f1:.2f} < champion F1 {champion_f1:.2f} - "
                                        f"tolerance {tolerance:.2f} at K={compare_k}", *args)
    why = ("no champion yet" if champion_f1 is None else
           f"challenger F1 {challenger_f1:.2f} >= champion F1 {champion_f1:.2f} - tolerance {tolerance:.2f}")
    return PromotionDecision(True, f"{why} at K={compare_k}; floor {floor:.2f} met", *args)


def percent_by_k(metrics: dict) -> dict[str, dict[str, float]]:
    """docre.training.train.evaluate output -> {"K0": {"f1": 12.34, ...}, ...} in percentage points (JSON-friendly)."""
    return {k: {m: round(100 * v[m], 2) for m in _COLUMNS if m in v}
            for k, v in sorted(metrics.items(), key=lambda kv: kv[0]) if k.startswith("K") and k[1:].isdigit()}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


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
             f"- rule: challenger F1 >= champion F1 - {decision.tolerance:.2f} and >= {decision.floor:.2f}",
             f"- decision: {decision.reason}", "",
             "## Scores per K (%)", "",
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
