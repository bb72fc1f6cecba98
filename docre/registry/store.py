"""The model store: versioned checkpoint directories in any fsspec store, and loading them once per process.

Layout::

    <store_url>/<version>/...        a `DocREModel.save_pretrained` directory + version.json
    <store_url>/latest               text file naming the production ("champion") version; written LAST
    <store_url>/promotions.json      every move of `latest` (promote / rollback), oldest first

Readers follow `latest` once and then use the versioned directory, so a
publish in progress is never seen half-written. A version can be stored
without becoming `latest` (a rejected challenger, a candidate); each
version.json carries the model's lineage (data fingerprints, config, code
version, encoder, metrics per K, hardware, wall time, compared-with version,
promotion decision).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Mapping

from .storage import VERSION_RE, exists, fs_of, is_local, join, read_text, redact_url, write_bytes_atomic


def file_digests(local_dir: str | Path) -> dict[str, dict]:
    """relative path -> {sha256, size} for every file under `local_dir`."""
    root = Path(local_dir)
    return {p.relative_to(root).as_posix(): file_digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def file_digest(path: str | Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": Path(path).stat().st_size}


def make_version(local_dir: str | Path, when: float | None = None) -> str:
    """A sortable, content-tied version name: UTC time + the weights' hash (e.g. 20250101-120000-1a2b3c4d)."""
    digest = file_digests(local_dir).get("model.safetensors", {}).get("sha256", uuid.uuid4().hex)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(when)) + "-" + digest[:8]


