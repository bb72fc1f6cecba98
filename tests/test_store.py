"""The model store's promotion history, listing, credentials check and off-pod training state (no Prefect)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from docre.registry import store
from docre.registry.promotion import DriftReference, comparison_markdown, decide_promotion
from docre.cli import main as docre_cli


def fake_checkpoint(root: Path, name: str, payload: bytes) -> Path:
    """Enough of a checkpoint directory for the store (config.json + weights file); the store never loads it."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(payload)
    return d


def lineage(f1: float, promote: bool | None) -> dict:
    out = {"compare_k": 3, "metrics": {"K3": {"f1": f1}}, "compared_with": None}
    if promote is not None:
        out["decision"] = {"promote": promote, "reason": "test"}
    return out


@pytest.fixture
def model_store(tmp_path) -> str:
    """v1 promoted, v2 promoted, v3 stored as a rejected candidate."""
    url = str(tmp_path / "store")
    for i, (promote, f1) in enumerate([(True, 50.0), (True, 60.0), (False, 0.0)], 1):
        ckpt = fake_checkpoint(tmp_path / "ckpts", f"v{i}", bytes([i]) * 10)
        store.publish_model(ckpt, url, f"v{i}", lineage=lineage(f1, promote), make_latest=promote)
    return url


def test_decision_rule():
    assert decide_promotion(10.0, None).promote  # empty store: only the floor
    assert not decide_promotion(0.5, None).promote  # below the floor of 1.0
    assert decide_promotion(59.6, 60.0, tolerance=0.5).promote  # within the tolerance
    d = decide_promotion(59.4, 60.0, tolerance=0.5, compare_k=3)  # no per-document counts: the point difference
    assert not d.promote and "challenger F1 59.40 vs champion F1 60.00 at K=3" in d.reason
    assert "lower bound -0.60 is below -tolerance -0.50" in d.reason
    assert not decide_promotion(0.9, 0.5, floor=1.0).promote  # better than a bad champion is not enough
    # the drift budget: within 1.0 of the best ever promoted, also when the champion itself is worse
    best = DriftReference("v1", 60.0, "recorded", 3)
    assert decide_promotion(59.0, 59.2, reference=best).promote
    d = decide_promotion(58.9, 59.2, reference=best)
    assert not d.promote and "drift budget 1.00 below the best promoted F1 60.00 (v1, recorded at K=3)" in d.reason


def test_candidate_does_not_move_latest_and_history_records_moves(model_store):
    assert store.read_latest(model_store) == "v2"
    history = store.promotion_history(model_store)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [("promote", "v1", None),
                                                                             ("promote", "v2", "v1")]
    assert store.read_version_meta(model_store, "v3")["lineage"]["decision"]["promote"] is False
    assert store.resolve_model(model_store)[1] == "v2"


def test_rollback_walks_back_through_promotions_and_promote_is_recorded(model_store):
    assert store.rollback(model_store)["version"] == "v1"
    assert store.read_latest(model_store) == "v1"
    with pytest.raises(LookupError):  # nothing before v1
        store.rollback(model_store)
    store.promote(model_store, "v3", reason="hand-checked")
    assert store.read_latest(model_store) == "v3"
    assert store.rollback(model_store)["version"] == "v1"  # back to what was latest before v3
    assert store.promote(model_store, "v1").get("unchanged")  # already latest: no history entry
    assert [e["action"] for e in store.promotion_history(model_store)] == ["promote", "promote", "rollback",
                                                                           "promote", "rollback"]
    with pytest.raises(FileNotFoundError):
        store.promote(model_store, "v9")


