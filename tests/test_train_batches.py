"""Training batches (issue 27): a token budget, padding under 10% of real tokens, and for data-parallel
training a batch count that every rank shares equally, groups of ranks cut from one length bucket."""
from __future__ import annotations

import random

import pytest

from docre.data.batch import Example, padding_stats, training_batches


def fake_examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    return [Example(f"d{i}", [1] * rng.randint(20, 600), [[1]] * 3, ["X"] * 3, [], False) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_batches_cover_bound_padding_and_split_evenly(seed, world):
    examples = fake_examples(203, seed)
    batches = training_batches(examples, 4, True, seed=seed, max_tokens=1024, max_padding=0.1, world_size=world)
    ids = [e.doc_id for b in batches for e in b]
    assert sorted(ids) == sorted(e.doc_id for e in examples)  # every document once
    assert len(batches) % world == 0  # every rank steps the same number of times
    assert all(1 <= len(b) <= 4 and len(b) * max(len(e.input_ids) for e in b) <= 1024 for b in batches)
    for b in batches:
        lengths = [len(e.input_ids) for e in b]
        assert len(b) * max(lengths) <= 1.1 * sum(lengths) + 1e-9
    assert padding_stats(batches)["token_padding"] < 0.1
    if world > 1:  # a rank group's batches come from one length-sorted run: their lengths do not interleave
        for g in range(0, len(batches), world):
            group = batches[g:g + world]
            spans = sorted((min(len(e.input_ids) for e in b), max(len(e.input_ids) for e in b)) for b in group)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # deterministic for a seed, different for another
    assert [[e.doc_id for e in b] for b in batches] == [
        [e.doc_id for e in b] for b in training_batches(examples, 4, True, seed=seed, max_tokens=1024,
                                                         world_size=world)]


def test_fewer_documents_than_ranks_leave_the_remainder_out():
    examples = fake_examples(3, 0)
    assert len(training_batches(examples, 1, False, world_size=2)) == 2
    assert len(training_batches(examples, 4, False, world_size=2, max_padding=10.0)) == 2  # 3 docs split 1 + 2


def former_length_buckets(examples: list[Example], batch_size: int, seed: int, max_tokens: int) -> list[list[str]]:
    """The batching of the code before issue 27, written out: shuffle, sort chunks of 50 batches by
    length (stable), cut greedily under the size and token caps, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 50
    order = [i for c in range(0, len(order), chunk)
             for i in sorted(order[c:c + chunk], key=lambda i: len(examples[i].input_ids))]
    batches, cur = [], []
    for i in order:
        longest = max([len(examples[j].input_ids) for j in cur] + [len(examples[i].input_ids)])
        if cur and (len(cur) >= batch_size or longest * (len(cur) + 1) > max_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    rng.shuffle(batches)
    return [[examples[i].doc_id for i in b] for b in batches]


@pytest.mark.parametrize("seed", [3, 4])
def test_without_a_padding_bound_the_batches_are_the_former_length_buckets(seed):
    """Same seed, same batches as before the token-budget batching (equal lengths included: a few
    lengths only), so a run can reproduce the former code's batches (max_padding: a huge value)."""
    rng = random.Random(seed)
    examples = [Example(f"d{i}", [1] * rng.choice([50, 120, 121, 300, 700]), [[1]] * 3, ["X"] * 3, [], False)
                for i in range(437)]
    got = training_batches(examples, 4, True, seed=seed, max_tokens=1024, max_padding=1e9)
    assert [[e.doc_id for e in b] for b in got] == former_length_buckets(examples, 4, seed, 1024)
