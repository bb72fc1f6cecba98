"""Deterministic sentence splitting and word tokenization of raw text.

Raw-text sources (PubTator) need sentences and tokens, and every annotated
mention must become an exact token span. The rules are deliberately simple and
fixed, so the same text always yields the same tokens on every machine:

* Sentences end after ``.``, ``?`` or ``!`` (optionally followed by closing
  quotes/brackets) when whitespace follows and the next character is an
  uppercase letter, a digit or an opening bracket/quote, unless the word before
  the period is a common abbreviation (e.g., i.e., vs., Dr., et al., Fig.) or a
  single capital initial. A boundary that would fall inside a mention is skipped.
* Tokens are maximal runs of letters/digits, or single other non-space
  characters; in addition every mention start and end is forced to be a token
  boundary, so ``[3H]-naloxone`` splits exactly where its annotation does.
"""
from __future__ import annotations

import re
from typing import Sequence

_ABBREVIATIONS = {"e.g", "i.e", "vs", "dr", "mr", "mrs", "ms", "prof", "fig", "figs", "al", "approx",
                  "ca", "cf", "etc", "no", "vol", "resp", "st", "jr", "sr", "inc", "ltd", "co", "eq"}
_END = re.compile(r"[.?!][\"')\]]*(?=\s+[A-Z0-9(\[\"'])")
_TOKEN = re.compile(r"[^\W_]+|\S", re.UNICODE)


def _is_abbreviation(text: str, period: int) -> bool:
    if text[period] != ".":
        return False
    word = re.search(r"([\w.]+)$", text[:period])
    if not word:
        return False
    w = word.group(1).lower()
    return w in _ABBREVIATIONS or (len(w) == 1 and text[period - 1].isupper())


def sentence_spans(text: str, start: int, end: int, protected: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Character spans of the sentences in text[start:end] (no split inside a protected span)."""
    spans, begin = [], start
    for m in _END.finditer(text, start, end):
        cut = m.end()
        if _is_abbreviation(text, m.start()) or any(a < cut < b for a, b in protected):
            continue
        spans.append((begin, cut))
        begin = cut
    if text[begin:end].strip():
        spans.append((begin, end))
    # trim surrounding whitespace so spans start and end on characters
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
    return out


def token_spans(text: str, start: int, end: int, boundaries: set[int] = frozenset()) -> list[tuple[int, int]]:
    """Character spans of the tokens in text[start:end], split at every offset in `boundaries`."""
    out = []
    for m in _TOKEN.finditer(text, start, end):
        a, b = m.span()
        cuts = sorted(c for c in boundaries if a < c < b)
        for c in cuts:
            out.append((a, c))
            a = c
        out.append((a, b))
    return out