def publish_model(local_dir: str | Path, store_url: str, version: str,
                  extra_files: Mapping[str, str | Path] | None = None, *, lineage: Mapping | None = None,
                  make_latest: bool = True, reason: str = "published") -> str:
    """Copy a checkpoint directory to ``store_url/<version>/`` and (by default) point ``store_url/latest`` at it.

    Order makes it safe to interrupt: the files, then ``<version>/version.json``
    (file list with sha256, and `lineage`), then ``latest`` (last, through
    `set_latest`, which records the move in promotions.json). With
    make_latest=False the version is only stored (a candidate). `extra_files`
    maps names inside the version directory to local files (reports,
    metrics). Versions are immutable: publishing an existing version with
    other content raises FileExistsError; with the same content it only
    re-points ``latest``. Returns the version's URL.
    """
    if not VERSION_RE.match(version):
        raise ValueError(f"bad version name {version!r}: letters, digits, '.', '_', '-' only")
    local = Path(local_dir)
    if not (local / "config.json").exists():
        raise FileNotFoundError(f"{local} is not a checkpoint directory (no config.json)")
    files = {rel: local / rel for rel in file_digests(local)}
    for name, path in (extra_files or {}).items():
        files[name] = Path(path)
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a file")
    digests = {rel: file_digest(path) for rel, path in files.items()}
    version_url = join(store_url, version)
    fs, vpath = fs_of(version_url)
    meta_url = join(version_url, "version.json")
    if exists(meta_url):
        old = json.loads(read_text(meta_url))
        if old.get("files") != digests:
            raise FileExistsError(f"{version_url} already exists with other content; versions are immutable")
    else:
        if is_local(fs):
            fs.makedirs(vpath, exist_ok=True)
        for rel, path in files.items():
            target = f"{vpath}/{rel}"
            if is_local(fs):
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)
        meta = {"version": version, "files": digests, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if lineage is not None:
            meta["lineage"] = dict(lineage)
        write_bytes_atomic(meta_url, json.dumps(meta, indent=1, default=str).encode())
    if make_latest:
        set_latest(store_url, version, "promote", reason)  # commit point
    return version_url


def resolve_model(model_url: str) -> tuple[str, str]:
    """(checkpoint URL, version) for a model store root (follows ``latest``) or a checkpoint directory."""
    url = model_url.rstrip("/")
    if exists(join(url, "config.json")):
        meta_url = join(url, "version.json")
        version = json.loads(read_text(meta_url))["version"] if exists(meta_url) else url.rsplit("/", 1)[-1]
        return url, version
    latest = join(url, "latest")
    if exists(latest):
        version = read_text(latest).strip()
        checkpoint = join(url, version)
        if not exists(join(checkpoint, "config.json")):
            raise FileNotFoundError(f"{latest} names version {version!r} but {checkpoint} has no checkpoint")
        return checkpoint, version
    raise FileNotFoundError(f"{model_url}: neither a checkpoint directory (config.json) nor a model store (latest)")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DOCRE_MODEL_CACHE") or Path.home() / ".cache" / "docre" / "models")


def fetch_model(checkpoint_url: str, cache_dir: str | Path | None = None) -> Path:
    """A local directory holding the checkpoint: itself when local, else a verified download in `cache_dir`.

    Downloads go to a temporary directory renamed into place, so processes
    sharing a cache never see a half-copied model.
    """
    fs, path = fs_of(checkpoint_url)
    if is_local(fs):
        return Path(path)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    # keyed by what the checkpoint holds, not only where: a version published again under the same URL
    # (a rebuilt store, a test bucket) must not be served from an old copy
    key = f"{checkpoint_url}\n{_remote_fingerprint(fs, path)}"
    target = root / hashlib.sha256(key.encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        for remote in fs.find(path):
            rel = remote[len(path.rstrip("/")) + 1:]
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(dest))
        if (tmp / "version.json").exists():
            expected = json.loads((tmp / "version.json").read_text())["files"]
            got = file_digests(tmp)
            bad = [rel for rel, d in expected.items() if got.get(rel) != d]
            if bad:
                raise IOError(f"{checkpoint_url}: downloaded files do not match version.json: {bad[:5]}")
        (tmp / ".complete").write_text(checkpoint_url)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remote_fingerprint(fs, path: str) -> str:
    """version.json (it lists every file's digest), or the files' names, sizes and ETags/mtimes."""
    try:
        return fs.cat_file(f"{path.rstrip('/')}/version.json").decode()
    except FileNotFoundError:
        files = fs.find(path, detail=True)
        return json.dumps(sorted((name, info.get("size"), str(info.get("ETag") or info.get("mtime") or ""))
                                 for name, info in files.items()))


_MODELS: dict[tuple[str, str, str], object] = {}
_MODEL_LOADS: list[tuple[str, str, str]] = []
_MODEL_LOCK = threading.Lock()


def load_model(checkpoint_url: str, version: str, device: str = "auto", cache_dir: str | Path | None = None):
    """`DocREModel` for (checkpoint, version, device), loaded once per process and then reused."""
    from ..training.train import resolve_device
    key = (checkpoint_url, version, str(resolve_device(device)))
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from ..model.docre_ii import DocREModel
            model = DocREModel.from_pretrained(fetch_model(checkpoint_url, cache_dir), key[2])
            _MODELS.clear()  # one model per process: a new version replaces the old one
            _MODELS[key] = model
            _MODEL_LOADS.append(key)
        return model


def model_cache_info() -> dict:
    """What this process has loaded: for checking that workers load a model once, not per shard."""
    return {"pid": os.getpid(), "loads": [list(k) for k in _MODEL_LOADS], "cached": [list(k) for k in _MODELS]}


# ------------------------------------------------------------------------------ promotion (champion / challenger)
log = logging.getLogger("docre.registry.store")

HISTORY = "promotions.json"  # <store>/promotions.json: every move of `latest`, oldest first


class StoreAccessError(RuntimeError):
    """An object store cannot be reached as configured (e.g. S3 without credentials); the message is one line."""


def check_store_access(url: str) -> None:
    """Fail early, in one named line, when `url` is on S3 and no credentials are configured.

    Without this, botocore raises NoCredentialsError deep inside the first read,
    which Prefect then shows as a traceback once per retry. Anonymous access is
    not assumed: the project's buckets are private. The check only asks
    botocore's credential chain (environment, shared files, IAM role); it never
    reads or logs the secret values.
    """
    if not str(url).startswith(("s3://", "s3a://")):
        return
    try:
        import botocore.session
        creds = botocore.session.get_session().get_credentials()
    except Exception as e:  # a broken profile file, etc.
        raise StoreAccessError(f"{redact_url(url)}: cannot read S3 credentials ({type(e).__name__}: {e})") from None
    if creds is None:
        raise StoreAccessError(
            f"{redact_url(url)}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(and AWS_ENDPOINT_URL for a non-AWS store), AWS_PROFILE, or run with an IAM role")


def read_latest(store_url: str) -> str | None:
    """The version `latest` names, or None for an empty store."""
    url = join(store_url, "latest")
    return read_text(url).strip() if exists(url) else None


def read_version_meta(store_url: str, version: str) -> dict:
    """`<store>/<version>/version.json` (files, published time, lineage, decision)."""
    return json.loads(read_text(join(store_url, version, "version.json")))


def promotion_history(store_url: str) -> list[dict]:
    """Every move of `latest` recorded in `<store>/promotions.json`, oldest first ([] when none)."""
    url = join(store_url, HISTORY)
    return json.loads(read_text(url)) if exists(url) else []


def _actor() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def set_latest(store_url: str, version: str, action: str = "promote", reason: str = "",
               actor: str | None = None) -> dict:
    """Point `<store>/latest` at `version` (which must be a complete checkpoint) and record the move.

    Atomic for readers: `latest` is one object replaced in a single step
    (write_bytes_atomic). The history entry is written first, so a crash
    between the two leaves an entry for a move that did not happen, never a
    move without an entry; rollback only trusts entries that match `latest`.
    Single writer assumed (the training deployment has concurrency_limit 1).
    """
    if not VERSION_RE.match(version):
        raise ValueError(f"bad version name {version!r}")
    if not exists(join(store_url, version, "config.json")) or not exists(join(store_url, version, "version.json")):
        raise FileNotFoundError(f"{redact_url(join(store_url, version))}: no complete model version there")
    previous = read_latest(store_url)
    if previous == version:
        log.info("%s %s: %s is already latest", action, redact_url(store_url), version)
        return {"action": action, "version": version, "previous": previous, "unchanged": True}
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "version": version,
             "previous": previous, "reason": reason, "by": actor or _actor()}
    history = promotion_history(store_url) + [entry]
    write_bytes_atomic(join(store_url, HISTORY), json.dumps(history, indent=1).encode())
    write_bytes_atomic(join(store_url, "latest"), (version + "\n").encode())  # commit point
    log.info("%s %s: latest %s -> %s (%s)", action, redact_url(store_url), previous, version, reason or "-")
    return entry


