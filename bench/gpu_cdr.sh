#!/usr/bin/env bash
# CDR benchmark on a lent GPU machine (see BENCHMARKS.md). Needs carry: carry/minilm-fp16 runs/data/cdr_train runs/data/cdr_dev
# Usage: bench/gpu_cdr.sh STAGES   (e.g. "1" then "2"; resumes from runs/cdr_gpu if present)
set -euo pipefail
STAGES=${1:-"1,2"}
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python - <<PY
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from docre.training.train import TrainConfig, train
cfg = TrainConfig.from_yaml("configs/cdr.yaml").model_copy(update={
    "out_dir": "runs/cdr_gpu", "stages": [int(s) for s in "$STAGES".split(",")], "progress": False})
cfg.model["encoder"] = "carry/minilm-fp16"
t = time.time()
def copy(record):
    os.makedirs("$OUT", exist_ok=True)
    with open("$OUT/history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
train(cfg, on_epoch=copy)
print("total seconds", round(time.time() - t, 1))
PY
