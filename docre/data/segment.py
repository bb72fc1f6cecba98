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
from bisect import bisect_left, bisect_right
from typing import Iterable, Sequence

_ABBREVIATIONS = {"e.g", "i.e", "vs", "dr", "mr", "mrs", "ms", "prof", "fig", "figs", "al", "approx",
                  "ca", "cf", "etc", "no", "vol", "resp", "st", "jr", "sr", "inc", "ltd", "co", "eq"}
_END = re.compile(r"[.?!][\"')\]]*(?=\s+[A-Z0-9(\[\"'])")
_TOKEN = re.compile(r"[^\W_]+|\S", re.UNICODE)


_WORD_CHAR = re.compile(r"[\w.]")


def _word_before(text: str, period: int) -> str:
    r"""The run of word characters and dots that ends at `period`.

    Scanning back from the period keeps the cost proportional to the word, not
    to the text before it: the old `re.search(r"([\w.]+)$", text[:period])`
    copied the whole prefix once per sentence end, which made long passages
    quadratic. Like that regex's ``$``, a single newline just before the period
    is stepped over.
    """
    stop = period
    if stop > 0 and text[stop - 1] == "\n":
        stop -= 1
    i = stop
    while i > 0 and _WORD_CHAR.match(text, i - 1):
        i -= 1
    return text[i:stop]


def _is_abbreviation(text: str, period: int) -> bool:
    if text[period] != ".":
        return False
    w = _word_before(text, period).lower()
    if not w:
        return False
    return w in _ABBREVIATIONS or (len(w) == 1 and text[period - 1].isupper())


def _merged_open_spans(protected: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Protected spans as sorted, disjoint open intervals with the same interior.

    Spans that only touch ((1, 3) and (3, 5)) stay apart: the shared end is not
    inside either, so a sentence may still end there.
    """
    merged: list[list[int]] = []
    for a, b in sorted((a, b) for a, b in protected if a < b):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def sentence_spans(text: str, start: int, end: int, protected: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Character spans of the sentences in text[start:end] (no split inside a protected span).

    Linear in the passage length: cuts arrive in increasing order, so one pointer
    walks the merged protected spans instead of testing all of them per cut.
    """
    spans, begin = [], start
    guards, g = _merged_open_spans(protected), 0
    for m in _END.finditer(text, start, end):
        cut = m.end()
        if _is_abbreviation(text, m.start()):
            continue
        while g < len(guards) and guards[g][1] <= cut:
            g += 1
        if g < len(guards) and guards[g][0] < cut:
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


def token_spans(text: str, start: int, end: int, boundaries: Iterable[int] = frozenset()) -> list[tuple[int, int]]:
    """Character spans of the tokens in text[start:end], split at every offset in `boundaries`."""
    return _tokens(text, start, end, sorted(set(c for c in boundaries if start < c < end)))


def sentence_tokens(text: str, sentences: Sequence[tuple[int, int]],
                    boundaries: Iterable[int] = frozenset()) -> list[list[tuple[int, int]]]:
    """`token_spans` of each sentence, with the boundaries sorted once for the whole document.

    Filtering every boundary of the document once per sentence made a long
    passage with many mentions quadratic; bisection into one sorted list keeps
    it linear.
    """
    cuts = sorted(set(boundaries))
    out = []
    for a, b in sentences:
        out.append(_tokens(text, a, b, cuts[bisect_right(cuts, a):bisect_left(cuts, b)]))
    return out


def _tokens(text: str, start: int, end: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """Tokens of text[start:end] split at `cuts` (sorted, all strictly inside the range)."""
    out, i = [], 0
    for m in _TOKEN.finditer(text, start, end):
        a, b = m.span()
        while i < len(cuts) and cuts[i] <= a:
            i += 1
        while i < len(cuts) and cuts[i] < b:
            out.append((a, cuts[i]))
            a = cuts[i]
            i += 1
        out.append((a, b))
    return out
