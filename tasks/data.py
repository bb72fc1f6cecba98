"""Tokenization task."""
from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from docre.data.tokenize import TokenizeConfig, tokenize_to_parquet
from docre.extract import list_inputs, redact_url


# Caching: deliberately NOT a Prefect cache (cache_policy=NO_CACHE). The library
# already caches by content: the dataset's manifest.json records the input
# checksum, tokenizer class, vocabulary hash, marker and relation inventory, and
# `tokenize_to_parquet` reuses the dataset when all of them match (manifest.reused).
# That cache lives next to the data, so it is right even when the Prefect database
# is reset or the directory is deleted, where a Prefect result cache would point at
# data that is gone. A Prefect cache_key_fn would have to checksum the inputs anyway.
@task(name="tokenize", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def tokenize(inputs: list[str] | str, out_url: str, encoder: str | None = None, relations: str | None = "cdr",
             format: str | None = None) -> dict:
    """Tokenize `inputs` (files, dirs or globs; any fsspec URL) into the dataset `out_url`; returns its manifest."""
    logger = get_run_logger()
    urls = list_inputs(inputs, format)
    cfg = TokenizeConfig(relations=relations, format=format, **({"encoder": encoder} if encoder else {}))
    manifest = tokenize_to_parquet(urls, out_url, cfg, progress=False)
    logger.info("%s %s: %d documents, %d quarantined, %d subword tokens (input sha256 %s...)",
                "reused" if manifest.reused else "tokenized", redact_url(out_url), manifest.documents,
                manifest.quarantined, manifest.subword_tokens, manifest.input_checksum[:12])
    return asdict(manifest) | {"url": out_url, "reused": manifest.reused}
