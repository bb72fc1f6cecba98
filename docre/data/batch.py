"""Parquet rows -> bucketed batches of tensors the model consumes.

Bucketing matters on a CPU: sorting documents by length into batches means a
batch is padded only to its own longest document, not to 512 tokens. Training
uses `bucketed_batches` (length only); prediction uses `prediction_batches`,
which also buckets by entity count with a cost model of tokens and N^2 pair
cells, so a batch's padded pair grid stays within a set fraction of the exact one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .document import RelationInventory


@dataclass
class Example:
    doc_id: str
    input_ids: list[int]
    mention_pos: list[list[int]]
    entity_types: list[str]
    labels: list[tuple[int, int, int]]  # (head, tail, relation index)
    labelled: bool

    @staticmethod
    def from_row(row: dict) -> "Example":
        labels = list(zip(row["label_heads"], row["label_tails"], row["label_rels"]))
        return Example(row["doc_id"], row["input_ids"], row["mention_pos"], row["entity_types"], labels,
                       row["labelled"])


@dataclass
class Batch:
    doc_ids: list[str]
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    mention_pos: list[list[list[int]]]
    entity_mask: torch.Tensor  # [B, N]
    candidate_mask: torch.Tensor  # [B, N, N]: pairs the model is scored on
    labels: torch.Tensor  # [B, N, N, R] multi-hot, column 0 = no relation
    # mentions as padded tensors for batched entity pooling, [B, M] (M = most mentions in a document):
    # start-marker position, entity index, slot within the entity, and whether the entry is real
    mention_tokens: torch.Tensor | None = None
    mention_entity: torch.Tensor | None = None
    mention_slot: torch.Tensor | None = None
    mention_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(t):
            return None if t is None else t.to(device)
        return Batch(self.doc_ids, self.input_ids.to(device), self.attention_mask.to(device), self.mention_pos,
                     self.entity_mask.to(device), self.candidate_mask.to(device), self.labels.to(device),
                     move(self.mention_tokens), move(self.mention_entity), move(self.mention_slot),
                     move(self.mention_valid))

    def __len__(self) -> int:
        return len(self.doc_ids)


def collate(examples: list[Example], inventory: RelationInventory, pad_id: int = 0) -> Batch:
    B = len(examples)
    T = max(len(e.input_ids) for e in examples)
    N = max(1, max(len(e.mention_pos) for e in examples))
    R = len(inventory)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    ent = torch.zeros((B, N), dtype=torch.bool)
    cand = torch.zeros((B, N, N), dtype=torch.bool)
    labels = torch.zeros((B, N, N, R))
    labels[..., 0] = 1.0
    M = max(1, max(sum(len(p) for p in e.mention_pos) for e in examples))
    m_tok = torch.zeros((B, M), dtype=torch.long)
    m_ent = torch.zeros((B, M), dtype=torch.long)
    m_slot = torch.zeros((B, M), dtype=torch.long)
    m_valid = torch.zeros((B, M), dtype=torch.bool)
    type_ok: dict[tuple[str, str], bool] = {}
    for b, e in enumerate(examples):
        ids[b, :len(e.input_ids)] = torch.as_tensor(e.input_ids)
        att[b, :len(e.input_ids)] = 1
        n = len(e.mention_pos)
        ent[b, :n] = True
        if n:
            # the type filter per distinct (head type, tail type), then one table lookup for all n^2 pairs
            kinds = sorted(set(e.entity_types))
            kind = torch.as_tensor([kinds.index(t) for t in e.entity_types])
            table = torch.tensor([[type_ok.setdefault((a, c), inventory.is_candidate(a, c)) for c in kinds]
                                  for a in kinds], dtype=torch.bool)
            cand[b, :n, :n] = table[kind[:, None], kind[None, :]] & ~torch.eye(n, dtype=torch.bool)
        flat = [(p, i, j) for i, positions in enumerate(e.mention_pos) for j, p in enumerate(positions)]
        if flat:
            m = torch.as_tensor(flat, dtype=torch.long)
            m_tok[b, :len(flat)], m_ent[b, :len(flat)], m_slot[b, :len(flat)] = m[:, 0], m[:, 1], m[:, 2]
            m_valid[b, :len(flat)] = m[:, 0] < T
        for h, t, r in e.labels:
            # the candidate mask stays the inventory's alone: a gold pair the type filter excludes is never
            # predicted, so scoring it only at evaluation (or in R_0) would let gold leak into the scores;
            # the metrics count such facts as unscoreable gold, missed, as the official scorer does
            labels[b, h, t, 0] = 0.0
            labels[b, h, t, r] = 1.0
    return Batch([e.doc_id for e in examples], ids, att, [e.mention_pos for e in examples], ent, cand, labels,
                 m_tok.clamp(max=T - 1), m_ent, m_slot, m_valid)


def bucketed_batches(examples: list[Example], batch_size: int, shuffle: bool, seed: int = 0,
                     max_tokens: int | None = None) -> list[list[Example]]:
    """Batches of similar length; shuffled order of batches (and within buckets) when training.

    `max_tokens` additionally caps batch_size x longest length, so a batch of
    long documents does not blow up memory.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
        # sort within large chunks only, so batches vary between epochs but stay length-homogeneous
        chunk = batch_size * 50
        order = [i for c in range(0, len(order), chunk)
                 for i in sorted(order[c:c + chunk], key=lambda i: len(examples[i].input_ids))]
    else:
        order.sort(key=lambda i: len(examples[i].input_ids))
    batches, current = [], []
    for i in order:
        longest = max([len(examples[j].input_ids) for j in current] + [len(examples[i].input_ids)])
        if current and (len(current) >= batch_size or (max_tokens and longest * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return [[examples[i] for i in b] for b in batches]


# ---------------------------------------------------------------------------------------------- prediction
def batch_cost(lengths: list[int], entities: list[int], pair_weight: float) -> tuple[float, float]:
    """(padded, exact) cost of one batch: tokens + pair_weight x N^2 pair cells per document.

    Padded: every document is padded to the batch's longest length and largest entity count."""
    t_max, n_max = max(lengths), max(entities)
    padded = len(lengths) * (t_max + pair_weight * n_max * n_max)
    exact = sum(lengths) + pair_weight * sum(n * n for n in entities)
    return padded, exact


def padding_stats(batches: list[list[Example]]) -> dict:
    """Padded / exact counts of tokens and of pair cells (N^2 per document) over a list of batches."""
    tok_pad = tok = pair_pad = pair = 0
    for chunk in batches:
        lengths = [len(e.input_ids) for e in chunk]
        ents = [max(1, len(e.mention_pos)) for e in chunk]
        tok_pad += len(chunk) * max(lengths)
        tok += sum(lengths)
        pair_pad += len(chunk) * max(ents) ** 2
        pair += sum(n * n for n in ents)
    return {"batches": len(batches), "tokens_padded": tok_pad, "tokens_exact": tok,
            "token_padding": tok_pad / max(1, tok) - 1, "pair_cells_padded": pair_pad, "pair_cells_exact": pair,
            "pair_padding": pair_pad / max(1, pair) - 1}


def prediction_batches(examples: list[Example], batch_size: int = 8, max_tokens: int | None = 8192,
                       max_padding: float = 0.1, pair_weight: float = 1.0,
                       batch_overhead: float = 64.0) -> list[list[Example]]:
    """Batches for prediction, bucketed by length and entity count under a cost model.

    The cost of a document is its tokens plus `pair_weight` x N^2 pair cells (the base head and
    each inference iteration work on the whole N x N grid; `pair_weight` is the cost of a pair
    cell relative to a token: about 0.1 + 0.25 K for the default MiniLM encoder and d = 256).
    A batch is closed before a document would make its padded pair cells, or its padded cost,
    exceed (1 + max_padding) times the exact count, or batch_size x longest length exceed
    `max_tokens`. Several orders are tried (length-sorted chunks of growing size, each re-sorted
    by entity count) and the plan with the lowest total cost, padding plus `batch_overhead` per
    batch, is kept. Deterministic; every example appears exactly once.
    """
    if not examples:
        return []
    lengths = [len(e.input_ids) for e in examples]
    ents = [max(1, len(e.mention_pos)) for e in examples]
    by_len = sorted(range(len(examples)), key=lambda i: (lengths[i], ents[i], i))
    limit = 1.0 + max_padding

    def plan(order: list[int]) -> tuple[float, list[list[int]]]:
        batches: list[list[int]] = []
        cur: list[int] = []
        t_max = n_max = tok = pairs = 0
        total = 0.0
        for i in order:
            if cur:
                t2, n2 = max(t_max, lengths[i]), max(n_max, ents[i])
                b2 = len(cur) + 1
                padded_pairs, exact_pairs = b2 * n2 * n2, pairs + ents[i] ** 2
                padded = b2 * (t2 + pair_weight * n2 * n2)
                exact = tok + lengths[i] + pair_weight * exact_pairs
                if (len(cur) >= batch_size or (max_tokens and t2 * b2 > max_tokens)
                        or padded_pairs > limit * exact_pairs or padded > limit * exact):
                    total += batch_overhead + len(cur) * (t_max + pair_weight * n_max * n_max)
                    batches.append(cur)
                    cur, t_max, n_max, tok, pairs = [], 0, 0, 0, 0
            cur.append(i)
            t_max, n_max = max(t_max, lengths[i]), max(n_max, ents[i])
            tok += lengths[i]
            pairs += ents[i] ** 2
        total += batch_overhead + len(cur) * (t_max + pair_weight * n_max * n_max)
        batches.append(cur)
        return total, batches

    best: tuple[float, list[list[int]]] | None = None
    chunk = batch_size
    while True:
        order = [i for c in range(0, len(by_len), chunk)
                 for i in sorted(by_len[c:c + chunk], key=lambda i: (ents[i], lengths[i], i))]
        candidate = plan(order)
        if best is None or candidate[0] < best[0]:
            best = candidate
        if chunk >= len(by_len):
            break
        chunk *= 2
    return [[examples[i] for i in b] for b in best[1]]


# ---------------------------------------------------------------------------------------------- training
def training_batches(examples: list[Example], batch_size: int, shuffle: bool, seed: int = 0,
                     max_tokens: int | None = None, max_padding: float = 0.1, world_size: int = 1,
                     chunk_batches: int = 50) -> list[list[Example]]:
    """Training batches of at most `batch_size` documents under a token budget and a padding bound.

    Documents are shuffled (when training) and cut into chunks of `chunk_batches` x `batch_size`;
    each chunk is sorted by length and cut greedily, a batch closing before a document would make
    its padded tokens (batch size x longest) exceed ``(1 + max_padding)`` x its real tokens, or
    exceed `max_tokens`. So batches vary between epochs but padding stays under `max_padding` of
    the real tokens (measure with `padding_stats`); a batch may hold fewer than `batch_size`
    documents where lengths jump.

    For `world_size` ranks of data-parallel training the batches come in groups of `world_size`
    consecutive batches cut from the same length bucket (rank r takes the r-th of each group, so
    ranks that step together do similar work), and the number of batches is a multiple of
    `world_size` (so every rank steps the same number of times): the largest batches are split in
    two until it is, and only if no batch can be split (fewer documents than ranks) are the last
    few left out of this epoch. Groups are shuffled, not batches within a group.
    Deterministic for a seed; with world_size 1 every example appears exactly once."""
    if not examples:
        return []
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    else:
        order.sort(key=lambda i: len(examples[i].input_ids))
    lengths = [len(e.input_ids) for e in examples]
    limit = 1.0 + max_padding
    chunk = max(1, chunk_batches * batch_size)
    batches: list[list[int]] = []
    for c in range(0, len(order), chunk):
        cur: list[int] = []
        tok = 0
        # ascending, so the newcomer is the longest; equal lengths keep the shuffled order (a stable sort),
        # so with no padding bound these are the former length buckets' batches, same seed, same batches
        for i in sorted(order[c:c + chunk], key=lambda i: lengths[i]):
            if cur and (len(cur) >= batch_size or (len(cur) + 1) * lengths[i] > limit * (tok + lengths[i])
                        or (max_tokens and (len(cur) + 1) * lengths[i] > max_tokens)):
                batches.append(cur)
                cur, tok = [], 0
            cur.append(i)
            tok += lengths[i]
        batches.append(cur)
    while len(batches) % world_size:
        big = max(range(len(batches)), key=lambda j: len(batches[j]))
        if len(batches[big]) < 2:
            batches = batches[:len(batches) - len(batches) % world_size]
            break
        b = batches.pop(big)
        batches[big:big] = [b[:len(b) // 2], b[len(b) // 2:]]
    groups = [batches[g:g + world_size] for g in range(0, len(batches), world_size)]
    if shuffle:
        rng.shuffle(groups)
    return [[examples[i] for i in b] for g in groups for b in g]
