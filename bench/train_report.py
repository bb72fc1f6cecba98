"""Summarise a training run directory (stage*/history.json) as a table and a learning-curve PNG.

    python bench/train_report.py runs/cdr_cpu [--png runs/cdr_cpu/curves.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run: Path) -> list[dict]:
    rows = []
    for stage in (1, 2):
        path = run / f"stage{stage}" / "history.json"
        if path.exists():
            rows += json.loads(path.read_text())
    return rows


def table(rows: list[dict]) -> str:
    ks = sorted({k for r in rows for k in r["dev"] if k.startswith("K")})
    head = "| stage | epoch | loss | s/epoch | train docs/s | predict docs/s | peak MB | " + \
           " | ".join(f"dev F1 {k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (7 + len(ks))]
    for r in rows:
        f1 = " | ".join(f"{r['dev'][k]['f1'] * 100:.2f}" if k in r["dev"] else "" for k in ks)
        lines.append(f"| {r['stage']} | {r['epoch']} | {r['loss']:.4f} | {r['train_seconds']} | "
                     f"{r['train_docs_per_s']} | {r['dev']['docs_per_s']} | {r['peak_memory_mb']} | {f1} |")
    return "\n".join(lines)


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = list(range(1, len(rows) + 1))
    a.plot(x, [r["loss"] for r in rows], marker="o")
    a.set_xlabel("epoch (stage 1 then stage 2)")
    a.set_ylabel("training loss")
    for k in sorted({k for r in rows for k in r["dev"] if k.startswith("K")}):
        pts = [(i, r["dev"][k]["f1"] * 100) for i, r in zip(x, rows) if k in r["dev"]]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    b.set_xlabel("epoch")
    b.set_ylabel("dev F1")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--png")
    args = ap.parse_args()
    rows = load(Path(args.run))
    print(table(rows))
    if args.png:
        plot(rows, Path(args.png))


if __name__ == "__main__":
    main()
