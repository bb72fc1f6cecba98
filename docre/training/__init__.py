"""Training and evaluation: the two-stage training loop, the scores, and the report.

* `train.py`: configuration, the stage 1 / stage 2 loop with resumable checkpoints, `evaluate`.
* `cpu.py`: how CPU training uses the machine: threads, backing off under contention, memory reuse.
* `metrics.py`: DocRED's F1 family (Ign F1, intra, inter, inference) and CDR's F1.
* `report.py`: tables and plots of a trained model (per relation, per iteration, learning curves).
* `workdir.py`: a training run's local scratch directory and its clean-up.

May import `docre.data` and `docre.model`; imported by `docre.registry`, `docre.extract` and `docre.cli`.
No Prefect.
"""
