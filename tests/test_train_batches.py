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
