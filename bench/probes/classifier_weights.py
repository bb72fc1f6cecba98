"""Paper Figure 5: how much the inference module's classifier (eq. 12) leans on F vs R.

    python bench/probes/classifier_weights.py runs/ablation/cdr/default-s66/stage2/best runs/ablation/cdr/no_contrastive-s66/stage2/best

Prints, per checkpoint, the average absolute weight of W_c on the feature half and on the relation half
of its input [F_NI, R_NI] (the paper: 0.045 / 0.007 without the contrastive loss, 0.026 / 0.023 with it).
"""
from __future__ import annotations

import sys

from docre.model.docre_ii import DocREModel
from docre.training.report import classifier_weight_shares


def main(paths: list[str]) -> None:
    print("| checkpoint | contrastive | mean abs W_c, feature half | relation half | relation / feature |")
    print("|---|---|---|---|---|")
    for path in paths:
        model = DocREModel.from_pretrained(path)
        s = classifier_weight_shares(model.inference)
        print(f"| {path} | {model.config.contrastive} | {s['feature']:.4f} | {s['relation']:.4f} | "
              f"{s['relation'] / s['feature']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
