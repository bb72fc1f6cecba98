"""Probe scripts keep one JSON list of rows per dataset and add to it run by run: a checkpoint probed
again replaces its old row, every other row stays."""
from __future__ import annotations

import json
from pathlib import Path


def merge_rows(path: str | Path, rows: list[dict], key: str = "checkpoint") -> None:
    out = Path(path)
    replaced = {r[key] for r in rows}
    kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r[key] not in replaced]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept + rows, indent=2))
