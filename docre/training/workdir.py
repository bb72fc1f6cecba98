"""A training run's local scratch directory (`<work_dir>/train/<run>`): what it holds, and when it goes.

A run keeps its resumable state and best checkpoint per stage there (`stage1/`, `stage2/`: several hundred
MB for the default encoder) and its report (`report/`: tables and plots, small). Once the model is in the
store, or the run has failed (a retry resumes from the copy pushed to `work_url`), the checkpoints are dead
weight; a killed run cannot clean up after itself, so the next run removes what such runs left.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600  # a live run writes its state every epoch: untouched for a day means dead


def remove_checkpoints(run_dir: str | Path) -> int:
    """Delete a run's per-stage checkpoints and state (its report stays); returns the bytes freed."""
    freed = 0
    for stage in sorted(Path(run_dir).glob("stage*")):
        freed += sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
        shutil.rmtree(stage, ignore_errors=True)
    return freed


def _last_write(path: Path) -> float:
    return max((f.stat().st_mtime for f in path.rglob("*")), default=path.stat().st_mtime)


def remove_stale_runs(train_root: str | Path, keep: str, older_than_s: float = STALE_AFTER_S) -> list[str]:
    """Remove the checkpoints of other runs under `train_root` not written for `older_than_s` (runs that were
    killed); returns their names. Runs still writing, and `keep` (this run), are left alone."""
    root, now, removed = Path(train_root), time.time(), []
    for run in sorted(p for p in root.glob("*") if p.is_dir() and p.name != keep) if root.exists() else []:
        if any(run.glob("stage*")) and now - _last_write(run) > older_than_s:
            remove_checkpoints(run)
            removed.append(run.name)
    return removed
