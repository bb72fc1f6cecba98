"""Prefect flows: `docre-train` (flows/train.py) and `docre-extract` (flows/extract.py).

Importing this package (before Prefect reads its settings) gives the temporary API server Prefect
starts for a run without PREFECT_API_URL three minutes to come up instead of 20 s: on a busy
2-core machine the default times out. The project's prefect.toml says the same for processes
started in the project directory; an explicit setting in the environment wins.
"""
import os

EPHEMERAL_STARTUP_TIMEOUT_S = "180"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)
