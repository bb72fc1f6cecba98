"""The model store: versioned checkpoint directories in any fsspec store, and loading them once per process.

Layout::

    <store_url>/<version>/...        a `DocREModel.save_pretrained` directory + version.json
    <store_url>/latest               text file holding the newest version; written LAST

Readers follow `latest` once and then use the versioned directory, so a
publish in progress is never seen half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Mapping

from .extract import _VERSION_RE, _exists, _fs, _is_local, _join, _read_text, write_bytes_atomic

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
                  extra_files: Mapping[str, str | Path] | None = None) -> str:
    """Copy a checkpoint directory to ``store_url/<version>/`` and point ``store_url/latest`` at it.

    Order makes it safe to interrupt: the files, then ``<version>/version.json``
    (file list with sha256), then ``latest`` (last). `extra_files` maps names
    inside the version directory to local files (reports, metrics). Versions
    are immutable: publishing an existing version with other content raises
    FileExistsError; with the same content it only re-points ``latest``.
    Returns the version's URL.
    """
    if not _VERSION_RE.match(version):
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
    version_url = _join(store_url, version)
    fs, vpath = _fs(version_url)
    meta_url = _join(version_url, "version.json")
    if _exists(meta_url):
        old = json.loads(_read_text(meta_url))
        if old.get("files") != digests:
            raise FileExistsError(f"{version_url} already exists with other content; versions are immutable")
    else:
        if _is_local(fs):
            fs.makedirs(vpath, exist_ok=True)
        for rel, path in files.items():
            target = f"{vpath}/{rel}"
            if _is_local(fs):
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)
        meta = {"version": version, "files": digests, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_bytes_atomic(meta_url, json.dumps(meta, indent=1).encode())
    write_bytes_atomic(_join(store_url, "latest"), (version + "\n").encode())  # commit point
    return version_url


def resolve_model(model_url: str) -> tuple[str, str]:
    """(checkpoint URL, version) for a model store root (follows ``latest``) or a checkpoint directory."""
    url = model_url.rstrip("/")
    if _exists(_join(url, "config.json")):
        meta_url = _join(url, "version.json")
        version = json.loads(_read_text(meta_url))["version"] if _exists(meta_url) else url.rsplit("/", 1)[-1]
        return url, version
    latest = _join(url, "latest")
    if _exists(latest):
        version = _read_text(latest).strip()
        checkpoint = _join(url, version)
        if not _exists(_join(checkpoint, "config.json")):
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
    fs, path = _fs(checkpoint_url)
    if _is_local(fs):
        return Path(path)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / hashlib.sha256(checkpoint_url.encode()).hexdigest()[:24]
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


_MODELS: dict[tuple[str, str, str], object] = {}
_MODEL_LOADS: list[tuple[str, str, str]] = []
_MODEL_LOCK = threading.Lock()


def load_model(checkpoint_url: str, version: str, device: str = "auto", cache_dir: str | Path | None = None):
    """`DocREModel` for (checkpoint, version, device), loaded once per process and then reused."""
    from .train import resolve_device
    key = (checkpoint_url, version, str(resolve_device(device)))
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from .model.docre_ii import DocREModel
            model = DocREModel.from_pretrained(fetch_model(checkpoint_url, cache_dir), key[2])
            _MODELS.clear()  # one model per process: a new version replaces the old one
            _MODELS[key] = model
            _MODEL_LOADS.append(key)
        return model


def model_cache_info() -> dict:
    """What this process has loaded: for checking that workers load a model once, not per shard."""
    return {"pid": os.getpid(), "loads": [list(k) for k in _MODEL_LOADS], "cached": [list(k) for k in _MODELS]}
