"""Where trained models live and which one serves: the model store, the promotion decision, storage helpers.

* `storage.py`: small helpers over fsspec URLs (atomic writes, JSON, listing, credential-free URLs for logs).
* `store.py`: versioned model directories with lineage, `latest`, promote and rollback, cached loading.
* `promotion.py`: champion against challenger on one evaluation set, and the decision's artifact text.

May import `docre.data`, `docre.model` and `docre.training`; imported by `docre.extract` and `docre.cli`.
No Prefect.
"""
