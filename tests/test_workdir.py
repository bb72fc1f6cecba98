"""docre.training.workdir: a stored or failed run's checkpoints go; a killed run's go once they are stale."""
from __future__ import annotations

import os
import time

from docre.training.workdir import remove_checkpoints, remove_stale_runs


def make_run(root, name: str, age_s: float = 0.0):
    run = root / name
    for rel, size in (("stage1/last/model.safetensors", 1000), ("stage2/best/model.safetensors", 500),
                      ("report/report.md", 10)):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(b"x" * size)
    then = time.time() - age_s
    for f in run.rglob("*"):
        os.utime(f, (then, then))
    return run


def test_remove_checkpoints_keeps_the_report(tmp_path):
    run = make_run(tmp_path, "r1")
    assert remove_checkpoints(run) == 1500
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == ["report/report.md"]


def test_only_other_runs_untouched_for_a_day_are_removed(tmp_path):
    make_run(tmp_path, "killed", age_s=2 * 86400)
    make_run(tmp_path, "running", age_s=60)
    make_run(tmp_path, "me", age_s=3 * 86400)
    assert remove_stale_runs(tmp_path, keep="me") == ["killed"]
    assert not list((tmp_path / "killed").glob("stage*")) and (tmp_path / "killed" / "report").exists()
    assert list((tmp_path / "running").glob("stage*")) and list((tmp_path / "me").glob("stage*"))
    assert remove_stale_runs(tmp_path / "nowhere", keep="me") == []
