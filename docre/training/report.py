"""Evaluation reports: metric rows, PNG plots and a markdown page, from a model and a dev split.

Plain files only (no orchestrator imports): the Prefect evaluate task turns
the result into artifacts, and the same report can be built from a script.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.batch import Example
from ..data.document import Document
from .metrics import docred_scores, format_table

if TYPE_CHECKING:
    from ..model.inference import InferenceModule

_METRIC_KEYS = ("precision", "recall", "f1", "ign_f1", "intra_f1", "inter_f1", "infer_f1")


@dataclass
class EvalReport:
    metrics: dict  # docre.training.train.evaluate output: K0..Kn -> scores, docs_per_s, seconds
    rows: list[dict]  # one row per K, percentages, for a table
    per_relation: list[dict]  # at the final K
    markdown: str
    images: dict[str, str] = field(default_factory=dict)  # name -> PNG path
    files: dict[str, str] = field(default_factory=dict)  # name -> path of everything written


def iteration_rows(metrics: dict) -> list[dict]:
    """One row per inference iteration K with percentages and the F1 gain over K = 0."""
    ks = sorted(int(k[1:]) for k in metrics if k.startswith("K") and k[1:].isdigit())
    base = metrics[f"K{ks[0]}"]["f1"] if ks else 0.0
    rows = []
    for k in ks:
        m = metrics[f"K{k}"]
        row = {"K": k} | {key: round(100 * m[key], 2) for key in _METRIC_KEYS if key in m}
        row["f1_gain"] = round(100 * (m["f1"] - base), 2)
        rows.append(row)
    return rows


def per_relation_rows(model, examples: list[Example], docs: list[Document], iteration: int) -> tuple[list[dict], str]:
    """Per-relation P/R/F1 at `iteration`, and the markdown table (docre.training.metrics.format_table)."""
    decisions = model.predict_examples(examples, iteration)
    preds = [(doc_id, h, t, model.inventory.ids[r]) for doc_id, per_k in decisions.items()
             for h, t, r, _ in per_k[iteration]]
    scores = docred_scores(docs, preds)
    rows = [{"relation": rel, "name": model.inventory.name(rel), "tp": prf.tp, "pred": prf.n_pred,
             "gold": prf.n_gold, "precision": round(100 * prf.precision, 2), "recall": round(100 * prf.recall, 2),
             "f1": round(100 * prf.f1, 2)}
            for rel, prf in sorted(scores.per_relation.items(), key=lambda kv: (-kv[1].n_gold, kv[0]))]
    return rows, format_table(scores, model.inventory.names)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_per_relation(rows: list[dict], path: Path, top: int = 30) -> Path:
    plt = _plt()
    rows = rows[:top]
    fig, ax = plt.subplots(figsize=(6, 0.3 * max(3, len(rows)) + 1), dpi=80)
    labels = [r["relation"] if r["name"] == r["relation"] else f"{r['relation']} {r['name']}"[:40] for r in rows]
    ax.barh(range(len(rows)), [r["f1"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("F1 (%)")
    ax.set_xlim(0, 100)
    ax.set_title("Per-relation F1 (most frequent first)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_iterations(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    ks = [r["K"] for r in rows]
    bars = ax.bar([str(k) for k in ks], [r["f1"] for r in rows], color="tab:green")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['f1']:.2f}\n({r['f1_gain']:+.2f})", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("inference iteration K (0 = base module)")
    ax.set_ylabel("dev F1 (%)")
    ax.set_ylim(0, max([r["f1"] for r in rows] + [1]) * 1.25)
    ax.set_title("F1 and gain over K=0 per inference iteration")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(histories: list[list[dict]], path: Path) -> Path:
    """Training loss and dev F1 per epoch, stages one after the other."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    x0 = 0
    for hist in histories:
        if not hist:
            continue
        stage = hist[0]["stage"]
        xs = [x0 + r["epoch"] for r in hist]
        ax1.plot(xs, [r["loss"] for r in hist], marker="o", label=f"stage {stage}")
        f1 = []
        for r in hist:
            ks = sorted(int(k[1:]) for k in r["dev"] if k.startswith("K"))
            f1.append(100 * r["dev"][f"K{ks[-1]}"]["f1"])
        ax2.plot(xs, f1, marker="o", label=f"stage {stage}")
        x0 = xs[-1]
    ax1.set_title("training loss")
    ax2.set_title("dev F1 (%) at the selection K")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _embed(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"![{title}](data:image/png;base64,{data})"


def build_report(metrics: dict, per_relation: list[dict], relation_table: str, histories: list[list[dict]],
                 out_dir: str | Path, title: str = "DocRE-II evaluation", embed_images: bool = True) -> EvalReport:
    """Write plots, metrics.json and report.md into `out_dir` (local) and return them with the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = iteration_rows(metrics)
    images = {}
    if per_relation:
        images["per_relation_f1"] = str(plot_per_relation(per_relation, out / "per_relation_f1.png"))
    if rows:
        images["f1_by_iteration"] = str(plot_iterations(rows, out / "f1_by_iteration.png"))
    if any(histories):
        images["learning_curves"] = str(plot_learning_curves(histories, out / "learning_curves.png"))
    header = "| K | P | R | F1 | Ign F1 | Intra F1 | Inter F1 | Infer F1 | F1 gain vs K=0 |\n" \
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    body = "".join(f"| {r['K']} | {r.get('precision', 0):.2f} | {r.get('recall', 0):.2f} | {r['f1']:.2f} | "
                   f"{r.get('ign_f1', 0):.2f} | {r.get('intra_f1', 0):.2f} | {r.get('inter_f1', 0):.2f} | "
                   f"{r.get('infer_f1', 0):.2f} | {r['f1_gain']:+.2f} |\n" for r in rows)
    parts = [f"# {title}", "", f"Dev documents per second: {metrics.get('docs_per_s', 'n/a')}", "",
             "## Scores by inference iteration", "", header + body, "## At the final iteration", "", relation_table]
    for name, path in images.items():
        parts += [f"## {name.replace('_', ' ')}", "", _embed(Path(path), name) if embed_images else "",
                  f"`{path}`", ""]
    markdown = "\n".join(parts)
    files = dict(images)
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "per_relation": per_relation}, indent=2))
    (out / "report.md").write_text(markdown)
    files["metrics.json"] = str(out / "metrics.json")
    files["report.md"] = str(out / "report.md")
    return EvalReport(metrics, rows, per_relation, markdown, images, files)


def classifier_weight_shares(module: InferenceModule) -> dict[str, float]:
    """Paper Figure 5 / Sec. 3.6: the average absolute weight of eq. 12's classifier W_c on the feature
    half ``F_NI`` and on the relation half ``R_NI`` of its input -- how much the prediction leans on
    each matrix (the paper: 0.045 vs 0.007 without the contrastive loss, 0.026 vs 0.023 with it)."""
    d = module.cfg.hidden
    w = module.classifier.weight.detach().abs().float()
    return {"feature": w[:, :d].mean().item(), "relation": w[:, d:].mean().item()}
