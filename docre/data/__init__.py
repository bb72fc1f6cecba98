"""Data: from raw files to the tensors the model reads. One path for every format:

    reader (pubtator, bioc, pubmed, docred, atlop) --assemble/validate--> Document
        --tokenize--> Parquet (+ manifest) --batch--> tensors

* `document.py`: the document model and the relation inventory every later stage uses.
* `streams.py`: opening any fsspec URL, decompressed, with positions for error messages.
* `io.py`: the format registry: `read_documents` detects the format and streams validated documents.
* `pubtator.py`, `bioc.py`, `pubmed.py`, `docred.py`, `atlop.py`: one reader per format
  (`xmlstream.py`: record-at-a-time XML); `assemble.py`, `segment.py`: raw text + offsets -> Document;
  `validate.py`: the checks every reader runs.
* `pretrained.py`: where the encoder and its tokenizer come from (offline default, any hub id or path).
* `tokenize.py`: Documents -> subword ids with entity markers -> Parquet; `batch.py`: rows -> batches.
* `stats.py`, `synthetic.py`: dataset statistics, and the invented documents of the demos.

Imports nothing else of `docre`; every other package builds on it. No Prefect.
"""
