"""The `docre` command line: argument parsing over the library, nothing more.

* `main.py`: the entry point (`docre ...`, `python -m docre.cli ...`), `docre data ...`, and error lines.
* `commands.py`: train, evaluate, predict, aggregate and the `data split/synthesize` commands.
* `model_store.py`: `docre model list|promote|rollback` over a model store.

May import every other package of `docre`; nothing in `docre` imports it. No Prefect.
"""
from .main import main

__all__ = ["main"]