def test_list_versions_and_cli(model_store, capsys):
    rows = {r["version"]: r for r in store.list_versions(model_store)}
    assert {v: r["status"] for v, r in rows.items()} == {"v1": "promoted", "v2": "latest", "v3": "rejected"}
    assert rows["v2"]["f1"] == 60.0 and rows["v2"]["latest"] and rows["v2"]["compare_k"] == 3
    assert rows["v3"]["interval"] is None and rows["v3"]["drift"] is None  # version.json from before intervals
    assert docre_cli(["model", "list", model_store, "-v"]) == 0
    out = capsys.readouterr().out
    assert "* v2" in out and "rejected: test" in out and "2 move(s) of latest" in out
    v3 = next(line for line in out.splitlines() if line.lstrip().startswith("v3"))
    assert v3.split()[-2:] == ["-", "-"]  # no interval, compared with nothing
    assert docre_cli(["model", "rollback", model_store]) == 0
    assert "latest v2 -> v1" in capsys.readouterr().out
    assert docre_cli(["model", "promote", model_store, "v2", "--reason", "fixed"]) == 0
    assert store.promotion_history(model_store)[-1]["reason"] == "fixed"
    with pytest.raises(SystemExit) as e:
        docre_cli(["model", "promote", model_store, "nope"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: FileNotFoundError:")


def test_missing_s3_credentials_are_one_named_line(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(store.StoreAccessError, match=r"^s3://b/m: no S3 credentials; set AWS_ACCESS_KEY_ID"):
        store.check_store_access("s3://b/m")
    store.check_store_access(str(tmp_path))  # local: nothing to check
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    store.check_store_access("s3://b/m")


def test_stage_state_round_trip_keeps_state_and_best_of_the_same_epoch(tmp_path):
    stage = tmp_path / "local" / "stage1"
    url = str(tmp_path / "remote" / "stage1")

    def epoch(e: int, best: bool) -> None:
        (stage / "last").mkdir(parents=True, exist_ok=True)
        (stage / "last" / "state.json").write_text(json.dumps({"epoch": e}))
        (stage / "last" / "state.safetensors").write_bytes(bytes([e]))
        (stage / "history.json").write_text(json.dumps(list(range(e + 1))))
        if best:
            (stage / "best").mkdir(exist_ok=True)
            (stage / "best" / "config.json").write_text(json.dumps({"from_epoch": e}))
        store.push_stage_state(stage, url, e, best)

    epoch(0, True)
    epoch(1, False)
    epoch(2, True)
    epoch(3, False)
    current = json.loads((Path(url) / "CURRENT.json").read_text())
    assert current == {"epoch": 3, "state": "state-3", "best": "best-2"}
    assert sorted(p.name for p in Path(url).iterdir()) == ["CURRENT.json", "best-2", "state-3"]  # old ones removed

    fresh = tmp_path / "fresh-pod" / "stage1"
    assert store.pull_stage_state(url, fresh) == 3
    assert json.loads((fresh / "last" / "state.json").read_text())["epoch"] == 3
    assert json.loads((fresh / "best" / "config.json").read_text()) == {"from_epoch": 2}
    assert json.loads((fresh / "history.json").read_text()) == [0, 1, 2, 3]
    assert store.pull_stage_state(url, fresh) is None  # the local disk is already there
    assert store.pull_stage_state(str(tmp_path / "nothing"), tmp_path / "x") is None
    store.remove_work_state(url)
    assert not Path(url).exists()


def test_comparison_markdown_side_by_side():
    d = decide_promotion(40.0, 60.0, compare_k=1)
    md = comparison_markdown(d, {"K0": {"f1": 30.0}, "K1": {"f1": 40.0}}, {"K0": {"f1": 50.0}, "K1": {"f1": 60.0}},
                             [{"relation": "CID", "name": "CID", "gold": 5, "f1": 40.0}],
                             [{"relation": "CID", "name": "CID", "gold": 5, "f1": 60.0}], "this run", "v1", "dev")
    assert md.startswith("# Champion / challenger: NOT PROMOTED")
    assert "| 1 * | 40.00 | 60.00 | -20.00 |" in md and "| CID | 5 | 40.00 | 60.00 | -20.00 |" in md


def test_model_cache_follows_the_published_content(s3, tmp_path):
    """A version published again under the same URL is downloaded again, not served from the old copy."""
    from conftest import BUCKET
    url = f"s3://{BUCKET}/cache-store"
    cache = tmp_path / "cache"
    store.publish_model(fake_checkpoint(tmp_path, "a", b"first"), url, "v1")
    first = store.fetch_model(f"{url}/v1", cache)
    assert (first / "model.safetensors").read_bytes() == b"first"
    assert store.fetch_model(f"{url}/v1", cache) == first  # unchanged: the cached copy
    s3.rm(f"{BUCKET}/cache-store", recursive=True)
    store.publish_model(fake_checkpoint(tmp_path, "b", b"second"), url, "v1")
    second = store.fetch_model(f"{url}/v1", cache)
    assert second != first and (second / "model.safetensors").read_bytes() == b"second"