def promote(store_url: str, version: str, reason: str = "manual promotion", actor: str | None = None) -> dict:
    """Make `version` the store's `latest` (atomic, recorded in promotions.json, logged)."""
    return set_latest(store_url, version, "promote", reason, actor)


def _latest_stack(history: list[dict]) -> list[str]:
    """Replay the history: promotions push a version, rollbacks pop back to the one before."""
    stack: list[str] = []
    for e in history:
        if e.get("action") == "rollback":
            while stack and stack[-1] != e["version"]:
                stack.pop()
            if not stack:
                stack.append(e["version"])
        else:
            stack.append(e["version"])
    return stack


def rollback(store_url: str, reason: str = "rollback", actor: str | None = None) -> dict:
    """Move `latest` back to the version that was latest before the current one.

    Repeated rollbacks keep walking back through earlier promotions (the
    history is replayed as a stack), not back and forth between two versions.
    """
    current = read_latest(store_url)
    if current is None:
        raise FileNotFoundError(f"{redact_url(store_url)}: no latest to roll back from")
    stack = _latest_stack(promotion_history(store_url))
    while stack and stack[-1] != current:  # entries for moves that never committed
        stack.pop()
    if len(stack) < 2:
        raise LookupError(f"{redact_url(store_url)}: {current} has no earlier latest in {HISTORY} to roll back to")
    target = stack[-2]
    return set_latest(store_url, target, "rollback", f"{reason} (from {current})", actor)


def list_versions(store_url: str) -> list[dict]:
    """One row per stored version, oldest first: version, published, F1 at the compared K, status, latest flag.

    status is "latest", "promoted" (was latest before), "rejected" (stored as
    a candidate by the champion/challenger check) or "stored" (published
    without a decision, e.g. by hand or before the check existed). `interval`
    (the decision's bootstrap interval of challenger - champion F1) and
    `drift` (its drift-budget check: reference version, F1, source) are None
    for decisions recorded before they existed, and for first models.
    """
    fs, root = fs_of(store_url)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    latest = read_latest(store_url)
    ever_latest = {e["version"] for e in promotion_history(store_url)}
    rows = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or not VERSION_RE.match(name):
            continue
        meta_url = join(store_url, name, "version.json")
        if not exists(meta_url):
            continue  # a publish in progress or an unrelated directory
        meta = json.loads(read_text(meta_url))
        lineage = meta.get("lineage") or {}
        decision = lineage.get("decision") or {}
        compare_k = lineage.get("compare_k")
        metrics = lineage.get("metrics") or {}
        f1 = (metrics.get(f"K{compare_k}") or {}).get("f1") if compare_k is not None else None
        if name == latest:
            status = "latest"
        elif name in ever_latest or decision.get("promote"):
            status = "promoted"
        elif decision and not decision.get("promote"):
            status = "rejected"
        else:
            status = "stored"
        rows.append({"version": name, "published": meta.get("published"), "latest": name == latest,
                     "status": status, "compare_k": compare_k, "f1": f1,
                     "compared_with": lineage.get("compared_with"), "reason": decision.get("reason"),
                     "interval": decision.get("interval"), "drift": decision.get("drift")})
    return sorted(rows, key=lambda r: (r["published"] or "", r["version"]))


# ------------------------------------------------------------------------------ lineage helpers
BUILD_INFO = Path(__file__).resolve().parents[1] / "build_info.json"  # written by the image build (infra/Dockerfile)


