"""Prefect flows: `docre-train` (flows/train.py) and `docre-extract` (flows/extract.py)."""
