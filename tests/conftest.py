"""Shared fixtures: a tiny randomly initialised BERT with its own word-level vocabulary.

Tests never download: the tiny encoder is built from a config and saved to a
temporary directory, which `ModelConfig(encoder=...)` and tokenization accept
like any Hugging Face path.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"

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
