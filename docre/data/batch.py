"""Parquet rows -> length-bucketed batches of tensors the model consumes.

Bucketing matters on a CPU: sorting documents by length into batches means a
batch is padded only to its own longest document, not to 512 tokens.
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

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.doc_ids, self.input_ids.to(device), self.attention_mask.to(device), self.mention_pos,
                     self.entity_mask.to(device), self.candidate_mask.to(device), self.labels.to(device))

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
    for b, e in enumerate(examples):
        ids[b, :len(e.input_ids)] = torch.as_tensor(e.input_ids)
        att[b, :len(e.input_ids)] = 1
        n = len(e.mention_pos)
        ent[b, :n] = True
        for h in range(n):
            for t in range(n):
                if h != t and inventory.is_candidate(e.entity_types[h], e.entity_types[t]):
                    cand[b, h, t] = True
        for h, t, r in e.labels:
            labels[b, h, t, 0] = 0.0
            labels[b, h, t, r] = 1.0
            cand[b, h, t] = True  # a labelled pair is always scored, whatever the type filter says
    return Batch([e.doc_id for e in examples], ids, att, [e.mention_pos for e in examples], ent, cand, labels)


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
