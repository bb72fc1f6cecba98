"""The linear-time sentence splitter gives exactly the spans of the old quadratic one.

`_old_sentence_spans` and `_old_token_spans` are verbatim copies of the
splitter before it was made linear; they are the reference. Every call the
readers make while reading the fixtures (and the CDR corpus, when present)
is replayed through both.
"""
from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

import docre.data.assemble as assemble_module
from docre.data.io import read_documents
from docre.data.segment import sentence_spans, sentence_tokens, token_spans

from conftest import FIXTURES

_ABBREVIATIONS = {"e.g", "i.e", "vs", "dr", "mr", "mrs", "ms", "prof", "fig", "figs", "al", "approx",
                  "ca", "cf", "etc", "no", "vol", "resp", "st", "jr", "sr", "inc", "ltd", "co", "eq"}
_END = re.compile(r"[.?!][\"')\]]*(?=\s+[A-Z0-9(\[\"'])")
_TOKEN = re.compile(r"[^\W_]+|\S", re.UNICODE)
CDR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cdr"


def _old_is_abbreviation(text, period):
    if text[period] != ".":
        return False
    word = re.search(r"([\w.]+)$", text[:period])
    if not word:
        return False
    w = word.group(1).lower()
    return w in _ABBREVIATIONS or (len(w) == 1 and text[period - 1].isupper())


def _old_sentence_spans(text, start, end, protected=()):
    spans, begin = [], start
    for m in _END.finditer(text, start, end):
        cut = m.end()
        if _old_is_abbreviation(text, m.start()) or any(a < cut < b for a, b in protected):
            continue
        spans.append((begin, cut))
        begin = cut
    if text[begin:end].strip():
        spans.append((begin, end))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def _old_token_spans(text, start, end, boundaries=frozenset()):
    out = []
    for m in _TOKEN.finditer(text, start, end):
        a, b = m.span()
        cuts = sorted(c for c in boundaries if a < c < b)
        for c in cuts:
            out.append((a, c))
            a = c
        out.append((a, b))
    return out


def _replay(monkeypatch, urls: list[str], **kwargs) -> int:
    """Read `urls`, checking every segmentation call against the reference; the number of calls."""
    calls = []

    def sentences(text, start, end, protected=()):
        new = sentence_spans(text, start, end, protected)
        assert new == _old_sentence_spans(text, start, end, protected), (text[start:end][:200], protected)
        calls.append(1)
        return new

    def tokens(text, sentences, boundaries=frozenset()):
        new = sentence_tokens(text, sentences, boundaries)
        assert new == [_old_token_spans(text, a, b, boundaries) for a, b in sentences], text[:200]
        return new

    monkeypatch.setattr(assemble_module, "sentence_spans", sentences)
    monkeypatch.setattr(assemble_module, "sentence_tokens", tokens)
    for url in urls:
        quarantine = []
        for _ in read_documents(url, quarantine=quarantine, **kwargs):
            pass
    return len(calls)


def test_same_spans_as_the_old_splitter_on_the_fixtures(monkeypatch):
    urls = [str(FIXTURES / "cdr_sample.pubtator"), str(FIXTURES / "pubtator3" / "export_sample.pubtator"),
            str(FIXTURES / "pubtator3" / "bioc_sample.xml"), str(FIXTURES / "pubtator3" / "collection_sample.json"),
            str(FIXTURES / "pubtator3" / "api_sample.json")]
    assert _replay(monkeypatch, urls) > 10


@pytest.mark.skipif(not (CDR / "CDR_DevelopmentSet.PubTator.txt").exists(), reason="CDR corpus not present")
def test_same_spans_as_the_old_splitter_on_cdr(monkeypatch):
    urls = [str(p) for p in sorted(CDR.glob("CDR_*.PubTator.txt"))]
    assert _replay(monkeypatch, urls) >= 1000


_PIECES = ["Dr.", "e.g.", "i.e.", "vs.", "Fig.", "A.", "b.", "S.A.", "et al.", "x", "Word", "word", "3", "(", ")",
           "\"", "'", "]", "[", "?", "!", ".", "..", "\n", " ", "  ", "\t", "\n.", "Zx.\n", "e.g\n", "_", "é",
           "Ünïcode.", "2.5", "No.", "etc.)", "CO."]


@pytest.mark.parametrize("seed", range(40))
def test_same_spans_as_the_old_splitter_on_random_text(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(_PIECES) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(1, 120)))
    n = len(text)
    start, end = sorted((rng.randint(0, n), rng.randint(0, n)))
    protected = [tuple(sorted((rng.randint(0, n), rng.randint(0, n)))) for _ in range(rng.randint(0, 8))]
    if rng.random() < 0.3:  # touching spans: their shared end is not inside either
        protected += [(p[1], p[1] + 3) for p in protected]
    assert sentence_spans(text, start, end, protected) == _old_sentence_spans(text, start, end, protected)
    assert sentence_spans(text, 0, n) == _old_sentence_spans(text, 0, n)
    bounds = {rng.randint(0, n) for _ in range(rng.randint(0, 20))}
    assert token_spans(text, start, end, bounds) == _old_token_spans(text, start, end, bounds)
    sents = sentence_spans(text, start, end, protected)
    assert sentence_tokens(text, sents, bounds) == [_old_token_spans(text, a, b, bounds) for a, b in sents]


def test_a_one_megabyte_passage_segments_in_linear_time():
    sentence = "The dose (e.g. 5 mg vs. 10 mg) of Zentrovir was given by Dr. A. Smith et al. to rats. "
    repeats = 1_000_000 // len(sentence) + 1
    text = sentence * repeats
    protected = [(i, i + 9) for i in range(34, len(text), len(sentence))]  # every "Zentrovir"
    bounds = {c for a, b in protected for c in (a, b)}
    t0 = time.perf_counter()
    spans = sentence_spans(text, 0, len(text), protected)
    tokens = sentence_tokens(text, spans, bounds)
    elapsed = time.perf_counter() - t0
    assert len(spans) == repeats
    assert text[spans[0][0]:spans[0][1]] == sentence.strip()
    assert sum(map(len, tokens)) > 200_000
    print(f"1 MB passage: {elapsed:.2f} s")
    assert elapsed < 2.0, f"1 MB passage took {elapsed:.2f} s"