def code_version() -> dict:
    """The code that trained a model or extracted a triple: the git commit (and whether the tree had local
    changes); where there is no git checkout (an image), the commit baked in at build time; and the package
    version."""
    import subprocess
    from importlib import metadata
    root = Path(__file__).resolve().parents[2]
    out: dict = {}
    try:
        out["package"] = metadata.version("docre")
    except metadata.PackageNotFoundError:
        out["package"] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    if "git_commit" not in out and BUILD_INFO.exists():
        baked = json.loads(BUILD_INFO.read_text())
        if baked.get("git_commit"):
            out["git_commit"], out["git_dirty"] = baked["git_commit"], baked.get("git_dirty")
    return out


def hardware_info() -> dict:
    """Where a model was trained: host, CPU count, torch build, GPU name when there is one."""
    import platform
    import torch
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def data_fingerprint(manifest: Mapping) -> dict:
    """What identifies a tokenized dataset: the sha256 of its inputs and the tokenization cache key.

    `cache_key` also covers tokenizer, vocabulary, relation inventory and
    schema version, so a change of any of them counts as new training data.
    """
    return {"cache_key": manifest["cache_key"], "input_checksum": manifest["input_checksum"],
            "documents": manifest.get("documents"), "inputs": [redact_url(u) for u in manifest.get("input_urls", [])]}


# ------------------------------------------------------------------------------ resumable training state off the pod
def _put_dir(local: Path, url: str) -> None:
    fs, path = fs_of(url)
    for p in sorted(local.rglob("*")):
        if p.is_file() and not p.name.endswith(".tmp"):
            target = f"{path}/{p.relative_to(local).as_posix()}"
            if is_local(fs):
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(p), target)


def _get_dir(url: str, local: Path) -> None:
    import shutil
    fs, path = fs_of(url)
    fs.invalidate_cache(path)
    tmp = local.parent / f".{local.name}.{uuid.uuid4().hex}.tmp"
    for remote in fs.find(path):
        dest = tmp / remote[len(path.rstrip("/")) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(dest))
    if local.exists():
        shutil.rmtree(local)
    tmp.rename(local)


def push_stage_state(stage_dir: str | Path, url: str, epoch: int, best_changed: bool) -> None:
    """Copy a training stage's resumable state (docre.training.train: last/, best/, history.json) to `url`.

    Called after every epoch, so a run whose pod (and local disk) dies can
    continue elsewhere. Each epoch goes to fresh names (state-<epoch>/, and
    best-<epoch>/ when the best model changed) and `CURRENT.json`, written
    last and atomically, names the complete pair; readers never see a state
    from one epoch with the weights of another. Older snapshots are deleted
    after the switch.
    """
    stage = Path(stage_dir)
    fs, root = fs_of(url)
    current_url = join(url, "CURRENT.json")
    current = json.loads(read_text(current_url)) if exists(current_url) else {}
    state_name = f"state-{epoch}"
    _put_dir(stage / "last", join(url, state_name))
    if (stage / "history.json").exists():
        fs.put_file(str(stage / "history.json"), f"{root}/{state_name}/history.json")
    best_name = current.get("best")
    if (best_changed or not best_name) and (stage / "best" / "config.json").exists():
        best_name = f"best-{epoch}"
        _put_dir(stage / "best", join(url, best_name))
    write_bytes_atomic(current_url, json.dumps({"epoch": epoch, "state": state_name, "best": best_name}).encode())
    for name in {current.get("state"), current.get("best")} - {state_name, best_name, None}:
        try:
            fs.rm(f"{root}/{name}", recursive=True)
        except FileNotFoundError:
            pass


def pull_stage_state(url: str, stage_dir: str | Path) -> int | None:
    """Restore a stage's state saved by push_stage_state into `stage_dir` when it is ahead of the local one.

    Returns the restored epoch (docre.training.train's 0-based `epoch` of the last
    finished epoch), or None when nothing was restored (no remote state, or the
    local disk already has the same or a later epoch, e.g. an in-process retry).
    """
    current_url = join(url, "CURRENT.json")
    if not exists(current_url):
        return None
    current = json.loads(read_text(current_url))
    stage = Path(stage_dir)
    local_state = stage / "last" / "state.json"
    if local_state.exists() and json.loads(local_state.read_text())["epoch"] >= current["epoch"]:
        return None
    stage.mkdir(parents=True, exist_ok=True)
    _get_dir(join(url, current["state"]), stage / "last")
    history = stage / "last" / "history.json"
    if history.exists():
        history.replace(stage / "history.json")
    if current.get("best"):
        _get_dir(join(url, current["best"]), stage / "best")
    return int(current["epoch"])


def remove_work_state(url: str) -> None:
    """Delete a finished run's resumable state (the model itself is in the store by then)."""
    fs, path = fs_of(url)
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)
