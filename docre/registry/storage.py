"""Object storage helpers shared by the model store and extraction: one place for "write safely, read back".

Every URL is an fsspec URL: a local path, ``file://``, ``s3://`` (endpoint and
credentials from the environment, never from arguments, so they are never
logged), or anything else fsspec knows.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

import fsspec

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def fs_of(url: str):
    """(filesystem, path) of a URL."""
    return fsspec.core.url_to_fs(url)


def is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def full_url(fs, path: str) -> str:
    """A path from `fs` as a URL usable anywhere: plain absolute paths locally, protocol://... otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a partial one.

    Written under a temporary name in the same directory, then moved: a rename
    on local disks; on object stores a server-side copy of the complete temp
    object (and a delete of the temp key).
    """
    fs, path = fs_of(url)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if is_local(fs) and parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:
            pass
        raise


def write_json_atomic(url: str, obj: Any) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=1, default=str).encode())


def exists(url: str) -> bool:
    fs, path = fs_of(url)
    fs.invalidate_cache(path)  # object-store listings are cached per process; other processes write too
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = fs_of(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    """The JSON object at `url`; a broken file names itself (a plan, a manifest, a marker)."""
    try:
        return json.loads(read_bytes(url))
    except json.JSONDecodeError as e:
        raise ValueError(f"{redact_url(url)}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def list_files(url: str, prefix: str = "", suffix: str = "") -> list[str]:
    """Full URLs of the files directly under `url` whose names start with `prefix` and end with `suffix`."""
    fs, path = fs_of(url)
    fs.invalidate_cache(path)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(full_url(fs, p) for p in names
                  if p.rsplit("/", 1)[-1].startswith(prefix) and p.endswith(suffix))


def redact_url(url: str) -> str:
    """`url` safe to log: user-info (``user:secret@``) and query strings are masked."""
    url = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", str(url))
    return re.sub(r"\?.*$", "?***", url)
