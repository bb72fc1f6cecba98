"""Documents -> subword ids with entity markers -> one Parquet dataset with a manifest.

This is the only place text becomes numbers. Every mention gets a marker
(ATLOP's ``*``) before and after its span; a mention is later represented by
the encoder state at its start marker. Documents longer than the encoder's
limit are kept whole: the encoder windows them (docre.model.encoder).

A tokenized dataset is a directory (any fsspec URL) holding ``data.parquet``,
``quarantine.jsonl`` and ``manifest.json``. The manifest is written last and
records everything the ids depend on (input checksum, tokenizer and vocabulary
hash, marker, relation inventory, schema version); a later call with the same
inputs finds a matching manifest and reuses the data instead of re-tokenizing.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .pretrained import DEFAULT_ENCODER, load_tokenizer, vocab_hash
from .document import Document, DocumentError, RelationInventory
from .io import Quarantined, checksum, load_inventory, read_documents, refuse

SCHEMA_VERSION = 1

SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
    ("sent_starts", pa.list_(pa.int32())),  # subword index where each sentence starts
    ("entity_types", pa.list_(pa.string())),
    ("mention_pos", pa.list_(pa.list_(pa.int32()))),  # per entity: start-marker positions
    ("mention_sents", pa.list_(pa.list_(pa.int32()))),  # per entity: sentence of each mention
    ("labelled", pa.bool_()),
    ("label_heads", pa.list_(pa.int32())),  # sparse labels: parallel lists
    ("label_tails", pa.list_(pa.int32())),
    ("label_rels", pa.list_(pa.int32())),  # index into the relation inventory
    ("document", pa.string()),  # the source document as JSON, for names, evidence and metrics
])


@dataclass
class TokenizeConfig:
    encoder: str = DEFAULT_ENCODER
    marker: str = "*"
    relations: str | None = None  # 'cdr', a rel_info.json / inventory URL, or None to infer from labels
    format: str | None = None  # reader format; inferred from the file name (then content) when None
    row_group_size: int = 256
    passages: str = "title_abstract"  # BioC: title + abstract, or "all" passages
    concepts: str | None = None  # PubMed XML: concept index URL (entities)
    unlinked: str = "drop"  # mentions without a KB id: "drop" or "keep"

    def read_options(self):
        from .io import ReadOptions
        return ReadOptions(passages=self.passages, unlinked=self.unlinked, concepts=self.concepts,
                           entity_types="all")


@dataclass
class Manifest:
    schema_version: int
    cache_key: str
    input_urls: list[str]
    input_checksum: str
    encoder: str
    tokenizer_class: str
    vocab_hash: str
    marker: str
    inventory: dict
    documents: int
    quarantined: int
    subword_tokens: int
    seconds: float
    created: str
    reused: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def relation_inventory(self) -> RelationInventory:
        return RelationInventory.from_json(json.dumps(self.inventory))


def encode_document(doc: Document, tokenizer, inventory: RelationInventory, marker: str = "*",
                    with_document: bool = True) -> dict:
    """One Parquet row: subword ids with markers, marker positions, sentence starts, sparse labels.

    `with_document=False` leaves out the JSON copy of the document, which only the Parquet datasets
    need (serialising it is most of this function's time when predicting straight from documents)."""
    starts, ends = set(), set()
    for ent in doc.entities:
        for m in ent.mentions:
            starts.add((m.sent_id, m.start))
            ends.add((m.sent_id, m.end - 1))
    words: list[str] = []
    word_pos: dict[tuple[int, int], int] = {}  # (sent, token) -> index of its first word (marker if any)
    sent_first_word = []
    for si, sent in enumerate(doc.sentences):
        sent_first_word.append(len(words))
        for ti, tok in enumerate(sent):
            word_pos[(si, ti)] = len(words)
            if (si, ti) in starts:
                words.append(marker)
            words.append(tok)
            if (si, ti) in ends:
                words.append(marker)
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    ids = enc["input_ids"]
    first_sub: dict[int, int] = {}
    for sub, w in enumerate(enc.word_ids()):
        if w is not None and w not in first_sub:
            first_sub[w] = sub
    offset = 1  # [CLS]
    n_sub = len(ids)

    def sub_of(word: int) -> int:
        while word not in first_sub and word < len(words):  # a word with no subwords (e.g. control char)
            word += 1
        return first_sub.get(word, n_sub) + offset

    input_ids = [tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id]
    mention_pos = [[sub_of(word_pos[(m.sent_id, m.start)]) for m in e.mentions] for e in doc.entities]
    marker_id = tokenizer.convert_tokens_to_ids(marker)
    if any(input_ids[p] != marker_id for positions in mention_pos for p in positions):
        raise ValueError(f"document {doc.id!r}: the tokenizer split the marker {marker!r}; choose a marker "
                         f"that is a single token of its vocabulary")
    heads, tails, rels = [], [], []
    for f in doc.facts or []:
        heads.append(f.head)
        tails.append(f.tail)
        rels.append(inventory.index(f.relation))
    return {
        "doc_id": doc.id,
        "input_ids": input_ids,
        "num_tokens": len(input_ids),
        "sent_starts": [sub_of(w) for w in sent_first_word],
        "entity_types": [e.type for e in doc.entities],
        "mention_pos": mention_pos,
        "mention_sents": [[m.sent_id for m in e.mentions] for e in doc.entities],
        "labelled": doc.labelled,
        "label_heads": heads,
        "label_tails": tails,
        "label_rels": rels,
        "document": json.dumps(doc.to_dict(), ensure_ascii=False) if with_document else None,
    }


def _cache_key(input_sum: str, cfg: TokenizeConfig, vhash: str, inventory: RelationInventory) -> str:
    fields = [SCHEMA_VERSION, input_sum, cfg.encoder, vhash, cfg.marker, cfg.format, inventory.to_json()]
    read = {k: v for k, v in (("passages", cfg.passages), ("concepts", cfg.concepts), ("unlinked", cfg.unlinked))
            if v != TokenizeConfig.__dataclass_fields__[k].default}
    if read:  # only non-default read options enter the key, so existing caches stay valid
        fields.append(read)
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_manifest(out_url: str) -> Manifest | None:
    fs, path = fsspec.core.url_to_fs(out_url)
    try:
        with fs.open(f"{path}/manifest.json", "r") as f:
            return Manifest(**json.load(f))
    except FileNotFoundError:
        return None


def tokenize_to_parquet(inputs: list[str], out_url: str, cfg: TokenizeConfig = TokenizeConfig(),
                        lenient: bool = True, progress: bool = True) -> Manifest:
    """Tokenize `inputs` into the dataset directory `out_url`, or reuse it if nothing changed.

    Lenient by default: bad documents go to quarantine.jsonl with their reason
    (documents read = rows written + quarantined); strict mode raises on the first.
    """
    t0 = time.time()
    tokenizer = load_tokenizer(cfg.encoder)
    vhash = vocab_hash(tokenizer)
    input_sum = checksum(inputs)
    inventory = _inventory(inputs, cfg)
    key = _cache_key(input_sum, cfg, vhash, inventory)
    old = read_manifest(out_url)
    if old is not None and old.cache_key == key:
        old.reused = True
        return old

    fs, path = fsspec.core.url_to_fs(out_url)
    fs.makedirs(path, exist_ok=True)
    if fs.exists(f"{path}/manifest.json"):
        fs.rm(f"{path}/manifest.json")  # the old data is no longer valid once we start replacing it
    tmp = f"{path}/.tmp-{uuid.uuid4().hex}"
    quarantine: list[Quarantined] = []
    n_docs = n_sub = 0
    entity_types: set[str] = set()
    with fs.open(f"{tmp}.parquet", "wb") as f, pq.ParquetWriter(f, SCHEMA) as writer:
        batch: list[dict] = []
        for doc in _progress(_read_all(inputs, cfg, inventory, quarantine if lenient else None), progress):
            row = encode_document(doc, tokenizer, inventory, cfg.marker)
            entity_types.update(row["entity_types"])
            batch.append(row)
            n_docs += 1
            n_sub += row["num_tokens"]
            if len(batch) >= cfg.row_group_size:
                writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
                batch = []
        if batch or n_docs == 0:
            writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
    fs.mv(f"{tmp}.parquet", f"{path}/data.parquet")
    with fs.open(f"{path}/quarantine.jsonl", "w") as f:
        for q in quarantine:
            f.write(json.dumps(asdict(q)) + "\n")
    manifest = Manifest(SCHEMA_VERSION, key, list(inputs), input_sum, cfg.encoder, type(tokenizer).__name__,
                        vhash, cfg.marker, _with_entity_types(inventory, entity_types), n_docs,
                        sum(q.count for q in quarantine), n_sub,
                        round(time.time() - t0, 3), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with fs.open(f"{tmp}.json", "w") as f:
        json.dump(asdict(manifest), f, indent=2)
    fs.mv(f"{tmp}.json", f"{path}/manifest.json")  # commit point
    return manifest


def _with_entity_types(inventory: RelationInventory, types: set[str]) -> dict:
    """The inventory as the manifest stores it, with the entity types seen: a model trained on it records them."""
    d = json.loads(inventory.to_json())
    d["entity_types"] = sorted(types)
    return d


def _inventory(inputs: list[str], cfg: TokenizeConfig) -> RelationInventory:
    if cfg.relations:
        return load_inventory(cfg.relations)
    docs = (d for url in inputs for d in read_documents(url, cfg.format, None, quarantine=[],
                                                        options=cfg.read_options()))
    return load_inventory(None, docs)


def _read_all(inputs: list[str], cfg: TokenizeConfig, inventory: RelationInventory,
              quarantine: list[Quarantined] | None) -> Iterator[Document]:
    seen: set[str] = set()
    for url in inputs:
        for doc in read_documents(url, cfg.format, inventory, quarantine, cfg.read_options()):
            if doc.id in seen:  # across files: ids must stay unique within one dataset
                refuse(DocumentError(url, f"document {doc.id!r}", f"duplicate document id {doc.id!r} "
                                                              f"(already read from an earlier input)"), quarantine)
                continue
            seen.add(doc.id)
            yield doc


def _progress(it: Iterable, enabled: bool) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc="tokenize", unit="doc", mininterval=1.0)


def read_parquet_rows(data_url: str, columns: list[str] | None = None) -> list[dict]:
    """All rows of a tokenized dataset (a directory URL or its data.parquet)."""
    url = data_url if data_url.endswith(".parquet") else data_url.rstrip("/") + "/data.parquet"
    with fsspec.open(url, "rb") as f:
        return pq.read_table(f, columns=columns).to_pylist()
