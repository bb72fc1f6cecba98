"""Shared fixtures: a tiny randomly initialised BERT with its own word-level vocabulary.

Tests never download: the tiny encoder is built from a config and saved to a
temporary directory, which `ModelConfig(encoder=...)` and tokenization accept
like any Hugging Face path.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Before Prefect is imported anywhere: its home (profiles, local storage) must not be the user's, and tests
# never phone home.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="docre-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["DOCRE_CACHE"] = tempfile.mkdtemp(prefix="docre-cache-")  # concept indexes: never the user's cache
os.environ["DOCRE_MODEL_CACHE"] = tempfile.mkdtemp(prefix="docre-models-")  # downloaded checkpoints, likewise
BUCKET = "docre-test"

FIXTURES = Path(__file__).parent / "fixtures"
BENCH = Path(__file__).parent.parent / "bench"


def load_bench(name: str):
    """A script under bench/ (e.g. "ablation", "probes/threshold_free") as a module, for testing its
    functions: bench/ is scripts, not a package."""
    import importlib.util
    import sys
    path = BENCH / f"{name}.py"
    if str(path.parent) not in sys.path:  # as when the script runs: its neighbours (result_rows) import
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

_WORDS = """the a an of and in to with was were is are by for on at from as that this these patients patient
rats treatment induced induce caused cause causes after during dose doses drug drugs effect effects study
acute chronic toxicity failure renal heart cardiac liver disease syndrome pain hypotension hypertension
seizures seizure injury damage zentrovir halomedin borvalene quintaprel naloxone clonidine lithium
paris france berlin germany born city capital river country band album actor film president member
. , ( ) - ; : ' " [ ] / % + = 0 1 2 3 4 5 6 7 8 9 mg kg""".split()


def build_tiny_encoder(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, max_positions: int = 64,
                       extra_words: list[str] = ()) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "*"] + sorted(set(_WORDS) | set(extra_words))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden,
                     max_position_embeddings=max_positions, attn_implementation="sdpa")
    BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared CPU: one intra-op thread avoids thread contention (several times faster)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- S3 on loopback

@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port), with dummy credentials in the environment.

    The endpoint is set through AWS_ENDPOINT_URL, which botocore reads whenever a
    client is made, so plain ``s3://`` URLs reach it with no code change. s3fs
    caches filesystem instances, so the cache is cleared on entry and exit.
    """
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ENDPOINT_URL", url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield url
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the loopback server, named after the test."""
    import s3fs
    name = "docre-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    fs = s3fs.S3FileSystem()  # endpoint and credentials from the environment
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for the session: a temporary server with its own SQLite database."""
    from flows import EPHEMERAL_STARTUP_TIMEOUT_S
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=int(EPHEMERAL_STARTUP_TIMEOUT_S)):
        yield


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """The loopback S3 server as an fsspec filesystem with bucket `BUCKET`; fsspec's own config points there too,
    and Dask workers started later inherit the environment that points there."""
    import fsspec
    import s3fs
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = s3_endpoint
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3_endpoint  # fsspec read its env at import
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield fs
    fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
    os.environ.pop("FSSPEC_S3_ENDPOINT_URL", None)


@contextmanager
def dask_processes(workdir: Path, workers: int = 1):
    """`dask scheduler` and `dask worker --nthreads 1` as separate processes, the way an operator starts them:
    in `workdir` (outside the checkout), with no PYTHONPATH, so they import only what is installed. Yields
    the scheduler's address; stops both on exit."""
    import json
    import subprocess
    import sys
    import time
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    sched_file = workdir / "scheduler.json"
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 120
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs += [subprocess.Popen([str(bindir / "dask"), "worker", "--nthreads", "1", "--no-dashboard",
                                    "--scheduler-file", str(sched_file)], cwd=workdir, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        yield address, procs
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
